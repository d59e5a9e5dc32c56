"""4D max-pooling with argmax offsets, and re-localisation of pooled indices at full resolution."""

from __future__ import annotations

import torch
from torch import Tensor


def maxpool4d(corr: Tensor, k: int = 2) -> tuple[Tensor, Tensor]:
    """Max-pool corr [B, C, hA, wA, hB, wB] over non-overlapping k^4 windows (sides multiples of k).

    Returns (pooled [B, C, hA/k, wA/k, hB/k, wB/k], code) where code is the argmax position inside the
    window as di*k^3 + dj*k^2 + dk*k + dl (uint8 when k^4 <= 256, else int64); on ties the first position
    in that order (tested).
    """
    b, c, ha, wa, hb, wb = corr.shape
    if ha % k or wa % k or hb % k or wb % k:
        raise ValueError(f"sizes {(ha, wa, hb, wb)} must be multiples of k={k}")
    x = corr.reshape(b, c, ha // k, k, wa // k, k, hb // k, k, wb // k, k)
    x = x.permute(0, 1, 2, 4, 6, 8, 3, 5, 7, 9).reshape(b, c, ha // k, wa // k, hb // k, wb // k, k ** 4)
    values, idx = x.max(dim=-1)
    code = idx.to(torch.uint8) if k ** 4 <= 256 else idx
    return values, code


def unravel_offsets(code: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Argmax code from ``maxpool4d`` -> offsets (di, dj, dk, dl), int64, each in [0, k)."""
    c = code.long()
    return c // k ** 3, (c // k ** 2) % k, (c // k) % k, c % k


def relocalize_indices(idx_a: Tensor, idx_b: Tensor, code: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Pooled match indices -> full-resolution indices, index*k + offset.

    idx_a, idx_b: [N, 2] integer (row i, col j) cells in the pooled grids of A and B;
    code: [hA', wA', hB', wB'] argmax codes of the pooled tensor (batch/channel dims removed).
    Returns ([N, 2], [N, 2]) full-resolution (row, col) indices.
    """
    ia, ja, ib, jb = idx_a[:, 0], idx_a[:, 1], idx_b[:, 0], idx_b[:, 1]
    di, dj, dk, dl = unravel_offsets(code[ia, ja, ib, jb], k)
    fa = torch.stack([ia * k + di, ja * k + dj], dim=1)
    fb = torch.stack([ib * k + dk, jb * k + dl], dim=1)
    return fa, fb


__all__ = ["maxpool4d", "unravel_offsets", "relocalize_indices"]
