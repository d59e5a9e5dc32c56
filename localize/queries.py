"""Query sets and databases for the pipeline: which images, which cameras, which reader."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from localize.core.records import DbImage
from localize.core.formats import read_query_list
from localize.core.geometry import Camera

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DB_FORMATS = ("rgbd", "tum", "inloc")


@dataclass
class Query:
    """One query image: name (relative to the query folder), file path, camera (None = unknown)."""

    name: str
    path: Path
    camera: Camera | None
    error: str = ""


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - unreadable images are reported by the caller
        return None


def list_queries(query_dir: str | Path, queries_list: str | Path | None = None,
                 db_format: str = "rgbd") -> list[Query]:
    """Queries of a folder (with the list: its names; else every image under the folder, sorted).

    Cameras come from the query list; for ``db_format == "inloc"`` queries absent from the list
    get the iPhone 7 default (f = 3136 px at 4032 x 3024, scaled). Others get ``camera=None``
    and an error that names the query.
    """
    query_dir = Path(query_dir)
    cams = read_query_list(queries_list) if queries_list else {}
    if cams:
        names = list(cams)
        extra = sorted(str(p.relative_to(query_dir)) for p in query_dir.rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and str(p.relative_to(query_dir)) not in cams)
        names += extra
    else:
        names = sorted(str(p.relative_to(query_dir)) for p in query_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    out = []
    for name in names:
        path = query_dir / name
        cam = cams.get(name)
        err = ""
        if cam is None and db_format == "inloc":
            from datasets.inloc import inloc_query_camera

            size = _image_size(path)
            cam = inloc_query_camera(*size) if size else None
            if size is None:
                err = f"cannot read query image {path}"
        elif cam is None:
            err = f"query {name} has no intrinsics in {queries_list or '(no --queries-list given)'}"
        if not path.exists():
            err = f"query image {path} does not exist"
        out.append(Query(name, path, cam, err))
    return out


def load_database(db: str | Path, db_format: str = "rgbd") -> dict[str, DbImage]:
    """Read a database by format ('rgbd' plain folder, 'tum', 'inloc') -> {name: DbImage}."""
    if db_format == "rgbd":
        from datasets.rgbd_folder import read_rgbd_folder

        recs = read_rgbd_folder(db)
    elif db_format == "tum":
        from datasets.tum import read_tum

        recs = read_tum(db)
    elif db_format == "inloc":
        from datasets.inloc import read_inloc_db

        recs = read_inloc_db(db)
    else:
        raise ValueError(f"unknown database format {db_format!r}; use one of {DB_FORMATS}")
    if not recs:
        raise ValueError(f"database {db} holds no images")
    return {r.name: r for r in recs}
