"""Mean matching accuracy and homography estimation on the Oxford affine sequences (validation only).

For each sequence and pair 1 -> n (n = 2..6): the top ``top`` matches by score of each method; MMA@t = share
of matches whose img1 keypoint mapped by the ground-truth homography lies within t px of its imgN keypoint
(t = 1..10, imgN pixels); RANSAC homography (OpenCV, 3 px, fixed RNG seed) and its mean corner error (img1's
four corners, mapped by the estimate vs the ground truth); success = corner error < 5 px. Means over pairs.
Methods: ``sift`` (OpenCV SIFT, Lowe ratio test 0.8, score = 1 - ratio), ``learned`` (``--features learned``
through correlation -> packaged consensus -> extraction + descriptor refinement, after a test-time search over
turns of B (``--angles`` N: every 360 / N deg) x relative scales sqrt(2)^k, |k| <= ``--scale-levels``, scored
by ``--select``; NCC refinement at full resolution unless ``--no-ncc``, with patches warped by the affine fit of
``--local-affine`` neighbouring matches and matches off that fit by more than ``--max-affine-residual`` px dropped,
by default as ``python -m matching.match``), ``rootsift`` (the default dense RootSIFT
NCNet, for reference).
Keypoints of every method are converted to OpenCV pixel coordinates (centre of the top-left pixel = (0, 0)),
the convention of the H files.

    python benchmarks/oxford_eval.py [--seqs wall boat bark] [--methods learned sift] [--image-size 640]
        [--top 1000] [--threads 2] [--angles 8] [--scale-levels 4] [--select agreement] [--no-ncc] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localize.core.records import load_rgb
from matching.configuration_search import scale_ladder
from matching.learned_features import DIRECTIONS, PACKAGED_LEARNED_WEIGHTS, SELECT_CRITERIA, match_images_learned
from matching.match import SEARCH_DIRECTIONS, SEARCH_REFINE, SEARCH_SCALE_LEVELS, affine_refine_options, match_images
from matching.model import build_ncnet

OXFORD = ROOT.parent / "shared" / "data" / "oxford_affine_7seq"
PIXEL_THRESHOLDS = tuple(range(1, 11))
CORNER_OK = 5.0


def read_h(path: Path) -> np.ndarray:
    H = np.loadtxt(path)
    return H / H[2, 2]


def apply_h(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    p = np.c_[xy, np.ones(len(xy))] @ H.T
    return p[:, :2] / p[:, 2:3]


def sift_matches(img_a: np.ndarray, img_b: np.ndarray, ratio: float = 0.8) -> dict[str, np.ndarray]:
    """OpenCV SIFT + ratio test; keypoints in OpenCV pixels, sorted by score = 1 - ratio."""
    sift = cv2.SIFT_create()
    ga, gb = (cv2.cvtColor(i, cv2.COLOR_RGB2GRAY) for i in (img_a, img_b))
    ka, da = sift.detectAndCompute(ga, None)
    kb, db = sift.detectAndCompute(gb, None)
    if da is None or db is None or len(kb) < 2:
        return {"keypoints0": np.zeros((0, 2)), "keypoints1": np.zeros((0, 2)), "scores": np.zeros(0)}
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    rows = [(m.queryIdx, m.trainIdx, m.distance / max(n.distance, 1e-9)) for m, n in knn if m.distance < ratio * n.distance]
    rows.sort(key=lambda r: r[2])
    p0 = np.array([ka[i].pt for i, _, _ in rows]).reshape(-1, 2)
    p1 = np.array([kb[j].pt for _, j, _ in rows]).reshape(-1, 2)
    return {"keypoints0": p0, "keypoints1": p1, "scores": np.array([1 - r for _, _, r in rows])}


def evaluate_pair(kp0: np.ndarray, kp1: np.ndarray, H: np.ndarray, shape_a: tuple[int, int]) -> dict[str, float]:
    """MMA at PIXEL_THRESHOLDS, RANSAC corner error (inf when no homography) of OpenCV-pixel matches."""
    res: dict[str, float] = {"matches": float(len(kp0))}
    err = np.linalg.norm(apply_h(H, kp0) - kp1, axis=1) if len(kp0) else np.zeros(0)
    for t in PIXEL_THRESHOLDS:
        res[f"mma@{t}"] = float((err <= t).mean()) if len(err) else 0.0
    res["corner_error"] = float("inf")
    if len(kp0) >= 4:
        cv2.setRNGSeed(0)
        He, _ = cv2.findHomography(kp0.astype(np.float64), kp1.astype(np.float64), cv2.RANSAC, 3.0, maxIters=5000,
                                   confidence=0.9999)
        if He is not None:
            h, w = shape_a
            corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
            res["corner_error"] = float(np.linalg.norm(apply_h(He, corners) - apply_h(H, corners), axis=1).mean())
    res["success"] = float(res["corner_error"] < CORNER_OK)
    return res


def make_methods(names: list[str], image_size: int, learned_weights: str | None, search: dict | None = None,
                 ncnet_weights: str | None = None) -> dict:
    """{name: fn(img_a, img_b) -> matches in OpenCV pixels}; ``search``: keyword arguments of
    ``match_images_learned`` (angles, scales, select, ncc) for ``learned``; ``ncnet_weights``: its consensus
    checkpoint (None: the packaged one)."""
    methods = {}
    for name in names:
        if name == "sift":
            methods[name] = lambda a, b: sift_matches(a, b)
        elif name == "learned":
            model = build_ncnet(ncnet_weights, features="learned", backbone_weights=learned_weights)
            methods[name] = (lambda m: lambda a, b: _colmap_to_cv(match_images_learned(
                m, a, b, image_size, **(search or {}))))(model)
        elif name == "rootsift":
            model = build_ncnet()
            methods[name] = (lambda m: lambda a, b: _colmap_to_cv(match_images(m, a, b, image_size)))(model)
        elif name == "rootsift-search":  # the default dense RootSIFT + consensus, through the learned path's search
            model = build_ncnet()
            methods[name] = (lambda m: lambda a, b: _colmap_to_cv(match_images_learned(
                m, a, b, image_size, **(search or {}))))(model)
        else:
            raise ValueError(f"unknown method {name!r}")
    return methods


def _colmap_to_cv(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**m, "keypoints0": m["keypoints0"] - 0.5, "keypoints1": m["keypoints1"] - 0.5}


def evaluate_oxford(root: Path, seqs: list[str], methods: dict, top: int, log=print) -> dict:
    """{method: {seq: {'pairs': [per-pair dicts], 'mean': {...}}}}."""
    out: dict = {name: {} for name in methods}
    for seq in seqs:
        img1 = load_rgb(root / seq / "img1.png")
        for name, fn in methods.items():
            rows = []
            for n in range(2, 7):
                imgn = load_rgb(root / seq / f"img{n}.png")
                t0 = time.perf_counter()
                m = fn(img1, imgn)
                sec = time.perf_counter() - t0
                r = evaluate_pair(m["keypoints0"][:top], m["keypoints1"][:top], read_h(root / seq / f"H1to{n}p"),
                                  img1.shape[:2])
                r["seconds"] = sec
                if "transform" in m:
                    r["transform"] = [int(x) for x in m["transform"]]
                rows.append(r)
                log(f"{seq} 1->{n} {name}: {r['matches']:.0f} matches, MMA@3 {100 * r['mma@3']:.1f}%, "
                    f"corner error {r['corner_error']:.1f} px, {sec:.1f} s {r.get('transform', '')}")
            mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("corner_error", "transform")}
            mean["successes"] = float(sum(r["success"] for r in rows))
            mean["median_corner_error"] = float(np.median([r["corner_error"] for r in rows]))
            out[name][seq] = {"pairs": rows, "mean": mean}
    return out


def table(res: dict, seqs: list[str]) -> str:
    lines = ["| seq | method | matches | MMA@1 | MMA@3 | MMA@5 | MMA@10 | homography < 5 px (of 5) | s/pair |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seq in seqs:
        for name in res:
            m = res[name][seq]["mean"]
            lines.append(f"| {seq} | {name} | {m['matches']:.0f} | " + " | ".join(
                f"{100 * m[f'mma@{t}']:.1f}%" for t in (1, 3, 5, 10)) + f" | {m['successes']:.0f} | {m['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(OXFORD))
    ap.add_argument("--seqs", nargs="+", default=["wall", "boat", "bark"])
    ap.add_argument("--methods", nargs="+", default=["learned", "sift"])
    ap.add_argument("--learned-weights", default=str(PACKAGED_LEARNED_WEIGHTS))
    ap.add_argument("--ncnet-weights", default=None, help="learned: consensus checkpoint (default: the packaged one)")
    ap.add_argument("--image-size", type=int, default=640)
    ap.add_argument("--top", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--angles", type=int, default=8, help="learned: turns of B, every 360/N degrees")
    ap.add_argument("--scale-levels", type=int, default=SEARCH_SCALE_LEVELS,
                    help="learned: relative scales sqrt(2)^k, |k| <= N (default: python -m matching.match's)")
    ap.add_argument("--select", choices=SELECT_CRITERIA, default="agreement", help="learned: configuration score")
    ap.add_argument("--ncc", action=argparse.BooleanOptionalAction, default=True,
                    help="learned: NCC refinement at full resolution (matching.refine.refine_with; default: the "
                         "options of python -m matching.match, SEARCH_REFINE)")
    ap.add_argument("--ncc-at-moving-scale", action="store_true",
                    help="learned: NCC refinement at B's own resolution (RefineConfig.at_moving_scale)")
    ap.add_argument("--local-affine", type=int, default=SEARCH_REFINE.local_affine,
                    help="learned: NCC patches warped by the affine fit of N neighbouring matches (0 = upright)")
    ap.add_argument("--max-affine-residual", type=float, default=SEARCH_REFINE.max_affine_residual,
                    help="learned: drop matches farther than this (px) from their neighbours' fit (0 = keep all)")
    ap.add_argument("--directions", choices=DIRECTIONS, default=SEARCH_DIRECTIONS,
                    help="learned: matches kept after extraction (default: python -m matching.match's)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    ncc = affine_refine_options(args.local_affine, args.max_affine_residual, at_moving_scale=args.ncc_at_moving_scale)
    search = {"angles": tuple(360.0 * i / args.angles for i in range(args.angles)),
              "scales": scale_ladder(args.scale_levels), "select": args.select, "ncc": ncc if args.ncc else None,
              "directions": args.directions}
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("matching.model").setLevel(logging.ERROR)
    res = evaluate_oxford(Path(args.root), args.seqs, make_methods(args.methods, args.image_size, args.learned_weights, search,
                                                                    args.ncnet_weights), args.top)
    print(f"Oxford, image size {args.image_size}, top {args.top} matches by score")
    print(table(res, args.seqs))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
