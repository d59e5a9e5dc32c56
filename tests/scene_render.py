"""Shared synthetic scene for the pose tests: a ray-cast textured box room (no tests in this module).

Room: x in [-2, 2], y in [-2, 2], z in [0, 3] (metres, z up); every face carries its own random
multi-scale texture (1 texel = 1 cm). ``render_room`` gives the exact RGB and z-depth.
"""

from __future__ import annotations

import cv2
import numpy as np

from localize.core.geometry import Camera, Pose, look_at

LO = np.array([-2.0, -2.0, 0.0])
HI = np.array([2.0, 2.0, 3.0])
TEX = 512  # texels per face side (1 cm each, tiled)


def make_textures(seed: int = 0) -> np.ndarray:
    """6 x TEX x TEX x 3 uint8 textures: blurred noise at several scales plus a few rectangles."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(6):
        img = np.zeros((TEX, TEX, 3), np.float32)
        for sigma, w in ((24, 0.5), (6, 0.35), (1.5, 0.15)):
            n = rng.standard_normal((TEX, TEX, 3)).astype(np.float32)
            n = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
            img += w * n / (n.std() + 1e-6)
        for _ in range(12):
            x0, y0 = rng.integers(0, TEX - 80, 2)
            sx, sy = rng.integers(20, 80, 2)
            img[y0:y0 + sy, x0:x0 + sx] += rng.uniform(-1.5, 1.5, 3).astype(np.float32)
        out.append(np.clip(128 + 45 * img, 0, 255).astype(np.uint8))
    return np.stack(out)


def render_room(camera: Camera, pose: Pose, textures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ray-cast of the room: (rgb H x W x 3 uint8, z-depth H x W in metres)."""
    uv = camera.pixel_grid().reshape(-1, 2)
    rays_c = camera.backproject(uv, 1.0)
    R_c2w = pose.R.T
    d = rays_c @ R_c2w.T
    C = pose.center
    best_t = np.full(len(d), np.inf)
    face = np.full(len(d), -1)
    for axis in range(3):
        for k, bound in enumerate((LO[axis], HI[axis])):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (bound - C[axis]) / d[:, axis]
            t[~np.isfinite(t) | (t <= 0)] = np.inf
            better = t < best_t
            best_t[better] = t[better]
            face[better] = 2 * axis + k
    X = C + best_t[:, None] * d
    rgb = np.zeros((len(d), 3), np.uint8)
    for f in range(6):
        m = face == f
        axis = f // 2
        a, b = [i for i in range(3) if i != axis]
        tu = np.floor(X[m, a] * 100).astype(np.int64) % TEX
        tv = np.floor(X[m, b] * 100).astype(np.int64) % TEX
        rgb[m] = textures[f][tv, tu]
    depth = best_t * rays_c[:, 2]
    H, W = camera.height, camera.width
    return rgb.reshape(H, W, 3), depth.reshape(H, W)


def default_camera() -> Camera:
    """Small 320 x 240 pinhole camera (60 deg horizontal FOV)."""
    return Camera.pinhole(320, 240, 277.0)


def query_and_db_poses() -> tuple[Pose, Pose]:
    """(query pose, DB pose): both looking at the +y wall corner region from about 2 m."""
    q = look_at([0.2, -0.6, 1.4], [0.8, 2.0, 1.2])
    db = look_at([-0.1, -0.9, 1.5], [0.6, 2.0, 1.3])
    return q, db


def perturb(pose: Pose, dpos: np.ndarray | None = None, rot_deg: float = 0.0,
            axis: np.ndarray | None = None) -> Pose:
    """Move a pose's camera centre by ``dpos`` (world, m) and rotate it by ``rot_deg`` about ``axis`` (camera frame)."""
    from scipy.spatial.transform import Rotation

    R = pose.R
    if rot_deg:
        ax = np.asarray(axis if axis is not None else [0, 1, 0], dtype=np.float64)
        R = Rotation.from_rotvec(np.radians(rot_deg) * ax / np.linalg.norm(ax)).as_matrix() @ R
    C = pose.center + (np.zeros(3) if dpos is None else np.asarray(dpos, dtype=np.float64))
    return Pose(R, -R @ C)
