"""The record every database reader yields, and pixel -> world-point lifting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localize.core.errors import DatabaseError
from localize.core.geometry import Camera, Pose


def lift_pixels(xyz: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample an H x W x 3 point map (NaN = invalid) at pixels N x 2 (COLMAP convention).

    Bilinear where the four neighbouring pixel centres are all valid, else the nearest pixel
    when that one is valid, else invalid. Returns (points N x 3, valid mask N).
    """
    xyz = np.asarray(xyz)
    H, W = xyz.shape[:2]
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    out = np.full((len(uv), 3), np.nan)
    # continuous array coordinates: pixel centre (j + 0.5, i + 0.5) -> (j, i)
    finite = np.isfinite(uv).all(1)
    x = np.where(finite, uv[:, 0], 0.0) - 0.5
    y = np.where(finite, uv[:, 1], 0.0) - 0.5
    inside = finite & (x > -0.5) & (x < W - 0.5) & (y > -0.5) & (y < H - 0.5)
    x0 = np.clip(np.floor(x), 0, W - 1).astype(np.int64)
    y0 = np.clip(np.floor(y), 0, H - 1).astype(np.int64)
    x1 = np.clip(x0 + 1, 0, W - 1)
    y1 = np.clip(y0 + 1, 0, H - 1)
    fx = np.clip(x - x0, 0.0, 1.0)[:, None]
    fy = np.clip(y - y0, 0.0, 1.0)[:, None]
    p00, p01, p10, p11 = xyz[y0, x0], xyz[y0, x1], xyz[y1, x0], xyz[y1, x1]
    four = (np.isfinite(p00).all(1) & np.isfinite(p01).all(1) & np.isfinite(p10).all(1) & np.isfinite(p11).all(1))
    bil = (p00 * (1 - fx) * (1 - fy) + p01 * fx * (1 - fy) + p10 * (1 - fx) * fy + p11 * fx * fy)
    xn = np.clip(np.round(x), 0, W - 1).astype(np.int64)
    yn = np.clip(np.round(y), 0, H - 1).astype(np.int64)
    near = xyz[yn, xn]
    near_ok = np.isfinite(near).all(1)
    use_bil = inside & four
    use_near = inside & ~four & near_ok
    out[use_bil] = bil[use_bil]
    out[use_near] = near[use_near]
    return out, use_bil | use_near


@dataclass
class DbImage:
    """One database image: name, image file, camera, WORLD-TO-CAMERA pose and its 3D point map.

    ``pose`` may be None where the layout does not store it (InLoc cutouts store only points);
    ``floor`` is the building/floor label used by the InLoc evaluation rule (None if unknown).
    """

    name: str
    image_path: Path
    camera: Camera
    pose: Pose | None
    xyz_loader: Callable[[], np.ndarray] = field(repr=False)
    floor: str | None = None

    def world_xyz(self) -> np.ndarray:
        """H x W x 3 world points at image resolution (metres, NaN where there is no depth)."""
        xyz = self.xyz_loader()
        if xyz.shape[:2] != (self.camera.height, self.camera.width):
            raise DatabaseError(
                f"{self.name}: point map is {xyz.shape[1]}x{xyz.shape[0]}, image is "
                f"{self.camera.width}x{self.camera.height}")
        return xyz

    def lift(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Database pixels N x 2 (COLMAP convention) -> (world points N x 3, valid mask N)."""
        return lift_pixels(self.world_xyz(), uv)


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB; raises IOError naming the file if unreadable."""
    import cv2

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise OSError(f"cannot read image {path}: {e}") from e
    # OpenCV decodes truncated files into partly grey images with only a warning: refuse them
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise OSError(f"image {path} is truncated (JPEG without end-of-image marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-32:]:
        raise OSError(f"image {path} is truncated (PNG without IEND chunk)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise OSError(f"cannot read image {path} (missing, truncated or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass
class Query:
    """One query image: name (relative to the query folder), file path, camera (None = unknown), why unusable."""

    name: str
    path: Path
    camera: Camera | None
    error: str = ""
