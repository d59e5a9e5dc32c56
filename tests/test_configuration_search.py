"""Test-time configuration search (``matching.configuration_search`` and the learned matcher's use of it): turns
map pixels both ways, the neighbour-agreement score separates a right from a scrambled configuration, and on a
zoomed-out, turned view of a texture the learned matcher picks the right turn and scale and maps back to B."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from test_learned_features import texture

from matching.configuration_search import (
    mutual_nearest,
    mutual_pairs,
    neighbour_agreement,
    scale_ladder,
    turn_image,
    unturn_points,
)
from matching.learned_features import from_smaller_grid, match_images_learned, search_configurations, unrotate_points
from matching.model import build_ncnet
from matching.refine import RefineConfig


def test_turns_map_pixels_both_ways() -> None:
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    pts = np.array([[0.5, 0.5], [6.5, 4.5], [3.2, 1.7]])
    for k in range(4):
        turned, M = turn_image(img, 90 * k)
        assert np.array_equal(turned, np.rot90(img, k))
        assert np.allclose(unturn_points(pts @ M[:, :2].T + M[:, 2], M), pts)
        if k % 2 == 0 or turned.shape[0] > 4.5:  # points of the turned image map like unrotate_points
            q = np.array([[0.5, 0.5], [turned.shape[1] - 0.5, 1.5]])
            assert np.allclose(unturn_points(q, M), unrotate_points(torch.tensor(q), k, img.shape[:2]).numpy())
    dot = np.zeros((60, 80), np.uint8)
    cv2.circle(dot, (30, 20), 2, 255, -1)
    turned, M = turn_image(dot, 45.0, multiple=8)
    assert turned.shape[0] % 8 == 0 and turned.shape[1] % 8 == 0 and turned.shape[0] >= (60 + 80) / math.sqrt(2)
    ys, xs = np.nonzero(turned > 127)
    back = unturn_points(np.array([[xs.mean() + 0.5, ys.mean() + 0.5]]), M)[0]
    assert np.allclose(back, [30.5, 20.5], atol=0.3), back
    # counter-clockwise on screen: a point right of the centre moves up
    right = np.array([[60.0, 30.0]]) @ M[:, :2].T + M[:, 2]
    centre = np.array([[40.0, 30.0]]) @ M[:, :2].T + M[:, 2]
    assert right[0, 1] < centre[0, 1] - 10


def test_neighbour_agreement_separates_right_from_scrambled() -> None:
    torch.manual_seed(0)
    fa = torch.nn.functional.normalize(torch.randn(1, 32, 12, 16), dim=1)
    fb = torch.roll(fa, shifts=(2, 3), dims=(2, 3))  # B = A moved by whole cells: locally a translation
    ia, ib, _ = mutual_nearest(fa, fb)
    assert len(ia) == 12 * 16
    assert neighbour_agreement(fa, fb) >= 0.8 * len(ia)
    perm = torch.randperm(12 * 16)
    scrambled = fb.flatten(2)[:, :, perm].reshape(fb.shape)  # the same descriptors, no grid structure
    assert len(mutual_nearest(fa, scrambled)[0]) == 12 * 16  # as many (and as strong) mutual pairs ...
    assert neighbour_agreement(fa, scrambled) <= 0.1 * len(ia)  # ... but they do not agree with their neighbours


def test_search_configurations_and_ladder() -> None:
    assert scale_ladder(2) == pytest.approx((0.5, 2 ** -0.5, 1.0, 2 ** 0.5, 2.0))
    confs = search_configurations((90.0, 0.0, 360.0), (2.0, 1.0))
    assert confs[0] == (0.0, 1.0) and len(confs) == 4
    with pytest.raises(ValueError):
        search_configurations((0.0,), (0.0,))


def test_learned_matcher_picks_turn_and_scale_of_a_zoomed_out_view() -> None:
    """B shows A's texture 2.2x smaller, turned 135 deg counter-clockwise: among 4 turns x 3 scales the
    configuration that undoes it (225 deg, B enlarged 2x) is chosen, and matches (NCC-refined against B turned
    at full resolution) map back to B's pixels."""
    a = np.repeat(texture(7, 256)[..., None], 3, 2)
    zoom, angle = 1 / 2.2, 135.0
    H = cv2.getRotationMatrix2D((127.5, 127.5), angle, zoom)  # cv2: positive = counter-clockwise on screen
    b = cv2.warpAffine(cv2.GaussianBlur(a, (0, 0), 0.9), H, (256, 256), borderMode=cv2.BORDER_REFLECT)
    model = build_ncnet(features="learned")
    m = match_images_learned(model, a, b, 256, angles=(0.0, 45.0, 135.0, 225.0), scales=(0.5, 1.0, 2.0),
                             ncc=RefineConfig())
    assert tuple(m["transform"]) == (225.0, 128, 256), m["transform"]
    Hc = np.r_[H, [[0, 0, 1]]]
    T = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])  # COLMAP -> cv2 pixel centres
    Hcol = T @ Hc @ np.linalg.inv(T)
    p = np.c_[m["keypoints0"], np.ones(len(m["keypoints0"]))] @ Hcol.T
    err = np.linalg.norm(p[:, :2] - m["keypoints1"], axis=1)[:100]
    assert (err <= 1.5).mean() > 0.5, np.median(err)  # NCC at full resolution in B turned back upright


def test_only_the_smaller_grids_direction_is_kept() -> None:
    corr = torch.zeros(1, 1, 1, 2, 2, 2)  # A: 2 cells, B: 4 cells
    corr[0, 0, 0, 0, 0, 0] = 0.9  # A cell 0 -> B cell 0 (best of A cell 0)
    corr[0, 0, 0, 1, 1, 1] = 0.8  # A cell 1 -> B cell 3 (best of A cell 1)
    corr[0, 0, 0, 1, 0, 1] = 0.5  # B cell 1's best is A cell 1, not A cell 1's best: a B-direction match only
    idx0 = torch.tensor([[0, 0], [0, 1], [0, 1]])
    idx1 = torch.tensor([[0, 0], [1, 1], [0, 1]])
    assert from_smaller_grid(corr, idx0, idx1).tolist() == [True, True, False]
    swapped = corr.permute(0, 1, 4, 5, 2, 3)  # now A is the larger grid: B's direction decides
    assert from_smaller_grid(swapped, idx1, idx0).tolist() == [True, True, False]
    square = torch.zeros(1, 1, 2, 2, 2, 2)
    assert from_smaller_grid(square, idx0, idx1).all()
    # mutual: both cells' best, whatever the grid sizes
    square[0, 0, 0, 0, 0, 0] = 0.9  # A (0, 0) <-> B (0, 0): mutual
    square[0, 0, 0, 0, 0, 1] = 0.5  # B (0, 1)'s best is A (0, 0), whose best is B (0, 0): one-way
    square[0, 0, 1, 1, 1, 1] = 0.7  # A (1, 1) <-> B (1, 1): mutual
    i0, i1 = torch.tensor([[0, 0], [0, 0], [1, 1]]), torch.tensor([[0, 0], [0, 1], [1, 1]])
    assert from_smaller_grid(square, i0, i1, mutual=True).tolist() == [True, False, True]
    assert from_smaller_grid(corr, idx0, idx1, mutual=True).tolist() == [True, True, False]


@pytest.mark.parametrize("shape,step", [((40, 60), None), ((60, 40), 0.5), ((30, 30), 2.0), ((1, 9), 1.0), ((9, 1), None)])
def test_mutual_pairs_equal_the_two_way_argmax(shape: tuple[int, int], step: float | None) -> None:
    """Mutual pairs = A cells whose best B cell's best A cell (first one under ties, as torch.max) is themselves;
    coarsely rounded values make many ties (as black borders of turned images do)."""
    corr = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    if step:
        corr = (corr / step).round() * step
    ab, ba = corr.max(1), corr.max(0)
    ia = torch.nonzero(ba.indices[ab.indices] == torch.arange(shape[0]))[:, 0]
    got = mutual_pairs(corr)
    assert torch.equal(got[0], ia) and torch.equal(got[1], ab.indices[ia]) and torch.equal(got[2], ab.values[ia])
