"""Which configuration score picks the right test-time configuration of the learned matcher (held-out pairs).

Pairs: photos of the ``val`` split of realphotos_ssl (never trained on), each a view A (640 x 480, the photo's
centre at its own resolution) and a view B zoomed by z (B shows the scene z x as large; z cycles through
0.25 .. 4) and turned by a random angle, both by a known homography (reflected borders). For every
configuration (turn of B every 45 deg x relative scale sqrt(2)^k, |k| <= 4; sides per
``matching.learned_features.learned_sides``): the scores of ``matching.configuration_search`` and the number
of mutual nearest neighbours of the raw feature maps within one cell of the truth ("correct"). For each
score, turn set and scale range: the total of correct mutual nearest neighbours of the configurations it
picks (the higher, the better the selection), against the total of the best configurations.

    python benchmarks/bench_config_search.py [--pairs 16] [--seed 0] [--threads 1] [--json out.json]

``--matches``: instead, the final matches of ``match_images_learned`` (default search: 8 turns, scales
sqrt(2)^k, |k| <= 4 (``--scale-levels``), agreement, NCC refinement) for the learned features and for dense RootSIFT, on the same
kind of held-out pairs: share of the top 1000 matches by score within 3 px of the truth in B (MMA@3) and
homographies found (mean corner error < 5 px), for matches kept by peak NCC >= t, t in MIN_NCC, for each NCC
refinement of ``--refine`` applied to the same coarse matches (the settings of ``RefineConfig`` are chosen here,
not on the Oxford validation sequences).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localize.core.records import load_rgb
from matching.configuration_search import (
    mutual_nearest,
    mutual_strength,
    neighbour_agreement,
    scale_ladder,
    turn_image,
)
from matching.learned_features import DIRECTIONS, learned_sides, match_images_learned, refine_turned
from matching.match import SEARCH_ANGLES, SEARCH_DIRECTIONS, SEARCH_REFINE, SEARCH_SCALE_LEVELS, affine_refine_options
from matching.model import build_ncnet
from matching.preprocess import image_to_tensor, resize_rgb, resized_shape
from matching.refine import RefineConfig

PHOTOS = ROOT.parent / "shared" / "data" / "realphotos_ssl"
VIEW_WH = (640, 480)
ZOOMS = (0.25, 0.35, 0.5, 0.7, 1.4, 2.0, 2.8, 4.0)
SCORES = ("strength", "agree2", "agree3", "agree4")
MIN_NCC = (None, 0.5, 0.7, 0.8, 0.9)


def view(photo: np.ndarray, zoom: float, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(VIEW_WH image of the photo's centre scaled by ``zoom`` and turned ``angle_deg`` counter-clockwise,
    reflected borders; 3 x 3 homography photo px -> view px, COLMAP convention)."""
    w, h = VIEW_WH
    a = math.radians(angle_deg)
    R = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
    M = (np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1.0]]) @ R @ np.diag([zoom, zoom, 1.0])
         @ np.array([[1, 0, -photo.shape[1] / 2], [0, 1, -photo.shape[0] / 2], [0, 0, 1.0]]))
    src = cv2.GaussianBlur(photo, (0, 0), 0.5 / zoom) if zoom < 1 else photo
    T = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])  # COLMAP -> cv2 pixel centres
    img = cv2.warpPerspective(src, np.linalg.inv(T) @ M @ T, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)
    return img, M


def held_out_pairs(args: argparse.Namespace, files: list[str]) -> Iterator[tuple]:
    """(index, photo name, zoom z, turn deg, view A, view B, homography A px -> B px) of ``args.pairs`` val photos
    in a seeded order; z cycles through ZOOMS (A shrunk by 1 / z for z > 1, B by z for z < 1)."""
    rng = np.random.default_rng(args.seed)
    for n, i in enumerate(rng.permutation(len(files))[:args.pairs]):
        photo = load_rgb(Path(args.photos) / files[i])
        z, theta = ZOOMS[n % len(ZOOMS)], float(rng.uniform(-180, 180))
        a, Ma = view(photo, 1.0 if z < 1 else 1.0 / z, 0.0)
        b, Mb = view(photo, z if z < 1 else 1.0, theta)
        yield n, files[i], z, theta, a, b, Mb @ np.linalg.inv(Ma)


@torch.no_grad()
def score_configurations(model, a: np.ndarray, b: np.ndarray, H: np.ndarray, angles, scales) -> list[dict]:
    """Per configuration: scores and correct mutual nearest neighbours (A cell centre mapped by H (A -> B
    pixels) within one cell, Chebyshev, of its mutual nearest neighbour's cell)."""
    stride, mult = model.features.stride, model.cell_multiple
    size = max(VIEW_WH)
    feats_a, rows = {}, []
    for ang in angles:
        for s in scales:
            sa, sb = learned_sides(size, s)
            if sa not in feats_a:
                ta = image_to_tensor(a, resized_shape(*a.shape[:2], sa, mult), "cpu")
                feats_a[sa] = (ta.shape[-2:], model.features(ta))
            (ha_px, wa_px), fa = feats_a[sa]
            hb_px, wb_px = resized_shape(*b.shape[:2], sb, mult)
            turned, M = turn_image(resize_rgb(b, (hb_px, wb_px)), ang, mult)
            fb = model.features(image_to_tensor(turned, turned.shape[:2], "cpu"))
            ia, ib, _ = mutual_nearest(fa, fb)
            wa, wb = fa.shape[-1], fb.shape[-1]
            pa = np.stack([(ia % wa).numpy() + 0.5, (ia // wa).numpy() + 0.5], 1) * stride
            pa = pa * [a.shape[1] / wa_px, a.shape[0] / ha_px]
            pb = np.c_[pa, np.ones(len(pa))] @ H.T
            pb = pb[:, :2] / pb[:, 2:] * [wb_px / b.shape[1], hb_px / b.shape[0]]
            cell = np.floor((pb @ M[:, :2].T + M[:, 2]) / stride)
            got = np.stack([(ib % wb).numpy(), (ib // wb).numpy()], 1)
            rows.append({"ang": ang, "s": s, "mutual": int(len(ia)),
                         "correct": int((np.abs(cell - got).max(1) <= 1).sum()),
                         "strength": mutual_strength(fa, fb),
                         **{f"agree{k}": neighbour_agreement(fa, fb, k) for k in (2, 3, 4)}})
    return rows


def summary(records: list[dict]) -> str:
    """Markdown table: per turn set, scale range and score, the correct total of the picked configurations."""
    lines = ["| turns | scales | score | correct of picked (total) | best possible | pairs >= 80 % of best |",
             "|---|---|---|---|---|---|"]
    for turns in (4, 8):
        for lo, hi, name in ((0.3, 3.0, "0.35-2.83"), (0.2, 5.0, "0.25-4")):
            for score in SCORES:
                picked = best = hits = 0
                for r in records:
                    cs = [c for c in r["configs"] if c["ang"] % (360 // turns) == 0 and lo < c["s"] < hi]
                    p, b = max(cs, key=lambda c: c[score])["correct"], max(c["correct"] for c in cs)
                    picked, best, hits = picked + p, best + b, hits + (p >= 0.8 * b)
                lines.append(f"| {turns} | {name} | {score} | {picked} | {best} | {hits} / {len(records)} |")
    return "\n".join(lines)


def match_quality(m: dict, H: np.ndarray, shape_b: tuple[int, int], top: int = 1000) -> dict:
    """MMA@3 (B px) of the ``top`` matches by score and homography success (corner error < 5 px) for each
    NCC threshold of MIN_NCC; matches in COLMAP pixels, ``H`` A px -> B px."""
    out = {}
    for t in MIN_NCC:
        keep = np.ones(len(m["scores"]), bool) if t is None else m["ncc"] >= t
        order = np.argsort(-m["scores"][keep], kind="stable")[:top]
        k0, k1 = m["keypoints0"][keep][order], m["keypoints1"][keep][order]
        p = np.c_[k0, np.ones(len(k0))] @ H.T
        err = np.linalg.norm(p[:, :2] / p[:, 2:] - k1, axis=1) if len(k0) else np.zeros(0)
        ok, corner = False, float("inf")
        if len(k0) >= 4:
            He, _ = cv2.findHomography(k0 - 0.5, k1 - 0.5, cv2.RANSAC, 3.0)
            if He is not None:
                T = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1.0]])
                He = np.linalg.inv(T) @ He @ T
                h, w = shape_b
                c = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1.0]])
                a, b = c @ He.T, c @ H.T
                corner = float(np.linalg.norm(a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:], axis=1).mean())
                ok = corner < 5.0
        out[str(t)] = {"matches": int(len(k0)), "mma3": float((err <= 3).mean()) if len(err) else 0.0,
                       "homography": bool(ok)}
    return out


def refine_variants(names: list[str], at_moving_scale: bool) -> dict[str, RefineConfig]:
    """The NCC refinements compared by ``--matches`` (``--refine``): 'plain' (axis-aligned patches),
    'affine' (patches warped by the affine fit of ``SEARCH_REFINE.local_affine`` neighbouring matches),
    'affine-filter' (and matches farther than ``SEARCH_REFINE.max_affine_residual`` px from that fit dropped:
    ``python -m matching.match``'s refinement with the search)."""
    table = {"plain": RefineConfig(at_moving_scale=at_moving_scale),
             "affine": affine_refine_options(SEARCH_REFINE.local_affine, None, at_moving_scale=at_moving_scale),
             "affine-filter": affine_refine_options(SEARCH_REFINE.local_affine, SEARCH_REFINE.max_affine_residual,
                                                    at_moving_scale=at_moving_scale)}
    return {n: table[n] for n in names}


def matches_benchmark(args: argparse.Namespace, files: list[str]) -> int:
    """The ``--matches`` mode (module docstring): each model's search and matching once per pair, then each
    refinement of ``--refine`` applied to the same coarse matches."""
    search = {"angles": SEARCH_ANGLES, "scales": scale_ladder(args.scale_levels or SEARCH_SCALE_LEVELS),
              "select": "agreement", "ncc": None, "directions": args.directions or SEARCH_DIRECTIONS}
    variants = refine_variants(args.refine, args.at_moving_scale)
    models = {name: build_ncnet(args.ncnet_weights if name == "learned" else None,
                                features="learned" if name == "learned" else None) for name in args.models}
    records = []
    for n, name_i, z, theta, a, b, H in held_out_pairs(args, files):
        rec = {"photo": name_i, "z": z, "theta": theta}
        for name, model in models.items():
            with torch.no_grad():
                coarse = match_images_learned(model, a, b, max(VIEW_WH), **search)
            for vname, conf in variants.items():
                m = coarse
                if len(coarse["scores"]):
                    m = refine_turned(a, b, coarse, conf, float(coarse["transform"][0]),
                                      (float(coarse["cells"][0]), float(coarse["cells"][1])))
                rec[f"{name} {vname}"] = match_quality(m, H, b.shape[:2])
        keys = [k for k in rec if k not in ("photo", "z", "theta")]
        print(n, name_i, f"z {z} turn {theta:.0f}:", {k: round(rec[k]["None"]["mma3"], 2) for k in keys}, flush=True)
        records.append(rec)
    print("| method | refinement | min NCC | matches | MMA@3 | homographies |")
    print("|---|---|---|---|---|---|")
    for key in keys:
        for t in MIN_NCC:
            rows = [r[key][str(t)] for r in records]
            print(f"| {key.split()[0]} | {key.split()[1]} | {t} | {np.mean([r['matches'] for r in rows]):.0f} | "
                  f"{100 * np.mean([r['mma3'] for r in rows]):.1f}% | {sum(r['homography'] for r in rows)} / {len(rows)} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "records": records}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(PHOTOS))
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--matches", action="store_true", help="final matches' accuracy per NCC threshold instead")
    ap.add_argument("--scale-levels", type=int, default=None,
                    help="--matches: relative scales sqrt(2)^k, |k| <= N (default: matching.match's search)")
    ap.add_argument("--at-moving-scale", action="store_true", help="--matches: NCC at B's own resolution")
    ap.add_argument("--models", nargs="+", choices=["learned", "rootsift"], default=["learned", "rootsift"],
                    help="--matches: which features")
    ap.add_argument("--refine", nargs="+", choices=["plain", "affine", "affine-filter"], default=["plain", "affine"],
                    help="--matches: NCC refinements compared on the same coarse matches")
    ap.add_argument("--directions", choices=DIRECTIONS, default=None,
                    help="--matches: matches kept after extraction (default: matching.match's)")
    ap.add_argument("--ncnet-weights", default=None,
                    help="--matches: consensus checkpoint of the learned model (default: the packaged one)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.photos)
    with open(root / "manifest.csv", newline="") as f:
        files = [r["file"] for r in csv.DictReader(f) if r["split"] == "val"]
    if args.matches:
        return matches_benchmark(args, files)
    model = build_ncnet(features="learned")
    angles, scales = tuple(45.0 * i for i in range(8)), scale_ladder(4)
    records = []
    for n, name_i, z, theta, a, b, H in held_out_pairs(args, files):
        t0 = time.perf_counter()
        configs = score_configurations(model, a, b, H, angles, scales)
        best = max(configs, key=lambda c: c["correct"])
        print(f"{n} {name_i} z {z} turn {theta:.0f}: best ({best['ang']:.0f}, {best['s']:.2f}) "
              f"{best['correct']} correct, {time.perf_counter() - t0:.0f} s", flush=True)
        records.append({"photo": name_i, "z": z, "theta": theta, "configs": configs})
    print(summary(records))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
