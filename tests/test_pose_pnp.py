"""PnP-RANSAC: exact recovery, noise + outliers, failures as results, OpenCV agreement, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from localize.core.geometry import Camera, look_at, pose_error, project_world
from pose.pnp import PnPConfig, PoseResult, degeneracy_reason, estimate_pose


def make_set(n: int = 400, seed: int = 0, camera: Camera | None = None, noise_px: float = 0.0,
             outlier_ratio: float = 0.0):
    """Points in a 1 m cube seen from ~2 m: (uv N x 2, X N x 3, camera, gt pose, outlier mask)."""
    rng = np.random.default_rng(seed)
    cam = camera or Camera.pinhole(640, 480, 500.0)
    gt = look_at([0.4, -2.0, 0.6], [0.0, 0.0, 0.0])
    X = rng.uniform(-0.5, 0.5, (n * 2, 3))
    uv, _, ok = project_world(X, cam, gt)
    X, uv = X[ok][:n], uv[ok][:n]
    uv = uv + rng.normal(0.0, noise_px, uv.shape) if noise_px else uv
    out = np.zeros(len(uv), dtype=bool)
    out[rng.permutation(len(uv))[: int(round(outlier_ratio * len(uv)))]] = True
    uv[out] = rng.uniform([0, 0], [cam.width, cam.height], (out.sum(), 2))
    return uv, X, cam, gt, out


@pytest.mark.parametrize("backend", ["pycolmap", "opencv"])
def test_exact_without_noise(backend: str) -> None:
    uv, X, cam, gt, _ = make_set()
    r = estimate_pose(uv, X, cam, PnPConfig(backend=backend))
    assert r.success, r.reason
    assert np.abs(r.pose.R - gt.R).max() < 1e-6 and np.abs(r.pose.t - gt.t).max() < 1e-6
    dp, dr = pose_error(r.pose, gt)
    assert dp < 1e-6 and dr < 1e-4  # arccos near 1 amplifies round-off; R itself is within 1e-6
    assert r.num_inliers == len(uv) and r.inlier_mask.all()


@pytest.mark.parametrize("backend", ["pycolmap", "opencv"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_and_half_outliers(backend: str, seed: int) -> None:
    uv, X, cam, gt, out = make_set(seed=seed, noise_px=1.0, outlier_ratio=0.5)
    r = estimate_pose(uv, X, cam, PnPConfig(backend=backend, max_error=4.0, seed=seed))
    assert r.success, r.reason
    dp, dr = pose_error(r.pose, gt)
    assert dp < 0.01 and dr < 0.1, (dp, dr)
    # the inlier set is essentially the true inliers (a random outlier may land within 4 px)
    assert (r.inlier_mask & ~out).sum() >= 0.95 * (~out).sum()
    assert (r.inlier_mask & out).sum() <= 0.05 * out.sum()


def test_backends_agree_and_deterministic() -> None:
    uv, X, cam, gt, _ = make_set(seed=3, noise_px=0.5, outlier_ratio=0.3)
    a = estimate_pose(uv, X, cam, PnPConfig(backend="pycolmap", seed=7, max_error=4.0))
    a2 = estimate_pose(uv, X, cam, PnPConfig(backend="pycolmap", seed=7, max_error=4.0))
    b = estimate_pose(uv, X, cam, PnPConfig(backend="opencv", seed=7, max_error=4.0))
    b2 = estimate_pose(uv, X, cam, PnPConfig(backend="opencv", seed=7, max_error=4.0))
    assert a.success and b.success
    assert np.array_equal(a.pose.matrix, a2.pose.matrix) and np.array_equal(a.inlier_mask, a2.inlier_mask)
    assert np.array_equal(b.pose.matrix, b2.pose.matrix)
    dp, dr = pose_error(a.pose, b.pose)
    assert dp < 2e-3 and dr < 0.05, (dp, dr)


@pytest.mark.parametrize("backend", ["pycolmap", "opencv"])
def test_distorted_camera(backend: str) -> None:
    cam = Camera("RADIAL", 640, 480, (500.0, 321.0, 239.0, -0.05, 0.01))
    uv, X, cam, gt, _ = make_set(camera=cam, outlier_ratio=0.2)
    r = estimate_pose(uv, X, cam, PnPConfig(backend=backend, max_error=2.0))
    assert r.success, r.reason
    dp, dr = pose_error(r.pose, gt)
    assert dp < 1e-5 and dr < 1e-3, (dp, dr)


@pytest.mark.parametrize("backend", ["pycolmap", "opencv"])
def test_failures_are_results(backend: str) -> None:
    uv, X, cam, _, _ = make_set(n=50)
    conf = PnPConfig(backend=backend)
    r = estimate_pose(uv[:5], X[:5], cam, conf)
    assert isinstance(r, PoseResult) and not r.success and r.reason == "too few matches (5 < 6)"
    assert r.pose is None and r.num_inliers == 0 and r.inlier_mask.shape == (5,)
    # empty, mismatched, garbage
    assert not estimate_pose(np.zeros((0, 2)), np.zeros((0, 3)), cam, conf).success
    assert "bad input" in estimate_pose(uv, X[:10], cam, conf).reason
    assert not estimate_pose("nonsense", None, cam, conf).success
    # NaNs are dropped (then too few), not passed to the solver
    Xn = X.copy()
    Xn[4:] = np.nan
    r = estimate_pose(uv, Xn, cam, conf)
    assert not r.success and r.reason.startswith("too few matches (4 < 6")
    # NaN rows mixed with good ones: still works, NaN rows are never inliers
    Xm = X.copy()
    Xm[::5] = np.nan
    r = estimate_pose(uv, Xm, cam, conf)
    assert r.success and not r.inlier_mask[::5].any()
    # collinear / coincident 3D points
    line = np.linspace(0, 1, 30)[:, None] * np.array([[1.0, 2.0, 3.0]]) + [0, 0, 5]
    uvl, _ = cam.project(line)
    assert "collinear" in estimate_pose(uvl, line, cam, conf).reason
    same = np.tile([[0.0, 0.0, 5.0]], (20, 1))
    assert "coincident" in estimate_pose(np.tile([[320.0, 240.0]], (20, 1)), same, cam, conf).reason
    # pure noise: no pose with enough support
    rng = np.random.default_rng(0)
    r = estimate_pose(rng.uniform(0, 640, (40, 2)), rng.uniform(-1, 1, (40, 3)) + [0, 0, 4], cam,
                      PnPConfig(backend=backend, max_error=1.0, min_inliers=15))
    assert not r.success and r.reason


def test_degeneracy_reason() -> None:
    rng = np.random.default_rng(0)
    assert degeneracy_reason(rng.normal(size=(10, 3))) is None
    assert degeneracy_reason(np.c_[rng.normal(size=(10, 2)), np.zeros(10)]) is None  # planar is fine
    assert "collinear" in degeneracy_reason(np.outer(np.arange(10.0), [1, 1, 0]))


def test_pixel_convention_half_pixel() -> None:
    """A 0.5 px shift of all 2D points must change the pose (catches a silent convention swap)."""
    uv, X, cam, gt, _ = make_set(n=200)
    for backend in ("pycolmap", "opencv"):
        r = estimate_pose(uv, X, cam, PnPConfig(backend=backend))
        r_shift = estimate_pose(uv - 0.5, X, cam, PnPConfig(backend=backend))
        assert pose_error(r.pose, gt)[1] < 1e-4
        assert pose_error(r_shift.pose, gt)[1] > 0.01


def test_far_away_degenerate_pose_is_rejected():
    """A pose that sees all inliers as one distant point is reported as degenerate, not returned."""
    from localize.core.geometry import look_at
    from pose.pnp import _pose_is_sane

    pts = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    assert _pose_is_sane(look_at([0, -3, 0], [0, 0, 0]), pts)
    assert not _pose_is_sane(look_at([0, -1e6, 0], [0, 0, 0]), pts)


def test_threshold_follows_the_query_size() -> None:
    """With reference_size, max_error is px per reference_size px of the longer side (never below max_error):
    the same 2D noise, scaled with the image, keeps the same inliers at 640 px and at 4032 px."""
    conf = PnPConfig(max_error=4.0, reference_size=640, seed=0)
    assert conf.threshold_px(Camera.pinhole(640, 480, 500.0)) == 4.0
    assert conf.threshold_px(Camera.pinhole(512, 384, 400.0)) == 4.0
    assert conf.threshold_px(Camera.pinhole(4032, 3024, 3136.0)) == pytest.approx(4.0 * 4032 / 640)
    assert PnPConfig(max_error=4.0).threshold_px(Camera.pinhole(4032, 3024, 3136.0)) == 4.0
    small = Camera.pinhole(640, 480, 500.0)
    big = small.scaled(4032, 3024)
    uv, X, _, gt, _ = make_set(camera=small, noise_px=2.0, seed=3)
    r_small = estimate_pose(uv, X, small, conf)
    r_big = estimate_pose(uv * 4032 / 640, X, big, conf)
    r_plain = estimate_pose(uv * 4032 / 640, X, big, PnPConfig(max_error=4.0, seed=0))
    assert r_small.success and r_big.success
    assert abs(r_big.num_inliers - r_small.num_inliers) <= 0.02 * len(uv)
    assert r_plain.num_inliers < 0.5 * r_big.num_inliers  # plain 4 px at 4032 px: most good matches rejected
    with pytest.raises(ValueError, match="reference_size"):
        PnPConfig(reference_size=0)
