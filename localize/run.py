"""End-to-end localization: retrieval -> NCNet matching -> PnP candidates -> DensePV, with a cache.

``python -m localize.run --query-dir DIR --db DB [--db-format rgbd|tum|inloc] ...`` or
``python -m localize.run --demo``. Each stage's results go to ``<export-dir>/<stage>-<hash>.h5``
(``localize.core.cache``): a rerun with the same configuration recomputes nothing, a changed stage
configuration recomputes that stage and the ones after it. Writes ``poses.txt`` (world-to-camera,
with the top-1 database image as 9th column) and ``log.jsonl`` (one JSON object per query).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from localize.core.records import DbImage, load_rgb
from localize.core.cache import StageCache, file_fingerprint
from localize.core.formats import PoseEntry, atomic_write, write_poses
from localize.core.geometry import Pose
from localize.executors import LocalExecutor, make_executor
from datasets.database import DB_FORMATS, load_database
from datasets.queries import list_query_images
from localize.core.errors import DatabaseError
from localize.core.records import Query
from localize.workers import DensePVWorker, MatchWorker, PoseWorker, candidates_from_record

logger = logging.getLogger("localize.run")

# ----------------------------------------------------------------------------- presets
CONFS: dict[str, dict[str, Any]] = {
    # built-in weights, CPU-friendly sizes
    "default": {
        "retrieval": {"method": "dense-rootsift-vlad", "top_k": 40},
        "rerank": {"enabled": True, "image_size": 320, "max_error_cells": 1.5},
        "matching": {"features": "dense-rootsift", "image_size": 320, "relocalize": False, "refine": True,
                     "weights": None, "max_matches": 2000, "num_pairs": 5},
        "pose": {"top_n": 10, "rerank_by": "matches", "pooled": True, "min_match_score": 0.0,
                 "pnp": {"backend": "pycolmap", "max_error": 4.0, "seed": 0, "max_num_trials": 5000,
                         "confidence": 0.9999}},
        "densepv": {"enabled": True, "target_size": 320, "whole_scan": False},
    },
    # smaller images, fewer pairs, no DensePV
    "fast": {
        "retrieval": {"method": "dense-rootsift-vlad", "top_k": 20},
        "rerank": {"enabled": True, "image_size": 240, "max_error_cells": 1.5},
        "matching": {"features": "dense-rootsift", "image_size": 240, "relocalize": False, "refine": True,
                     "weights": None, "max_matches": 1500, "num_pairs": 5},
        "pose": {"top_n": 5, "rerank_by": "matches", "pooled": True, "min_match_score": 0.0,
                 "pnp": {"backend": "pycolmap", "max_error": 4.0, "seed": 0, "max_num_trials": 5000,
                         "confidence": 0.9999}},
        "densepv": {"enabled": False, "target_size": 320, "whole_scan": False},
    },
    # the paper's configuration: official NCNet IVD weights, 3200 px with relocalization,
    # NetVLAD Pitts30K top-100 -> top-10 after re-ranking, DensePV at 1/8 of the query size
    "inloc-ncnet": {
        "retrieval": {"method": "netvlad-pitts30k", "top_k": 100},
        "rerank": {"enabled": True, "image_size": 480, "max_error_cells": 1.5},
        "matching": {"features": "resnet101", "image_size": 3200, "relocalize": True, "refine": False,
                     "weights": "REQUIRED: --ncnet-weights ncnet_ivd.pth.tar", "max_matches": 20000,
                     "num_pairs": 10},
        "pose": {"top_n": 10, "rerank_by": "matches", "pooled": False, "min_match_score": 0.0,
                 "pnp": {"backend": "pycolmap", "max_error": 48.0, "seed": 0}},
        "densepv": {"enabled": True, "scale": 0.125, "whole_scan": False},
    },
    # Sparse-NCNet (ECCV 2020) at InLoc resolution: top-10 sparse correlation, hard+soft relocalization
    "inloc-sparse-ncnet": {
        "retrieval": {"method": "netvlad-pitts30k", "top_k": 100},
        "rerank": {"enabled": True, "image_size": 480, "max_error_cells": 1.5},
        "matching": {"features": "resnet101", "image_size": 3200, "relocalize": True, "refine": False,
                     "sparse": True, "top_k": 10, "reloc_mode": "hard+soft",
                     "weights": "REQUIRED: --ncnet-weights ncnet_ivd.pth.tar", "max_matches": 20000,
                     "num_pairs": 10},
        "pose": {"top_n": 10, "rerank_by": "matches", "pooled": False, "min_match_score": 0.0,
                 "pnp": {"backend": "pycolmap", "max_error": 48.0, "seed": 0}},
        "densepv": {"enabled": True, "scale": 0.125, "whole_scan": False},
    },
}


def resolve_conf(name: str, top_k: int | None = None, ncnet_weights: str | None = None,
                 netvlad_weights: str | None = None) -> dict[str, Any]:
    """A preset with command-line overrides applied (deep copy)."""
    if name not in CONFS:
        raise ValueError(f"unknown --conf {name!r}; presets: {sorted(CONFS)}")
    conf = copy.deepcopy(CONFS[name])
    if top_k is not None:
        conf["retrieval"]["top_k"] = top_k
    if ncnet_weights:
        conf["matching"]["weights"] = str(ncnet_weights)
    if netvlad_weights:
        conf["retrieval"]["weights"] = str(netvlad_weights)
    w = conf["matching"].get("weights")
    if isinstance(w, str) and w.startswith("REQUIRED"):
        raise ValueError(f"--conf {name} needs {w.split(': ', 1)[1]}")
    return conf


# ----------------------------------------------------------------------------- per-query record
@dataclass
class QueryLog:
    """Everything the run learned about one query (written to log.jsonl)."""

    name: str
    shortlist: list[tuple[str, float]] = field(default_factory=list)
    reranked: list[tuple[str, int]] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)
    chosen_db: str | None = None
    pose: Pose | None = None
    errors: list[str] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)

    def fail(self, stage: str, msg: str) -> None:
        """Record a failure of this query at ``stage`` (logged as a warning naming the query)."""
        self.errors.append(f"{stage}: {msg}")
        logger.warning("query %s: %s: %s", self.name, stage, msg)

    def to_json(self) -> dict:
        """JSON object of log.jsonl."""
        d: dict[str, Any] = {"query": self.name, "status": "ok" if self.pose is not None else "failed",
                             "shortlist": [[n, round(float(s), 6)] for n, s in self.shortlist],
                             "reranked": [[n, int(v)] for n, v in self.reranked],
                             "candidates": self.candidates, "chosen_db": self.chosen_db, "errors": self.errors,
                             "time_s": {k: round(v, 4) for k, v in self.times.items()}}
        if self.pose is not None:
            d["qvec"] = [float(v) for v in self.pose.qvec]
            d["tvec"] = [float(v) for v in self.pose.t]
        return d


# ----------------------------------------------------------------------------- stages
def stage_retrieval(conf: dict, database: dict[str, DbImage], queries: list[Query], export_dir: Path,
                    dataset_id: dict, device: str, logs: dict[str, QueryLog]) -> tuple[StageCache, dict]:
    """Shortlist database images per query (cached per query); returns (cache, {query: [(db, score)]})."""
    from retrieval import shortlist

    wconf = {**conf, "weights_sha1": (file_fingerprint(conf["weights"]) if conf.get("weights") else None)}
    cache = StageCache(export_dir, "shortlist", {**wconf, "dataset": dataset_id})
    todo = [q for q in queries if not cache.has(q.name)]
    if todo:
        t0 = time.time()
        results = shortlist.main(conf["method"], list(database.values()), [(q.name, q.path) for q in todo],
                                 export_dir, int(conf["top_k"]), weights=conf.get("weights"), device=device)
        dt = (time.time() - t0) / max(len(todo), 1)
        for q in todo:
            if q.name not in results:
                logs[q.name].fail("retrieval", f"cannot read or describe query image {q.path}")
                continue
            _put_ranked(cache, q.name, results[q.name], "scores", dt)
        cache.finalize()
    out = {}
    for q in queries:
        if cache.has(q.name):
            out[q.name], logs[q.name].times["retrieval"] = _get_ranked(cache, q.name, "scores")
            logs[q.name].shortlist = out[q.name]
    return cache, out


def _put_ranked(cache: StageCache, name: str, ranked: Sequence[tuple[str, float]], value_key: str,
                seconds: float) -> None:
    """Store a ranked list [(db name, value)] of one query (names as JSON, values as an array)."""
    cache.put(name, {"db_names": json.dumps([n for n, _ in ranked]),
                     value_key: np.array([v for _, v in ranked], dtype=np.float64), "time_s": np.float64(seconds)})


def _get_ranked(cache: StageCache, name: str, value_key: str) -> tuple[list[tuple[str, float]], float]:
    """A ranked list stored by ``_put_ranked`` and its seconds."""
    e = cache.get(name)
    return list(zip(json.loads(e["db_names"]), e[value_key].tolist())), float(e["time_s"])


def stage_matching(conf: dict, database: dict[str, DbImage], queries: list[Query], shortlists: dict,
                   top_k: int, export_dir: Path, dataset_id: dict, device: str,
                   logs: dict[str, QueryLog], executor) -> StageCache:
    """NCNet matches between each query and its shortlisted database images, cached per pair."""
    wconf = {**conf, "weights_sha1": (file_fingerprint(conf["weights"]) if conf.get("weights") else None)}
    cache = StageCache(export_dir, "matches", {**wconf, "dataset": dataset_id})
    pairs = [(q, db) for q in queries if q.name in shortlists for db, _ in shortlists[q.name][:top_k]]
    todo = [(q, db) for q, db in pairs if not cache.has(f"{q.name}/{db}")]
    tasks = []
    for q, db in todo:
        if db not in database:
            logs[q.name].fail("matching", f"shortlisted database image {db} is not in the database")
            continue
        tasks.append((q, db))
    resources = {"num_gpus": 1} if device.startswith("cuda") else {}
    for i, res in executor.run(MatchWorker, (conf, device), [(str(q.path), str(database[db].image_path))
                                                            for q, db in tasks], "matching", resources):
        q, db = tasks[i]
        if isinstance(res, Exception):
            logs[q.name].fail("matching", f"{q.name} vs {db}: {res}")
            continue
        cache.put(f"{q.name}/{db}", res)
    cache.finalize()
    return cache


def _load_pair_matches(cache: StageCache, q: Query, names: Sequence[str]) -> tuple[list, float]:
    """[(db, kp_query, kp_db, scores)] of the cached pairs of one query, and their total matching time."""
    out, total_t = [], 0.0
    for db in names:
        key = f"{q.name}/{db}"
        if cache.has(key):
            e = cache.get(key)
            total_t += float(e["time_s"])
            out.append((db, e["keypoints0"], e["keypoints1"], e["scores"]))
    return out, total_t


def stage_pose(conf: dict, queries: list[Query], shortlists: dict, top_k: int, mcache: StageCache,
               scache: StageCache, export_dir: Path, db_spec: tuple[str, str], executor) -> StageCache:
    """PnP-RANSAC candidates per query (one per re-ranked shortlisted image), cached per query."""
    cache = StageCache(export_dir, "pose", {**conf, "top_k": top_k}, depends=[mcache, scache])
    tasks, names = [], []
    for q in queries:
        if q.name not in shortlists or cache.has(q.name):
            continue
        shortlisted = [n for n, _ in shortlists[q.name][:top_k]]
        pairs, _ = _load_pair_matches(mcache, q, shortlisted)
        if len(pairs) < len(shortlisted):
            continue  # matching failed for this query: already logged
        tasks.append((q.camera, pairs))
        names.append(q.name)
    for i, res in executor.run(PoseWorker, (conf, *db_spec), tasks, "pose"):
        if isinstance(res, Exception):
            logger.warning("query %s: pose: %s", names[i], res)
            continue
        cache.put(names[i], res)
    cache.finalize()
    return cache


def load_candidates(cache: StageCache, name: str) -> tuple[list, float]:
    """Candidates of one query from the pose cache -> (list of pose.candidates.Candidate, seconds)."""
    e = cache.get(name)
    return candidates_from_record(e), float(e["time_s"])


def stage_densepv(conf: dict, queries: list[Query], pcache: StageCache, export_dir: Path, logs: dict[str, QueryLog],
                  db_spec: tuple[str, str], executor, save_renders: Path | None = None) -> StageCache:
    """DensePV scores of each query's successful candidates, cached per query."""
    cache = StageCache(export_dir, "densepv", conf, depends=[pcache])
    if not conf.get("enabled", True):
        return cache
    todo = [q for q in queries if pcache.has(q.name) and not cache.has(q.name)]
    tasks = [(q.name, str(q.path), q.camera, pcache.get(q.name)) for q in todo]
    args = (conf, *db_spec, str(save_renders) if save_renders else None)
    for i, res in executor.run(DensePVWorker, args, tasks, "densepv"):
        if isinstance(res, Exception):
            logs[todo[i].name].fail("densepv", str(res))
            continue
        cache.put(todo[i].name, res)
    cache.finalize()
    return cache


def choose_poses(queries: list[Query], pcache: StageCache, dcache: StageCache, densepv: bool,
                 logs: dict[str, QueryLog]) -> dict[str, PoseEntry]:
    """Pick each query's pose: best DensePV score (or most inliers) among successful candidates."""
    out = {}
    for q in queries:
        L = logs[q.name]
        if not pcache.has(q.name):
            continue
        cands, t = load_candidates(pcache, q.name)
        L.times["pose"] = t
        scores = [None] * len(cands)
        if densepv and dcache.has(q.name):
            e = dcache.get(q.name)
            scores = [None if not np.isfinite(s) else float(s) for s in e["scores"]]
            L.times["densepv"] = float(e["time_s"])
        for c, s in zip(cands, scores):
            c.densepv_score = s
        L.candidates = [{"db": c.db_name, "matches": c.num_matches, "lifted": c.num_lifted, "inliers": c.num_inliers,
                         "success": c.success, "reason": c.result.reason, "densepv": c.densepv_score} for c in cands]
        ok = [c for c in cands if c.success]
        if not ok:
            reasons = "; ".join(sorted({c.result.reason for c in cands})) or "no candidates"
            L.fail("pose", f"no candidate pose ({reasons})")
            continue
        if densepv and any(c.densepv_score is not None for c in ok):
            best = max(ok, key=lambda c: (c.densepv_score is not None, c.densepv_score or 0.0, c.num_inliers))
        else:
            best = max(ok, key=lambda c: c.num_inliers)
        top1 = best.db_names[0] if best.db_name.startswith("<") and best.db_names else best.db_name
        L.pose, L.chosen_db = best.result.pose, top1
        out[q.name] = PoseEntry(best.result.pose, top1)
    return out


def stage_rerank(conf: dict, database: dict[str, DbImage], queries: list[Query], shortlists: dict,
                 scache: StageCache, export_dir: Path, device: str,
                 logs: dict[str, QueryLog]) -> tuple[StageCache, dict]:
    """Spatial verification of each shortlist (``retrieval.rerank``), cached per query.

    Returns (cache, {query: [(db, inliers)]}), best first; queries without a camera keep the retrieval order.
    """
    from retrieval.rerank import RerankConfig, ShortlistVerifier, rerank

    rconf = RerankConfig(**{k: v for k, v in conf.items() if k != "enabled"})
    cache = StageCache(export_dir, "rerank", conf, depends=[scache])
    todo = [q for q in queries if q.name in shortlists and not cache.has(q.name)]
    if todo:
        verifier = ShortlistVerifier(rconf, database, device)
        for q in tqdm(todo, desc="re-ranking", unit="query"):
            if q.camera is None:
                continue
            t0 = time.time()
            try:
                inl = verifier.inliers(load_rgb(q.path), q.camera, [n for n, _ in shortlists[q.name]])
            except Exception as e:  # noqa: BLE001 - the query is reported, the run goes on
                logs[q.name].fail("rerank", f"{q.path}: {e}")
                continue
            _put_ranked(cache, q.name, rerank(shortlists[q.name], inl), "inliers", time.time() - t0)
        cache.finalize()
    out = {}
    for q in queries:
        if cache.has(q.name):
            out[q.name], logs[q.name].times["rerank"] = _get_ranked(cache, q.name, "inliers")
            logs[q.name].reranked = [(n, int(v)) for n, v in out[q.name]]
        elif q.name in shortlists:
            out[q.name] = shortlists[q.name]
    return cache, out


# ----------------------------------------------------------------------------- run
@dataclass
class RunSummary:
    """Counts and output paths of a run."""

    num_queries: int
    num_localized: int
    failures: dict[str, str]
    poses_path: Path
    log_path: Path


def main(conf: dict, query_dir: str | Path, db: str | Path, export_dir: str | Path, db_format: str = "rgbd",
         queries_list: str | Path | None = None, device: str = "cpu", plot: bool = False,
         save_renders: bool = False, executor=None) -> RunSummary:
    """Run all stages for the queries of ``query_dir`` against ``db``; write poses.txt and log.jsonl."""
    executor = executor or LocalExecutor()
    db_spec = (str(Path(db).resolve()), db_format)
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    database = load_database(db, db_format)
    queries = list_query_images(query_dir, queries_list, db_format)
    logger.info("%d database images, %d queries", len(database), len(queries))
    logs = {q.name: QueryLog(q.name) for q in queries}
    for q in queries:
        if q.error:
            logs[q.name].fail("input", q.error)
    valid = [q for q in queries if not q.error]
    dataset_id = {"db": str(Path(db).resolve()), "db_format": db_format, "queries": str(Path(query_dir).resolve())}
    top_k = int(conf["retrieval"]["top_k"])
    scache, shortlists = stage_retrieval(conf["retrieval"], database, valid, export_dir, dataset_id, device, logs)
    if conf.get("rerank", {}).get("enabled", False):
        scache, shortlists = stage_rerank(conf["rerank"], database, valid, shortlists, scache, export_dir, device,
                                          logs)
    mtop = min(top_k, int(conf["matching"]["num_pairs"]))  # shortlisted images matched per query
    mcache = stage_matching(conf["matching"], database, valid, shortlists, mtop, export_dir, dataset_id, device, logs,
                            executor)
    for q in valid:
        if q.name in shortlists:
            logs[q.name].times["matching"] = _load_pair_matches(mcache, q, [n for n, _ in shortlists[q.name][:mtop]])[1]
    pcache = stage_pose(conf["pose"], valid, shortlists, mtop, mcache, scache, export_dir, db_spec, executor)
    use_pv = bool(conf["densepv"].get("enabled", True))
    dcache = stage_densepv(conf["densepv"], valid, pcache, export_dir, logs, db_spec, executor,
                           export_dir / "renders" if save_renders else None)
    poses = choose_poses(valid, pcache, dcache, use_pv, logs)
    poses_path, log_path = export_dir / "poses.txt", export_dir / "log.jsonl"
    write_poses(poses_path, poses)
    with atomic_write(log_path) as f:
        for q in queries:
            f.write(json.dumps(logs[q.name].to_json()) + "\n")
    if plot:
        from localize.visualize import plot_query_matches, write_cameras_ply

        for q in tqdm(valid, desc="plots", unit="query"):
            if q.name in poses:
                try:
                    plot_query_matches(export_dir / "plots" / (q.name.replace("/", "_") + ".png"), q, database,
                                       mcache, logs[q.name])
                except Exception as e:  # noqa: BLE001 - a plot never fails the run
                    logger.warning("plot of %s failed: %s", q.name, e)
        write_cameras_ply(export_dir / "scene.ply", database, {n: e.pose for n, e in poses.items()})
    failures = {q.name: "; ".join(logs[q.name].errors) or "no pose" for q in queries if q.name not in poses}
    summary = RunSummary(len(queries), len(poses), failures, poses_path, log_path)
    print_summary(summary, logs, time.time() - t_start)
    return summary


def print_summary(s: RunSummary, logs: dict[str, QueryLog], seconds: float) -> None:
    """Summary table: counts, mean time per stage, failed queries with reasons."""
    stages = ["retrieval", "rerank", "matching", "pose", "densepv"]
    mean = {st: np.mean([L.times[st] for L in logs.values() if st in L.times] or [0.0]) for st in stages}
    print(f"\nlocalized {s.num_localized}/{s.num_queries} queries in {seconds:.1f} s "
          f"(mean s/query: " + ", ".join(f"{st} {mean[st]:.3f}" for st in stages) + ")")
    if s.failures:
        print(f"{len(s.failures)} failed:")
        for n, why in sorted(s.failures.items()):
            print(f"  {n}: {why}")
    print(f"poses: {s.poses_path}\nlog:   {s.log_path}")


# ----------------------------------------------------------------------------- demo
def run_demo(out: Path, conf_name: str = "default", device: str = "cpu", size: str = "small",
             plot: bool = False) -> float:
    """Generate (once) the synthetic building, localize its queries, print the evaluation table."""
    from datasets.synthetic import ensure_dataset
    from localize.evaluate_inloc import main as evaluate

    data = ensure_dataset(out / "data", seed=0, size=size)
    conf = resolve_conf(conf_name)
    print("configuration:", json.dumps(conf, indent=1))
    s = main(conf, data / "queries" / "images", data / "db", out / "export", "rgbd",
             data / "queries" / "queries_with_intrinsics.txt", device, plot)
    res = evaluate(data / "queries" / "poses_gt.txt", s.poses_path, gt_format="poses",
                   json_path=out / "export" / "evaluation.json", plot_path=out / "export" / "error_curves.png")
    return res["all"].recall[0]


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (exit 0 when the run completed, 2 for unusable arguments/database)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true", help="generate the synthetic 'small' building and localize it")
    p.add_argument("--query-dir", help="folder of query images")
    p.add_argument("--db", help="database (plain RGB-D folder, TUM sequence or InLoc database)")
    p.add_argument("--db-format", choices=DB_FORMATS, default="rgbd")
    p.add_argument("--queries-list", help="query list with intrinsics: 'name MODEL W H params...'")
    p.add_argument("--export-dir", default=None, help="outputs and cache (default outputs/run or outputs/demo)")
    p.add_argument("--conf", default="default", choices=sorted(CONFS))
    p.add_argument("--top-k", type=int, default=None, help="shortlist size (overrides the preset)")
    p.add_argument("--ncnet-weights", help="NCNet checkpoint (official .pth.tar layout)")
    p.add_argument("--netvlad-weights", help="NetVLAD .mat (Pitts30K_struct.mat layout)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--plot", action="store_true", help="PNG per query and scene.ply with camera centres")
    p.add_argument("--save-renders", action="store_true", help="keep DensePV renderings (export-dir/renders)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where per-item work runs: in this process, or Ray tasks/actors (optional extra [ray])")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local instance)")
    p.add_argument("--verbose", "-v", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if a.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda requested but CUDA is not available")
    if a.demo:
        r = run_demo(Path(a.export_dir or "outputs/demo"), a.conf, a.device, plot=a.plot)
        print(f"\ndemo: {r:.1f}% of queries within (0.25 m, 10 deg)")
        return 0
    if not a.query_dir or not a.db:
        p.error("--query-dir and --db are required (or --demo)")
    try:
        conf = resolve_conf(a.conf, a.top_k, a.ncnet_weights, a.netvlad_weights)
    except ValueError as e:
        p.error(str(e))
    print("configuration:", json.dumps(conf, indent=1))
    executor = make_executor(a.executor, **({"address": a.ray_address} if a.executor == "ray" else {}))
    try:
        main(conf, a.query_dir, a.db, a.export_dir or "outputs/run", a.db_format, a.queries_list, a.device, a.plot,
             a.save_renders, executor)
    except DatabaseError as e:
        print(f"error: unusable database {a.db}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
