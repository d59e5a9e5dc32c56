"""Absolute pose from 2D–3D matches: PnP inside RANSAC (pycolmap >= 4 or OpenCV) + refinement.

Conventions (see ``localize.core.geometry``): 2D points are query pixels in the COLMAP convention
(centre of the top-left pixel = (0.5, 0.5)); 3D points are world coordinates in metres; the
returned ``Pose`` is WORLD-TO-CAMERA. pycolmap uses the same pixel convention as we do. For
OpenCV, the intrinsics matrix and the 2D points are both shifted by -0.5 px so that they are in
OpenCV's convention (top-left centre = (0, 0)); the pose is unaffected by a consistent shift.

No exception escapes :func:`estimate_pose`: every failure is a ``PoseResult`` with
``success=False`` and a human-readable ``reason``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from localize.core.geometry import Camera, Pose, xyzw_to_wxyz

logger = logging.getLogger(__name__)

BACKENDS = ("pycolmap", "opencv")


@dataclass
class PnPConfig:
    """PnP-RANSAC settings; ``max_error`` is the inlier threshold in query pixels, or with ``reference_size``
    in pixels of an image whose longer side is ``reference_size``: a larger query gets the threshold scaled
    by its longer side / ``reference_size``, a smaller one keeps ``max_error`` (``threshold_px``)."""

    backend: str = "pycolmap"
    max_error: float = 8.0
    reference_size: int | None = None
    min_points: int = 6
    min_inliers: int = 6
    confidence: float = 0.99999
    min_num_trials: int = 100
    max_num_trials: int = 10000
    min_inlier_ratio: float = 0.01
    seed: int = 0
    refine: bool = True
    opencv_flag: str = "SOLVEPNP_SQPNP"  # minimal solver inside OpenCV RANSAC (symbolic name)
    collinear_tol: float = 1e-6  # relative 2nd singular value of the 3D points below which they count as collinear

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown PnP backend {self.backend!r}; use one of {BACKENDS}")
        if self.reference_size is not None and int(self.reference_size) <= 0:
            raise ValueError(f"reference_size must be positive or None, got {self.reference_size}")

    def threshold_px(self, camera: Camera) -> float:
        """The inlier threshold in pixels of this query camera (see the class docstring)."""
        if self.reference_size is None:
            return float(self.max_error)
        return float(self.max_error) * max(1.0, max(camera.width, camera.height) / float(self.reference_size))


@dataclass
class PoseResult:
    """Outcome of one PnP: ``pose`` is WORLD-TO-CAMERA (None on failure); mask over the input points."""

    success: bool
    reason: str = ""
    pose: Pose | None = None
    num_points: int = 0
    num_inliers: int = 0
    inlier_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    backend: str = ""
    time_s: float = 0.0

    @property
    def inlier_ratio(self) -> float:
        """num_inliers / num_points (0 when there are no points)."""
        return self.num_inliers / self.num_points if self.num_points else 0.0

    def summary(self) -> str:
        """One line for logs."""
        if self.success:
            return f"ok ({self.num_inliers}/{self.num_points} inliers, {self.backend}, {self.time_s * 1e3:.1f} ms)"
        return f"failed: {self.reason}"


def _failure(reason: str, n: int, backend: str, t0: float) -> PoseResult:
    logger.debug("PnP failure: %s", reason)
    return PoseResult(False, reason, None, n, 0, np.zeros(n, dtype=bool), backend, time.perf_counter() - t0)


def degeneracy_reason(points3d: np.ndarray, collinear_tol: float = 1e-6) -> str | None:
    """Why a set of N x 3 world points cannot give a unique pose (coincident/collinear), or None."""
    X = np.asarray(points3d, dtype=np.float64)
    if len(X) == 0:
        return "no points"
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    scale = max(float(np.abs(X).max()), 1e-12)
    if s[0] <= 1e-12 * scale * np.sqrt(len(X)):
        return "degenerate 3D points (all coincident)"
    if s[1] <= collinear_tol * s[0]:
        return "degenerate 3D points (collinear)"
    return None


def reprojection_errors(points2d: np.ndarray, points3d: np.ndarray, camera: Camera, pose: Pose) -> np.ndarray:
    """Reprojection error in pixels per point (inf for points behind the camera)."""
    uv, front = camera.project(pose.transform(points3d))
    err = np.linalg.norm(uv - np.asarray(points2d, dtype=np.float64), axis=1)
    err[~front] = np.inf
    return err


def _pose_is_sane(pose: Pose, inliers3d: np.ndarray | None = None, max_depth_ratio: float = 30.0) -> bool:
    """Finite rotation/translation, and (given the inlier points) not a degenerate far-away camera.

    A camera whose median inlier depth exceeds ``max_depth_ratio`` times the spread of the inlier
    points sees them as (almost) one point: such a pose is a RANSAC artefact, not a localization.
    """
    ok = pose.is_finite() and abs(np.linalg.det(pose.R) - 1.0) < 1e-6 and np.allclose(
        pose.R @ pose.R.T, np.eye(3), atol=1e-6)
    if not ok or inliers3d is None or len(inliers3d) < 3:
        return ok
    depth = float(np.median(pose.transform(inliers3d)[:, 2]))
    spread = float(np.median(np.linalg.norm(inliers3d - np.median(inliers3d, axis=0), axis=1)))
    return depth <= max_depth_ratio * max(spread, 1e-9)


# ----------------------------------------------------------------------------- backends
def _pycolmap_camera(camera: Camera):
    import pycolmap

    return pycolmap.Camera(**camera.to_pycolmap_dict())


def _run_pycolmap(p2: np.ndarray, p3: np.ndarray, camera: Camera, conf: PnPConfig) -> tuple[Pose, np.ndarray] | str:
    import pycolmap

    est = pycolmap.AbsolutePoseEstimationOptions()
    est.estimate_focal_length = False
    est.ransac.max_error = float(conf.max_error)
    est.ransac.confidence = float(conf.confidence)
    est.ransac.min_num_trials = int(conf.min_num_trials)
    est.ransac.max_num_trials = int(conf.max_num_trials)
    est.ransac.min_inlier_ratio = float(conf.min_inlier_ratio)
    est.ransac.random_seed = int(conf.seed)
    est.ransac.num_threads = 1  # deterministic given the seed
    ref = pycolmap.AbsolutePoseRefinementOptions()
    ref.refine_focal_length = False
    ref.refine_extra_params = False
    if not conf.refine:
        ref.max_num_iterations = 0
    out = pycolmap.estimate_and_refine_absolute_pose(p2, p3, _pycolmap_camera(camera), est, ref)
    if out is None:
        return "RANSAC failed (pycolmap found no pose)"
    rig = out["cam_from_world"]
    pose = Pose.from_qvec_tvec(xyzw_to_wxyz(np.asarray(rig.rotation.quat)), np.asarray(rig.translation))
    return pose, np.asarray(out["inlier_mask"], dtype=bool).reshape(-1)


def _run_opencv(p2: np.ndarray, p3: np.ndarray, camera: Camera, conf: PnPConfig) -> tuple[Pose, np.ndarray] | str:
    import cv2

    K = camera.K.copy()
    K[0, 2] -= 0.5  # COLMAP -> OpenCV pixel convention (applied to K and the points alike)
    K[1, 2] -= 0.5
    img = np.ascontiguousarray(p2 - 0.5, dtype=np.float64)
    obj = np.ascontiguousarray(p3, dtype=np.float64)
    dist = camera.distortion if camera.has_distortion() else None
    flag = getattr(cv2, conf.opencv_flag)
    cv2.setRNGSeed(int(conf.seed))
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        obj, img, K, dist, iterationsCount=int(conf.max_num_trials), reprojectionError=float(conf.max_error),
        confidence=float(min(conf.confidence, 0.999999)), flags=flag)
    if not ok or inl is None or len(inl) == 0:
        return "RANSAC failed (OpenCV found no pose)"
    mask = np.zeros(len(p2), dtype=bool)
    mask[np.asarray(inl).reshape(-1)] = True
    if conf.refine and mask.sum() >= 4:
        rvec, tvec = cv2.solvePnPRefineLM(obj[mask], img[mask], K, dist, rvec, tvec)
        # re-evaluate the inlier set with the refined pose, refine once more on it
        R, _ = cv2.Rodrigues(rvec)
        pose = Pose(R, tvec.reshape(3))
        mask2 = reprojection_errors(p2, p3, camera, pose) <= conf.max_error
        if mask2.sum() >= max(4, conf.min_inliers):
            mask = mask2
            rvec, tvec = cv2.solvePnPRefineLM(obj[mask], img[mask], K, dist, rvec, tvec)
    R, _ = cv2.Rodrigues(rvec)
    return Pose(R, np.asarray(tvec, dtype=np.float64).reshape(3)), mask


def estimate_pose(points2d: np.ndarray, points3d: np.ndarray, camera: Camera,
                  conf: PnPConfig | None = None) -> PoseResult:
    """Query pixels N x 2 (COLMAP convention) + world points N x 3 (m) -> PoseResult (world-to-camera).

    Non-finite correspondences are ignored (their inlier flag is False). Never raises.
    """
    t0 = time.perf_counter()
    conf = conf or PnPConfig()
    backend = conf.backend
    try:
        p2 = np.asarray(points2d, dtype=np.float64).reshape(-1, 2)
        p3 = np.asarray(points3d, dtype=np.float64).reshape(-1, 3)
    except (ValueError, TypeError) as e:
        return _failure(f"bad input arrays: {e}", 0, backend, t0)
    n = len(p2)
    if len(p3) != n:
        return _failure(f"bad input: {n} 2D points but {len(p3)} 3D points", n, backend, t0)
    finite = np.isfinite(p2).all(1) & np.isfinite(p3).all(1)
    nf = int(finite.sum())
    min_pts = max(int(conf.min_points), 4)
    if nf < min_pts:
        extra = f", {n - nf} non-finite dropped" if nf < n else ""
        return _failure(f"too few matches ({nf} < {min_pts}{extra})", n, backend, t0)
    bad = degeneracy_reason(p3[finite], conf.collinear_tol)
    if bad:
        return _failure(bad, n, backend, t0)
    if conf.reference_size is not None:  # the backends see the threshold in this query's pixels
        conf = dataclasses.replace(conf, max_error=conf.threshold_px(camera), reference_size=None)
    try:
        if backend == "pycolmap":
            out = _run_pycolmap(p2[finite], p3[finite], camera, conf)
        else:
            out = _run_opencv(p2[finite], p3[finite], camera, conf)
    except Exception as e:  # noqa: BLE001 - the pipeline must never see an exception from here
        logger.warning("PnP backend %s raised: %s", backend, e)
        return _failure(f"{backend} error: {type(e).__name__}: {e}", n, backend, t0)
    if isinstance(out, str):
        return _failure(out, n, backend, t0)
    pose, sub_mask = out
    mask = np.zeros(n, dtype=bool)
    mask[np.flatnonzero(finite)[sub_mask]] = True
    ninl = int(mask.sum())
    if not _pose_is_sane(pose):
        return _failure("degenerate pose (non-finite or not a rotation)", n, backend, t0)
    if ninl < conf.min_inliers:
        r = PoseResult(False, f"too few inliers ({ninl} < {conf.min_inliers})", pose, n, ninl, mask, backend,
                       time.perf_counter() - t0)
        return r
    # cheirality: the inliers must lie in front of the camera
    if (pose.transform(p3[mask])[:, 2] <= 0).mean() > 0.5:
        return _failure("degenerate pose (inliers behind the camera)", n, backend, t0)
    if not _pose_is_sane(pose, p3[mask]):
        return _failure("degenerate pose (camera far away from its inliers, which look like one point)", n,
                        backend, t0)
    return PoseResult(True, "", pose, n, ninl, mask, backend, time.perf_counter() - t0)
