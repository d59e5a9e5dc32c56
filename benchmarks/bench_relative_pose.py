"""Relative pose from matches on real indoor RGB-D pairs: AUC of the pose error at 5 / 10 / 20 degrees.

Pairs: TUM fr1/xyz frames ``--gaps`` apart (``--pairs`` per gap, spread over the sequence; motion-capture poses)
and every pair of the 5 slambook2 ch5 frames (odometry poses). Per pair and method: the matches, their pixels
normalised by the camera (``Camera.backproject``, COLMAP pixel convention), OpenCV's essential matrix (RANSAC,
``--ransac-px`` px over the mean focal length, fixed RNG seed) and ``recoverPose``; pose error = max(rotation
error, angle between the translation directions) in degrees (180 when no pose); AUC up to t degrees of the
error's cumulative curve (trapezoids, as SuperGlue's evaluation), per dataset over its pairs.
Methods: ``default`` (``python -m matching.match`` with no options: learned features, search, affine NCC),
``search-off`` (the same features and consensus, ``--search off``), ``rootsift`` (``--features dense-rootsift``),
``sift`` (OpenCV SIFT, ratio 0.8). All matches each method returns are used.

    python benchmarks/bench_relative_pose.py [--gaps 16 32 48] [--pairs 6] [--methods default search-off rootsift sift]
        [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oxford_eval import sift_matches  # benchmarks/, the script's folder

from datasets.tum import TUM_FR1_CALIBRATED, read_tum_frames
from localize.core.geometry import Camera, Pose, rotation_angle_deg
from localize.core.records import load_rgb
from matching.evaluate import tum_pairs
from matching.match import Matcher, build_parser, conf_from_args

SHARED = ROOT.parent / "shared" / "data"
SLAMBOOK_CAMERA = Camera("PINHOLE", 640, 480, (518.0, 519.0, 325.5, 253.5))
AUC_DEG = (5.0, 10.0, 20.0)
CLI_OPTIONS = {"default": [], "search-off": ["--search", "off"], "rootsift": ["--features", "dense-rootsift"]}


def relative_pose(pose_a: Pose, pose_b: Pose) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) with x_b = R x_a + t (world-to-camera poses of A and B)."""
    R = pose_b.R @ pose_a.R.T
    return R, pose_b.t - R @ pose_a.t


def pose_error_deg(kp_a: np.ndarray, kp_b: np.ndarray, cam_a: Camera, cam_b: Camera, R_gt: np.ndarray,
                   t_gt: np.ndarray, ransac_px: float) -> float:
    """max(rotation error, translation-direction error) in degrees of the essential-matrix pose of COLMAP-pixel
    matches; 180 when fewer than 5 matches or no pose."""
    if len(kp_a) < 5:
        return 180.0
    na, nb = cam_a.backproject(kp_a)[:, :2], cam_b.backproject(kp_b)[:, :2]
    ok = np.isfinite(na).all(1) & np.isfinite(nb).all(1)
    na, nb = na[ok], nb[ok]
    if len(na) < 5:
        return 180.0
    thr = ransac_px / np.mean([*cam_a.focal, *cam_b.focal])
    cv2.setRNGSeed(0)
    E, mask = cv2.findEssentialMat(na, nb, np.eye(3), method=cv2.RANSAC, prob=0.99999, threshold=thr)
    if E is None:
        return 180.0
    best, best_n = 180.0, -1
    for i in range(E.shape[0] // 3):  # several solutions: the one with the most matches in front of both cameras
        n, R, t, _ = cv2.recoverPose(E[3 * i:3 * i + 3], na, nb, np.eye(3), mask=mask.copy())
        if n > best_n:
            cos = abs(float(t.ravel() @ t_gt) / (np.linalg.norm(t) * np.linalg.norm(t_gt) + 1e-12))
            best = max(rotation_angle_deg(R @ R_gt.T), float(np.degrees(np.arccos(min(1.0, cos)))))
            best_n = n
    return best


def pose_auc(errors: list[float], thresholds: tuple[float, ...] = AUC_DEG) -> list[float]:
    """Area under the cumulative error curve up to each threshold, normalised to [0, 1]."""
    e = np.sort(np.asarray(errors, dtype=np.float64))
    recall = (np.arange(len(e)) + 1) / len(e)
    e, recall = np.r_[0.0, e], np.r_[0.0, recall]
    out = []
    for t in thresholds:
        i = int(np.searchsorted(e, t))
        x, y = np.r_[e[:i], t], np.r_[recall[:i], recall[i - 1]]
        out.append(float(np.trapezoid(y, x) / t))
    return out


def indoor_pairs(gaps: list[int], per_gap: int):
    """(dataset, name, img_a, img_b, camera, R_gt, t_gt) of the TUM and slambook2 pairs found under ../shared."""
    tum = SHARED / "tum_fr1_xyz"
    if tum.is_dir():
        frames = read_tum_frames(tum)
        for gap in gaps:
            for ia, ib in tum_pairs(len(frames), gap, per_gap):
                R, t = relative_pose(frames[ia].pose, frames[ib].pose)
                yield (f"tum gap {gap}", f"{ia}-{ib}", load_rgb(tum / frames[ia].rgb_file),
                       load_rgb(tum / frames[ib].rgb_file), TUM_FR1_CALIBRATED, R, t)
    book = SHARED / "rgbd_slambook2_ch5"
    if book.is_dir():
        rows = [list(map(float, line.split())) for line in (book / "pose.txt").read_text().split("\n") if line.strip()]
        poses = [Pose.from_tum(r[:3], r[3:7]) for r in rows]
        for i, j in itertools.combinations(range(len(poses)), 2):
            R, t = relative_pose(poses[i], poses[j])
            yield ("slambook2", f"{i + 1}-{j + 1}", load_rgb(book / "color" / f"{i + 1}.png"),
                   load_rgb(book / "color" / f"{j + 1}.png"), SLAMBOOK_CAMERA, R, t)


def make_methods(names: list[str]) -> dict:
    """{name: fn(img_a, img_b) -> matches in COLMAP pixels}."""
    out = {}
    for name in names:
        if name == "sift":
            out[name] = lambda a, b: {k: v + 0.5 if k.startswith("keypoints") else v
                                      for k, v in sift_matches(a, b).items()}
        else:
            matcher = Matcher(conf_from_args(build_parser().parse_args(["a", "b", *CLI_OPTIONS[name]])))
            out[name] = matcher.match
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaps", type=int, nargs="+", default=[16, 32, 48])
    ap.add_argument("--pairs", type=int, default=6, help="TUM pairs per gap")
    ap.add_argument("--methods", nargs="+", choices=[*CLI_OPTIONS, "sift"], default=[*CLI_OPTIONS, "sift"])
    ap.add_argument("--ransac-px", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = make_methods(args.methods)
    errors: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    records = []
    for dataset, name, a, b, cam, R, t in indoor_pairs(args.gaps, args.pairs):
        rec = {"dataset": dataset, "pair": name}
        for m, fn in methods.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                res = fn(a, b)
            seconds[m].append(time.perf_counter() - t0)
            err = pose_error_deg(res["keypoints0"], res["keypoints1"], cam, cam, R, t, args.ransac_px)
            errors.setdefault(dataset, {}).setdefault(m, []).append(err)
            rec[m] = {"error_deg": err, "matches": int(len(res["scores"]))}
        records.append(rec)
        print(dataset, name, {m: round(rec[m]["error_deg"], 2) for m in methods}, flush=True)
    if not records:
        print("no pairs: ../shared/data/tum_fr1_xyz and rgbd_slambook2_ch5 are absent")
        return 0
    print("| pairs | method | AUC@5 | AUC@10 | AUC@20 | median error (deg) | s/pair |")
    print("|---|---|---|---|---|---|---|")
    for dataset, per in errors.items():
        for m, errs in per.items():
            auc = pose_auc(errs)
            print(f"| {dataset} ({len(errs)}) | {m} | " + " | ".join(f"{100 * x:.1f}" for x in auc)
                  + f" | {np.median(errs):.2f} | {np.mean(seconds[m]):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
