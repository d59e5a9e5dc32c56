"""End-to-end localization benchmarks: TUM fr1_xyz split, the synthetic demo building, InLoc image sizes.

python benchmarks/bench_localize.py tum [--conf default] [--max-queries N] [--out outputs/bench_tum] [--no-baseline]
python benchmarks/bench_localize.py synthetic [--size small] [--conf default]
every mode: [--threads N] (one thread budget, default the available cores less those kept busy) [--busy-core] (a competing
single-core busy loop pinned to one core while the benchmark runs: compare its wall time with an unloaded run)
python benchmarks/bench_localize.py inloc-size [--conf default[,inloc-ncnet]] [--num-pairs N] [--max-queries N]
    [--scale 1.0] [--weights-dir DIR] [--json-dir DIR] [--out outputs/bench_inloc_size]

TUM: database = even lines of frames.txt (50 frames, exported to the plain RGB-D folder),
queries = odd lines (49), calibrated intrinsics (``--camera distorted``: fr1 calibration with
its lens distortion, the default; ``calibrated``: its pinhole part only; ``default``: TUM's 525 px pinhole); prints % within (2 cm, 2 deg),
(5 cm, 5 deg) and median errors, plus seconds per query by stage and peak memory (RSS). In the same run
the classical baseline ``benchmarks/sift_pnp.py`` (OpenCV SIFT, ratio test, tiny-image retrieval, pycolmap
PnP with the database depth) localizes the same queries; both are timed from an empty cache (database
description included) and the ratio of their seconds per query is printed.

inloc-size: accuracy and CPU cost of a preset at the real InLoc image sizes. Data: the synthetic ``inloc-size``
building (``datasets.synthetic``: 24 RGB-D cutouts of 1600 x 1200 from two scans, plain RGB-D
folder; twelve 4032 x 3024 queries, iPhone 7 intrinsics f = 3136 px, varied position, orientation,
lighting, moved furniture and occluders). Recall within (0.25 m, 10 deg), (0.5 m, 10 deg), (1 m, 10 deg)
and median errors against the queries' ground truth (``localize.evaluate_inloc``). Presets that need weights get
RANDOM weights in the official layouts (timings only, poses meaningless): an NCNet checkpoint
(ResNet-101 backbone, consensus kernels [3, 3] / channels [16, 1], ``matching.checkpoint``) and a
VGG16-NetVLAD-whitening ``Pitts30K_struct.mat`` (``retrieval.mat_loader``, ~600 MB), written to
``--weights-dir`` (default: a temporary folder, removed afterwards). Each preset (``--conf``, comma
separated) runs ``localize.run.main`` in a fresh process (so its peak RSS is its own) on a fresh
export folder, after describing the database (the offline part, timed separately). Prints per preset
one JSON object: configuration, image sizes, seconds per query by stage (log.jsonl ``time_s``; the
retrieval stage includes loading its model), wall seconds per query, matching seconds per pair (each
pair's cached ``time_s``; the first includes building the matcher), pairs matched, a per-query
extrapolation to the preset's own ``num_pairs``, peak RSS, load average and per-query errors (random
weights rarely give a pose, and DensePV only scores successful candidates: then it does no work).
``--num-pairs`` / ``--max-queries`` cut the matching work (dense NCNet at 3200 px takes minutes per
pair on a CPU); ``--scale s`` renders every image at s x the InLoc sizes and matches at s x the
preset's ``image_size`` (not below 320 px): a quick end-to-end check, only ``--scale 1`` gives InLoc figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data"

from localize.core.formats import read_query_list
from localize.core.threads import apply_thread_budget
from localize.pipeline.presets import CONFS, PipelineConfig, resolve_conf


def peak_rss_gb() -> float:
    """Peak resident memory of this process (GB): VmHWM on Linux (not inherited across fork/exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def prepare_tum_split(out: Path, max_queries: int | None = None,
                      camera: str = "distorted") -> tuple[Path, Path, Path, Path]:
    """Export even frames as the database and odd frames as queries; returns (db, qdir, list, gt)."""
    from datasets.tum import TUM_DEFAULT, TUM_FR1_CALIBRATED, TUM_FR1_DISTORTED, export_rgbd_folder, read_tum_frames
    from localize.core.formats import write_poses, write_query_list

    cam = {"distorted": TUM_FR1_DISTORTED, "calibrated": TUM_FR1_CALIBRATED, "default": TUM_DEFAULT}[camera]
    root = SHARED / "tum_fr1_xyz"
    frames = read_tum_frames(root)
    db = out / "db"
    if not (db / "poses.txt").exists():
        export_rgbd_folder(root, db, frames[0::2], camera=cam)
    qdir = out / "queries"
    qdir.mkdir(parents=True, exist_ok=True)
    cams, gt = {}, {}
    for f in frames[1::2][:max_queries]:
        name = Path(f.rgb_file).name
        if not (qdir / name).exists():
            shutil.copyfile(root / f.rgb_file, qdir / name)
        cams[name], gt[name] = cam, f.pose
    write_query_list(out / "queries.txt", cams)
    write_poses(out / "gt.txt", gt)
    return db, qdir, out / "queries.txt", out / "gt.txt"


def stage_times(log_path: Path) -> dict[str, float]:
    """Mean seconds per query by stage from log.jsonl."""
    rows = [json.loads(l) for l in log_path.read_text().splitlines()]
    keys = sorted({k for r in rows for k in r["time_s"]})
    return {k: sum(r["time_s"].get(k, 0.0) for r in rows) / max(len(rows), 1) for k in keys}


def bench_tum(args: argparse.Namespace) -> dict:
    """Localize the TUM odd frames against the even frames with the preset and the SIFT+PnP baseline; score both.

    Each run starts from an empty export folder (the pipeline's database description counts, like the
    baseline's SIFT extraction); seconds per query = wall time / queries."""
    from localize import run
    from localize.evaluate_inloc import main as evaluate

    out = Path(args.out or f"outputs/bench_tum_{args.camera}")
    db, qdir, qlist, gt = prepare_tum_split(out, args.max_queries, args.camera)
    conf = resolve_conf(args.conf)
    thr = [(0.02, 2.0), (0.05, 5.0), (0.25, 10.0)]

    def score(poses: Path) -> dict:
        res = evaluate(gt, poses, gt_format="poses", thresholds=thr)["all"]
        return {"queries": res.num_queries, "recall_2cm2deg": res.recall[0], "recall_5cm5deg": res.recall[1],
                "median_position_cm": 100 * res.median_position_m, "median_rotation_deg": res.median_rotation_deg}

    export = out / f"export-{args.conf}"
    if export.exists():
        shutil.rmtree(export)  # the benchmark's own output: a cached run would time nothing
    load_start = os.getloadavg()
    t0 = time.time()
    run.main(conf, qdir, db, export, "rgbd", qlist, args.device)
    wall = time.time() - t0
    nq = len(read_query_list(qlist))
    doc = {"conf": args.conf, "camera": args.camera, "threads": args.threads_applied, "busy_core": args.busy_core,
           "pipeline": {**score(export / "poses.txt"), "wall_s": wall, "s_per_query": wall / nq,
                        "stage_s_per_query": stage_times(export / "log.jsonl")}}
    if not args.no_baseline:
        from benchmarks.sift_pnp import run as sift_pnp

        b = sift_pnp(db, qdir, qlist, out / "sift_pnp_poses.txt")
        doc["sift_pnp"] = {**score(out / "sift_pnp_poses.txt"), "wall_s": b["wall_s"], "db_s": b["db_s"],
                           "s_per_query": b["s_per_query"], "settings": b["settings"]}
        doc["ratio_s_per_query"] = doc["pipeline"]["s_per_query"] / doc["sift_pnp"]["s_per_query"]
    doc.update({"peak_rss_gb": peak_rss_gb(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()})
    print(json.dumps(doc, indent=1))
    if "ratio_s_per_query" in doc:
        p, b = doc["pipeline"], doc["sift_pnp"]
        print(f"{args.conf}: {p['recall_2cm2deg']:.1f} % within (2 cm, 2 deg), median {p['median_position_cm']:.2f} cm, "
              f"{p['s_per_query']:.2f} s/query | SIFT+PnP: {b['recall_2cm2deg']:.1f} %, median "
              f"{b['median_position_cm']:.2f} cm, {b['s_per_query']:.3f} s/query | ratio {doc['ratio_s_per_query']:.1f}x")
    return doc


def bench_synthetic(args: argparse.Namespace) -> dict:
    """The demo building: recall and time per stage."""
    from localize import run

    t0 = time.time()
    r = run.run_demo(Path(args.out or f"outputs/bench_synthetic_{args.size}"), args.conf, args.device, args.size)
    out = Path(args.out or f"outputs/bench_synthetic_{args.size}") / "export"
    doc = {"size": args.size, "conf": args.conf, "recall_25cm10deg": r, "wall_s": time.time() - t0,
           "stage_s_per_query": stage_times(out / "log.jsonl"), "peak_rss_gb": peak_rss_gb()}
    print(json.dumps(doc, indent=1))
    return doc


# ----------------------------------------------------------------------------- InLoc image sizes
INLOC_SIZE = "inloc-size"  # datasets.synthetic preset: 1600 x 1200 database, 4032 x 3024 queries
INLOC_THRESHOLDS = [(0.25, 10.0), (0.5, 10.0), (1.0, 10.0)]  # InLoc's (metres, degrees)


def _scaled_size_preset(scale: float) -> str:
    """Name of the synthetic size preset at ``scale`` x the InLoc sizes (registered in SIZES when scale != 1)."""
    from datasets import synthetic as S

    if scale == 1.0:
        return INLOC_SIZE
    base = S.SIZES[INLOC_SIZE]
    name = f"{INLOC_SIZE}-x{scale:g}"
    wh = lambda s: (max(32, round(s[0] * scale)), max(24, round(s[1] * scale)))
    S.SIZES.setdefault(name, replace(base, name=name, db_size=wh(base.db_size), query_size=wh(base.query_size)))
    return name


def _generate_inloc_size(out: str, seed: int, scale: float) -> tuple[str, str, str, str, str]:
    """(In a worker process) render the building once; returns (size preset, db, query images, query list, gt)."""
    import logging

    from datasets.synthetic import generate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    size = _scaled_size_preset(scale)
    t0 = time.time()
    ds = generate(Path(out), seed=seed, size=size, layouts=("rgbd",))
    print(f"data {ds.root} ({size}): {ds.counts} ready in {time.time() - t0:.1f} s", flush=True)
    return size, str(ds.db), str(ds.queries / "images"), str(ds.query_list), str(ds.queries / "poses_gt.txt")


def _write_random_weights(weights_dir: str, ncnet: bool, netvlad: bool) -> dict[str, str]:
    """(In a worker process) random NCNet IVD-layout checkpoint / NetVLAD struct .mat, written unless present."""
    import torch

    out: dict[str, str] = {}
    wdir = Path(weights_dir)
    wdir.mkdir(parents=True, exist_ok=True)
    if ncnet:
        path = wdir / "ncnet_ivd_random.pth.tar"
        if not path.exists():
            from matching.checkpoint import save_checkpoint
            from matching.model import build_ncnet

            torch.manual_seed(0)
            model = build_ncnet(features="resnet101", allow_random_backbone=True)  # consensus [3, 3] / [16, 1]
            save_checkpoint(path, model, extra_args={"note": "random weights (benchmarks/bench_localize.py)"})
        out["ncnet"] = str(path)
    if netvlad:
        path = wdir / "Pitts30K_random_struct.mat"
        if not path.exists():
            from retrieval.mat_loader import save_netvlad_mat
            from retrieval.netvlad import NetVLADModel

            torch.manual_seed(0)
            tmp = path.with_suffix(".tmp.mat")
            save_netvlad_mat(tmp, NetVLADModel())  # VGG16 conv5_3, K = 64, D = 512, whitening 32768 -> 4096
            tmp.replace(path)
        out["netvlad"] = str(path)
    return out


def _pair_times(export_dir: Path) -> list[dict]:
    """Per matched pair: name, seconds and number of matches, from the matches cache of a finished run."""
    import h5py

    rows = []
    for f5 in sorted(export_dir.glob("matches-*.h5")):
        with h5py.File(f5, "r") as f:
            for g in f.values():
                if isinstance(g, h5py.Group) and "time_s" in g:
                    key = g.name.lstrip("/").replace("%2F", "/").replace("%25", "%")  # localize.core.cache group names
                    rows.append({"pair": key, "s": round(float(g["time_s"][()]), 3),
                                 "matches": int(g["scores"].shape[0]) if "scores" in g else None})
    return rows


def _run_preset(name: str, conf: PipelineConfig, db: str, qdir: str, qlist: str, export_dir: str, device: str) -> dict:
    """(In a fresh worker process) describe the database, localize the queries, return timings and peak RSS."""
    import logging

    from datasets.database import load_database
    from localize import run
    from retrieval.global_descriptors import global_descriptors, load_extractor
    from retrieval.shortlist import db_items

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    export = Path(export_dir)
    if export.exists():
        shutil.rmtree(export)
    load_start = os.getloadavg()
    # offline part: retrieval vocabulary / database descriptors, cached in the export folder for run.main
    t0 = time.time()
    dbi = db_items(list(load_database(db, "rgbd").values()))
    rc = conf.retrieval
    ext = load_extractor(rc.method, dbi, export, device, weights=rc.weights)
    global_descriptors(ext, dbi, export, role="db")
    del ext
    offline = time.time() - t0
    t0 = time.time()
    summary = run.main(conf, qdir, db, export, "rgbd", qlist, device)
    wall = time.time() - t0
    rows = [json.loads(line) for line in (export / "log.jsonl").read_text().splitlines()]
    pairs = _pair_times(export)
    return {"export": str(export), "offline_db_s": offline, "wall_s": wall, "rows": rows, "pairs": pairs,
            "localized": summary.num_localized, "peak_rss_gb": peak_rss_gb(), "torch_threads": torch.get_num_threads(),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg()}


def _in_fresh_process(fn, *args):
    """fn(*args) in a new spawned Python process (own peak RSS, memory returned to the system afterwards)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def _image_size(path: str | Path) -> list[int]:
    from PIL import Image

    with Image.open(path) as im:
        return list(im.size)


def bench_inloc_size(args: argparse.Namespace) -> list[dict]:
    """Seconds per query by stage and peak RSS of each preset at the InLoc image sizes (see the module docstring)."""
    from localize.core.formats import read_poses, read_query_list, write_poses, write_query_list

    names = [c.strip() for c in args.conf.split(",") if c.strip()]
    for n in names:
        if n not in CONFS:
            raise SystemExit(f"unknown --conf {n!r}; presets: {sorted(CONFS)}")
    tag = "" if args.scale == 1.0 else f"_x{args.scale:g}"
    out = Path(args.out or f"outputs/bench_inloc_size{tag}")
    size, db, qimages, qlist_all, gt_all = _in_fresh_process(_generate_inloc_size, str(out / "data"), args.seed,
                                                            args.scale)
    # the first --max-queries queries, in their own folder (run.main takes every image of the folder)
    cams = read_query_list(qlist_all)
    qnames = sorted(cams)[:args.max_queries]
    qdir = out / f"queries_{len(qnames)}"
    if qdir.exists():
        shutil.rmtree(qdir)
    (qdir / "images").mkdir(parents=True)
    for n in qnames:
        (qdir / "images" / n).symlink_to(Path(qimages, n).resolve())
    write_query_list(qdir / "list.txt", {n: cams[n] for n in qnames})
    gt = read_poses(gt_all)
    write_poses(qdir / "gt.txt", {n: gt[n].pose for n in qnames})
    needs_ncnet = any(CONFS[n]["matching"].get("features") == "resnet101" for n in names)
    needs_netvlad = any(CONFS[n]["retrieval"]["method"].startswith("netvlad") for n in names)
    tmp = None
    wdir = args.weights_dir
    if (needs_ncnet or needs_netvlad) and wdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_inloc_size_weights_")
        wdir = tmp.name
    weights = _in_fresh_process(_write_random_weights, wdir, needs_ncnet, needs_netvlad) if wdir else {}
    docs = []
    try:
        for name in names:
            base = CONFS[name]
            conf = resolve_conf(name, ncnet_weights=weights.get("ncnet") if base["matching"].get("features")
                                    == "resnet101" else None,
                                    netvlad_weights=weights.get("netvlad") if base["retrieval"]["method"]
                                    .startswith("netvlad") else None)
            preset_pairs = conf.num_pairs
            if args.num_pairs is not None:
                conf = replace(conf, num_pairs=int(args.num_pairs))
            if args.scale != 1.0:
                s0 = conf.matching.image_size
                conf = replace(conf, matching=replace(conf.matching, image_size=min(s0, max(320, round(s0 * args.scale)))))
            print(f"\n=== {name}: configuration", json.dumps(conf.to_dict(), indent=1), flush=True)
            export = out / f"export-{name}"
            r = _in_fresh_process(_run_preset, name, conf, db, str(qdir / "images"), str(qdir / "list.txt"),
                                  str(export), args.device)
            docs.append(_inloc_size_doc(name, conf, preset_pairs, args, size, db, qdir, r))
            print(json.dumps(docs[-1], indent=1), flush=True)
            if args.json_dir:
                Path(args.json_dir).mkdir(parents=True, exist_ok=True)
                (Path(args.json_dir) / f"bench_inloc_size{tag}_{name}.json").write_text(json.dumps(docs[-1], indent=1))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return docs


def _inloc_size_doc(name: str, conf: PipelineConfig, preset_pairs: int, args: argparse.Namespace, size: str, db: str,
                    qdir: Path, r: dict) -> dict:
    """The JSON report of one preset from the worker's raw results."""
    from localize.core.formats import read_query_list
    from localize.evaluate_inloc import main as evaluate

    res = evaluate(qdir / "gt.txt", Path(r["export"]) / "poses.txt", gt_format="poses",
                   thresholds=INLOC_THRESHOLDS)["all"]
    accuracy = {"recall_pct": {f"{m:g}m,{d:g}deg": round(v, 1) for (m, d), v in zip(INLOC_THRESHOLDS, res.recall)},
                "median_position_cm": round(100 * res.median_position_m, 2),
                "median_rotation_deg": round(res.median_rotation_deg, 3)}
    rows = r["rows"]
    nq = max(len(rows), 1)
    stages = {k: sum(row["time_s"].get(k, 0.0) for row in rows) / nq for k in
              sorted({k for row in rows for k in row["time_s"]})}
    n_pairs = len(r["pairs"])
    match_total = sum(row["time_s"].get("matching", 0.0) for row in rows)
    per_pair = match_total / n_pairs if n_pairs else None
    shortlist = sum(len(row["shortlist"]) for row in rows) / nq
    cam = next(iter(read_query_list(qdir / "list.txt").values()))
    db_files = sorted((Path(db) / "images").rglob("*.jpg"))
    per_query = sum(stages.values())
    extra = {}
    if per_pair is not None:
        pairs_q = min(preset_pairs, conf.retrieval.top_k)
        extra = {"num_pairs": pairs_q, "s_per_query": per_query - stages.get("matching", 0.0) + per_pair * pairs_q,
                 "formula": "stage sum - matching + matching_s_per_pair x num_pairs (rerank for this shortlist)"}
        if "verify" in stages and shortlist:
            extra["verify_s_per_shortlisted_image"] = stages["verify"] / shortlist
    return {
        "mode": "inloc-size", "conf": name, "device": args.device, "scale": args.scale, "size_preset": size,
        "configuration": conf.to_dict(),
        "overrides": {"num_pairs": args.num_pairs, "max_queries": args.max_queries, "preset_num_pairs": preset_pairs},
        "db_images": len(db_files), "db_image_size": _image_size(db_files[0]),
        "query_image_size": [cam.width, cam.height], "query_focal_px": round(float(cam.focal[0]), 3),
        "queries": len(rows), "localized": r["localized"], **accuracy,
        "errors": {row["query"]: row["errors"] for row in rows if row["errors"]},  # e.g. no pose: DensePV skipped
        "shortlist_len": shortlist,
        "pairs_matched": n_pairs, "pairs_per_query": n_pairs / nq,
        "stage_s_per_query": {k: round(v, 3) for k, v in stages.items()}, "s_per_query_stage_sum": round(per_query, 3),
        "wall_s": round(r["wall_s"], 3), "wall_s_per_query": round(r["wall_s"] / nq, 3),
        "offline_db_describe_s": round(r["offline_db_s"], 3),
        "matching_s_per_pair": None if per_pair is None else round(per_pair, 3), "pair_times": r["pairs"],
        "extrapolated_to_preset_pairs": {k: round(v, 3) if isinstance(v, float) else v for k, v in extra.items()},
        "peak_rss_gb": round(r["peak_rss_gb"], 3), "torch_threads": r["torch_threads"], "cpu_count": os.cpu_count(),
        "loadavg_start": [round(v, 2) for v in r["loadavg_start"]],
        "loadavg_end": [round(v, 2) for v in r["loadavg_end"]],
    }


def _spin(core: int) -> None:
    """(In a child process) a busy loop pinned to one core."""
    os.sched_setaffinity(0, {core})
    while True:
        pass


@contextmanager
def busy_core(enabled: bool) -> Iterator[int | None]:
    """While active: a child process spinning on the last available core (yields that core, None when off)."""
    if not enabled:
        yield None
        return
    core = max(os.sched_getaffinity(0))
    proc = get_context("fork").Process(target=_spin, args=(core,), daemon=True)  # spins only: no re-import
    proc.start()
    print(f"busy loop on core {core} (pid {proc.pid})", flush=True)
    try:
        yield core
    finally:
        proc.kill()  # SIGKILL: a SIGTERM would print pycolmap's (glog) fatal-signal trace from the fork
        proc.join()


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["tum", "synthetic", "inloc-size"])
    p.add_argument("--conf", default=None,
                   help="preset (default 'default'; inloc-size: comma-separated presets)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-queries", type=int, default=None)
    p.add_argument("--size", default="small")
    p.add_argument("--num-pairs", type=int, default=None,
                   help="inloc-size: database images matched per query (default: the preset's num_pairs)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="inloc-size: image sizes x this (and matching image_size, not below 320); 1 = InLoc")
    p.add_argument("--weights-dir", default=None,
                   help="inloc-size: where the random weights are written / reused (default: a temporary folder)")
    p.add_argument("--json-dir", default=None,
                   help="inloc-size: also write bench_inloc_size[_x<scale>]_<conf>.json per preset into this folder")
    p.add_argument("--seed", type=int, default=0, help="inloc-size: building seed")
    p.add_argument("--camera", default="distorted", choices=["distorted", "calibrated", "default"],
                   help="TUM intrinsics (database and queries)")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="thread budget (localize.core.threads; default: the available cores less the busy ones)")
    p.add_argument("--busy-core", action="store_true",
                   help="run a competing single-core busy loop, pinned to one core, for the benchmark's duration")
    p.add_argument("--no-baseline", action="store_true", help="tum: skip the SIFT+PnP baseline")
    a = p.parse_args()
    a.conf = a.conf or "default"
    with busy_core(a.busy_core):  # the budget is chosen with the competing loop already running, as a user's run
        a.threads_applied = apply_thread_budget(a.threads).threads
        {"tum": bench_tum, "synthetic": bench_synthetic, "inloc-size": bench_inloc_size}[a.what](a)


if __name__ == "__main__":
    main()
