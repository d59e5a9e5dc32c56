"""The one database loader: plain RGB-D folder, TUM sequence, InLoc layout or COLMAP workspace -> {name: DbImage}."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.colmap import read_colmap_db
from datasets.inloc import read_inloc_db
from datasets.rgbd_folder import read_rgbd_folder
from datasets.tum import read_tum
from localize.core.errors import DatabaseError
from localize.core.records import DbImage, camera_problem, image_header

logger = logging.getLogger(__name__)

DB_FORMATS = ("auto", "rgbd", "tum", "inloc", "colmap")


def detect_format(path: str | Path) -> str:
    """Guess a database layout from its files: 'rgbd', 'tum', 'colmap' (sparse/ and stereo/) or 'inloc'."""
    path = Path(path)
    if (path / "poses.txt").exists() and (path / "cameras.txt").exists():
        return "rgbd"
    if (path / "frames.txt").exists() or (path / "groundtruth.txt").exists():
        return "tum"
    if (path / "sparse").is_dir() and (path / "stereo").is_dir():
        return "colmap"
    return "inloc"


def record_problem(rec: DbImage) -> str:
    """Why one database record cannot be used ('' when it can): image file missing, empty, unreadable,
    too large or of another size than its camera; camera with focal <= 0 or principal point outside;
    pose not finite or rotation not orthonormal; depth file missing or (PNG) of another size than the image."""
    try:
        header = image_header(rec.image_path)
    except OSError as e:
        return str(e)
    if header.size != (rec.camera.width, rec.camera.height):
        return (f"image {rec.image_path} is {header.size[0]}x{header.size[1]}, its camera "
                f"{rec.camera.width}x{rec.camera.height}")
    problem = camera_problem(rec.camera)
    if problem:
        return f"camera: {problem}"
    if rec.pose is not None:
        R = rec.pose.R
        if not rec.pose.is_finite():
            return "pose is not finite"
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
            return "pose rotation is not orthonormal (a proper rotation)"
    for f in rec.depth_files:
        if not f.is_file() or f.stat().st_size == 0:
            return f"depth file {f} is {'empty' if f.is_file() else 'missing'}"
        if f.suffix.lower() == ".png":
            try:
                with Image.open(f) as im:
                    size = im.size
            except (OSError, ValueError) as e:
                return f"cannot read depth map {f}: {e}"
            if size != header.size:
                return f"depth map {f} is {size[0]}x{size[1]}, its image {header.size[0]}x{header.size[1]}"
    return ""


def load_database_checked(path: str | Path, fmt: str = "auto") -> tuple[dict[str, DbImage], dict[str, str]]:
    """``load_database`` and the records it left out: ({name: DbImage}, {name: why it was skipped})."""
    path = Path(path)
    if fmt not in DB_FORMATS:
        raise DatabaseError(f"unknown database format {fmt!r}; use one of {', '.join(DB_FORMATS)}")
    if not path.is_dir():
        raise DatabaseError(f"database folder {path} does not exist")
    if fmt == "auto":
        fmt = detect_format(path)
    reader = {"rgbd": read_rgbd_folder, "tum": read_tum, "inloc": read_inloc_db, "colmap": read_colmap_db}[fmt]
    try:
        records = reader(path)
    except (OSError, ValueError, KeyError) as e:
        raise DatabaseError(f"cannot read {fmt} database {path}: {e}") from e
    if not records:
        raise DatabaseError(f"database {path} ({fmt}) holds no images")
    good, skipped = {}, {}
    for r in records:
        problem = record_problem(r)
        if problem:
            skipped[r.name] = problem
            logger.warning("database image %s skipped: %s", r.name, problem)
        else:
            good[r.name] = r
    if not good:
        raise DatabaseError(f"database {path} ({fmt}): none of its {len(records)} images is usable "
                            f"(e.g. {next(iter(skipped))}: {next(iter(skipped.values()))})")
    return good, skipped


def load_database(path: str | Path, fmt: str = "auto") -> dict[str, DbImage]:
    """Read a database by format ('auto', 'rgbd', 'tum', 'inloc', 'colmap') -> {name: DbImage}; DatabaseError if unusable.

    Every record is checked (``record_problem``); unusable ones are left out with a warning."""
    return load_database_checked(path, fmt)[0]
