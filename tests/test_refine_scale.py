"""Scale-aware refinement: on pairs of known geometry at size ratios 1:1 to 1:4, refinement at the common
scale raises (never lowers) the share of correct matches over the coarse grid matches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from matching.refine import RefineConfig, common_scale, refine_with

B_SIZE = (400, 300)  # the smaller image (a database cutout)
STRIDE, IMAGE_SIZE = 8, 320  # matching grid: 8-px cells at 320 px


def texture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Band-limited random texture (several octaves), float32 in [0, 255]."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w), np.float32)
    for cell, amp in ((6, 0.5), (16, 1.0), (48, 1.0)):
        noise = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
        out += amp * cv2.resize(noise, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[cell:cell + h,
                                                                                                    cell:cell + w]
    out = (out - out.mean()) / out.std() * 45 + 128
    return out.clip(0, 255)


def known_pair(ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A: ratio x B's size, B: B_SIZE, H): B = a homography of A's scene; H maps A pixels to B pixels (COLMAP)."""
    wb, hb = B_SIZE
    wa, ha = round(wb * ratio), round(hb * ratio)
    big = texture(1600, 1200)  # the scene, finer than either image
    a = cv2.resize(big, (wa, ha), interpolation=cv2.INTER_AREA)
    ang = np.radians(4.0)
    Hs = np.array([[np.cos(ang), -np.sin(ang), 9.3], [np.sin(ang), np.cos(ang), -6.1], [2e-5, -1e-5, 1.0]])
    S = np.diag([wb / 1600, hb / 1200, 1.0])
    M = S @ Hs @ np.linalg.inv(S)  # scene at B's scale -> B (cv2 pixel centres)
    b = cv2.warpPerspective(cv2.resize(big, (wb, hb), interpolation=cv2.INTER_AREA), M, (wb, hb),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # COLMAP pixels of A -> B: scale to B's size, shift to cv2 centres, warp, shift back
    T = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    H = T @ M @ np.linalg.inv(T) @ np.diag([wb / wa, hb / ha, 1.0])
    to_rgb = lambda g: np.repeat(g.round().astype(np.uint8)[..., None], 3, 2)
    return to_rgb(a), to_rgb(b), H


def apply_h(H: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.c_[p, np.ones(len(p))] @ H.T
    return q[:, :2] / q[:, 2:]


def grid_matches(a: np.ndarray, b: np.ndarray, H: np.ndarray) -> tuple[dict, float, float]:
    """Coarse matches as the matcher gives them: A's cell centres -> the centre of B's cell holding the truth."""
    cell_a = STRIDE * a.shape[1] / IMAGE_SIZE
    cell_b = STRIDE * b.shape[1] / IMAGE_SIZE
    ys, xs = np.mgrid[2:a.shape[0] / cell_a - 2, 2:a.shape[1] / cell_a - 2]
    ka = (np.c_[xs.ravel(), ys.ravel()] + 0.5) * cell_a
    kb = apply_h(H, ka)
    inside = (kb[:, 0] > 2 * cell_b) & (kb[:, 0] < b.shape[1] - 2 * cell_b) & (kb[:, 1] > 2 * cell_b) & (
        kb[:, 1] < b.shape[0] - 2 * cell_b)
    ka, kb = ka[inside], kb[inside]
    coarse = (np.floor(kb / cell_b) + 0.5) * cell_b
    return {"keypoints0": ka, "keypoints1": coarse, "scores": np.ones(len(ka), np.float32)}, cell_a, cell_b


def correct_share(m: dict, H: np.ndarray, tol: float) -> float:
    return float(np.mean(np.linalg.norm(m["keypoints1"] - apply_h(H, m["keypoints0"]), axis=1) <= tol))


@pytest.mark.parametrize("ratio", [1.0, 1.25, 1.5, 2.0, 3.0, 4.0])
def test_refinement_improves_correct_share_at_every_size_ratio(ratio: float) -> None:
    a, b, H = known_pair(ratio)
    coarse, cell_a, cell_b = grid_matches(a, b, H)
    tol = 0.25 * cell_b  # a quarter of a matching cell of B (2.5 px here)
    before = correct_share(coarse, H, tol)
    refined = refine_with(a, b, coarse, RefineConfig(), cell_a, cell_b)
    after = correct_share(refined, H, tol)
    assert after >= before + 0.5 and after >= 0.95, (ratio, before, after)
    # B fixed (refine A's keypoints) gives the same gain, keypoints back in A's original pixels
    ref_b = refine_with(a, b, coarse, RefineConfig(fixed="b"), cell_a, cell_b)
    err = np.linalg.norm(apply_h(H, ref_b["keypoints0"]) - ref_b["keypoints1"], axis=1)
    assert np.mean(err <= tol) >= 0.95, (ratio, np.mean(err <= tol))


def test_common_scale_rule() -> None:
    assert common_scale(16.0, 16.0, 1.3) == (1.0, 1.0)  # TUM: same sizes
    assert common_scale(12.8, 16.0, 1.3) == (1.0, 1.0)  # demo: 512-px queries, 640-px cutouts
    assert common_scale(100.8, 40.0, 1.3) == pytest.approx((40.0 / 100.8, 1.0))  # InLoc: 4032 vs 1600 px
    assert common_scale(40.0, 100.8, 1.3) == pytest.approx((1.0, 40.0 / 100.8))
    with pytest.raises(ValueError, match="max_scale_ratio"):
        RefineConfig(max_scale_ratio=0.5)



def test_common_scale_keeping_one_image() -> None:
    assert common_scale(8.0, 22.0, 1.3, keep="b") == pytest.approx((22.0 / 8.0, 1.0))  # A enlarged to B's scale
    assert common_scale(8.0, 22.0, 1.3, keep="a") == pytest.approx((1.0, 8.0 / 22.0))
    assert common_scale(8.0, 9.0, 1.3, keep="b") == (1.0, 1.0)


def test_refinement_at_the_moving_images_own_scale() -> None:
    """at_moving_scale: the moving image (here A, twice B's scale) keeps its resolution and the fixed one is
    enlarged to it, so the refined keypoints are finer in the moving image's pixels than after shrinking it."""
    a, b, H = known_pair(2.0)
    coarse, cell_a, cell_b = grid_matches(a, b, H)
    rng = np.random.default_rng(0)
    moved = dict(coarse, keypoints0=coarse["keypoints0"] + rng.uniform(-0.4, 0.4, coarse["keypoints0"].shape) * cell_a)
    errors = []
    for flag in (False, True):
        r = refine_with(a, b, moved, RefineConfig(fixed="b", at_moving_scale=flag), cell_a, cell_b)
        errors.append(np.median(np.linalg.norm(apply_h(np.linalg.inv(H), r["keypoints1"]) - r["keypoints0"], axis=1)))
    assert errors[1] < 0.85 * errors[0] and errors[1] < 0.3, errors
