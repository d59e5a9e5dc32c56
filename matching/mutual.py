"""Soft mutual nearest-neighbour filtering of a 4D correlation tensor (NCNet's MutualMatching)."""

from __future__ import annotations

from torch import Tensor


def mutual_matching(corr: Tensor, eps: float = 1e-5) -> Tensor:
    """c' = c * (c / (maxA + eps)) * (c / (maxB + eps)) for corr [B, 1, hA, wA, hB, wB].

    maxA: maximum over A's cells for each B cell; maxB: maximum over B's cells for each A cell.
    """
    b, ch, ha, wa, hb, wb = corr.shape
    c = corr.reshape(b, ch, ha * wa, hb * wb)
    max_a = c.max(dim=2, keepdim=True).values  # [b, ch, 1, nB]
    max_b = c.max(dim=3, keepdim=True).values  # [b, ch, nA, 1]
    out = (c / (max_a + eps)) * (c / (max_b + eps))
    out.mul_(c)
    return out.view(b, ch, ha, wa, hb, wb)


__all__ = ["mutual_matching"]
