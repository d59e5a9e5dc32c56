"""The record every database reader yields, and pixel -> world-point lifting."""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from localize.core.errors import DatabaseError
from localize.core.geometry import CAMERA_MODELS, Camera, Pose


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
    ``floor`` is the building/floor label used by the InLoc evaluation rule (None if unknown);
    ``depth_files`` are the files its points are read from (depth map, or .mat and alignment), so
    caches can tell when they change.
    """

    name: str
    image_path: Path
    camera: Camera
    pose: Pose | None
    xyz_loader: Callable[[], np.ndarray] = field(repr=False)
    floor: str | None = None
    depth_files: tuple[Path, ...] = ()

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


MAX_MEGAPIXELS_ENV = "NCLOC_MAX_MEGAPIXELS"
DEFAULT_MAX_MEGAPIXELS = 40.0
ROTATING_ORIENTATIONS = {3: 180, 6: 90, 8: 270}  # EXIF orientation -> clockwise rotation to display


def max_megapixels() -> float:
    """The image size limit in megapixels: $NCLOC_MAX_MEGAPIXELS, else 40."""
    try:
        value = float(os.environ.get(MAX_MEGAPIXELS_ENV, DEFAULT_MAX_MEGAPIXELS))
    except ValueError:
        value = DEFAULT_MAX_MEGAPIXELS
    return value if value > 0 else DEFAULT_MAX_MEGAPIXELS


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: stored size and EXIF orientation (1 = as stored)."""

    width: int
    height: int
    orientation: int = 1

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, i.e. after applying the EXIF orientation."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


def _png_orientation(path: Path) -> int:
    """EXIF orientation of a PNG file (1 when it has no eXIf chunk), read by skipping from chunk to chunk."""
    with open(path, "rb") as f:
        f.seek(8)  # signature
        while True:
            head = f.read(8)
            if len(head) < 8:
                return 1
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                exif = Image.Exif()
                exif.load(f.read(length))
                return int(exif.get(0x0112, 1) or 1)
            if kind == b"IEND":
                return 1
            f.seek(length + 4, os.SEEK_CUR)  # data and CRC


def image_header(path: str | Path) -> ImageHeader:
    """Size and EXIF orientation from the header (nothing decoded); OSError naming the file and the reason
    when it is empty, not an image, larger than ``max_megapixels()`` or mirrored by its EXIF orientation."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise OSError(f"image {path} is an empty file")
        with Image.open(path) as im:
            w, h = im.size
            if im.format == "PNG":  # PIL's getexif() decodes a whole PNG to look past its pixel data
                orientation = _png_orientation(path)
            else:
                orientation = int(im.getexif().get(0x0112, 1) or 1) if hasattr(im, "getexif") else 1
    except Image.DecompressionBombError as e:
        raise OSError(f"image {path} is too large ({e}); limit {max_megapixels():g} Mpx") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise OSError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if w * h > max_megapixels() * 1e6:
        raise OSError(f"image {path} is {w}x{h} = {w * h / 1e6:.1f} Mpx, over the limit of {max_megapixels():g} Mpx "
                      f"(--max-megapixels / ${MAX_MEGAPIXELS_ENV}); downscale it")
    if orientation not in (1, 3, 6, 8):
        if orientation in (2, 4, 5, 7):
            raise OSError(f"image {path} has the mirroring EXIF orientation {orientation}, which no camera produces")
        orientation = 1  # out-of-range tag: ignored, as viewers do
    return ImageHeader(w, h, orientation)


def rotate_camera(camera: Camera, orientation: int) -> Camera:
    """The camera of an image stored with EXIF ``orientation`` (3, 6, 8) once displayed (rotated).

    Pixel (u, v) of the stored W x H image goes to (W-u, H-v) for 3, (H-v, u) for 6 and (v, W-u) for 8.
    ValueError for tangential distortion (not rotated here)."""
    if orientation == 1:
        return camera
    p = dict(zip(CAMERA_MODELS[camera.model], camera.params))
    if abs(p.get("p1", 0.0)) > 0 or abs(p.get("p2", 0.0)) > 0:
        raise ValueError(f"cannot rotate a {camera.model} camera with tangential distortion for EXIF orientation "
                         f"{orientation}")
    W, H = camera.width, camera.height
    cx, cy = p["cx"], p["cy"]
    if orientation == 3:
        p["cx"], p["cy"], size = W - cx, H - cy, (W, H)
    elif orientation in (6, 8):
        p["cx"], p["cy"] = (H - cy, cx) if orientation == 6 else (cy, W - cx)
        if "fx" in p:
            p["fx"], p["fy"] = p["fy"], p["fx"]
        size = (H, W)
    else:
        raise ValueError(f"unsupported EXIF orientation {orientation}")
    return Camera(camera.model, size[0], size[1], tuple(p[n] for n in CAMERA_MODELS[camera.model]))


def camera_problem(camera: Camera) -> str:
    """Why a camera cannot describe its image ('' when it can): focal lengths > 0 and finite,
    principal point inside the image, finite distortion."""
    if camera.width < 1 or camera.height < 1:
        return f"image size {camera.width}x{camera.height} is not positive"
    if not all(math.isfinite(v) for v in camera.params):
        return f"camera parameters are not finite ({camera.to_line()})"
    fx, fy = camera.focal
    if not (fx > 0 and fy > 0):
        return f"focal length must be > 0, got {fx:g}" + ("" if fx == fy else f", {fy:g}")
    cx, cy = camera.principal_point
    if not (0 <= cx <= camera.width and 0 <= cy <= camera.height):
        return f"principal point ({cx:g}, {cy:g}) lies outside the {camera.width}x{camera.height} image"
    return ""


def fit_camera_to_image(camera: Camera, width: int, height: int) -> tuple[Camera, str]:
    """The camera for an image of width x height: itself, or rescaled when only the resolution differs
    (same aspect ratio within 1 %, the note says so); ValueError when the aspect ratio differs."""
    if (camera.width, camera.height) == (width, height):
        return camera, ""
    if abs(camera.width / camera.height - width / height) > 0.01 * (width / height):
        raise ValueError(f"image is {width}x{height} but its camera is {camera.width}x{camera.height} "
                         f"(another aspect ratio)")
    return camera.scaled(width, height), (f"camera {camera.width}x{camera.height} rescaled to the image's "
                                          f"{width}x{height}")


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB, EXIF orientation applied (3, 6, 8); raises OSError
    naming the file if unreadable, empty, larger than ``max_megapixels()`` (checked from the header,
    before decoding) or mirrored."""
    import cv2

    header = image_header(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise OSError(f"cannot read image {path}: {e}") from e
    # OpenCV decodes truncated files into partly grey images with only a warning: refuse them
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise OSError(f"image {path} is truncated (JPEG without end-of-image marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-32:]:
        raise OSError(f"image {path} is truncated (PNG without IEND chunk)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or img.size == 0:
        raise OSError(f"cannot read image {path} (missing, truncated or not an image)")
    if header.orientation in ROTATING_ORIENTATIONS:
        img = np.ascontiguousarray(np.rot90(img, {3: 2, 6: -1, 8: 1}[header.orientation]))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass
class Query:
    """One query image: name (relative to the query folder), file path, camera (None = unknown), why unusable."""

    name: str
    path: Path
    camera: Camera | None
    error: str = ""
