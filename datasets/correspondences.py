"""Ground-truth visibility and dense correspondences between RGB-D views (depth + poses, occlusion-checked)."""

from __future__ import annotations

import numpy as np

from localize.core.geometry import Camera, Pose, project_world


def visible_projection(points_world: np.ndarray, camera_b: Camera, pose_b: Pose, depth_b: np.ndarray | None,
                       rel_tol: float = 0.02, abs_tol: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points N x 3 (metres, NaN = none) seen by view B -> (uv_b N x 2, z-depth in B N metres, visible N).

    A point is visible when it is finite, lies in front of B and projects inside B's image, and, when
    ``depth_b`` (H x W z-depth in metres, NaN = none) is given, B's depth at the nearest pixel agrees with
    the point's depth in B within ``max(rel_tol * depth, abs_tol)`` (occlusion check). Pixels follow the
    COLMAP convention (centre of pixel (i, j) at (j + 0.5, i + 0.5)), so the nearest pixel of (u, v) is
    (floor(v), floor(u)). uv and z are NaN for non-finite points.
    """
    X = np.asarray(points_world).reshape(-1, 3)
    n = len(X)
    uv_b = np.full((n, 2), np.nan)
    z_b = np.full(n, np.nan)
    visible = np.zeros(n, dtype=bool)
    finite = np.isfinite(X).all(1)
    uv_f, z_f, inside = project_world(X[finite], camera_b, pose_b)
    uv_b[finite], z_b[finite] = uv_f, z_f
    idx = np.flatnonzero(finite)[inside]
    if depth_b is None:
        visible[idx] = True
        return uv_b, z_b, visible
    uv_in, z_in = uv_f[inside], z_f[inside]
    bi = np.clip(np.floor(uv_in[:, 1]).astype(np.int64), 0, depth_b.shape[0] - 1)
    bj = np.clip(np.floor(uv_in[:, 0]).astype(np.int64), 0, depth_b.shape[1] - 1)
    d = depth_b[bi, bj]
    agree = np.isfinite(d) & (np.abs(d - z_in) <= np.maximum(rel_tol * z_in, abs_tol))
    visible[idx[agree]] = True
    return uv_b, z_b, visible


def dense_correspondences(xyz_a: np.ndarray, camera_b: Camera, pose_b: Pose, depth_b: np.ndarray,
                          step: int = 1, rel_tol: float = 0.02, abs_tol: float = 0.01
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of view A (world points ``xyz_a`` H x W x 3, NaN = none) visible in view B.

    Visibility as in ``visible_projection`` (inside B, depth agreement within ``max(rel_tol * depth,
    abs_tol)``). Returns (uv_a N x 2, uv_b N x 2), COLMAP pixel convention, sampled every ``step`` pixels of A.
    """
    H, W = xyz_a.shape[:2]
    rows, cols = np.mgrid[0:H:step, 0:W:step]
    rows, cols = rows.ravel(), cols.ravel()
    uv_b, _, visible = visible_projection(xyz_a[rows, cols].reshape(-1, 3), camera_b, pose_b, depth_b,
                                          rel_tol, abs_tol)
    uv_a = np.stack([cols[visible] + 0.5, rows[visible] + 0.5], axis=1).astype(np.float64)
    return uv_a, uv_b[visible]


def covisibility(xyz_a: np.ndarray, camera_b: Camera, pose_b: Pose, depth_b: np.ndarray, step: int = 8) -> float:
    """Fraction of A's valid pixels (sampled every ``step``) that are visible in B."""
    valid = np.isfinite(xyz_a[::step, ::step]).all(-1).sum()
    if valid == 0:
        return 0.0
    uv_a, _ = dense_correspondences(xyz_a, camera_b, pose_b, depth_b, step=step)
    return len(uv_a) / float(valid)
