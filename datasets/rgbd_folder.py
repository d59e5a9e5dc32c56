"""The project's plain RGB-D database folder: read and write.

Layout::

    DB/images/<name>          colour image (any format OpenCV reads); <name> may contain '/'
    DB/depth/<stem>.png       uint16 z-depth; metres = value / depth_scale; 0 = missing
    DB/depth_scale.txt        one number (e.g. 1000 or 5000)
    DB/poses.txt              poses file (name qw qx qy qz tx ty tz), WORLD-TO-CAMERA
    DB/cameras.txt            query-list format (name MODEL W H params...), one line per image

``<stem>`` is ``<name>`` without its extension (sub-folders kept).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from datasets.textrows import numbered_rows, parse_floats
from localize.core.errors import DatabaseError
from localize.core.formats import (
    atomic_write,
    read_poses,
    read_query_list,
    write_poses,
    write_query_list,
)
from localize.core.geometry import Camera, Pose, depth_to_world
from localize.core.records import DbImage


def depth_path(root: Path, name: str) -> Path:
    """Path of the depth PNG of image ``name``."""
    return root / "depth" / (str(Path(name).with_suffix("")) + ".png")


def read_depth_png(path: str | Path, depth_scale: float) -> np.ndarray:
    """uint16 PNG -> float64 depth in metres, NaN where 0/missing; OSError naming the file if unreadable."""
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise OSError(f"{path}: cannot read depth map (missing or not an image)")
    if d.ndim != 2:
        raise OSError(f"{path}: depth map has {d.shape[2]} channels, expected one uint16 channel")
    d = d.astype(np.float64) / depth_scale
    d[d <= 0] = np.nan
    return d


def write_depth_png(path: str | Path, depth_m: np.ndarray, depth_scale: float) -> None:
    """Depth in metres (NaN/<=0 = missing) -> uint16 PNG, written atomically."""
    d = np.where(np.isfinite(depth_m) & (depth_m > 0), depth_m * depth_scale, 0)
    d = np.clip(np.round(d), 0, 65535).astype(np.uint16)
    ok, buf = cv2.imencode(".png", d)
    if not ok:
        raise OSError(f"cannot encode depth for {path}")
    with atomic_write(path, "wb") as f:
        f.write(buf.tobytes())


def write_image(path: str | Path, rgb: np.ndarray, quality: int = 95) -> None:
    """Write an H x W x 3 uint8 RGB image atomically (format from the extension)."""
    path = Path(path)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"cannot encode image {path}")
    with atomic_write(path, "wb") as f:
        f.write(buf.tobytes())


def load_depth_map(path: Path, depth_scale: float, camera: Camera) -> np.ndarray:
    """Database depth map (metres, NaN = none) of an image of ``camera``'s size; DatabaseError naming the file."""
    if not path.is_file():
        raise DatabaseError(f"{path}: depth map missing")
    try:
        depth = read_depth_png(path, depth_scale)
    except OSError as e:
        raise DatabaseError(str(e)) from e
    if depth.shape != (camera.height, camera.width):
        raise DatabaseError(f"{path}: depth map is {depth.shape[1]}x{depth.shape[0]}, its image is "
                            f"{camera.width}x{camera.height}")
    return depth


def read_depth_scale(path: Path) -> float:
    """The positive number on the first line of depth_scale.txt; DatabaseError naming the file if unusable."""
    rows = list(numbered_rows(path))
    if not rows:
        raise DatabaseError(f"{path}: empty, expected one number (e.g. 1000)")
    lineno, tok = rows[0]
    scale = parse_floats(path, lineno, tok[:1], "the depth scale")[0]
    if not scale > 0:
        raise DatabaseError(f"{path}: line {lineno}: depth scale must be positive, got {tok[0]}")
    return scale


def _check_poses_file(path: Path) -> None:
    """DatabaseError naming the line of the first malformed 'name qw qx qy qz tx ty tz [top1]' line."""
    seen: dict[str, int] = {}
    for lineno, tok in numbered_rows(path):
        if len(tok) not in (8, 9):
            raise DatabaseError(f"{path}: line {lineno}: expected 'name qw qx qy qz tx ty tz', got {len(tok)} fields")
        parse_floats(path, lineno, tok[1:8], "the quaternion and translation")
        if tok[0] in seen:
            raise DatabaseError(f"{path}: {tok[0]} is listed twice (lines {seen[tok[0]]} and {lineno})")
        seen[tok[0]] = lineno


def _check_cameras_file(path: Path) -> None:
    """DatabaseError naming the line of the first malformed 'name MODEL W H params...' line."""
    seen: dict[str, int] = {}
    for lineno, tok in numbered_rows(path):
        try:
            Camera.from_tokens(tok[1:])
        except (ValueError, IndexError) as e:
            raise DatabaseError(f"{path}: line {lineno}: bad camera line ({e})") from None
        if tok[0] in seen:
            raise DatabaseError(f"{path}: {tok[0]} is listed twice (lines {seen[tok[0]]} and {lineno})")
        seen[tok[0]] = lineno


def read_rgbd_folder(root: str | Path) -> list[DbImage]:
    """Read a plain RGB-D database folder -> list of DbImage records (sorted by name).

    Raises DatabaseError naming the file (and line) for a missing or malformed poses.txt, cameras.txt or
    depth_scale.txt; a missing or unreadable depth map raises it when its record's ``world_xyz`` is called."""
    root = Path(root)
    for req in ("poses.txt", "cameras.txt", "depth_scale.txt"):
        if not (root / req).is_file():
            raise DatabaseError(f"{root / req}: missing, {root} is not a plain RGB-D database folder")
    scale = read_depth_scale(root / "depth_scale.txt")
    _check_poses_file(root / "poses.txt")
    _check_cameras_file(root / "cameras.txt")
    try:
        poses = read_poses(root / "poses.txt")
        cams = read_query_list(root / "cameras.txt")
    except ValueError as e:
        raise DatabaseError(str(e)) from e
    out = []
    for name in sorted(poses):
        if name not in cams:
            raise DatabaseError(f"{root / 'cameras.txt'}: no line for image {name} (listed in poses.txt)")
        cam, pose = cams[name], poses[name].pose
        dpath = depth_path(root, name)

        def loader(dpath: Path = dpath, cam: Camera = cam, pose: Pose = pose) -> np.ndarray:
            return depth_to_world(load_depth_map(dpath, scale, cam), cam, pose)

        out.append(DbImage(name, root / "images" / name, cam, pose, loader, depth_files=(dpath,)))
    return out


def write_rgbd_folder(root: str | Path, items: Iterable[tuple[str, np.ndarray, np.ndarray, Camera, Pose]],
                      depth_scale: float = 1000.0) -> None:
    """Write (name, rgb uint8 HxWx3, depth metres HxW, camera, world-to-camera pose) items as a folder."""
    root = Path(root)
    poses, cams = {}, {}
    for name, rgb, depth, cam, pose in items:
        write_image(root / "images" / name, rgb)
        write_depth_png(depth_path(root, name), depth, depth_scale)
        poses[name], cams[name] = pose, cam
    with atomic_write(root / "depth_scale.txt") as f:
        f.write(f"{depth_scale:g}\n")
    write_poses(root / "poses.txt", poses)
    write_query_list(root / "cameras.txt", cams)
