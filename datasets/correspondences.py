"""Ground-truth dense correspondences between two RGB-D views (depth + poses, occlusion-checked)."""

from __future__ import annotations

import numpy as np

from localize.core.geometry import Camera, Pose, project_world


def dense_correspondences(xyz_a: np.ndarray, camera_b: Camera, pose_b: Pose, depth_b: np.ndarray,
                          step: int = 1, rel_tol: float = 0.02, abs_tol: float = 0.01
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of view A (world points ``xyz_a`` H x W x 3, NaN = none) visible in view B.

    A point is kept when it projects inside B and B's z-depth at the nearest pixel agrees with
    the point's depth in B within ``max(rel_tol * depth, abs_tol)`` (occlusion check).
    Returns (uv_a N x 2, uv_b N x 2), COLMAP pixel convention, sampled every ``step`` pixels of A.
    """
    H, W = xyz_a.shape[:2]
    rows, cols = np.mgrid[0:H:step, 0:W:step]
    rows, cols = rows.ravel(), cols.ravel()
    X = xyz_a[rows, cols].reshape(-1, 3)
    ok = np.isfinite(X).all(1)
    rows, cols, X = rows[ok], cols[ok], X[ok]
    uv_b, z_b, inside = project_world(X, camera_b, pose_b)
    uv_b, z_b, rows, cols = uv_b[inside], z_b[inside], rows[inside], cols[inside]
    bi = np.clip(np.floor(uv_b[:, 1]).astype(np.int64), 0, depth_b.shape[0] - 1)
    bj = np.clip(np.floor(uv_b[:, 0]).astype(np.int64), 0, depth_b.shape[1] - 1)
    d = depth_b[bi, bj]
    vis = np.isfinite(d) & (np.abs(d - z_b) <= np.maximum(rel_tol * z_b, abs_tol))
    uv_a = np.stack([cols[vis] + 0.5, rows[vis] + 0.5], axis=1).astype(np.float64)
    return uv_a, uv_b[vis]


def covisibility(xyz_a: np.ndarray, camera_b: Camera, pose_b: Pose, depth_b: np.ndarray, step: int = 8) -> float:
    """Fraction of A's valid pixels (sampled every ``step``) that are visible in B."""
    valid = np.isfinite(xyz_a[::step, ::step]).all(-1).sum()
    if valid == 0:
        return 0.0
    uv_a, _ = dense_correspondences(xyz_a, camera_b, pose_b, depth_b, step=step)
    return len(uv_a) / float(valid)
