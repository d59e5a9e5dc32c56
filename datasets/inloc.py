"""InLoc native layout: reader and writer (database cutouts, alignments) and query intrinsics.

Layout (``root`` is InLoc's ``database/`` folder, or the dataset root that contains it)::

    cutouts/<floor>/<scan>/<name>.jpg        perspective cutout (InLoc: 1600 x 1200, 60 deg FOV)
    cutouts/<floor>/<scan>/<name>.jpg.mat    XYZcut (H x W x 3, SCAN frame, NaN = no depth), RGBcut
    alignments/<floor>/transformations/<building>_trans_<scan>.txt
                                             lines 8-11 (1-based): P_after, 4 x 4, scan -> world

Database names are relative to ``cutouts/``: ``DUC1/024/DUC_cutout_024_30_-30.jpg``; the building
is the first three characters of the file name. Queries (``query/iphone7/IMG_xxxx.JPG``) use
f = 4032 * 28 / 36 = 3136 px at 4032 x 3024, principal point at the image centre.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import cv2
import numpy as np
import scipy.io
from PIL import Image

from datasets.rgbd_folder import write_image
from localize.core.errors import DatabaseError, QueryError
from localize.core.formats import atomic_write
from localize.core.geometry import Camera, Pose
from localize.core.records import DbImage

INLOC_QUERY_SIZE = (4032, 3024)
INLOC_QUERY_FOCAL = 4032 * 28 / 36  # = 3136 px at 4032 x 3024
CUTOUT_FOV_DEG = 60.0


def inloc_query_camera(width: int = 4032, height: int = 3024) -> Camera:
    """iPhone 7 query camera of InLoc, scaled to an image of width x height."""
    return Camera.pinhole(4032, 3024, INLOC_QUERY_FOCAL).scaled(width, height)


def inloc_query_dir(path: str | Path) -> Path:
    """The InLoc query folder for ``path``: ``path/query/iphone7`` or ``path/iphone7`` when present (the dataset
    root or its ``query/`` folder), else ``path``; QueryError for a dataset root without query images, so
    that database cutouts are never taken for queries."""
    path = Path(path)
    for sub in (Path("query", "iphone7"), Path("iphone7")):
        if (path / sub).is_dir():
            return path / sub
    if (path / "cutouts").is_dir() or (path / "database" / "cutouts").is_dir():
        raise QueryError(f"{path} is an InLoc database folder without query/iphone7/: give the query folder")
    return path


def cutout_camera(width: int, height: int, fov_deg: float = CUTOUT_FOV_DEG) -> Camera:
    """Pinhole camera of a cutout with the given horizontal field of view."""
    return Camera.pinhole(width, height, width / (2.0 * math.tan(math.radians(fov_deg) / 2)))


def _database_root(root: str | Path) -> Path:
    """The folder holding cutouts/ and alignments/: ``root`` or ``root/database``; DatabaseError if neither."""
    root = Path(root)
    if (root / "cutouts").is_dir():
        return root
    if (root / "database" / "cutouts").is_dir():
        return root / "database"
    raise DatabaseError(f"{root}: no cutouts/ (nor database/cutouts/) folder, not an InLoc database")


def alignment_path(root: Path, floor: str, building: str, scan: str) -> Path:
    """Path of the alignment file of one scan."""
    return root / "alignments" / floor / "transformations" / f"{building}_trans_{scan}.txt"


def read_p_after(path: str | Path) -> np.ndarray:
    """P_after (4 x 4, scan -> world) from lines 8-11 of an InLoc alignment file; DatabaseError if unusable."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatabaseError(f"{path}: cannot read alignment file ({e.__class__.__name__}: {e})") from e
    if len(lines) < 11:
        raise DatabaseError(f"{path}: alignment file has {len(lines)} lines, P_after needs lines 8-11")
    rows = []
    for i in range(7, 11):
        try:
            row = [float(v) for v in lines[i].split()]
        except ValueError:
            row = []
        if len(row) != 4:
            raise DatabaseError(f"{path}: line {i + 1}: expected 4 numbers of P_after, got {lines[i].strip()!r}")
        rows.append(row)
    return np.array(rows)


def read_xyzcut(mat_path: str | Path) -> np.ndarray:
    """XYZcut of a cutout .jpg.mat (H x W x 3, scan frame, NaN = no depth); DatabaseError if unusable."""
    if not Path(mat_path).is_file():
        raise DatabaseError(f"{mat_path}: cutout point file (XYZcut) missing")
    try:
        m = scipy.io.loadmat(str(mat_path), variable_names=["XYZcut"])
    except (OSError, ValueError, TypeError) as e:
        raise DatabaseError(f"{mat_path}: cannot read cutout points ({e.__class__.__name__}: {e})") from e
    if "XYZcut" not in m:
        raise DatabaseError(f"{mat_path}: no XYZcut variable")
    xyz = np.asarray(m["XYZcut"], dtype=np.float64)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise DatabaseError(f"{mat_path}: XYZcut has shape {xyz.shape}, expected H x W x 3")
    return xyz


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a cutout image from its header; DatabaseError naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatabaseError(f"{path}: cannot read cutout image ({e.__class__.__name__}: {e})") from e


def read_inloc_db(root: str | Path) -> list[DbImage]:
    """All cutouts of an InLoc database as DbImage records (pose None: cutouts store points only).

    Raises DatabaseError naming the file for a missing folder, image or alignment file; a cutout's
    points (.jpg.mat) and P_after are read when its record's ``world_xyz`` is first called."""
    root = _database_root(root)
    cut = root / "cutouts"
    out = []
    p_after_cache: dict[Path, np.ndarray] = {}
    checked: set[Path] = set()
    for img in sorted(cut.glob("*/*/*.jpg")):
        floor, scan = img.parent.parent.name, img.parent.name
        name = f"{floor}/{scan}/{img.name}"
        apath = alignment_path(root, floor, img.name[:3], scan)
        mpath = img.with_name(img.name + ".mat")
        if apath not in checked:
            if not apath.is_file():
                raise DatabaseError(f"{apath}: alignment file missing (needed by cutout {name})")
            checked.add(apath)
        w, h = _image_size(img)

        def loader(mpath: Path = mpath, apath: Path = apath) -> np.ndarray:
            if apath not in p_after_cache:
                p_after_cache[apath] = read_p_after(apath)
            P = p_after_cache[apath]
            xyz = read_xyzcut(mpath)
            flat = xyz.reshape(-1, 3) @ P[:3, :3].T + P[:3, 3]
            return flat.reshape(xyz.shape)

        out.append(DbImage(name, img, cutout_camera(w, h), None, loader, floor=floor, depth_files=(mpath, apath)))
    if not out:
        raise DatabaseError(f"{cut}: no cutouts found as <floor>/<scan>/*.jpg")
    return out


def write_inloc_cutout(root: str | Path, floor: str, scan: str, name: str, rgb: np.ndarray,
                       xyz_scan: np.ndarray) -> Path:
    """Write one cutout: <name> jpg and <name>.mat with XYZcut (scan frame) and RGBcut."""
    path = Path(root) / "cutouts" / floor / scan / name
    write_image(path, rgb)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"XYZcut": np.asarray(xyz_scan, dtype=np.float64), "RGBcut": np.asarray(rgb, np.uint8)},
                     do_compression=True)
    data = bytearray(buf.getvalue())
    # the MAT-5 text header holds a creation time: replace it so equal inputs give identical files
    data[:116] = b"MATLAB 5.0 MAT-file, written by datasets.inloc".ljust(116, b" ")
    with atomic_write(path.with_name(path.name + ".mat"), "wb") as f:
        f.write(bytes(data))
    return path


def write_inloc_alignment(root: str | Path, floor: str, building: str, scan: str, P_after: np.ndarray,
                          P_before: np.ndarray | None = None) -> Path:
    """Write an alignment file with P_before on lines 3-6 and P_after (scan -> world) on lines 8-11."""
    path = alignment_path(Path(root), floor, building, scan)
    P_before = np.eye(4) if P_before is None else P_before
    with atomic_write(path) as f:
        f.write(f"{building}_trans_{scan}\n")
        f.write("P_before_GICP\n")
        f.write(_matrix_rows(P_before))
        f.write("P_after_GICP\n")
        f.write(_matrix_rows(P_after))
    return path


def _matrix_rows(P: np.ndarray) -> str:
    """A matrix as text lines of space-separated values (10 decimals), as in InLoc's alignment files."""
    return "".join(" ".join(f"{v:.10f}" for v in r) + "\n" for r in np.asarray(P))


def floor_of(db_name: str) -> str:
    """Floor label of an InLoc database name: the first folder after an optional '.../cutouts/' prefix
    ('DUC1/024/x.jpg' -> 'DUC1'); '' for a name without a folder."""
    parts = Path(db_name).parts
    if "cutouts" in parts:
        parts = parts[parts.index("cutouts") + 1:]
    return parts[0] if len(parts) > 1 else ""


def estimate_cutout_pose(db: DbImage, num_points: int = 2000, seed: int = 0) -> Pose:
    """World-to-camera pose of a cutout, fitted by PnP to its own pixel -> world point map."""
    xyz = db.world_xyz()
    valid = np.flatnonzero(np.isfinite(xyz).all(-1).ravel())
    if len(valid) < 6:
        raise ValueError(f"{db.name}: fewer than 6 valid points, cannot fit its pose")
    rng = np.random.default_rng(seed)
    sel = rng.choice(valid, size=min(num_points, len(valid)), replace=False)
    rows, cols = np.unravel_index(sel, xyz.shape[:2])
    pts2d = np.stack([cols, rows], 1).astype(np.float64)  # OpenCV pixel centres (0-based)
    K = db.camera.K.copy()
    K[:2, 2] -= 0.5  # COLMAP -> OpenCV principal point
    ok, rvec, tvec = cv2.solvePnP(xyz.reshape(-1, 3)[sel], pts2d, K, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise ValueError(f"{db.name}: PnP on its own points failed")
    return Pose(cv2.Rodrigues(rvec)[0], tvec.ravel())
