"""Per-match affine patch warps: ``local_affines`` recovers the local linear map of the matches, and NCC
refinement through it stays precise where axis-aligned patches are not (turned and resized views)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from matching.refine import RefineConfig, local_affines, refine_with
from tests.test_refine_scale import apply_h, texture


def test_local_affines_recover_the_linear_map_despite_outliers() -> None:
    rng = np.random.default_rng(0)
    kf = rng.uniform(0, 400, (300, 2))
    L = np.array([[1.2, -0.4], [0.35, 0.9]])
    km = kf @ L.T + [30.0, -12.0]
    bad = rng.random(300) < 0.15
    km[bad] += rng.uniform(-60, 60, (bad.sum(), 2))
    est, residual = local_affines(kf, km, 16)
    err = np.abs(est[~bad] - L).max(axis=(1, 2))
    assert np.median(err) < 1e-6 and np.mean(err < 1e-3) > 0.9, np.percentile(err, [50, 90])
    assert np.mean(residual[bad] > 3.0) > 0.9 and np.mean(residual[~bad] < 1e-3) > 0.9  # the outliers stand out


def test_local_affines_fall_back_to_identity_when_ill_posed() -> None:
    line = np.c_[np.arange(20.0) * 8, np.full(20, 50.0)]  # collinear: the map across the line is unknown
    assert np.allclose(local_affines(line, line * 2.0, 8)[0], np.eye(2))
    kf = np.random.default_rng(1).uniform(0, 100, (10, 2))
    assert np.allclose(local_affines(kf, kf * [[-1.0, 1.0]], 6)[0], np.eye(2))  # a mirror image
    L, residual = local_affines(kf[:3], kf[:3] * 2, 6)  # fewer than 4 matches
    assert np.allclose(L, np.eye(2)) and np.isnan(residual).all()
    with pytest.raises(ValueError):
        RefineConfig(local_affine=3)
    with pytest.raises(ValueError):
        RefineConfig(max_affine_residual=2.0)  # needs the fits


def turned_pair(angle_deg: float, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, H): B = A's texture turned by angle_deg and resized by scale about the centre; H: A -> B (COLMAP)."""
    a = texture(400, 300, seed=3)
    c, s = np.cos(np.radians(angle_deg)) * scale, np.sin(np.radians(angle_deg)) * scale
    M = np.array([[c, -s, 0.0], [s, c, 0.0], [0, 0, 1.0]])
    M[:2, 2] = np.array([200.0, 150.0]) - M[:2, :2] @ [200.0, 150.0]
    b = cv2.warpPerspective(a, M, (400, 300), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    T = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    to_rgb = lambda g: np.repeat(g.round().astype(np.uint8)[..., None], 3, 2)
    return to_rgb(a), to_rgb(b), T @ M @ np.linalg.inv(T)


def grid_truth(H: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """A's points every 10 px and their true positions in B (400 x 300), those at least ``margin`` px inside B."""
    ys, xs = np.mgrid[40:260:10, 40:360:10]
    ka = np.c_[xs.ravel(), ys.ravel()].astype(np.float64) + 0.5
    kb = apply_h(H, ka)
    inside = ((kb > margin) & (kb < [400 - margin, 300 - margin])).all(1)
    return ka[inside], kb[inside]


@pytest.mark.parametrize("angle,scale", [(20.0, 1.0), (-15.0, 1.2), (0.0, 1.0)])
def test_affine_patches_refine_turned_views_better(angle: float, scale: float) -> None:
    a, b, H = turned_pair(angle, scale)
    ka, kb = grid_truth(H, 30)
    rng = np.random.default_rng(2)
    coarse = {"keypoints0": ka, "keypoints1": kb + rng.uniform(-3.5, 3.5, kb.shape), "scores": np.ones(len(ka))}

    def err(conf: RefineConfig) -> np.ndarray:
        out = refine_with(a, b, coarse, conf, 8.0, 8.0)
        return np.linalg.norm(out["keypoints1"] - apply_h(H, out["keypoints0"]), axis=1)

    plain, warped = err(RefineConfig(radius=5)), err(RefineConfig(radius=5, local_affine=12))
    assert np.mean(warped <= 0.5) >= 0.95, np.mean(warped <= 0.5)
    if angle == 0.0:  # an upright view: the warps fitted to the matches cost nothing
        assert np.median(warped) <= 1.1 * np.median(plain) + 0.01, (np.median(warped), np.median(plain))
    else:
        assert np.median(warped) < 0.25 * np.median(plain), (np.median(warped), np.median(plain))


def test_affine_residual_filter_drops_matches_their_neighbours_disagree_with() -> None:
    a, b, H = turned_pair(10.0, 1.1)
    ka, kb = grid_truth(H, 50)
    rng = np.random.default_rng(4)
    wrong = rng.random(len(ka)) < 0.15
    kb = kb + rng.uniform(-2.5, 2.5, kb.shape)
    kb[wrong] += rng.choice([-1.0, 1.0], (wrong.sum(), 2)) * rng.uniform(15, 30, (wrong.sum(), 2))  # beyond the radius
    coarse = {"keypoints0": ka, "keypoints1": kb, "scores": np.arange(len(ka), 0, -1.0)}
    out = refine_with(a, b, coarse, RefineConfig(radius=5, local_affine=12, max_affine_residual=2.0), 8.0, 8.0)
    kept = np.isin(coarse["scores"], out["scores"])
    assert kept[~wrong].mean() >= 0.9 and kept[wrong].mean() <= 0.1, (kept[~wrong].mean(), kept[wrong].mean())
    err = np.linalg.norm(out["keypoints1"] - apply_h(H, out["keypoints0"]), axis=1)
    assert np.mean(err <= 1.0) >= 0.97
