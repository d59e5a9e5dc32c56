"""The project's geometric conventions, in one place.

* ``Pose`` is always WORLD-TO-CAMERA: ``x_cam = R @ x_world + t``; camera centre ``C = -R.T @ t``.
* Quaternions are written (w, x, y, z) (visuallocalization.net / COLMAP text order) unless a
  function name says ``xyzw`` (scipy, pycolmap ``Rigid3d.rotation.quat``, TUM files).
* Camera axes: x right, y down, z forward (OpenCV / COLMAP).
* Pixels follow COLMAP: the centre of the top-left pixel is (0.5, 0.5), so an image of width W
  spans [0, W] in x.  Array index (row i, col j) has its centre at pixel (j + 0.5, i + 0.5).
* Distances in metres, angles in degrees unless stated otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
}


# ----------------------------------------------------------------------------- rotations
def quat_wxyz_to_matrix(q: Sequence[float]) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix (normalises the input)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat_wxyz(R: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def xyzw_to_wxyz(q: Sequence[float]) -> np.ndarray:
    """Reorder a quaternion from (x, y, z, w) (scipy, pycolmap, TUM) to (w, x, y, z)."""
    q = np.asarray(q, dtype=np.float64)
    return np.array([q[3], q[0], q[1], q[2]])


def wxyz_to_xyzw(q: Sequence[float]) -> np.ndarray:
    """Reorder a quaternion from (w, x, y, z) to (x, y, z, w)."""
    q = np.asarray(q, dtype=np.float64)
    return np.array([q[1], q[2], q[3], q[0]])


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix, in degrees (0..180)."""
    c = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(c)))


# ----------------------------------------------------------------------------- poses
@dataclass(frozen=True)
class Pose:
    """Rigid WORLD-TO-CAMERA transform: x_cam = R @ x_world + t (R 3x3, t 3-vector in metres)."""

    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "R", np.asarray(self.R, dtype=np.float64).reshape(3, 3))
        object.__setattr__(self, "t", np.asarray(self.t, dtype=np.float64).reshape(3))

    # constructors ----------------------------------------------------------
    @classmethod
    def identity(cls) -> Pose:
        """The identity pose (camera at the world origin looking along +z)."""
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_qvec_tvec(cls, qvec_wxyz: Sequence[float], tvec: Sequence[float]) -> Pose:
        """World-to-camera pose from a (w, x, y, z) quaternion and translation."""
        return cls(quat_wxyz_to_matrix(qvec_wxyz), np.asarray(tvec, dtype=np.float64))

    @classmethod
    def from_matrix(cls, P: np.ndarray) -> Pose:
        """World-to-camera pose from a 3x4 [R|t] or 4x4 matrix (InLoc ``P``)."""
        P = np.asarray(P, dtype=np.float64)
        return cls(P[:3, :3], P[:3, 3])

    @classmethod
    def from_cam_to_world(cls, R_c2w: np.ndarray, C: Sequence[float]) -> Pose:
        """World-to-camera pose from a camera-to-world rotation and the camera centre (TUM)."""
        R_c2w = np.asarray(R_c2w, dtype=np.float64)
        C = np.asarray(C, dtype=np.float64)
        return cls(R_c2w.T, -R_c2w.T @ C)

    @classmethod
    def from_tum(cls, txyz: Sequence[float], qxyzw: Sequence[float]) -> Pose:
        """World-to-camera pose from a TUM line (camera-to-world: translation, quaternion x,y,z,w)."""
        return cls.from_cam_to_world(quat_wxyz_to_matrix(xyzw_to_wxyz(qxyzw)), txyz)

    # accessors -------------------------------------------------------------
    @property
    def qvec(self) -> np.ndarray:
        """Rotation as a (w, x, y, z) quaternion, w >= 0."""
        return matrix_to_quat_wxyz(self.R)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, C = -R^T t (metres)."""
        return -self.R.T @ self.t

    @property
    def matrix(self) -> np.ndarray:
        """4x4 homogeneous world-to-camera matrix."""
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = self.R, self.t
        return M

    @property
    def P(self) -> np.ndarray:
        """3x4 [R|t] world-to-camera matrix (InLoc convention)."""
        return self.matrix[:3]

    def inverse(self) -> Pose:
        """The inverse transform (camera-to-world as a Pose object)."""
        return Pose(self.R.T, -self.R.T @ self.t)

    def __mul__(self, other: Pose) -> Pose:
        """Composition: (self * other)(x) = self(other(x))."""
        return Pose(self.R @ other.R, self.R @ other.t + self.t)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Apply to N x 3 world points -> N x 3 camera coordinates."""
        return np.asarray(X, dtype=np.float64) @ self.R.T + self.t

    def is_finite(self) -> bool:
        """True when R and t contain no NaN/inf."""
        return bool(np.isfinite(self.R).all() and np.isfinite(self.t).all())


def pose_error(estimate: Pose, reference: Pose) -> tuple[float, float]:
    """(position error in metres between camera centres, rotation error in degrees)."""
    dpos = float(np.linalg.norm(estimate.center - reference.center))
    drot = rotation_angle_deg(estimate.R @ reference.R.T)
    return dpos, drot


# ----------------------------------------------------------------------------- cameras
@dataclass(frozen=True)
class Camera:
    """Intrinsics with a COLMAP model name; pixel centre of the top-left pixel is (0.5, 0.5)."""

    model: str
    width: int
    height: int
    params: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODELS:
            raise ValueError(f"unsupported camera model {self.model!r}; use one of {list(CAMERA_MODELS)}")
        params = tuple(float(p) for p in self.params)
        if len(params) != len(CAMERA_MODELS[self.model]):
            raise ValueError(
                f"camera model {self.model} takes {len(CAMERA_MODELS[self.model])} params, got {len(params)}"
            )
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @classmethod
    def pinhole(cls, width: int, height: int, fx: float, fy: float | None = None,
                cx: float | None = None, cy: float | None = None) -> Camera:
        """Pinhole camera; principal point defaults to the image centre (W/2, H/2)."""
        cx = width / 2.0 if cx is None else cx
        cy = height / 2.0 if cy is None else cy
        if fy is None or fy == fx:
            return cls("SIMPLE_PINHOLE", width, height, (fx, cx, cy))
        return cls("PINHOLE", width, height, (fx, fy, cx, cy))

    @property
    def _p(self) -> dict[str, float]:
        return dict(zip(CAMERA_MODELS[self.model], self.params))

    @property
    def focal(self) -> tuple[float, float]:
        """(fx, fy) in pixels."""
        p = self._p
        return (p["f"], p["f"]) if "f" in p else (p["fx"], p["fy"])

    @property
    def principal_point(self) -> tuple[float, float]:
        """(cx, cy) in pixels (COLMAP convention)."""
        p = self._p
        return p["cx"], p["cy"]

    @property
    def K(self) -> np.ndarray:
        """3x3 calibration matrix (COLMAP pixel convention)."""
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    @property
    def distortion(self) -> np.ndarray:
        """OpenCV distortion vector (k1, k2, p1, p2, k3, k4, k5, k6) implied by the model."""
        p = self._p
        return np.array([p.get("k1", p.get("k", 0.0)), p.get("k2", 0.0), p.get("p1", 0.0), p.get("p2", 0.0),
                         p.get("k3", 0.0), p.get("k4", 0.0), p.get("k5", 0.0), p.get("k6", 0.0)])

    def has_distortion(self) -> bool:
        """True when any distortion coefficient is non-zero."""
        return bool(np.any(self.distortion != 0))

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera for the image resized to width x height (distortion unchanged)."""
        sx, sy = width / self.width, height / self.height
        names = CAMERA_MODELS[self.model]
        new = []
        for n, v in zip(names, self.params):
            if n in ("fx", "cx"):
                v = v * sx
            elif n in ("fy", "cy"):
                v = v * sy
            elif n == "f":
                if abs(sx - sy) > 1e-3 * max(sx, sy):
                    # anisotropic resize: a single focal cannot represent it -> PINHOLE/OPENCV
                    return self._as_two_focal().scaled(width, height)
                v = v * sx
            new.append(v)
        return Camera(self.model, width, height, tuple(new))

    def _as_two_focal(self) -> Camera:
        p = self._p
        if self.model == "SIMPLE_PINHOLE":
            return Camera("PINHOLE", self.width, self.height, (p["f"], p["f"], p["cx"], p["cy"]))
        if self.model in ("SIMPLE_RADIAL", "RADIAL"):
            return Camera("OPENCV", self.width, self.height,
                          (p["f"], p["f"], p["cx"], p["cy"], p.get("k", p.get("k1", 0.0)), p.get("k2", 0.0), 0.0, 0.0))
        return self

    def _distort(self, xn: np.ndarray) -> np.ndarray:
        """Apply radial/tangential distortion to normalised coordinates N x 2."""
        if not self.has_distortion():
            return xn
        k1, k2, p1, p2, k3, k4, k5, k6 = self.distortion
        x, y = xn[:, 0], xn[:, 1]
        r2 = x * x + y * y
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return np.stack([xd, yd], axis=1)

    def _undistort(self, xd: np.ndarray, iterations: int = 50) -> np.ndarray:
        """Invert the distortion (normalised coordinates N x 2) with OpenCV's iterative solver.

        Points where the inverse does not converge (beyond the model's valid field) become NaN.
        """
        if not self.has_distortion():
            return xd
        import cv2

        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, 1e-12)
        xn = cv2.undistortPoints(xd.reshape(-1, 1, 2).astype(np.float64), np.eye(3), self.distortion,
                                 R=None, P=None, criteria=crit).reshape(-1, 2)
        bad = ~np.isfinite(xn).all(1) | (np.linalg.norm(self._distort(xn) - xd, axis=1) > 1e-6)
        xn[bad] = np.nan
        return xn

    def project(self, X_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Camera-frame points N x 3 -> (pixels N x 2, valid mask of points in front, z > 0)."""
        X_cam = np.asarray(X_cam, dtype=np.float64).reshape(-1, 3)
        z = X_cam[:, 2]
        valid = z > 1e-9
        zs = np.where(valid, z, 1.0)
        xn = X_cam[:, :2] / zs[:, None]
        xd = self._distort(xn)
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        uv = np.stack([fx * xd[:, 0] + cx, fy * xd[:, 1] + cy], axis=1)
        return uv, valid

    def backproject(self, uv: np.ndarray, depth: np.ndarray | float = 1.0) -> np.ndarray:
        """Pixels N x 2 (COLMAP convention) and z-depth -> camera-frame points N x 3."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        xd = np.stack([(uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy], axis=1)
        xn = self._undistort(xd)
        d = np.broadcast_to(np.asarray(depth, dtype=np.float64), (len(uv),))
        return np.concatenate([xn * d[:, None], d[:, None]], axis=1)

    def pixel_grid(self) -> np.ndarray:
        """H x W x 2 array of pixel-centre coordinates (x = col + 0.5, y = row + 0.5)."""
        xs = np.arange(self.width) + 0.5
        ys = np.arange(self.height) + 0.5
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx, gy], axis=-1)

    def to_line(self) -> str:
        """'MODEL W H params...' as in COLMAP cameras.txt / hloc query lists (without a name)."""
        return " ".join([self.model, str(self.width), str(self.height)] + [repr(float(p)) for p in self.params])

    @classmethod
    def from_tokens(cls, tokens: Sequence[str]) -> Camera:
        """Parse ['MODEL', 'W', 'H', params...]."""
        model, w, h, *params = tokens
        return cls(model, int(w), int(h), tuple(float(p) for p in params))

    def to_pycolmap_dict(self) -> dict:
        """Dict accepted by pycolmap.Camera(**d)."""
        return {"model": self.model, "width": self.width, "height": self.height, "params": list(self.params)}


@lru_cache(maxsize=4)
def pixel_rays(camera: Camera) -> np.ndarray:
    """Every pixel centre's z = 1 ray (x, y), row-major H*W x 2, lens distortion removed; read-only, kept per camera.

    Database images of one scanner or sequence share one camera, so the iterative undistortion of a
    whole image grid runs once per camera instead of once per depth map.
    """
    rays = camera.backproject(camera.pixel_grid().reshape(-1, 2), 1.0)[:, :2]
    rays.flags.writeable = False
    return rays


def depth_to_world(depth: np.ndarray, camera: Camera, pose: Pose) -> np.ndarray:
    """z-depth map H x W (metres, 0/NaN = missing) -> world XYZ H x W x 3 (NaN where missing)."""
    H, W = depth.shape
    if (camera.height, camera.width) != (H, W):
        raise ValueError(f"depth map is {W}x{H}, camera is {camera.width}x{camera.height}")
    d = depth.reshape(-1).astype(np.float64)
    d = np.where(np.isfinite(d), d, 0.0)
    X = np.concatenate([pixel_rays(camera) * d[:, None], d[:, None]], axis=1)
    Xw = pose.inverse().transform(X)
    bad = ~np.isfinite(d) | (d <= 0)
    Xw[bad] = np.nan
    return Xw.reshape(H, W, 3)


def project_world(points: np.ndarray, camera: Camera, pose: Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points N x 3 -> (pixels N x 2, z-depth N, mask of points in front and inside the image)."""
    Xc = pose.transform(points)
    uv, front = camera.project(Xc)
    inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
    return uv, Xc[:, 2], inside


def look_at(center: Sequence[float], target: Sequence[float], up: Sequence[float] = (0, 0, 1)) -> Pose:
    """World-to-camera pose of a camera at ``center`` looking at ``target`` (image y points away from ``up``)."""
    C = np.asarray(center, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - C
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R_c2w = np.stack([x, y, z], axis=1)
    return Pose.from_cam_to_world(R_c2w, C)
