"""Pose stage on its own: matches (HDF5) + database -> candidates (PnP) -> optional DensePV -> poses.txt.

Usage::

    python -m pose.estimate --db DB --db-format rgbd|tum|inloc --matches MATCHES \
        --queries-list queries_with_intrinsics.txt --query-dir QUERY_DIR --out poses.txt [--top1 top1.txt] \
        [--densepv] [--save-renders DIR] [--backend pycolmap|opencv] [--max-error PX] [--reference-size 640] \
        [--top-n 10] [--order-by matches|inliers] [--pooled] [--min-score S]

Match files (``MATCHES`` is one ``.h5`` file or a directory searched recursively for ``*.h5``):
every HDF5 group holding the datasets ``keypoints0`` (query pixels N x 2, COLMAP convention:
top-left pixel centre = (0.5, 0.5)), ``keypoints1`` (database pixels N x 2) and optionally
``scores`` (N) is one (query, database image) pair. The pair is named, first found of:
the group attributes ``query`` and ``db``; a ``__key__`` attribute (group, or file for a group
named ``entry``, as written by ``localize.core.cache.StageCache``) ``<query>/<db>``; else the group path
``<query>/<db>`` (nested groups, or one flat group with '/' escaped as ``%2F``, '%' as ``%25``).
The query part is matched against the names of the query list (longest prefix), so names may
contain '/'. Pairs whose query is not in the list are ignored (with a warning).

Output: poses file ``name qw qx qy qz tx ty tz`` (WORLD-TO-CAMERA, 8 columns) and, with ``--top1``,
the top-1 side file ``query db`` (database image of each chosen pose); queries without a pose are
absent and reported in the log. Exit status 0 when the run completed.

Library use (hloc stage shape): ``main(conf, db, matches, queries_list, out)`` -> ``EstimateOutputs``;
``cli(argv)`` parses the command line. The final pose of a query is chosen by
``pose.candidates.choose_pose``, the rule of the full pipeline (``localize.run``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h5py
import numpy as np

from datasets.database import DB_FORMATS, load_database
from localize.core.config import from_dict, nonnegative_float, nonnegative_int, positive_float, positive_int
from localize.core.errors import InputError
from localize.core.formats import PoseEntry, read_pairs, read_query_list, write_poses, write_top1
from localize.core.geometry import Camera
from localize.core.hloc import NAME_STYLES, from_hloc_name, resolve_pairs
from localize.core.hloc import read_matches as read_hloc_matches
from localize.core.records import DbImage, load_rgb
from pose.candidates import Candidate, CandidatesConfig, PairMatches, choose_pose, estimate_candidates
from pose.densepv import DensePVConfig, PointSource, order_by_densepv, point_source
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
    qnames = sorted(query_names, key=len, reverse=True)
    out: dict[str, list[PairMatches]] = defaultdict(list)
    with h5py.File(path, "r") as f:
        groups: list = []

        def visit(name: str, obj: Any) -> None:
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


@dataclass(frozen=True)
class EstimateConfig:
    """Pose stage settings: candidate generation (PnP inside) and DensePV (None = candidates ranked by inliers)."""

    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    densepv: DensePVConfig | None = None


@dataclass
class EstimateOutputs:
    """Poses (world-to-camera, with top-1 database image), failure reason per query, log.jsonl-style records."""

    poses: dict[str, PoseEntry]
    failures: dict[str, str]
    logs: dict[str, dict[str, Any]]


def localize_query(name: str, camera: Camera, pairs: list[PairMatches], db: Mapping[str, DbImage],
                   cand_conf: CandidatesConfig, densepv: DensePVConfig | None = None,
                   query_rgb: np.ndarray | None = None, save_renders: Path | None = None,
                   points: PointSource | None = None) -> tuple[Candidate | None, list[Candidate], str]:
    """Candidates (+ DensePV scores) for one query -> (chosen candidate or None, candidates best first, reason)."""
    cands = estimate_candidates(camera, pairs, db, cand_conf)
    use_densepv = densepv is not None and query_rgb is not None
    if use_densepv and any(c.success for c in cands):
        src = points if points is not None else point_source(db, densepv)
        order_by_densepv(query_rgb, camera, cands, src, densepv, save_dir=save_renders, query_name=name)
    best, reason = choose_pose(cands, None, use_densepv)
    return best, cands, reason


def read_hloc_pair_matches(matches: str | Path, pairs: str | Path, query_names: Sequence[str],
                           db_names: Sequence[str], features: str | Path | None = None,
                           name_style: str = "hloc") -> dict[str, list[PairMatches]]:
    """hloc's matches.h5 (+ features.h5 for ``matches0``) of the pairs in a pairs file -> {query: [PairMatches]}.

    Names are read in ``name_style`` and mapped to the project's; PairsError (an InputError) when no
    query or database image of the pairs file resolves, or a listed pair is missing from the file.
    """
    raw = read_pairs(pairs)
    resolve_pairs(raw, query_names, db_names, pairs, name_style)  # one clear error when nothing resolves
    qset, dset = set(query_names), set(db_names)
    wanted: dict[tuple[str, str], tuple[str, str]] = {}
    for q_raw, lst in raw.items():
        q = from_hloc_name(q_raw, "query", qset, name_style)
        for d_raw, _ in lst if q is not None else ():
            d = from_hloc_name(d_raw, "db", dset, name_style)
            if d is not None:
                wanted[(q_raw, d_raw)] = (q, d)
    out: dict[str, list[PairMatches]] = defaultdict(list)
    for key, (kq, kd, scores) in read_hloc_matches(matches, list(wanted), features).items():
        q, d = wanted[key]
        out[q].append(PairMatches(d, kq, kd, scores))
    return dict(out)


def main(conf: EstimateConfig | Mapping[str, Any] | None, db: str | Path, matches: str | Path,
         queries_list: str | Path, out: str | Path | None = None, db_format: str = "rgbd",
         query_dir: str | Path | None = None, save_renders: str | Path | None = None,
         top1_out: str | Path | None = None, pairs: str | Path | None = None,
         hloc_features: str | Path | None = None, name_style: str = "hloc") -> EstimateOutputs:
    """Localize the listed queries from their matches; writes the poses file ``out`` (and ``top1_out``) if given.

    With ``pairs``, ``matches`` is hloc's matches.h5 (``hloc_features`` = its features.h5 when the
    groups hold ``matches0``), read for the pairs of that file in ``name_style``; else the project's
    match files (groups with ``keypoints0`` / ``keypoints1`` / ``scores``).

    Raises InputError / OSError / ValueError for an unusable database, query list, match file or
    configuration (DensePV needs ``query_dir``); a query that fails is reported in the outputs.
    """
    conf = from_dict(EstimateConfig, conf, "estimate")
    if conf.densepv is not None and query_dir is None:
        raise InputError("DensePV needs the query images (query_dir / --query-dir)")
    cams = read_query_list(queries_list)
    db_records = load_database(db, db_format)
    if pairs is not None:
        pairs_of = read_hloc_pair_matches(matches, pairs, list(cams), list(db_records), hloc_features, name_style)
    else:
        pairs_of = read_matches(matches, list(cams))
    src = point_source(db_records, conf.densepv) if conf.densepv is not None else None
    renders = Path(save_renders) if save_renders else None
    res = EstimateOutputs({}, {}, {})
    t0 = time.perf_counter()
    for name in sorted(cams):
        pairs = pairs_of.get(name, [])
        if not pairs:
            res.failures[name] = "no matches"
            logger.warning("%s: no matches", name)
            continue
        rgb = None
        if conf.densepv is not None:
            try:
                rgb = load_rgb(Path(query_dir) / name)
            except OSError as e:
                logger.warning("%s: %s; DensePV skipped for it", name, e)
        try:
            best, cands, reason = localize_query(name, cams[name], pairs, db_records, conf.candidates, conf.densepv,
                                                 rgb, renders, src)
        except (InputError, OSError, ValueError) as e:  # one bad query must not stop the run
            best, cands, reason = None, [], f"{type(e).__name__}: {e}"
        res.logs[name] = {"query": name, "candidates": [c.to_log() for c in cands],
                          "chosen_db": best.top1_db if best is not None else None, "reason": reason}
        if best is None:
            res.failures[name] = reason
            logger.warning("%s: %s", name, reason)
            continue
        res.poses[name] = PoseEntry(best.result.pose, best.top1_db)
        logger.info("%s: %s from %s%s", name, best.result.summary(), best.db_name,
                    f", DensePV {best.densepv_score:.3f}" if best.densepv_score is not None else "")
    if top1_out is not None:
        write_top1(top1_out, res.poses)
    if out is not None:
        write_poses(out, res.poses)
        logger.info("wrote %d poses to %s (%d failed) in %.1f s", len(res.poses), out, len(res.failures),
                    time.perf_counter() - t0)
    return res


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m pose.estimate``."""
    p = argparse.ArgumentParser(prog="python -m pose.estimate", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="database root")
    p.add_argument("--db-format", default="rgbd", choices=DB_FORMATS)
    p.add_argument("--matches", required=True, help="HDF5 match file or directory of them")
    p.add_argument("--queries-list", required=True, help="'name MODEL W H params...' per query")
    p.add_argument("--query-dir", default=None, help="query images (needed for --densepv)")
    p.add_argument("--out", required=True, help="output poses file (8 columns)")
    p.add_argument("--top1", default=None, help="also write the top-1 side file ('query db' lines) here")
    p.add_argument("--pairs", default=None,
                   help="hloc pairs file: --matches is then hloc's matches.h5, read for these pairs")
    p.add_argument("--hloc-features", default=None, help="hloc's features.h5 (keypoints of matches0 groups)")
    p.add_argument("--name-style", choices=NAME_STYLES, default="hloc",
                   help="names in --pairs / the hloc files: hloc (dataset-root relative) or inloc")
    p.add_argument("--densepv", action="store_true", help="re-rank candidates by dense pose verification")
    p.add_argument("--save-renders", default=None, help="folder for DensePV debug PNGs (implies --densepv)")
    p.add_argument("--backend", default="pycolmap", choices=("pycolmap", "opencv"))
    p.add_argument("--max-error", type=positive_float, default=PnPConfig.max_error,
                   help="RANSAC threshold: px per --reference-size px of the query's longer side (never less)")
    p.add_argument("--reference-size", type=nonnegative_int, default=640,
                   help="longer image side at which --max-error holds as given; 0 = --max-error in plain query px")
    p.add_argument("--min-inliers", type=positive_int, default=PnPConfig.min_inliers)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-n", type=positive_int, default=10)
    p.add_argument("--order-by", "--rerank-by", dest="order_by", default="matches", choices=("matches", "inliers"),
                   help="order of the shortlisted images before top-n: lifted matches (InLoc) or PnP inliers "
                        "(--rerank-by: the former name)")
    p.add_argument("--pooled", action="store_true", help="add one PnP over all kept images' matches")
    p.add_argument("--min-score", type=nonnegative_float, default=0.0, help="drop matches with a lower score")
    p.add_argument("--render-size", type=positive_int, default=DensePVConfig.target_size,
                   help="DensePV rendering: longer side in px")
    p.add_argument("--render-scale", type=positive_float, default=None, help="DensePV rendering scale (overrides size)")
    p.add_argument("--whole-scan", action="store_true",
                   help="DensePV renders every cutout of the candidate's scan (InLoc layout), points subsampled")
    p.add_argument("--scan-stride", type=positive_int, default=4, help="point subsampling for --whole-scan")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def conf_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``EstimateConfig`` dict of parsed command-line arguments."""
    use_dpv = args.densepv or args.save_renders is not None
    return {"candidates": {"top_n": args.top_n, "order_by": args.order_by, "min_match_score": args.min_score,
                           "pooled": args.pooled,
                           "pnp": {"backend": args.backend, "max_error": args.max_error,
                                   "reference_size": args.reference_size or None,
                                   "min_inliers": args.min_inliers, "seed": args.seed}},
            "densepv": {"target_size": args.render_size, "scale": args.render_scale, "whole_scan": args.whole_scan,
                        "scan_stride": args.scan_stride} if use_dpv else None}


def cli(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for unusable arguments or inputs)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        main(conf_from_args(args), args.db, args.matches, args.queries_list, args.out, args.db_format,
             args.query_dir, args.save_renders, args.top1, args.pairs, args.hloc_features, args.name_style)
    except (InputError, OSError, ValueError) as e:
        logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
