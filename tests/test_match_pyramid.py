"""Matching across a pyramid of scales of B (``matching.pyramid``): on pairs of known geometry with a 1.7x scale
change either way it finds more correct matches than scale 1 alone (also with the prescreen), at 1:1 it loses
nothing, a single configuration is exactly the plain matcher, quarter turns map back to B's pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_refine_scale import texture

from localize.core.config import from_dict
from matching.match import MatchConfig, Matcher, match_images
from matching.model import build_ncnet
from matching.pyramid import best_configuration_per_cell, configurations, match_pyramid, pyramid_scales

SIZE = (192, 144)  # both images (w, h); matched at their own size
SCENE = 4  # the scene texture is SCENE x finer than an image showing all of it
T = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])  # COLMAP -> cv2 pixel centres (inverse: T^-1)


def view(scene: np.ndarray, zoom: float, angle_deg: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image of SIZE showing the scene's centre ``zoom`` x larger than the whole-scene view, its homography
    scene px -> image px in cv2 centres)."""
    w, h = SIZE
    s = zoom * w / scene.shape[1]
    a = np.radians(angle_deg)
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    M = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1.0]]) @ R @ np.diag([s, s, 1.0]) @ np.array(
        [[1, 0, -scene.shape[1] / 2], [0, 1, -scene.shape[0] / 2], [0, 0, 1.0]])
    blurred = cv2.GaussianBlur(scene, (0, 0), 0.5 / s) if s < 1 else scene  # no aliasing when shrinking
    img = cv2.warpPerspective(blurred, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.repeat(img.round().astype(np.uint8)[..., None], 3, 2), M


def known_pair(zoom_a: float, zoom_b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, H): two views of one textured plane, H maps A pixels to B pixels (COLMAP convention)."""
    scene = texture(SIZE[0] * SCENE, SIZE[1] * SCENE)
    a, Ma = view(scene, zoom_a, 0.0)
    b, Mb = view(scene, zoom_b, 3.0)
    return a, b, np.linalg.inv(T) @ Mb @ np.linalg.inv(Ma) @ T


def correct(m: dict, H: np.ndarray, tol: float) -> int:
    """Matches whose B keypoint is within ``tol`` px of A's keypoint mapped by H."""
    p = np.c_[m["keypoints0"], np.ones(len(m["keypoints0"]))] @ H.T
    return int((np.linalg.norm(m["keypoints1"] - p[:, :2] / p[:, 2:], axis=1) <= tol).sum())


@pytest.fixture(scope="module")
def model():
    return build_ncnet()


def test_scales_and_configurations() -> None:
    assert pyramid_scales(2) == pytest.approx((0.5, 2 ** -0.5, 1.0, 2 ** 0.5, 2.0))
    assert configurations((2.0, 1.0, 0.5), (1, 0))[0] == (0, 1.0)  # the identity first: it wins ties
    assert len(configurations((1.0, 2.0), (0, 1, 4))) == 4  # 4 quarter turns == 0
    with pytest.raises(ValueError):
        configurations((0.0, 1.0))
    keep = best_configuration_per_cell([np.array([0, 1, 1]), np.array([1, 2])], [np.array([.5, .2, .9]),
                                                                                   np.array([.9, .4])], 3)
    assert [k.tolist() for k in keep] == [[True, True, True], [False, True]]  # tie on cell 1: the first wins


@pytest.mark.parametrize("zoom_a,zoom_b", [(1.0, 1.7), (1.7, 1.0)])
def test_pyramid_finds_more_correct_matches_at_a_1_7x_scale_change(model, zoom_a: float, zoom_b: float) -> None:
    a, b, H = known_pair(zoom_a, zoom_b)
    tol = 8.0  # one matching cell
    plain = correct(match_images(model, a, b, SIZE[0]), H, tol)
    pyr = correct(match_pyramid(model, a, b, SIZE[0], pyramid_scales(1), prescreen=1), H, tol)
    assert pyr >= 2 * plain + 20, (zoom_a, zoom_b, plain, pyr)


def test_pyramid_loses_nothing_at_1_to_1(model) -> None:
    a, b, H = known_pair(1.0, 1.0)
    plain = match_images(model, a, b, SIZE[0], refine=True)
    pyr = match_pyramid(model, a, b, SIZE[0], pyramid_scales(1), refine=True)
    for tol in (2.0, 8.0):
        assert correct(pyr, H, tol) >= 0.97 * correct(plain, H, tol), tol
    one = match_pyramid(model, a, b, SIZE[0], (1.0,), refine=True)
    assert set(one) == set(plain) and all(np.array_equal(one[k], plain[k]) for k in plain)


def test_pyramid_with_quarter_turns_maps_back_to_b_pixels(model) -> None:
    a, b, H = known_pair(1.0, 1.0)
    turned = np.ascontiguousarray(np.rot90(b, 1))  # B turned a quarter turn counter-clockwise
    m = match_pyramid(model, a, turned, SIZE[0], (1.0,), rotations=(0, 3))
    to_turned = np.array([[0, 1, 0], [-1, 0, b.shape[1]], [0, 0, 1.0]])  # B (x, y) -> turned (y, W - x)
    assert correct(m, to_turned @ H, 8.0) >= 0.5 * len(m["scores"]) > 100


def test_matcher_dispatches_scales() -> None:
    conf = from_dict(MatchConfig, {"image_size": SIZE[0], "scales": [0.71, 1.0, 1.41], "prescreen": 1})
    assert conf.scales == (0.71, 1.0, 1.41)
    a, b, _ = known_pair(1.0, 1.0)
    m = Matcher(conf).match(a, b)
    assert len(m["scores"]) > 100 and np.all(np.diff(m["scores"]) <= 0)
    with pytest.raises(ValueError):
        from_dict(MatchConfig, {"scales": [], "sparse": False})
    with pytest.raises(ValueError):
        from_dict(MatchConfig, {"scales": [1.0, 2.0], "sparse": True})
    with pytest.raises(ValueError):
        from_dict(MatchConfig, {"prescreen": -1})
