"""Camera placement: database cutout poses per scan, random free poses in a room, textured-view test."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from datasets.inloc import cutout_camera
from datasets.synthetic.config import BUILDING, SizeConfig, camera_pose
from datasets.synthetic.raycast import Box
from datasets.synthetic.scene import Room, Scan, Scene
from localize.core.geometry import Camera, Pose


def cutout_views(scene: Scene, cfg: SizeConfig) -> Iterator[tuple[Scan, int, int, str, Camera, Pose]]:
    """Database cutouts: (scan, yaw, pitch, name, camera, pose) for every scan x yaw x pitch."""
    cam = cutout_camera(*cfg.db_size)
    for s in scene.scans:
        for pitch in cfg.pitches:
            for yaw in cfg.yaws:
                name = f"{s.floor_name}/{s.scan_id}/{BUILDING}_cutout_{s.scan_id}_{yaw}_{pitch}.jpg"
                yield s, yaw, pitch, name, cam, camera_pose(s.center, s.theta_deg + yaw, pitch)


def texture_fraction(img: np.ndarray, threshold: float = 25.0, max_width: int = 256) -> float:
    """Fraction of pixels with a clear edge (Sobel magnitude > threshold after light blur), brightness-normalised.

    Images wider than ``max_width`` are first reduced to that width (INTER_AREA), so the measure does
    not fall with resolution (the thresholds were set on query checks of 64-160 px width)."""
    if img.shape[1] > max_width:
        img = cv2.resize(img, (max_width, max(1, round(img.shape[0] * max_width / img.shape[1]))),
                         interpolation=cv2.INTER_AREA)
    g = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    g *= 200.0 / max(float(np.percentile(g, 95)), 20.0)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    return float(np.mean(np.sqrt(gx * gx + gy * gy) > threshold))


def sample_pose(scene: Scene, rng: np.random.Generator, boxes: Sequence[Box], room: Room,
                 pitch_sd: float = 8.0, roll_sd: float = 3.0) -> Pose | None:
    """A random free camera pose in ``room`` (height 1.2-1.8 m, random yaw, small pitch/roll)."""
    x0, y0, x1, y1 = room.rect
    for _ in range(100):
        p = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1), room.z0 + rng.uniform(1.2, 1.8)])
        if scene.is_free(p, boxes, clearance=0.3):
            return camera_pose(p, rng.uniform(0, 360), float(np.clip(rng.normal(0, pitch_sd), -20, 20)),
                               float(np.clip(rng.normal(0, roll_sd), -8, 8)))
    return None
