"""Lifting DB pixels to world points: exact synthetic depth (planes), holes, InLoc P_after, TUM."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import datasets.inloc
import datasets.tum
from localize.core.geometry import Camera, Pose, depth_to_world, look_at
from localize.core.records import DbImage
from pose.lifting import PointMapCache, lift_matches, lift_points

CAM = Camera.pinhole(160, 120, 150.0, cx=81.0, cy=59.5)


def plane_depth(camera: Camera, pose: Pose, n_world: np.ndarray, d_world: float) -> np.ndarray:
    """Exact z-depth of the plane n . X = d seen by the camera (H x W)."""
    rays = camera.backproject(camera.pixel_grid().reshape(-1, 2), 1.0)  # z = 1 rays, camera frame
    n_c = pose.R @ n_world
    d_c = d_world + n_world @ (pose.R.T @ pose.t)  # plane in camera frame: n_c . X_c = d_c
    z = d_c / (rays @ n_c)
    return z.reshape(camera.height, camera.width)


def ray_plane(camera: Camera, pose: Pose, uv: np.ndarray, n_world: np.ndarray, d_world: float) -> np.ndarray:
    """Exact world intersection of the pixel rays with the plane (N x 3)."""
    rays_w = camera.backproject(uv, 1.0) @ pose.R  # R^T applied to each row
    C = pose.center
    s = (d_world - n_world @ C) / (rays_w @ n_world)
    return C + s[:, None] * rays_w


def record(depth: np.ndarray, pose: Pose, camera: Camera = CAM) -> DbImage:
    """An in-memory DbImage backed by a depth map."""
    return DbImage("db.png", Path("db.png"), camera, pose, lambda: depth_to_world(depth, camera, pose))


def random_uv(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([1.0, 1.0], [CAM.width - 1.0, CAM.height - 1.0], (n, 2))


def test_fronto_parallel_plane_exact() -> None:
    pose = look_at([0.3, -2.0, 1.0], [0.3, 0.0, 1.0])  # looking along +y at the plane y = 1.5
    n, d = np.array([0.0, 1.0, 0.0]), 1.5
    depth = plane_depth(CAM, pose, n, d)
    assert np.allclose(depth, 3.5)
    uv = random_uv(500)
    res = lift_matches(record(depth, pose), uv)
    assert res.num_valid == 500 and np.array_equal(res.indices, np.arange(500))
    assert np.abs(res.points3d - ray_plane(CAM, pose, uv, n, d)).max() < 1e-9


def test_tilted_plane_pixel_centres_exact_and_subpixel_close() -> None:
    pose = look_at([0.0, -2.0, 1.0], [0.5, 0.0, 0.6])
    n = np.array([0.2, 1.0, 0.3])
    n /= np.linalg.norm(n)
    d = 0.8
    depth = plane_depth(CAM, pose, n, d)
    rec = record(depth, pose)
    centres = np.stack(np.meshgrid(np.arange(3, 150, 7) + 0.5, np.arange(2, 110, 9) + 0.5), -1).reshape(-1, 2)
    res = lift_matches(rec, centres)
    assert np.abs(res.points3d - ray_plane(CAM, pose, centres, n, d)).max() < 1e-9
    uv = random_uv(500, seed=1)
    res = lift_matches(rec, uv)
    err = np.linalg.norm(res.points3d - ray_plane(CAM, pose, uv, n, d), axis=1)
    assert err.max() < 1e-3  # bilinear vs perspective: sub-millimetre at ~2-3 m
    # with a preloaded point map: identical
    res2 = lift_matches(rec, uv, xyz=rec.world_xyz())
    assert np.array_equal(res.points3d, res2.points3d)


def test_holes_and_outside_are_dropped_with_indices() -> None:
    pose = look_at([0.3, -2.0, 1.0], [0.3, 0.0, 1.0])
    depth = plane_depth(CAM, pose, np.array([0.0, 1.0, 0.0]), 1.5)
    depth[40:60, 50:90] = np.nan  # hole: rows 40..59, cols 50..89
    depth[0:10, :] = 0.0  # zero = missing too
    rec = record(depth, pose)
    uv = np.array([
        [70.0, 50.0],    # inside the hole -> dropped
        [20.5, 20.5],    # valid pixel centre
        [49.9, 45.0],    # left neighbour column 49 valid, column 50 invalid -> nearest (col 49) valid
        [-3.0, 30.0],    # outside -> dropped
        [100.0, 5.0],    # in the zero-depth band -> dropped
        [np.nan, 4.0],   # NaN -> dropped
        [159.9, 119.9],  # last pixel -> valid (nearest)
    ])
    res = lift_matches(rec, uv)
    assert list(res.indices) == [1, 2, 6]
    assert res.mask.tolist() == [False, True, True, False, False, False, True]
    xyz = rec.world_xyz()
    assert np.allclose(res.points3d[0], xyz[20, 20])
    assert np.allclose(res.points3d[1], xyz[44, 49])  # nearest pixel (row round(44.5)=44, col 49)
    assert np.allclose(res.points3d[2], xyz[119, 159])
    empty = lift_points(xyz, np.zeros((0, 2)))
    assert empty.num_valid == 0 and empty.points3d.shape == (0, 3)


def test_inloc_layout_uses_p_after(tmp_path: Path) -> None:
    inloc = datasets.inloc
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    H, W = 30, 40
    xyz_scan = rng.uniform(-3, 3, (H, W, 3))
    xyz_scan[5:8, 10:20] = np.nan
    P_after = np.eye(4)
    P_after[:3, :3] = Rotation.from_euler("zyx", [30, -10, 5], degrees=True).as_matrix()
    P_after[:3, 3] = [10.0, -4.0, 2.5]
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    inloc.write_inloc_cutout(tmp_path, "DUC1", "024", "DUC_cutout_024_0_0.jpg", rgb, xyz_scan)
    inloc.write_inloc_alignment(tmp_path, "DUC1", "DUC", "024", P_after,
                                P_before=np.diag([2.0, 2.0, 2.0, 1.0]))  # a wrong matrix that must not be used
    (rec,) = inloc.read_inloc_db(tmp_path)
    uv = np.array([[3.5, 2.5], [12.5, 6.5], [25.5, 20.5]])  # pixel centres; the 2nd is in the NaN block
    res = lift_matches(rec, uv)
    assert list(res.indices) == [0, 2]
    expected = xyz_scan[[2, 20], [3, 25]] @ P_after[:3, :3].T + P_after[:3, 3]
    assert np.abs(res.points3d - expected).max() < 1e-6


def test_tum_lifting_matches_depth(tum_root: Path) -> None:
    tum = datasets.tum
    rec = tum.read_tum(tum_root)[0]
    import cv2

    depth = cv2.imread(str(tum_root / tum.read_tum_frames(tum_root)[0].depth_file), cv2.IMREAD_UNCHANGED) / 5000.0
    rows, cols = np.nonzero(depth > 0)
    sel = np.arange(0, len(rows), max(1, len(rows) // 200))
    uv = np.stack([cols[sel] + 0.5, rows[sel] + 0.5], 1)
    res = lift_matches(rec, uv)
    assert res.num_valid == len(sel)
    Xc = rec.pose.transform(res.points3d)
    assert np.allclose(Xc[:, 2], depth[rows[sel], cols[sel]], atol=1e-9)
    uv_back, _ = rec.camera.project(Xc)
    assert np.abs(uv_back - uv).max() < 1e-6


def test_point_map_cache_reads_once_and_is_bounded_in_bytes():
    calls = []

    def record(name: str) -> DbImage:
        def loader():
            calls.append(name)
            return np.ones((4, 5, 3))
        return DbImage(name, Path(f"{name}.png"), Camera("PINHOLE", 5, 4, np.array([5.0, 5, 2.5, 2])),
                       Pose.identity(), loader)

    a, b = record("a"), record("b")
    cache = PointMapCache(max_bytes=np.ones((4, 5, 3)).nbytes)  # room for one map
    assert cache.get(a) is cache.get(a) and calls == ["a"]
    cache.get(b)
    cache.get(a)  # evicted by b: read again
    assert calls == ["a", "b", "a"]
