"""In-memory rendered views and their ground truth: dense correspondences, co-visibility, apparent scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datasets.correspondences import covisibility, dense_correspondences
from datasets.inloc import estimate_cutout_pose
from localize.core.geometry import Camera, Pose, depth_to_world
from localize.core.records import DbImage


@dataclass
class View:
    """A rendered view kept in memory: name, camera, world-to-camera pose, z-depth, world XYZ (may be None)."""

    name: str
    camera: Camera
    pose: Pose
    depth: np.ndarray
    xyz: np.ndarray | None = None
    room: int = -1

    def world_xyz(self) -> np.ndarray:
        """H x W x 3 world points (NaN = none)."""
        if self.xyz is None:
            self.xyz = depth_to_world(self.depth, self.camera, self.pose)
        return self.xyz


def view_depth(v: View | DbImage) -> tuple[np.ndarray, Pose]:
    """(z-depth map, world-to-camera pose) of a view record (pose fitted by PnP for InLoc cutouts)."""
    if isinstance(v, View):
        return v.depth, v.pose
    pose = v.pose
    if pose is None:
        pose = estimate_cutout_pose(v)
    xyz = v.world_xyz()
    return (xyz.reshape(-1, 3) @ pose.R[2] + pose.t[2]).reshape(xyz.shape[:2]), pose


def gt_correspondences(a: View | DbImage, b: View | DbImage, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Dense ground-truth matches between two view records -> (uv_a N x 2, uv_b N x 2), COLMAP pixels.

    Points of A (its world XYZ) that project into B and agree with B's depth (occlusion check),
    sampled every ``step`` pixels of A. Works with ``View``, plain-folder and InLoc ``DbImage`` records."""
    depth_b, pose_b = view_depth(b)
    return dense_correspondences(a.world_xyz(), b.camera, pose_b, depth_b, step=step)


def view_covisibility(a: View | DbImage, b: View | DbImage, step: int = 8) -> float:
    """Fraction of A's valid pixels visible in B (depth-checked)."""
    depth_b, pose_b = view_depth(b)
    return covisibility(a.world_xyz(), b.camera, pose_b, depth_b, step=step)


def apparent_scale(depth_a: np.ndarray, cam_a: Camera, uv_a: np.ndarray, depth_b: np.ndarray, cam_b: Camera,
                   uv_b: np.ndarray) -> float:
    """Median ratio of the apparent size of matched surfaces in A vs B, for images resized to equal width.

    Size in pixels goes as (f / W) / z, so the ratio is (f_a / W_a) / (f_b / W_b) * z_b / z_a.
    """
    za = depth_a[np.clip(uv_a[:, 1].astype(int), 0, depth_a.shape[0] - 1), np.clip(uv_a[:, 0].astype(int), 0,
                                                                                     depth_a.shape[1] - 1)]
    zb = depth_b[np.clip(uv_b[:, 1].astype(int), 0, depth_b.shape[0] - 1), np.clip(uv_b[:, 0].astype(int), 0,
                                                                                     depth_b.shape[1] - 1)]
    ok = np.isfinite(za) & np.isfinite(zb) & (za > 0)
    if not ok.any():
        return float("nan")
    k = (cam_a.focal[0] / cam_a.width) / (cam_b.focal[0] / cam_b.width)
    return float(k * np.median(zb[ok] / za[ok]))
