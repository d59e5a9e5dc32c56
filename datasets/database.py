"""The one database loader: plain RGB-D folder, TUM sequence, InLoc layout or COLMAP workspace -> {name: DbImage}."""

from __future__ import annotations

from pathlib import Path

from datasets.colmap import read_colmap_db
from datasets.inloc import read_inloc_db
from datasets.rgbd_folder import read_rgbd_folder
from datasets.tum import read_tum
from localize.core.errors import DatabaseError
from localize.core.records import DbImage

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


def load_database(path: str | Path, fmt: str = "auto") -> dict[str, DbImage]:
    """Read a database by format ('auto', 'rgbd', 'tum', 'inloc', 'colmap') -> {name: DbImage}; DatabaseError if unusable."""
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
    return {r.name: r for r in records}
