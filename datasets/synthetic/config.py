"""Synthetic building constants (metres), preset sizes, deterministic random streams and camera poses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from localize.core.geometry import Pose, look_at

GENERATOR_VERSION = "1.4"
# strength of the aperiodic wear on every surface (datasets.synthetic.raycast.surface_wear): tiled materials
# would otherwise repeat exactly (a 2.7 m brick tile matches itself 2.7 m further along a wall)
SURFACE_WEAR = 0.25
BUILDING = "SYN"
STOREY = 3.0  # metres between storey floors
CEILING = 2.7  # room height, metres
WALL = 0.12  # wall thickness, metres
DOOR_W, DOOR_H = 0.95, 2.1
CORRIDOR_W = 2.0
SCAN_HEIGHT = 1.5  # scanner height above the floor
DEPTH_SCALE = 1000.0


@dataclass(frozen=True)
class SizeConfig:
    """Parameters of one preset size (image sizes are (width, height) pixels)."""

    name: str
    floors: int
    rooms_north: int
    rooms_south: int
    corridor_scans: int  # scan positions along the corridor, per storey
    db_size: tuple[int, int]
    yaws: tuple[int, ...]
    pitches: tuple[int, ...]
    n_queries: int
    query_size: tuple[int, int]
    query_hfov: float
    train_anchors: int
    train_views: int
    train_size: tuple[int, int]
    min_query_covis: float = 0.35
    max_query_scale_ratio: float = 1.6  # apparent-size ratio query / best database view (either way)
    min_query_texture: float = 0.33  # edge-pixel fraction at quarter resolution: no blank-wall queries


SIZES: dict[str, SizeConfig] = {
    "tiny": SizeConfig("tiny", 1, 2, 0, 1, (320, 240), tuple(range(0, 360, 60)), (0,), 8, (256, 192), 52.0,
                       6, 3, (240, 180)),
    "small": SizeConfig("small", 1, 3, 1, 3, (640, 480), tuple(range(0, 360, 30)), (0,), 40, (512, 384), 52.0,
                        32, 4, (400, 300)),
    "medium": SizeConfig("medium", 2, 4, 3, 3, (800, 600), tuple(range(0, 360, 30)), (-30, 0, 30), 100,
                         (640, 480), 52.0, 120, 4, (400, 300)),
    # InLoc image sizes: 1600 x 1200 cutouts, 4032 x 3024 queries with the iPhone 7's horizontal field
    # of view (f = 3136 px, datasets.inloc.INLOC_QUERY_FOCAL); one room + corridor, 12 queries
    "inloc-size": SizeConfig("inloc-size", 1, 1, 0, 1, (1600, 1200), tuple(range(0, 360, 30)), (0,), 12,
                             (4032, 3024), math.degrees(2 * math.atan(4032 / 2 / (4032 * 28 / 36))), 2, 2,
                             (400, 300)),
}


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """Independent deterministic random stream for (seed, stream ids)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(s) for s in stream]]))


def camera_pose(center: Sequence[float], yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> Pose:
    """World-to-camera pose at ``center`` looking along yaw (about +z from +x), pitch (up > 0), roll."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    fwd = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    pose = look_at(center, np.asarray(center, dtype=np.float64) + fwd)
    if roll_deg:
        r = math.radians(roll_deg)
        Rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
        pose = Pose(Rz @ pose.R, Rz @ pose.t)
    return pose
