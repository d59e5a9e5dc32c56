"""Pictures of a run: query vs chosen database image with matches, and a PLY of the scene + cameras."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from localize.core.records import DbImage, load_rgb
from localize.core.formats import atomic_write
from localize.core.geometry import Pose

logger = logging.getLogger(__name__)


def plot_matches(path: str | Path, img0: np.ndarray, img1: np.ndarray, kp0: np.ndarray, kp1: np.ndarray,
                 scores: np.ndarray | None = None, highlight: np.ndarray | None = None, title: str = "",
                 max_lines: int = 400) -> None:
    """PNG of two images side by side with match lines (pixels, COLMAP convention) coloured by score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = max(img0.shape[0], img1.shape[0])
    canvas = np.zeros((h, img0.shape[1] + img1.shape[1], 3), np.uint8)
    canvas[: img0.shape[0], : img0.shape[1]] = img0
    canvas[: img1.shape[0], img0.shape[1]:] = img1
    fig, ax = plt.subplots(figsize=(12, 12 * h / canvas.shape[1] + 0.6))
    ax.imshow(canvas)
    n = len(kp0)
    if n:
        s = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float64)
        order = np.argsort(-s)[:max_lines]
        rng = (s.max() - s.min()) or 1.0
        cmap = plt.get_cmap("viridis")
        for i in order[::-1]:
            c = "red" if highlight is not None and not highlight[i] else cmap((s[i] - s.min()) / rng)
            ax.plot([kp0[i, 0] - 0.5, kp1[i, 0] - 0.5 + img0.shape[1]], [kp0[i, 1] - 0.5, kp1[i, 1] - 0.5],
                    color=c, lw=0.6, alpha=0.8)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


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
