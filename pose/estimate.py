"""Pose stage on its own: matches (HDF5) + database -> candidates (PnP) -> optional DensePV -> poses.txt.

Usage::

    python -m pose.estimate --db DB --db-format rgbd|tum|inloc --matches MATCHES \
        --queries-list queries_with_intrinsics.txt --query-dir QUERY_DIR --out poses.txt \
        [--densepv] [--save-renders DIR] [--backend pycolmap|opencv] [--max-error PX] \
        [--top-n 10] [--rerank-by matches|inliers] [--pooled] [--min-score S]

Match files (``MATCHES`` is one ``.h5`` file or a directory searched recursively for ``*.h5``):
every HDF5 group holding the datasets ``keypoints0`` (query pixels N x 2, COLMAP convention:
top-left pixel centre = (0.5, 0.5)), ``keypoints1`` (database pixels N x 2) and optionally
``scores`` (N) is one (query, database image) pair. The pair is named, first found of:
the group attributes ``query`` and ``db``; a ``__key__`` attribute (group, or file for a group
named ``entry``, as written by ``localize.core.cache.StageCache``) ``<query>/<db>``; else the group path
``<query>/<db>`` (nested groups, or one flat group with '/' escaped as ``%2F``, '%' as ``%25``).
The query part is matched against the names of the query list (longest prefix), so names may
contain '/'. Pairs whose query is not in the list are ignored (with a warning).

Output: poses file ``name qw qx qy qz tx ty tz top1_db`` (WORLD-TO-CAMERA); queries without a
pose are absent and reported in the log. Exit status 0 when the run completed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from datasets.database import load_database
from localize.core.records import DbImage, load_rgb
from localize.core.formats import PoseEntry, read_query_list, write_poses
from localize.core.geometry import Camera
from pose.candidates import Candidate, CandidatesConfig, PairMatches, estimate_candidates
from pose.densepv import DensePVConfig, db_point_source, rerank_candidates, scan_point_source
from pose.pnp import PnPConfig

logger = logging.getLogger("pose.estimate")


def _split_key(key: str, query_names: list[str]) -> tuple[str, str] | None:
    """'<query>/<db>' -> (query, db) using the known query names (longest match first)."""
    for q in query_names:
        if key.startswith(q + "/") and len(key) > len(q) + 1:
            return q, key[len(q) + 1:]
    return None


def read_match_file(path: str | Path, query_names: list[str]) -> dict[str, list[PairMatches]]:
    """One HDF5 match file -> {query: [PairMatches, ...]} in file order (see module docstring)."""
    import h5py

    qnames = sorted(query_names, key=len, reverse=True)
    out: dict[str, list[PairMatches]] = defaultdict(list)
    with h5py.File(path, "r") as f:
        groups: list = []

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Group) and "keypoints0" in obj:
                groups.append(obj)

        if "keypoints0" in f:
            groups.append(f)
        f.visititems(visit)
        for g in groups:
            a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
            if "query" in a and "db" in a:
                q, d = str(a["query"]), str(a["db"])
            else:
                if "__key__" in a:
                    key = str(a["__key__"])
                elif g.name.rsplit("/", 1)[-1] == "entry" and "__key__" in f.attrs:
                    key = str(f.attrs["__key__"])
                elif g.name == "/" and "query" in f.attrs and "db" in f.attrs:
                    key = f"{f.attrs['query']}/{f.attrs['db']}"
                else:
                    key = unquote(g.name.lstrip("/"))
                qd = _split_key(key, qnames)
                if qd is None:
                    logger.warning("%s: pair %r does not start with a listed query name, ignored", path, key)
                    continue
                q, d = qd
            try:
                kq = np.asarray(g["keypoints0"][()], dtype=np.float64)
                kd = np.asarray(g["keypoints1"][()], dtype=np.float64)
                sc = np.asarray(g["scores"][()], dtype=np.float64) if "scores" in g else None
                out[q].append(PairMatches(d, kq, kd, sc))
            except (KeyError, ValueError) as e:
                logger.warning("%s: bad match group %s (%s), ignored", path, g.name, e)
    return dict(out)


def read_matches(path: str | Path, query_names: list[str]) -> dict[str, list[PairMatches]]:
    """Match file or directory of ``*.h5`` files -> {query: [PairMatches, ...]}."""
    path = Path(path)
    files = sorted(path.rglob("*.h5")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .h5 match files under {path}")
    out: dict[str, list[PairMatches]] = defaultdict(list)
    for fp in files:
        for q, lst in read_match_file(fp, query_names).items():
            out[q].extend(lst)
    return dict(out)


def localize_query(name: str, camera: Camera, pairs: list[PairMatches], db: dict[str, DbImage],
                   cand_conf: CandidatesConfig, densepv: DensePVConfig | None = None,
                   query_rgb: np.ndarray | None = None, save_renders: Path | None = None,
                   point_source=None) -> tuple[Candidate | None, list[Candidate], str]:
    """Candidates (+ DensePV) for one query -> (chosen candidate or None, all candidates, reason)."""
    cands = estimate_candidates(camera, pairs, db, cand_conf)
    ok = [c for c in cands if c.success]
    if not ok:
        reasons = "; ".join(f"{c.db_name}: {c.result.reason}" for c in cands[:3]) or "no pairs"
        return None, cands, f"no candidate pose ({reasons})"
    if densepv is not None and query_rgb is not None:
        src = point_source if point_source is not None else db_point_source(db, densepv)
        cands = rerank_candidates(query_rgb, camera, cands, src, densepv, save_dir=save_renders, query_name=name)
        best = next((c for c in cands if c.success), None)
    else:
        best = ok[0]
    return best, cands, ""


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m pose.estimate``."""
    p = argparse.ArgumentParser(prog="python -m pose.estimate", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="database root")
    p.add_argument("--db-format", default="rgbd", choices=("rgbd", "tum", "inloc"))
    p.add_argument("--matches", required=True, help="HDF5 match file or directory of them")
    p.add_argument("--queries-list", required=True, help="'name MODEL W H params...' per query")
    p.add_argument("--query-dir", default=None, help="query images (needed for --densepv)")
    p.add_argument("--out", required=True, help="output poses file")
    p.add_argument("--densepv", action="store_true", help="re-rank candidates by dense pose verification")
    p.add_argument("--save-renders", default=None, help="folder for DensePV debug PNGs (implies --densepv)")
    p.add_argument("--backend", default="pycolmap", choices=("pycolmap", "opencv"))
    p.add_argument("--max-error", type=float, default=PnPConfig.max_error, help="RANSAC threshold, query px")
    p.add_argument("--min-inliers", type=int, default=PnPConfig.min_inliers)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--rerank-by", default="matches", choices=("matches", "inliers"))
    p.add_argument("--pooled", action="store_true", help="add one PnP over all kept images' matches")
    p.add_argument("--min-score", type=float, default=0.0, help="drop matches with a lower score")
    p.add_argument("--render-size", type=int, default=DensePVConfig.target_size,
                   help="DensePV rendering: longer side in px")
    p.add_argument("--render-scale", type=float, default=None, help="DensePV rendering scale (overrides size)")
    p.add_argument("--whole-scan", action="store_true",
                   help="DensePV renders every cutout of the candidate's scan (InLoc layout), points subsampled")
    p.add_argument("--scan-stride", type=int, default=4, help="point subsampling for --whole-scan")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cams = read_query_list(args.queries_list)
        db_list = list(load_database(args.db, args.db_format).values())
        matches = read_matches(args.matches, list(cams))
    except (OSError, ValueError, KeyError) as e:
        logger.error("%s", e)
        return 2
    db = {r.name: r for r in db_list}
    use_dpv = args.densepv or args.save_renders is not None
    if use_dpv and args.query_dir is None:
        logger.error("--densepv needs --query-dir")
        return 2
    cand_conf = CandidatesConfig(
        top_n=args.top_n, rerank_by=args.rerank_by, min_match_score=args.min_score, pooled=args.pooled,
        pnp=PnPConfig(backend=args.backend, max_error=args.max_error, min_inliers=args.min_inliers, seed=args.seed))
    dpv_conf = DensePVConfig(target_size=args.render_size, scale=args.render_scale) if use_dpv else None
    src = None
    if use_dpv:
        src = scan_point_source(db, dpv_conf, args.scan_stride) if args.whole_scan else db_point_source(db, dpv_conf)
    renders = Path(args.save_renders) if args.save_renders else None
    poses: dict[str, PoseEntry] = {}
    failures: dict[str, str] = {}
    t0 = time.perf_counter()
    for name in sorted(cams):
        pairs = matches.get(name, [])
        if not pairs:
            failures[name] = "no matches"
            logger.warning("%s: no matches", name)
            continue
        rgb = None
        if use_dpv:
            try:
                rgb = load_rgb(Path(args.query_dir) / name)
            except IOError as e:
                logger.warning("%s: %s; DensePV skipped for it", name, e)
        try:
            best, cands, reason = localize_query(name, cams[name], pairs, db, cand_conf, dpv_conf, rgb, renders, src)
        except Exception as e:  # noqa: BLE001 - one bad query must not stop the run
            best, reason = None, f"{type(e).__name__}: {e}"
        if best is None:
            failures[name] = reason
            logger.warning("%s: %s", name, reason)
            continue
        top1 = best.db_name if len(best.db_names) <= 1 else best.db_names[0]
        poses[name] = PoseEntry(best.result.pose, top1)
        logger.info("%s: %s from %s%s", name, best.result.summary(), best.db_name,
                    f", DensePV {best.densepv_score:.3f}" if best.densepv_score is not None else "")
    write_poses(args.out, poses)
    logger.info("wrote %d poses to %s (%d failed) in %.1f s", len(poses), args.out, len(failures),
                time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
