"""Score estimated poses against ground truth as the InLoc benchmark does.

``python -m localize.evaluate_inloc --gt refposes.mat --poses poses.txt|ImgList.mat [--top1 top1.txt]``
Recall = % of ground-truth queries within (position m, rotation deg) thresholds; a query
without an estimate counts as failed; where the top-1 database image is known (ImgList, the
``--top1`` side file or a poses file's 9th column) and lies on another floor than the ground
truth's group, the query counts as failed (InLoc rule).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from datasets.inloc import floor_of
from localize.core.formats import PoseEntry, atomic_write, read_poses, read_top1, write_poses, write_top1
from localize.core.geometry import Pose, pose_error

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS: list[tuple[float, float]] = [(0.25, 10.0), (0.5, 10.0), (1.0, 10.0)]


def _as_list(x) -> list:
    return list(x) if isinstance(x, (np.ndarray, list, tuple)) else [x]


def read_inloc_gt(path: str | Path) -> dict[str, dict[str, Pose]]:
    """InLoc ground truth (``*_RefList`` struct lists with queryname, P 3x4 world-to-camera) -> {floor: {query: Pose}}."""
    m = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    out: dict[str, dict[str, Pose]] = {}
    for key in sorted(k for k in m if k.endswith("_RefList")):
        group = key[: -len("_RefList")]
        out[group] = {str(e.queryname): Pose.from_matrix(np.asarray(e.P, dtype=np.float64)) for e in _as_list(m[key])}
    if not out:
        raise ValueError(f"{path}: no *_RefList variables (InLoc ground truth layout)")
    return out


def read_imglist(path: str | Path) -> dict[str, PoseEntry | None]:
    """InLoc ``ImgList`` .mat (queryname, topNname, P) -> {query: PoseEntry of the top-1 or None when NaN}."""
    m = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    if "ImgList" not in m:
        raise ValueError(f"{path}: no ImgList variable")
    out: dict[str, PoseEntry | None] = {}
    for e in _as_list(m["ImgList"]):
        names = _as_list(e.topNname)
        P = e.P
        P = np.asarray(P[0] if isinstance(P, np.ndarray) and P.dtype == object else P, dtype=np.float64)
        if P.ndim == 3:
            P = P[0]
        top1 = str(names[0]) if names else None
        out[str(e.queryname)] = PoseEntry(Pose.from_matrix(P), top1) if np.isfinite(P).all() else None
    return out


def read_estimates(path: str | Path, top1_path: str | Path | None = None) -> dict[str, PoseEntry | None]:
    """Estimated poses: an InLoc ImgList .mat or a poses file (optional 9th column = top-1 db name).

    ``top1_path``: a top-1 side file ('query db' lines) whose names replace the top-1 images.
    """
    path = Path(path)
    est = read_imglist(path) if path.suffix.lower() == ".mat" else dict(read_poses(path))
    if top1_path is not None:
        top1 = read_top1(top1_path)
        est = {q: None if e is None else PoseEntry(e.pose, top1.get(q, e.top1)) for q, e in est.items()}
    return est


@dataclass
class GroupResult:
    """Scores of one group of queries (a floor or all)."""

    num_queries: int
    recall: list[float]  # percent, one per threshold
    median_position_m: float
    median_rotation_deg: float


def evaluate(gt: Mapping[str, Mapping[str, Pose]], estimates: Mapping[str, PoseEntry | None],
             thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS,
             floor_rule: bool = True) -> tuple[dict[str, GroupResult], dict[str, tuple[float, float]]]:
    """Score per group and for 'all'; returns (results, per-query (position m, rotation deg) errors)."""
    errors: dict[str, tuple[float, float]] = {}
    groups: dict[str, list[str]] = {}
    if floor_rule and len(gt) > 1 and estimates and not any(e is not None and e.top1 for e in estimates.values()):
        logger.warning("no top-1 database images known (give the top-1 side file, --top1): floor rule not applied")
    for group, queries in gt.items():
        groups[group] = sorted(queries)
        for q, ref in queries.items():
            est = estimates.get(q)
            if est is None or not est.pose.is_finite():
                errors[q] = (math.inf, math.inf)
                continue
            if floor_rule and est.top1 and len(gt) > 1 and floor_of(est.top1) != group:
                errors[q] = (math.inf, math.inf)
                continue
            errors[q] = pose_error(est.pose, ref)
    if len(gt) > 1 or "all" not in groups:
        groups["all"] = sorted({q for qs in gt.values() for q in qs})
    results = {}
    for group, qs in groups.items():
        e = np.array([errors[q] for q in qs], dtype=np.float64).reshape(-1, 2)
        recall = [100.0 * float(np.mean((e[:, 0] <= tp) & (e[:, 1] <= tr))) if len(e) else 0.0 for tp, tr in thresholds]
        results[group] = GroupResult(len(qs), recall, float(np.median(e[:, 0])) if len(e) else math.nan,
                                     float(np.median(e[:, 1])) if len(e) else math.nan)
    return results, errors


def format_table(results: Mapping[str, GroupResult], thresholds: Sequence[tuple[float, float]]) -> str:
    """Human-readable table: recall per threshold, medians, query counts."""
    head = ["group", "queries"] + [f"({tp:g}m,{tr:g}deg)" for tp, tr in thresholds] + ["med pos [m]", "med rot [deg]"]
    rows = [head]
    for g, r in results.items():
        rows.append([g, str(r.num_queries)] + [f"{v:.1f}" for v in r.recall]
                    + [f"{r.median_position_m:.3f}", f"{r.median_rotation_deg:.2f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def to_json(results: Mapping[str, GroupResult], thresholds: Sequence[tuple[float, float]]) -> dict:
    """The --json document: thresholds, recall, medians and query counts per group."""
    def num(v: float) -> float | None:
        return v if math.isfinite(v) else None

    return {
        "thresholds": [[float(a), float(b)] for a, b in thresholds],
        "recall": {g: [round(v, 4) for v in r.recall] for g, r in results.items()},
        "median_position_m": {g: num(r.median_position_m) for g, r in results.items()},
        "median_rotation_deg": {g: num(r.median_rotation_deg) for g, r in results.items()},
        "num_queries": {g: r.num_queries for g, r in results.items()},
    }


def plot_curves(errors: Mapping[str, tuple[float, float]], gt: Mapping[str, Mapping[str, Pose]], path: str | Path,
                max_rot_deg: float = 10.0) -> None:
    """PNG of the cumulative % of queries localized vs position threshold (rotation <= max_rot_deg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    taus = np.linspace(0, 2.0, 201)
    groups = dict(gt)
    if len(groups) > 1:
        groups["all"] = {q: None for qs in gt.values() for q in qs}
    for g, qs in groups.items():
        e = np.array([errors[q] for q in qs]).reshape(-1, 2)
        ok = e[:, 1] <= max_rot_deg
        ax.plot(taus, [100 * np.mean(ok & (e[:, 0] <= t)) for t in taus], label=f"{g} ({len(e)})")
    ax.set_xlabel("position error threshold [m]")
    ax.set_ylabel(f"% queries localized (rot <= {max_rot_deg:g} deg)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_ylim(0, 100)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(gt_path: str | Path, poses_path: str | Path, gt_format: str = "inloc",
         thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS, json_path: str | Path | None = None,
         plot_path: str | Path | None = None, top1_path: str | Path | None = None) -> dict[str, GroupResult]:
    """Evaluate, print the table, optionally write JSON and the error-curve PNG (``top1_path``: top-1 side file)."""
    if gt_format == "inloc":
        gt = read_inloc_gt(gt_path)
    elif gt_format == "poses":
        gt = {"all": {q: e.pose for q, e in read_poses(gt_path).items()}}
    else:
        raise ValueError(f"unknown --gt-format {gt_format!r}")
    est = read_estimates(poses_path, top1_path)
    gt_names = {q for group in gt.values() for q in group}
    if est and not gt_names & set(est):
        print(f"warning: none of the {len(est)} names in {poses_path} is a ground-truth query of {gt_path} "
              f"(e.g. {sorted(est)[0]!r} vs {sorted(gt_names)[0] if gt_names else '(none)'!r}): every query counts "
              f"as failed", file=sys.stderr)
    elif est and len(set(est) - gt_names):
        print(f"warning: {len(set(est) - gt_names)} of the {len(est)} names in {poses_path} are not ground-truth "
              f"queries (ignored), e.g. {sorted(set(est) - gt_names)[0]!r}", file=sys.stderr)
    results, errors = evaluate(gt, est, thresholds)
    print(format_table(results, thresholds))
    if json_path:
        with atomic_write(json_path) as f:
            json.dump(to_json(results, thresholds), f, indent=2)
    if plot_path:
        plot_curves(errors, gt, plot_path, max(t[1] for t in thresholds))
    return results


def parse_thresholds(text: str) -> list[tuple[float, float]]:
    """'0.25,10;0.5,10;1,10' -> [(0.25, 10), (0.5, 10), (1, 10)]."""
    out = []
    for part in text.replace(" ", "").split(";"):
        if part:
            a, b = part.split(",")
            out.append((float(a), float(b)))
    return out


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True, help="InLoc refposes .mat, or a poses file with --gt-format poses")
    p.add_argument("--gt-format", choices=["inloc", "poses"], default="inloc")
    p.add_argument("--poses", required=True, help="poses file (world-to-camera, optional top-1 column) or ImgList .mat")
    p.add_argument("--top1", default=None, help="top-1 side file ('query db' lines, localize.run's top1.txt) "
                                                  "for the floor rule")
    p.add_argument("--thresholds", type=parse_thresholds, default=DEFAULT_THRESHOLDS,
                   help="'pos_m,rot_deg;...' (default '0.25,10;0.5,10;1,10')")
    p.add_argument("--json", help="write the scores as JSON here")
    p.add_argument("--plot", help="write the cumulative error curves (PNG) here")
    p.add_argument("--write-poses", help="also write the estimates as a poses file (8 columns)")
    p.add_argument("--write-top1", help="also write their top-1 database images as a side file ('query db' lines)")
    a = p.parse_args(argv)
    if a.write_poses or a.write_top1:
        est = {q: e for q, e in read_estimates(a.poses, a.top1).items() if e is not None}
        if a.write_poses:
            write_poses(a.write_poses, est)
        if a.write_top1:
            write_top1(a.write_top1, est)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(a.gt, a.poses, a.gt_format, a.thresholds, a.json, a.plot, a.top1)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
