"""Match extraction from a filtered 4D correlation: softmax-argmax both ways, dedup, pixel coordinates."""

from __future__ import annotations

import torch
from torch import Tensor

from matching.relocalize import unravel_offsets


def cell_to_pixels(idx: Tensor, grid_hw: tuple[int, int], image_hw: tuple[float, float]) -> Tensor:
    """(row, col) cell indices [N, 2] on an h x w grid -> pixels [N, 2] (x, y), COLMAP convention.

    Normalised coordinate (idx + 0.5) / size, times the image side: the grid covers [0, W] x [0, H].
    """
    h, w = grid_hw
    H, W = image_hw
    x = (idx[:, 1].double() + 0.5) / w * W
    y = (idx[:, 0].double() + 0.5) / h * H
    return torch.stack([x, y], dim=1)


def sort_unique_matches(ia: Tensor, ib: Tensor, scores: Tensor, n_b: int) -> tuple[Tensor, Tensor, Tensor]:
    """Flat cell indices of matches (A, B) and scores -> sorted by decreasing score, duplicate pairs removed
    (the best-scored occurrence of each (A, B) pair is kept; ties keep the input order)."""
    order = torch.argsort(scores, descending=True, stable=True)
    ia, ib, scores = ia[order], ib[order], scores[order]
    if len(ia) == 0:
        return ia, ib, scores
    _, inverse = torch.unique(ia * n_b + ib, return_inverse=True)
    pos = torch.arange(len(ia), device=ia.device)
    first = torch.full((int(inverse.max()) + 1,), len(ia), dtype=torch.long, device=ia.device)
    keep = torch.sort(first.scatter_reduce(0, inverse, pos, reduce="amin")).values
    return ia[keep], ib[keep], scores[keep]


def extract_matches(corr: Tensor, size_a: tuple[float, float], size_b: tuple[float, float],
                    code: Tensor | None = None, k: int = 1, both_directions: bool = True,
                    softmax: bool = True) -> dict[str, Tensor]:
    """Matches of one pair from corr [1, 1, hA, wA, hB, wB] (or [hA, wA, hB, wB]).

    For each cell of B: softmax over all cells of A, argmax, score = that softmax value; and the same
    from A to B. Both directions concatenated, sorted by decreasing score, duplicate (A cell, B cell)
    pairs removed (best score kept). ``code``/``k``: argmax codes of a k^4 max-pooling (see
    ``matching.relocalize.maxpool4d``) to re-localise cells at full resolution (index * k + offset).
    size_a / size_b: (H, W) of the ORIGINAL images in pixels. Returns keypoints0 / keypoints1 [N, 2]
    float64 pixels (x, y), scores [N], indices0 / indices1 [N, 2] (row, col) cells of the
    (full-resolution) feature grids.
    """
    c = corr.reshape(corr.shape[-4:])
    ha, wa, hb, wb = c.shape
    m = c.reshape(ha * wa, hb * wb)
    prob_a = torch.softmax(m, dim=0) if softmax else m  # over A cells, for each B cell
    score_ba, idx_a = prob_a.max(dim=0)
    del prob_a
    ia, ib, sc = [idx_a], [torch.arange(hb * wb, device=m.device)], [score_ba]
    if both_directions:
        prob_b = torch.softmax(m, dim=1) if softmax else m
        score_ab, idx_b = prob_b.max(dim=1)
        del prob_b
        ia.append(torch.arange(ha * wa, device=m.device))
        ib.append(idx_b)
        sc.append(score_ab)
    ia_t, ib_t, scores = torch.cat(ia), torch.cat(ib), torch.cat(sc)
    ia_t, ib_t, scores = sort_unique_matches(ia_t, ib_t, scores, hb * wb)
    idx0 = torch.stack([ia_t // wa, ia_t % wa], dim=1)
    idx1 = torch.stack([ib_t // wb, ib_t % wb], dim=1)
    grid_a, grid_b = (ha, wa), (hb, wb)
    if code is not None and k > 1:
        cc = code.reshape(code.shape[-4:])
        di, dj, dk, dl = unravel_offsets(cc[idx0[:, 0], idx0[:, 1], idx1[:, 0], idx1[:, 1]], k)
        idx0 = torch.stack([idx0[:, 0] * k + di, idx0[:, 1] * k + dj], dim=1)
        idx1 = torch.stack([idx1[:, 0] * k + dk, idx1[:, 1] * k + dl], dim=1)
        grid_a, grid_b = (ha * k, wa * k), (hb * k, wb * k)
    return {
        "keypoints0": cell_to_pixels(idx0, grid_a, size_a),
        "keypoints1": cell_to_pixels(idx1, grid_b, size_b),
        "scores": scores,
        "indices0": idx0,
        "indices1": idx1,
    }


__all__ = ["extract_matches", "cell_to_pixels", "sort_unique_matches"]
