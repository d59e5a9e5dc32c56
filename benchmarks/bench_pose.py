"""Pose-stage benchmark: timings (lifting, PnP both backends, DensePV) and TUM fr1_xyz accuracy.

Real-data figure: on ../shared/data/tum_fr1_xyz (99 frames), each odd frame (query) vs the
previous even frame (database). Ground-truth matches come from depth + poses
(``datasets.correspondences.dense_correspondences``: query depth -> world -> DB view, occlusion-
checked), ~500 subsampled, then 50% of them replaced by random DB pixels (outliers). DB pixels are
lifted through the DB record (depth), PnP-RANSAC recovers the query pose; we report median
position / rotation errors against the ground truth. Camera: the calibrated fr1 pinhole
(fx 517.3, fy 516.5, cx 318.6, cy 255.3), distortion ignored — the ground-truth matches are
generated with the same pinhole, so they are consistent with it; depth and mocap poses are real
(noisy), so the errors are not zero.

    python benchmarks/bench_pose.py [--tum PATH] [--pairs N] [--matches 500] [--outliers 0.5]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets.correspondences import dense_correspondences
from datasets.tum import read_tum
from localize.core.geometry import Pose, pose_error
from localize.core.records import load_rgb
from pose.densepv import DensePVConfig, db_point_cloud, densepv_score, save_render_debug
from pose.lifting import lift_matches
from pose.pnp import PnPConfig, estimate_pose


def perturb(pose: Pose, dpos=(0.0, 0.0, 0.0), rot_deg: float = 0.0, axis=(0.0, 1.0, 0.0)) -> Pose:
    """Shift the camera centre (world, m) and rotate about a camera axis (deg)."""
    from scipy.spatial.transform import Rotation

    R = Rotation.from_rotvec(np.radians(rot_deg) * np.asarray(axis, float)).as_matrix() @ pose.R
    C = pose.center + np.asarray(dpos, float)
    return Pose(R, -R @ C)


def timeit(fn, repeat: int = 5) -> tuple[float, object]:
    """Median wall time (s) of fn() over ``repeat`` runs and its last result."""
    ts, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tum", default=str(ROOT.parent / "shared" / "data" / "tum_fr1_xyz"))
    ap.add_argument("--pairs", type=int, default=49)
    ap.add_argument("--matches", type=int, default=500)
    ap.add_argument("--outliers", type=float, default=0.5)
    ap.add_argument("--max-error", type=float, default=8.0)
    ap.add_argument("--save-render", default="/tmp/bench_pose_densepv.png")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    recs = read_tum(args.tum)  # calibrated pinhole
    cam = recs[0].camera
    print(f"TUM fr1_xyz: {len(recs)} frames, camera {cam.to_line()}")
    rng = np.random.default_rng(0)
    errs: dict[str, list[tuple[float, float]]] = {"pycolmap": [], "opencv": []}
    times: dict[str, list[float]] = {"lift": [], "pycolmap": [], "opencv": []}
    inl = []
    n_pairs = min(args.pairs, len(recs) // 2)
    for k in range(n_pairs):
        q, d = recs[2 * k + 1], recs[2 * k]
        xyz_q, xyz_d = q.world_xyz(), d.world_xyz()
        depth_d = d.pose.transform(xyz_d.reshape(-1, 3))[:, 2].reshape(xyz_d.shape[:2])
        uq, ud = dense_correspondences(xyz_q, d.camera, d.pose, depth_d, step=2)
        sel = rng.permutation(len(uq))[: args.matches]
        uq, ud = uq[sel], ud[sel].copy()
        n_out = int(round(args.outliers * len(uq)))
        ud[:n_out] = rng.uniform([0, 0], [cam.width, cam.height], (n_out, 2))
        t0 = time.perf_counter()
        lr = lift_matches(d, ud, xyz=xyz_d)
        times["lift"].append(time.perf_counter() - t0)
        for b in ("pycolmap", "opencv"):
            r = estimate_pose(uq[lr.indices], lr.points3d, q.camera, PnPConfig(backend=b, max_error=args.max_error))
            times[b].append(r.time_s)
            errs[b].append(pose_error(r.pose, q.pose) if r.success else (np.inf, np.inf))
            if b == "pycolmap":
                inl.append(r.num_inliers / max(1, lr.num_valid))
    print(f"\nReal data: {n_pairs} pairs (odd frame query vs previous even frame DB), {args.matches} GT matches "
          f"+ {args.outliers:.0%} random outliers, RANSAC max_error {args.max_error} px")
    print(f"  mean inlier ratio (pycolmap) {np.mean(inl):.3f}")
    for b, e in errs.items():
        e = np.array(e)
        ok = np.isfinite(e[:, 0])
        print(f"  {b:9s}: success {ok.sum()}/{len(e)}, median position error {np.median(e[:, 0]) * 100:.2f} cm, "
              f"median rotation error {np.median(e[:, 1]):.3f} deg, "
              f"within (2 cm, 2 deg): {np.mean((e[:, 0] < 0.02) & (e[:, 1] < 2)):.0%}")
    print("\nTimings (median per call, CPU):")
    print(f"  lifting {args.matches} matches (point map loaded):  {np.median(times['lift']) * 1e3:.2f} ms")
    t_load, _ = timeit(lambda: recs[0].world_xyz(), 3)
    print(f"  loading a 640x480 depth map -> world points:       {t_load * 1e3:.1f} ms")
    print(f"  PnP pycolmap ({args.matches} pts, {args.outliers:.0%} outl.):         {np.median(times['pycolmap']) * 1e3:.1f} ms")
    print(f"  PnP opencv   ({args.matches} pts, {args.outliers:.0%} outl.):         {np.median(times['opencv']) * 1e3:.1f} ms")

    # DensePV on real data: query frame 1 vs DB frame 0 points
    q, d = recs[1], recs[0]
    P, C = db_point_cloud(d)
    q_rgb = load_rgb(q.image_path)
    conf = DensePVConfig()
    densepv_score(q_rgb, cam, q.pose, P, C, conf=conf)  # warm-up
    t_dpv, (s_true, dbg) = timeit(lambda: densepv_score(q_rgb, cam, q.pose, P, C, conf=conf, return_debug=True), 3)
    print(f"  DensePV per candidate (640x480 query, render {dbg['query'].shape[1]}x{dbg['query'].shape[0]}, "
          f"{len(P)} pts): {t_dpv * 1e3:.0f} ms")
    conf8 = DensePVConfig(scale=1 / 8)
    t_dpv8, _ = timeit(lambda: densepv_score(q_rgb, cam, q.pose, P, C, conf=conf8), 3)
    print(f"  DensePV per candidate at scale 1/8 (80x60):        {t_dpv8 * 1e3:.0f} ms")
    if args.save_render:
        save_render_debug(args.save_render, dbg, title=f"TUM {q.name} vs DB {d.name} (GT pose)")
        print(f"  debug picture: {args.save_render}")
    print("\nDensePV on TUM (query frame 1, DB frame 0 points): score at GT pose vs perturbed")
    print(f"  GT pose: {s_true:.3f}")
    for name, kw in [("0.1 m x", dict(dpos=(0.1, 0, 0))), ("0.5 m x", dict(dpos=(0.5, 0, 0))),
                     ("0.5 m z", dict(dpos=(0, 0, 0.5))), ("2 deg yaw", dict(rot_deg=2)),
                     ("10 deg yaw", dict(rot_deg=10)), ("10 deg pitch", dict(rot_deg=10, axis=(1, 0, 0)))]:
        s = densepv_score(q_rgb, cam, perturb(q.pose, **kw), P, C, conf=conf)
        print(f"  {name:12s}: {s:.3f}")


if __name__ == "__main__":
    main()
