"""TUM RGB-D reader (``frames.txt`` layout and the original rgb/depth/groundtruth files).

TUM poses are CAMERA-TO-WORLD (tx ty tz qx qy qz qw); records carry WORLD-TO-CAMERA poses.
Depth PNGs are uint16, metres = value / 5000, registered pixel-for-pixel to the RGB image.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from datasets.rgbd_folder import depth_path, load_depth_map
from datasets.textrows import numbered_rows, parse_floats
from localize.core.errors import DatabaseError
from localize.core.formats import atomic_write, write_poses, write_query_list
from localize.core.geometry import Camera, Pose, depth_to_world
from localize.core.records import DbImage

TUM_DEPTH_SCALE = 5000.0
# fr1 calibrated RGB camera: pinhole part only (distortion ignored), the full OpenCV model with its
# radial/tangential distortion (k1 k2 p1 p2 k3), and TUM's default pinhole for the registered depth
TUM_FR1_CALIBRATED = Camera("PINHOLE", 640, 480, (517.306408, 516.469215, 318.643040, 255.313989))
TUM_FR1_DISTORTED = Camera("FULL_OPENCV", 640, 480, (517.306408, 516.469215, 318.643040, 255.313989,
                                                     0.262383, -0.953104, -0.005358, 0.002628, 1.163314, 0.0, 0.0, 0.0))
TUM_DEFAULT = Camera("PINHOLE", 640, 480, (525.0, 525.0, 319.5, 239.5))
MAX_ASSOC_DT = 0.02


@dataclass(frozen=True)
class TumFrame:
    """One associated RGB-D frame: timestamps, relative file paths, WORLD-TO-CAMERA pose."""

    rgb_ts: float
    rgb_file: str
    depth_ts: float
    depth_file: str
    pose: Pose


def read_intrinsics_file(path: str | Path) -> Camera:
    """Read 'name value' lines (the shared intrinsics.txt) as a 640x480 camera: FULL_OPENCV when
    distortion k1 k2 p1 p2 [k3] is given, else PINHOLE."""
    vals = {}
    for _, tok in numbered_rows(path):
        if len(tok) == 2:
            try:
                vals[tok[0]] = float(tok[1])
            except ValueError:
                pass
    missing = [k for k in ("fx", "fy", "cx", "cy") if k not in vals]
    if missing:
        raise DatabaseError(f"{path}: no numeric value for {', '.join(missing)}")
    pin = (vals["fx"], vals["fy"], vals["cx"], vals["cy"])
    if all(k in vals for k in ("k1", "k2", "p1", "p2")):
        dist = tuple(vals[k] for k in ("k1", "k2", "p1", "p2")) + (vals.get("k3", 0.0), 0.0, 0.0, 0.0)
        return Camera("FULL_OPENCV", 640, 480, pin + dist)
    return Camera("PINHOLE", 640, 480, pin)


def interpolate_trajectory(stamps: np.ndarray, txyz: np.ndarray, qxyzw: np.ndarray, t: float,
                           max_gap: float = 0.1) -> tuple[np.ndarray, np.ndarray] | None:
    """Camera-to-world (translation, quaternion x,y,z,w) at time t: linear + slerp; None if outside."""
    i = int(np.searchsorted(stamps, t))
    if i == 0 or i >= len(stamps):
        return None
    t0, t1 = stamps[i - 1], stamps[i]
    if t1 - t0 > max_gap:
        return None
    a = (t - t0) / (t1 - t0)
    tr = (1 - a) * txyz[i - 1] + a * txyz[i]
    rot = Slerp([0.0, 1.0], Rotation.from_quat(qxyzw[i - 1:i + 1]))([a])[0]
    return tr, rot.as_quat()


def read_tum_frames(root: str | Path) -> list[TumFrame]:
    """Associated frames of a TUM sequence folder: frames.txt if present, else rgb/depth/groundtruth.txt.

    Raises DatabaseError naming the file (and line) when a list is missing or malformed."""
    root = Path(root)
    if (root / "frames.txt").exists():
        path = root / "frames.txt"
        out = []
        for lineno, tok in numbered_rows(path):
            if len(tok) != 11:
                raise DatabaseError(f"{path}: line {lineno}: expected 11 fields 'rgb_ts rgb_file depth_ts depth_file "
                                    f"tx ty tz qx qy qz qw', got {len(tok)}")
            ts = parse_floats(path, lineno, [tok[0], tok[2]], "the timestamps")
            pose = parse_floats(path, lineno, tok[4:11], "the pose")
            out.append(TumFrame(ts[0], tok[1], ts[1], tok[3], Pose.from_tum(pose[:3], pose[3:])))
        return out
    for req in ("rgb.txt", "depth.txt", "groundtruth.txt"):
        if not (root / req).exists():
            raise DatabaseError(f"{root / req}: missing, and no frames.txt: {root} is not a TUM sequence")
    rgb = _timestamped_files(root / "rgb.txt")
    depth = _timestamped_files(root / "depth.txt")
    gt = _trajectory(root / "groundtruth.txt")
    order = np.argsort(gt[:, 0])
    gt = gt[order]
    dts = np.array([d[0] for d in depth])
    out = []
    for ts, f in rgb:
        j = int(np.argmin(np.abs(dts - ts))) if len(dts) else -1
        if j < 0 or abs(dts[j] - ts) >= MAX_ASSOC_DT:
            continue
        pose = interpolate_trajectory(gt[:, 0], gt[:, 1:4], gt[:, 4:8], ts)
        if pose is None:
            continue
        out.append(TumFrame(ts, f, depth[j][0], depth[j][1], Pose.from_tum(pose[0], pose[1])))
    return out


def _timestamped_files(path: Path) -> list[tuple[float, str]]:
    """(timestamp s, file) rows of rgb.txt / depth.txt; DatabaseError naming the line of a malformed one."""
    out = []
    for lineno, tok in numbered_rows(path):
        if len(tok) < 2:
            raise DatabaseError(f"{path}: line {lineno}: expected 'timestamp file', got {len(tok)} field(s)")
        out.append((parse_floats(path, lineno, tok[:1], "the timestamp")[0], tok[1]))
    return out


def _trajectory(path: Path) -> np.ndarray:
    """groundtruth.txt as an N x 8 array (timestamp tx ty tz qx qy qz qw); DatabaseError naming a malformed line."""
    rows = []
    for lineno, tok in numbered_rows(path):
        if len(tok) < 8:
            raise DatabaseError(f"{path}: line {lineno}: expected 'timestamp tx ty tz qx qy qz qw', "
                                f"got {len(tok)} fields")
        rows.append(parse_floats(path, lineno, tok[:8], "the timestamp and pose"))
    if not rows:
        raise DatabaseError(f"{path}: no poses")
    return np.array(rows)


def frame_name(frame: TumFrame) -> str:
    """Image name of a frame: its rgb file path relative to the sequence (e.g. 'rgb/<ts>.png')."""
    return frame.rgb_file


def read_tum(root: str | Path, camera: Camera | str = "calibrated",
             frames: list[TumFrame] | None = None) -> list[DbImage]:
    """TUM frames as DbImage records; camera 'calibrated' (fr1 pinhole), 'distorted' (fr1 with its
    distortion), 'default' (525) or a Camera."""
    root = Path(root)
    named = {"calibrated": TUM_FR1_CALIBRATED, "distorted": TUM_FR1_DISTORTED, "default": TUM_DEFAULT}
    if isinstance(camera, str):
        if camera not in named:
            raise ValueError(f"unknown TUM camera {camera!r}: use 'calibrated', 'distorted', 'default' or a Camera")
        cam = named[camera]
    elif isinstance(camera, Camera):
        cam = camera
    else:
        raise TypeError(f"TUM camera must be a name or a Camera, got {type(camera).__name__}")
    frames = read_tum_frames(root) if frames is None else frames
    out = []
    for fr in frames:
        dpath = root / fr.depth_file

        def loader(dpath: Path = dpath, pose: Pose = fr.pose) -> np.ndarray:
            return depth_to_world(load_depth_map(dpath, TUM_DEPTH_SCALE, cam), cam, pose)

        out.append(DbImage(frame_name(fr), root / fr.rgb_file, cam, fr.pose, loader, depth_files=(dpath,)))
    return out


def export_rgbd_folder(root: str | Path, out: str | Path, frames: list[TumFrame] | None = None,
                       camera: Camera | str = "calibrated") -> Path:
    """Copy TUM frames into a plain RGB-D database folder (images/, depth/, poses, cameras, scale)."""
    root, out = Path(root), Path(out)
    records = read_tum(root, camera, frames)
    frames = read_tum_frames(root) if frames is None else frames
    for rec, fr in zip(records, frames, strict=True):
        dst = out / "images" / rec.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rec.image_path, dst)
        dd = depth_path(out, rec.name)
        dd.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / fr.depth_file, dd)
    with atomic_write(out / "depth_scale.txt") as f:
        f.write(f"{TUM_DEPTH_SCALE:g}\n")
    write_poses(out / "poses.txt", {r.name: r.pose for r in records})
    write_query_list(out / "cameras.txt", {r.name: r.camera for r in records})
    return out
