"""The one query lister: which images of a folder or list are queries, with which camera."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from datasets.inloc import inloc_query_camera, inloc_query_dir
from localize.core.formats import read_query_list
from localize.core.records import Query

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp", ".gif")


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header, None if unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def image_files(folder: str | Path) -> list[str]:
    """Image files under a folder (recursive), as sorted POSIX names relative to it."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_query_images(query_dir: str | Path, queries_list: str | Path | None = None,
                      db_format: str = "rgbd") -> list[Query]:
    """Queries of a folder: the list's names first, then every other image under the folder, sorted.

    Cameras come from the query list; for ``db_format == "inloc"`` queries absent from the list
    get the iPhone 7 default (f = 3136 px at 4032 x 3024, scaled), and a dataset root (or its ``query/``
    folder) means its ``query/iphone7/`` images (``datasets.inloc.inloc_query_dir``). Others get
    ``camera=None`` and an error that names the query.
    """
    query_dir = inloc_query_dir(query_dir) if db_format == "inloc" else Path(query_dir)
    cams = read_query_list(queries_list) if queries_list else {}
    names = list(cams) + [n for n in image_files(query_dir) if n not in cams]
    out = []
    for name in names:
        path = query_dir / name
        cam = cams.get(name)
        err = ""
        if cam is None and db_format == "inloc":
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
