"""Pictures of a run: query vs chosen database image with matches, and a PLY of the scene + cameras."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from localize.core.formats import atomic_write
from localize.core.geometry import Pose
from localize.core.records import DbImage, load_rgb
from matching.plot import plot_matches

logger = logging.getLogger(__name__)


def plot_query_matches(path: Path, query, database: Mapping[str, DbImage], mcache, qlog) -> None:
    """Query, chosen database image and their NCNet matches (green-yellow = high score) as a PNG."""
    db = qlog.chosen_db
    e = mcache.get(f"{query.name}/{db}")
    cand = next((c for c in qlog.candidates if c["db"] == db), {})
    plot_matches(path, load_rgb(query.path), load_rgb(database[db].image_path), e["keypoints0"], e["keypoints1"],
                 e["scores"], title=f"{query.name} -> {db}: {len(e['scores'])} matches, "
                 f"{cand.get('inliers', '?')} PnP inliers, DensePV {cand.get('densepv')}")


def write_ply(path: str | Path, points: np.ndarray, colours: np.ndarray) -> None:
    """Binary little-endian PLY of N x 3 points (float32) with uint8 RGB colours (open3d/meshlab readable)."""
    points = np.asarray(points, dtype="<f4").reshape(-1, 3)
    colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    vert = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                        ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vert["x"], vert["y"], vert["z"] = points.T
    vert["red"], vert["green"], vert["blue"] = colours.T
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(vert)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with atomic_write(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vert.tobytes())


def camera_marker(pose: Pose, size: float = 0.15, n: int = 60) -> np.ndarray:
    """Points drawing a small camera: its centre and a line along its viewing direction (world, m)."""
    C = pose.center
    d = pose.R[2]  # camera z axis in world coordinates
    t = np.linspace(0, size, n)[:, None]
    return C + t * d


def write_cameras_ply(path: str | Path, database: Mapping[str, DbImage], poses: Mapping[str, Pose],
                      points_per_image: int = 4000, seed: int = 0) -> None:
    """PLY of the database points (subsampled, own colours) and estimated query cameras (red)."""
    rng = np.random.default_rng(seed)
    pts, cols = [], []
    for db in database.values():
        try:
            xyz = db.world_xyz().reshape(-1, 3)
            rgb = load_rgb(db.image_path).reshape(-1, 3)
        except Exception as e:  # noqa: BLE001 - a broken DB image is skipped in the picture
            logger.warning("scene.ply: skipping %s: %s", db.name, e)
            continue
        ok = np.flatnonzero(np.isfinite(xyz).all(1))
        sel = rng.choice(ok, size=min(points_per_image, len(ok)), replace=False) if len(ok) else ok
        pts.append(xyz[sel])
        cols.append(rgb[sel] if len(rgb) == len(xyz) else np.full((len(sel), 3), 128, np.uint8))
    for pose in poses.values():
        m = camera_marker(pose)
        pts.append(m)
        cols.append(np.tile([[255, 0, 0]], (len(m), 1)))
    if pts:
        write_ply(path, np.concatenate(pts), np.concatenate(cols))
