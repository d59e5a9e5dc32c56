"""Test-time configuration search: how B is turned and resized against A, and how well a configuration fits.

A configuration is (angle of B in degrees, counter-clockwise as seen on screen; relative scale s of B: B is
resized s x relative to A, so s > 1 suits a B that shows the scene smaller than A). ``turn_image`` turns an
image (exactly with ``np.rot90`` for multiples of 90 deg, else bilinearly on an enlarged, black-filled canvas)
and returns the affine map of its pixels; ``unturn_points`` maps keypoints back. Scores of a configuration
from the two L2-normalised feature maps only (no consensus, no geometry from outside): ``mutual_strength``
(mean of the strongest mutual nearest-neighbour correlations) and ``neighbour_agreement`` (mutual nearest
neighbours whose grid neighbours in A are matched, also mutually, to the same neighbours in B; a right
configuration leaves B's grid locally a translation of A's). Pixels in the COLMAP convention (top-left pixel
centre at (0.5, 0.5)).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import Tensor

NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))  # (row, col) steps


def scale_ladder(levels: int = 2, step: float = 2 ** 0.5) -> tuple[float, ...]:
    """Relative scales step^k for k in -levels..levels, e.g. (0.5, 0.71, 1, 1.41, 2)."""
    if levels < 0 or not step > 1.0:
        raise ValueError(f"need levels >= 0 and step > 1, got {levels}, {step}")
    return tuple(float(step ** k) for k in range(-levels, levels + 1))


def turn_affine(hw: tuple[int, int], angle_deg: float, multiple: int = 1) -> tuple[np.ndarray, tuple[int, int]]:
    """(2 x 3 affine: pixels of an H x W image -> pixels of it turned by ``angle_deg`` counter-clockwise about
    its centre, canvas (h, w)): the canvas holds the whole turned image, its sides rounded up to ``multiple``
    (quarter turns: exactly the sides of ``np.rot90``)."""
    H, W = hw
    a = math.radians(angle_deg)
    c, s = round(math.cos(a), 12), round(math.sin(a), 12)
    h = math.ceil((abs(s) * W + abs(c) * H) / multiple - 1e-9) * multiple
    w = math.ceil((abs(c) * W + abs(s) * H) / multiple - 1e-9) * multiple
    R = np.array([[c, s], [-s, c]])  # y points down: counter-clockwise on screen
    t = np.array([w / 2, h / 2]) - R @ np.array([W / 2, H / 2])
    return np.c_[R, t], (int(h), int(w))


def turn_image(img: np.ndarray, angle_deg: float, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(``img`` turned by ``angle_deg`` counter-clockwise on the canvas of ``turn_affine``, black outside;
    the affine img pixels -> turned pixels). Multiples of 90 deg with ``multiple`` 1: ``np.rot90``, exact."""
    M, (h, w) = turn_affine(img.shape[:2], angle_deg, multiple)
    k = angle_deg / 90.0
    if k == round(k) and (h, w) == (img.shape[:2] if round(k) % 2 == 0 else img.shape[1::-1]):
        return np.ascontiguousarray(np.rot90(img, round(k) % 4)), M
    cv_t = M[:, 2] + M[:, :2] @ np.array([0.5, 0.5]) - 0.5  # cv2 pixel centres are integers
    out = cv2.warpAffine(np.ascontiguousarray(img), np.c_[M[:, :2], cv_t], (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, M


def unturn_points(xy: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Pixels [N, 2] of a turned image -> pixels of the original (inverse of ``affine`` from ``turn_image``)."""
    R, t = affine[:, :2], affine[:, 2]
    return (np.asarray(xy, dtype=np.float64) - t) @ np.linalg.inv(R).T


def mutual_pairs(corr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mutual nearest neighbours of a correlation matrix [A cells, B cells]: (A cells, B cells, correlations),
    one entry per pair whose B cell is its A cell's best and whose A cell is its B cell's best."""
    vals, ib = corr.max(1)  # each A cell's best B cell (the first, under ties)
    col_max = corr.amax(0)  # each B cell's best value (a values-only reduction: no strided index search)
    rows, cols = torch.nonzero(corr == col_max, as_tuple=True)  # every (A, B) cell pair at its B cell's best
    first = torch.full_like(col_max, corr.shape[0], dtype=torch.long).scatter_reduce(0, cols, rows, reduce="amin")
    ia = torch.nonzero(first[ib] == torch.arange(corr.shape[0], device=corr.device))[:, 0]  # first best row, as max(0)
    return ia, ib[ia], vals[ia]


def mutual_nearest(feat_a: Tensor, feat_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mutual nearest neighbours of two L2-normalised feature maps [1, C, h, w]: (flat A cells, flat B cells,
    correlations), one entry per mutual pair."""
    return mutual_pairs(torch.einsum("bchw,bcij->bhwij", feat_a, feat_b).flatten(3).flatten(1, 2)[0])


def mutual_strength(feat_a: Tensor, feat_b: Tensor, top: int = 200) -> float:
    """Mean of the ``top`` highest raw correlations of mutual nearest neighbours of two L2-normalised feature
    maps [1, C, h, w] (a cheap score of how well a configuration fits, before consensus)."""
    vals = mutual_nearest(feat_a, feat_b)[2]
    return float(vals.topk(min(top, len(vals))).values.mean()) if len(vals) else 0.0


def neighbour_agreement(feat_a: Tensor, feat_b: Tensor, min_agree: int = 3, tolerance: int = 1) -> int:
    """Number of mutual nearest neighbours (A cell a -> B cell b) of which at least ``min_agree`` of the 8
    grid neighbours a + d of a are mutual nearest neighbours too, of a B cell within ``tolerance`` cells
    (Chebyshev) of b + d. Feature maps [1, C, h, w], L2-normalised."""
    (ha, wa), wb = feat_a.shape[-2:], feat_b.shape[-1]
    ia, ib, _ = mutual_nearest(feat_a, feat_b)
    match = torch.full((ha + 2, wa + 2, 2), -10 * (tolerance + 2), dtype=torch.long)  # padded: no match
    ra, ca = ia // wa, ia % wa
    match[ra + 1, ca + 1] = torch.stack([ib // wb, ib % wb], 1).cpu()
    own = match[ra + 1, ca + 1]
    agree = torch.zeros(len(ia), dtype=torch.long)
    for dr, dc in NEIGHBOURS:
        other = match[ra + 1 + dr, ca + 1 + dc]
        off = (other - own - torch.tensor([dr, dc])).abs().amax(1)
        agree += (off <= tolerance).long()
    return int((agree >= min_agree).sum())


__all__ = ["NEIGHBOURS", "mutual_nearest", "mutual_pairs", "mutual_strength", "neighbour_agreement", "scale_ladder", "turn_affine",
           "turn_image", "unturn_points"]
