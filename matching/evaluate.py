"""Match accuracy against ground truth: fraction of matches within 2/4/8 px; TUM RGB-D ground truth.

``python -m matching.evaluate --root ../shared/data/tum_fr1_xyz --gaps 1 2 4`` prints, per frame gap,
the accuracy of correlation + mutual NN only, of the (untrained or given) consensus network, and of the
latter with sub-cell refinement.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datasets.correspondences import visible_projection
from datasets.rgbd_folder import read_depth_png
from datasets.tum import TUM_DEPTH_SCALE, TUM_FR1_CALIBRATED, read_tum_frames
from localize.core.geometry import Camera, Pose, depth_to_world
from localize.core.records import lift_pixels, load_rgb
from matching.match import match_images
from matching.model import build_ncnet

log = logging.getLogger(__name__)
GroundTruth = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
THRESHOLDS = (2.0, 4.0, 8.0)


def match_accuracy(kp0: np.ndarray, kp1: np.ndarray, gt: GroundTruth,
                   thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, float]:
    """Fraction of matches whose keypoint in B lies within each threshold (px) of gt(kp0).

    ``gt`` maps pixels N x 2 of A to (pixels N x 2 in B, valid mask N); matches without valid ground
    truth are not counted. Returns n, n_valid, median_error and 'within_{t}px' for each threshold.
    """
    kp0, kp1 = np.asarray(kp0, dtype=np.float64).reshape(-1, 2), np.asarray(kp1, dtype=np.float64).reshape(-1, 2)
    out: dict[str, float] = {"n": float(len(kp0))}
    if len(kp0) == 0:
        out.update({"n_valid": 0.0, "median_error": float("nan")})
        out.update({f"within_{t:g}px": float("nan") for t in thresholds})
        return out
    proj, valid = gt(kp0)
    err = np.linalg.norm(proj - kp1, axis=1)[valid]
    out["n_valid"] = float(valid.sum())
    out["median_error"] = float(np.median(err)) if len(err) else float("nan")
    for t in thresholds:
        out[f"within_{t:g}px"] = float((err <= t).mean()) if len(err) else float("nan")
    return out


def depth_ground_truth(depth_a: np.ndarray, depth_b: np.ndarray | None, camera_a: Camera, pose_a: Pose,
                       camera_b: Camera, pose_b: Pose, occlusion_tol: float = 0.05) -> GroundTruth:
    """GT function from A's depth (metres, NaN/0 missing) and both WORLD-TO-CAMERA poses.

    Pixels of A are lifted with bilinear depth, projected into B; with ``depth_b`` a point counts only
    when B's depth at the nearest pixel agrees within ``occlusion_tol`` (relative), i.e. it is visible
    (``datasets.correspondences.visible_projection``).
    """
    xyz = depth_to_world(np.where(np.isfinite(depth_a), depth_a, 0.0), camera_a, pose_a)

    def gt(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts, ok = lift_pixels(xyz, uv)
        pts = np.where(ok[:, None], pts, 0.0)
        proj, _, visible = visible_projection(pts, camera_b, pose_b, depth_b, rel_tol=occlusion_tol, abs_tol=0.0)
        return proj, ok & visible

    return gt


def tum_pairs(n_frames: int, gap: int, n_pairs: int) -> list[tuple[int, int]]:
    """n_pairs (i, i + gap) frame index pairs spread evenly over the sequence."""
    starts = np.linspace(0, n_frames - 1 - gap, num=min(n_pairs, n_frames - gap)).round().astype(int)
    return [(int(i), int(i) + gap) for i in starts]


def evaluate_tum(root: str | Path, methods: dict[str, Callable[[np.ndarray, np.ndarray], dict]],
                 gaps: tuple[int, ...] = (1, 2, 4), n_pairs: int = 10, camera: Camera | None = None,
                 thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, dict[int, dict[str, float]]]:
    """Mean accuracy per method and frame gap on TUM pairs; ``methods`` map name -> f(img_a, img_b) -> matches.

    Returns {method: {gap: {within_2px, within_4px, within_8px, median_error, matches, seconds}}}, the
    fractions averaged over pairs (each pair weighted equally).
    """
    root = Path(root)
    camera = camera or TUM_FR1_CALIBRATED
    frames = read_tum_frames(root)
    results: dict[str, dict[int, dict[str, float]]] = {m: {} for m in methods}
    for gap in gaps:
        acc: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for ia, ib in tqdm(tum_pairs(len(frames), gap, n_pairs), desc=f"TUM gap {gap}", leave=False):
            fa, fb = frames[ia], frames[ib]
            img_a, img_b = load_rgb(root / fa.rgb_file), load_rgb(root / fb.rgb_file)
            da = read_depth_png(root / fa.depth_file, TUM_DEPTH_SCALE)
            db = read_depth_png(root / fb.depth_file, TUM_DEPTH_SCALE)
            gt = depth_ground_truth(da, db, camera, fa.pose, camera, fb.pose)
            for name, fn in methods.items():
                t0 = time.perf_counter()
                m = fn(img_a, img_b)
                dt = time.perf_counter() - t0
                r = match_accuracy(m["keypoints0"], m["keypoints1"], gt, thresholds)
                r["seconds"] = dt
                acc[name].append(r)
        for name in methods:
            rows = acc[name]
            summary = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k not in ("n",)}
            summary["matches"] = float(np.mean([r["n"] for r in rows]))
            results[name][gap] = summary
    return results


def format_table(results: dict[str, dict[int, dict[str, float]]], thresholds: tuple[float, ...] = THRESHOLDS) -> str:
    """Markdown table of ``evaluate_tum`` results."""
    cols = [f"within_{t:g}px" for t in thresholds]
    lines = ["| method | gap | matches | " + " | ".join(f"<= {t:g} px" for t in thresholds) + " | median px | s/pair |",
             "|---" * (len(cols) + 5) + "|"]
    for name, per_gap in results.items():
        for gap, r in per_gap.items():
            lines.append(f"| {name} | {gap} | {r['matches']:.0f} | " + " | ".join(f"{100 * r[c]:.1f}%" for c in cols)
                         + f" | {r['median_error']:.2f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    """``python -m matching.evaluate``: TUM evaluation of mutual-NN-only, consensus network, consensus + refinement."""
    ap = argparse.ArgumentParser(prog="python -m matching.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "tum_fr1_xyz"))
    ap.add_argument("--gaps", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--pairs", type=int, default=6, help="pairs per gap")
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--weights", default=None, help="consensus checkpoint (default: packaged or untrained)")
    ap.add_argument("--top", type=int, default=None, help="evaluate only the top-N matches by score")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    mutual_only = build_ncnet(weights=args.weights, consensus=False, device=args.device)
    full = build_ncnet(weights=args.weights, device=args.device)
    size, top = args.image_size, args.top
    methods = {
        "corr + mutual NN": lambda a, b: match_images(mutual_only, a, b, size, max_matches=top),
        "consensus": lambda a, b: match_images(full, a, b, size, max_matches=top),
        "consensus + refine": lambda a, b: match_images(full, a, b, size, max_matches=top, refine=True),
    }
    res = evaluate_tum(args.root, methods, tuple(args.gaps), args.pairs)
    print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
