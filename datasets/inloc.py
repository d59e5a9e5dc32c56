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

import math
from pathlib import Path

import numpy as np
import scipy.io

from localize.core.records import DbImage
from localize.core.formats import atomic_write
from localize.core.geometry import Camera, Pose

INLOC_QUERY_SIZE = (4032, 3024)
INLOC_QUERY_FOCAL = 4032 * 28 / 36  # = 3136 px at 4032 x 3024
CUTOUT_FOV_DEG = 60.0


def inloc_query_camera(width: int = 4032, height: int = 3024) -> Camera:
    """iPhone 7 query camera of InLoc, scaled to an image of width x height."""
    return Camera.pinhole(4032, 3024, INLOC_QUERY_FOCAL).scaled(width, height)


def cutout_camera(width: int, height: int, fov_deg: float = CUTOUT_FOV_DEG) -> Camera:
    """Pinhole camera of a cutout with the given horizontal field of view."""
    return Camera.pinhole(width, height, width / (2.0 * math.tan(math.radians(fov_deg) / 2)))


def _database_root(root: str | Path) -> Path:
    root = Path(root)
    if (root / "cutouts").is_dir():
        return root
    if (root / "database" / "cutouts").is_dir():
        return root / "database"
    raise FileNotFoundError(f"{root} has no cutouts/ (nor database/cutouts/): not an InLoc database")


def alignment_path(root: Path, floor: str, building: str, scan: str) -> Path:
    """Path of the alignment file of one scan."""
    return root / "alignments" / floor / "transformations" / f"{building}_trans_{scan}.txt"


def read_p_after(path: str | Path) -> np.ndarray:
    """P_after (4 x 4, scan -> world) from lines 8-11 of an InLoc alignment file."""
    with open(path) as f:
        lines = f.readlines()
    if len(lines) < 11:
        raise ValueError(f"{path}: alignment file has {len(lines)} lines, P_after needs lines 8-11")
    P = np.array([[float(v) for v in lines[i].split()] for i in range(7, 11)])
    if P.shape != (4, 4):
        raise ValueError(f"{path}: lines 8-11 do not hold a 4x4 matrix")
    return P


def read_xyzcut(mat_path: str | Path) -> np.ndarray:
    """XYZcut of a cutout .jpg.mat (H x W x 3, scan frame, NaN = no depth)."""
    try:
        m = scipy.io.loadmat(str(mat_path), variable_names=["XYZcut"])
    except (OSError, ValueError) as e:
        raise IOError(f"cannot read cutout points {mat_path}: {e}") from e
    if "XYZcut" not in m:
        raise IOError(f"{mat_path} has no XYZcut")
    return np.asarray(m["XYZcut"], dtype=np.float64)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def read_inloc_db(root: str | Path) -> list[DbImage]:
    """All cutouts of an InLoc database as DbImage records (pose None: cutouts store points only)."""
    root = _database_root(root)
    cut = root / "cutouts"
    out = []
    p_after_cache: dict[Path, np.ndarray] = {}
    for img in sorted(cut.glob("*/*/*.jpg")):
        floor, scan = img.parent.parent.name, img.parent.name
        name = f"{floor}/{scan}/{img.name}"
        apath = alignment_path(root, floor, img.name[:3], scan)
        mpath = img.with_name(img.name + ".mat")
        w, h = _image_size(img)

        def loader(mpath: Path = mpath, apath: Path = apath) -> np.ndarray:
            if apath not in p_after_cache:
                p_after_cache[apath] = read_p_after(apath)
            P = p_after_cache[apath]
            xyz = read_xyzcut(mpath)
            flat = xyz.reshape(-1, 3) @ P[:3, :3].T + P[:3, 3]
            return flat.reshape(xyz.shape)

        out.append(DbImage(name, img, cutout_camera(w, h), None, loader, floor=floor))
    if not out:
        raise FileNotFoundError(f"no cutouts found under {cut}/<floor>/<scan>/*.jpg")
    return out


def write_inloc_cutout(root: str | Path, floor: str, scan: str, name: str, rgb: np.ndarray,
                       xyz_scan: np.ndarray) -> Path:
    """Write one cutout: <name> jpg and <name>.mat with XYZcut (scan frame) and RGBcut."""
    from datasets.rgbd_folder import write_image

    import io

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
    rows = lambda P: "".join(" ".join(f"{v:.10f}" for v in r) + "\n" for r in np.asarray(P))  # noqa: E731
    with atomic_write(path) as f:
        f.write(f"{building}_trans_{scan}\n")
        f.write("P_before_GICP\n")
        f.write(rows(P_before))
        f.write("P_after_GICP\n")
        f.write(rows(P_after))
    return path


def floor_of(db_name: str) -> str:
    """Floor label of an InLoc database name ('DUC1/024/...' or '.../cutouts/DUC1/024/...')."""
    parts = Path(db_name).parts
    if "cutouts" in parts:
        parts = parts[parts.index("cutouts") + 1:]
    return parts[0]


def estimate_cutout_pose(db: DbImage, num_points: int = 2000, seed: int = 0) -> Pose:
    """World-to-camera pose of a cutout, fitted by PnP to its own pixel -> world point map."""
    import cv2

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
