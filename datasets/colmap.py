"""COLMAP reconstruction as a database: sparse model (cameras, images, poses) + MVS depth maps.

Layout (a COLMAP dense workspace, as ``colmap image_undistorter`` + ``patch_match_stereo`` leave it)::

    ROOT/images/<name>                                 image files (names as in the model)
    ROOT/sparse/ or ROOT/sparse/0/ or ROOT/            cameras / images (.bin or .txt), read by pycolmap
    ROOT/stereo/depth_maps/<name>.geometric.bin        z-depth in the model's units (else .photometric.bin)

Depth maps use COLMAP's array layout: an ASCII header ``width&height&channels&`` then little-endian
float32 values, x fastest (row-major H x W); values <= 0 are missing. A depth map smaller than its
image (``--PatchMatchStereo.max_image_size``) is sampled at the nearest depth pixel. Poses are
COLMAP's ``cam_from_world`` (WORLD-TO-CAMERA); images without a pose are left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pycolmap

from localize.core.errors import DatabaseError
from localize.core.formats import atomic_write
from localize.core.geometry import CAMERA_MODELS, Camera, Pose, depth_to_world
from localize.core.records import DbImage

logger = logging.getLogger(__name__)

DEPTH_SUFFIXES = (".geometric.bin", ".photometric.bin")


def read_depth_bin(path: str | Path) -> np.ndarray:
    """COLMAP depth map (``width&height&channels&`` + float32, x fastest) -> H x W float64, NaN where <= 0."""
    data = Path(path).read_bytes()
    fields, pos = [], 0
    for _ in range(3):
        end = data.find(b"&", pos)
        if end < 0 or end - pos > 20:
            raise DatabaseError(f"{path}: not a COLMAP depth map (expected a 'width&height&channels&' header)")
        fields.append(data[pos:end])
        pos = end + 1
    try:
        w, h, c = (int(v) for v in fields)
    except ValueError:
        raise DatabaseError(f"{path}: bad COLMAP depth map header {b'&'.join(fields)!r}") from None
    values = np.frombuffer(data, dtype="<f4", offset=pos)
    if c != 1 or values.size != w * h:
        raise DatabaseError(f"{path}: header says {w}x{h}x{c}, expected one channel of {w * h} values, "
                            f"found {values.size}")
    depth = values.reshape(h, w).astype(np.float64)
    depth[~(depth > 0)] = np.nan
    return depth


def write_depth_bin(path: str | Path, depth: np.ndarray) -> None:
    """H x W depth (NaN = missing, written as 0) -> COLMAP depth map file, atomically."""
    d = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0).astype("<f4")
    h, w = d.shape
    with atomic_write(path, "wb") as f:
        f.write(f"{w}&{h}&1&".encode())
        f.write(np.ascontiguousarray(d).tobytes())


def model_folder(root: Path) -> Path:
    """The sparse model folder of a workspace: ROOT/sparse, ROOT/sparse/0 or ROOT; DatabaseError if none."""
    for cand in (root / "sparse", root / "sparse" / "0", root):
        if any((cand / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return cand
    raise DatabaseError(f"{root}: no COLMAP model (cameras.bin/.txt in sparse/, sparse/0/ or the folder itself)")


def _resample(depth: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-pixel resampling of a depth map to width x height (pixel centres, COLMAP convention)."""
    if depth.shape == (height, width):
        return depth
    dh, dw = depth.shape
    ys = np.minimum(((np.arange(height) + 0.5) * dh / height).astype(np.int64), dh - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * dw / width).astype(np.int64), dw - 1)
    return depth[ys[:, None], xs[None, :]]


def read_colmap_db(root: str | Path) -> list[DbImage]:
    """The posed images of a COLMAP workspace as DbImage records (sorted by name); depth read when lifted.

    Raises DatabaseError for a missing or unreadable model or an unsupported camera model (naming the
    image); a missing depth map raises it when its record's ``world_xyz`` is called.
    """
    root = Path(root)
    folder = model_folder(root)
    try:
        rec = pycolmap.Reconstruction(str(folder))
    except (RuntimeError, ValueError) as e:
        raise DatabaseError(f"{folder}: cannot read the COLMAP model ({e})") from e
    depth_dir = root / "stereo" / "depth_maps"
    out = []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not image.has_pose:
            logger.info("%s: image %s has no pose, left out", folder, image.name)
            continue
        cam = image.camera
        model = cam.model.name
        if model not in CAMERA_MODELS:
            raise DatabaseError(f"{folder}: image {image.name} uses camera model {model}; supported: "
                                f"{', '.join(CAMERA_MODELS)}")
        camera = Camera(model, int(cam.width), int(cam.height), tuple(float(v) for v in cam.params))
        m = image.cam_from_world().matrix()
        pose = Pose(np.asarray(m[:3, :3], dtype=np.float64), np.asarray(m[:3, 3], dtype=np.float64))

        def loader(name: str = image.name, camera: Camera = camera, pose: Pose = pose) -> np.ndarray:
            path = next((depth_dir / (name + s) for s in DEPTH_SUFFIXES if (depth_dir / (name + s)).is_file()), None)
            if path is None:
                raise DatabaseError(f"{depth_dir / (name + DEPTH_SUFFIXES[0])}: depth map missing")
            depth = _resample(read_depth_bin(path), camera.width, camera.height)
            return depth_to_world(depth, camera, pose)

        out.append(DbImage(image.name, root / "images" / image.name, camera, pose, loader))
    return out
