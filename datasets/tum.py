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

from localize.core.records import DbImage
from datasets.rgbd_folder import depth_path, read_depth_png
from localize.core.formats import atomic_write, write_poses, write_query_list
from localize.core.geometry import Camera, Pose, depth_to_world

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


def _read_rows(path: Path) -> list[list[str]]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append(line.split())
    return rows


def read_intrinsics_file(path: str | Path) -> Camera:
    """Read 'name value' lines (the shared intrinsics.txt) as a 640x480 camera: FULL_OPENCV when
    distortion k1 k2 p1 p2 [k3] is given, else PINHOLE."""
    vals = {}
    for tok in _read_rows(Path(path)):
        if len(tok) == 2:
            try:
                vals[tok[0]] = float(tok[1])
            except ValueError:
                pass
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
    """Associated frames of a TUM sequence folder: frames.txt if present, else rgb/depth/groundtruth.txt."""
    root = Path(root)
    if (root / "frames.txt").exists():
        out = []
        for tok in _read_rows(root / "frames.txt"):
            if len(tok) != 11:
                raise ValueError(f"{root}/frames.txt: expected 11 fields per line, got {len(tok)}")
            t = [float(v) for v in tok[4:7]]
            q = [float(v) for v in tok[7:11]]
            out.append(TumFrame(float(tok[0]), tok[1], float(tok[2]), tok[3], Pose.from_tum(t, q)))
        return out
    for req in ("rgb.txt", "depth.txt", "groundtruth.txt"):
        if not (root / req).exists():
            raise FileNotFoundError(f"{root} is not a TUM sequence: neither frames.txt nor {req}")
    rgb = [(float(r[0]), r[1]) for r in _read_rows(root / "rgb.txt")]
    depth = [(float(r[0]), r[1]) for r in _read_rows(root / "depth.txt")]
    gt = np.array([[float(v) for v in r[:8]] for r in _read_rows(root / "groundtruth.txt")])
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


def frame_name(frame: TumFrame) -> str:
    """Image name of a frame: its rgb file path relative to the sequence (e.g. 'rgb/<ts>.png')."""
    return frame.rgb_file


def read_tum(root: str | Path, camera: Camera | str = "calibrated",
             frames: list[TumFrame] | None = None) -> list[DbImage]:
    """TUM frames as DbImage records; camera 'calibrated' (fr1 pinhole), 'distorted' (fr1 with its
    distortion), 'default' (525) or a Camera."""
    root = Path(root)
    cam = {"calibrated": TUM_FR1_CALIBRATED, "distorted": TUM_FR1_DISTORTED,
           "default": TUM_DEFAULT}.get(camera, camera) \
        if isinstance(camera, str) else camera
    if not isinstance(cam, Camera):
        raise ValueError(f"unknown TUM camera {camera!r}: use 'calibrated', 'distorted', 'default' or a Camera")
    frames = read_tum_frames(root) if frames is None else frames
    out = []
    for fr in frames:
        dpath = root / fr.depth_file

        def loader(dpath: Path = dpath, pose: Pose = fr.pose) -> np.ndarray:
            return depth_to_world(read_depth_png(dpath, TUM_DEPTH_SCALE), cam, pose)

        out.append(DbImage(frame_name(fr), root / fr.rgb_file, cam, fr.pose, loader))
    return out


def export_rgbd_folder(root: str | Path, out: str | Path, frames: list[TumFrame] | None = None,
                       camera: Camera | str = "calibrated") -> Path:
    """Copy TUM frames into a plain RGB-D database folder (images/, depth/, poses, cameras, scale)."""
    root, out = Path(root), Path(out)
    records = read_tum(root, camera, frames)
    frames = read_tum_frames(root) if frames is None else frames
    for rec, fr in zip(records, frames):
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
