"""The one query lister: which images of a folder or list are queries, with which camera."""

from __future__ import annotations

import logging
from pathlib import Path

from datasets.inloc import inloc_query_camera, inloc_query_dir
from datasets.textrows import numbered_rows
from localize.core.errors import InputError, QueryError
from localize.core.geometry import Camera
from localize.core.records import (
    Query,
    camera_problem,
    fit_camera_to_image,
    image_header,
    rotate_camera,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp", ".gif")


def image_files(folder: str | Path) -> list[str]:
    """Image files under a folder (recursive), as sorted POSIX names relative to it."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_query_list_lines(path: str | Path) -> dict[str, Camera | str]:
    """A query list, line by line -> {name: Camera, or why its line is unusable}.

    A malformed line is reported (file, line, reason) with its query instead of stopping the run; a
    name listed twice is an error naming both lines. QueryError when the file cannot be read."""
    out: dict[str, Camera | str] = {}
    where: dict[str, int] = {}
    try:
        rows = list(numbered_rows(path))
    except InputError as e:
        raise QueryError(f"unusable query list: {e}") from None
    for lineno, tok in rows:
        name = tok[0]
        if name in where:
            out[name] = f"{path}: {name} is listed twice (lines {where[name]} and {lineno})"
            continue
        where[name] = lineno
        try:
            out[name] = Camera.from_tokens(tok[1:])
        except (ValueError, IndexError) as e:
            out[name] = f"{path}: line {lineno}: bad camera line 'name MODEL W H params...' ({e or 'too few fields'})"
    return out


def _query_camera(path: Path, cam: Camera | None, db_format: str) -> tuple[Camera | None, str]:
    """The camera of one query image checked against its header -> (camera, '' or why it is unusable).

    EXIF orientation 3/6/8: the image is used rotated (as displayed) and a camera given for the stored
    size is rotated with it; a camera of another resolution with the same aspect ratio is rescaled
    (logged); another aspect ratio, a focal length <= 0 or a principal point outside the image is an error."""
    try:
        header = image_header(path)
    except OSError as e:
        return cam, str(e)
    if cam is None:
        if db_format != "inloc":
            return None, ""
        cam = inloc_query_camera(*header.size)
    try:
        if header.orientation != 1 and (cam.width, cam.height) == (header.width, header.height):
            cam = rotate_camera(cam, header.orientation)
            logger.info("query %s: EXIF orientation %d applied, camera rotated with the image", path, header.orientation)
        elif header.orientation != 1:
            logger.info("query %s: EXIF orientation %d applied (camera given for the displayed image)", path,
                        header.orientation)
        cam, note = fit_camera_to_image(cam, *header.size)
    except ValueError as e:
        return cam, f"query image {path}: {e}"
    if note:
        logger.info("query %s: %s", path, note)
    problem = camera_problem(cam)
    return cam, f"query image {path}: {problem}" if problem else ""


def list_query_images(query_dir: str | Path, queries_list: str | Path | None = None,
                      db_format: str = "rgbd") -> list[Query]:
    """Queries of a folder: the list's names first, then every other image under the folder, sorted.

    Cameras come from the query list; for ``db_format == "inloc"`` queries absent from the list
    get the iPhone 7 default (f = 3136 px at 4032 x 3024, scaled), and a dataset root (or its ``query/``
    folder) means its ``query/iphone7/`` images (``datasets.inloc.inloc_query_dir``). Others get
    ``camera=None`` and an error that names the query. Every query is checked here, before any work: image
    readable (header), not over the size limit, camera consistent with the image (see
    ``_query_camera``), list line well formed and not repeated. An unusable query carries its
    reason in ``Query.error``; the others go on.
    """
    query_dir = inloc_query_dir(query_dir) if db_format == "inloc" else Path(query_dir)
    cams = read_query_list_lines(queries_list) if queries_list else {}
    names = list(cams) + [n for n in image_files(query_dir) if n not in cams]
    out = []
    for name in names:
        path = query_dir / name
        listed = cams.get(name)
        cam = listed if isinstance(listed, Camera) else None
        err = listed if isinstance(listed, str) else ""
        if not path.exists():
            err = f"query image {path} does not exist"
        elif not err:
            cam, err = _query_camera(path, cam, db_format)
            if not err and cam is None:
                err = f"query {name} has no intrinsics in {queries_list or '(no --queries-list given)'}"
        out.append(Query(name, path, cam, err))
    return out
