"""Dense 4D correlation between two feature maps, optionally max-pooled on the fly (memory-bounded)."""

from __future__ import annotations

import torch
from torch import Tensor

from matching.relocalize import maxpool4d


def feature_l2norm(features: Tensor, eps: float = 1e-6) -> Tensor:
    """L2-normalise [B, C, h, w] features per location: f / sqrt(sum_c f^2 + eps)."""
    return features / torch.sqrt((features * features).sum(dim=1, keepdim=True) + eps)


def correlation_4d(feat_a: Tensor, feat_b: Tensor) -> Tensor:
    """4D correlation c[b, 0, i, j, k, l] = <fA[b, :, i, j], fB[b, :, k, l]>; inputs [B, C, h, w]."""
    b, c, ha, wa = feat_a.shape
    _, _, hb, wb = feat_b.shape
    corr = torch.bmm(feat_a.reshape(b, c, ha * wa).transpose(1, 2), feat_b.reshape(b, c, hb * wb))
    return corr.view(b, 1, ha, wa, hb, wb)


def correlation_4d_maxpool(feat_a: Tensor, feat_b: Tensor, k: int = 2,
                           max_chunk_bytes: int = 512 * 2**20) -> tuple[Tensor, Tensor]:
    """4D correlation max-pooled with a k^4 window without materialising the full tensor.

    Inputs [B, C, hA, wA] / [B, C, hB, wB] with all sides multiples of k. Returns
    (pooled [B, 1, hA/k, wA/k, hB/k, wB/k], argmax code uint8 (k<=3) or int64, same shape; see
    ``matching.relocalize.unravel_offsets``). Processes rows of A in chunks so that each full-resolution
    correlation slab uses at most about ``max_chunk_bytes``.
    """
    b, c, ha, wa = feat_a.shape
    _, _, hb, wb = feat_b.shape
    if ha % k or wa % k or hb % k or wb % k:
        raise ValueError(f"feature sizes {(ha, wa, hb, wb)} must be multiples of the pooling size k={k}")
    row_bytes = b * k * wa * hb * wb * feat_a.element_size() * 3  # slab + permuted copy + slack
    rows = max(1, min(ha // k, int(max_chunk_bytes // max(row_bytes, 1))))
    pooled_chunks, code_chunks = [], []
    fb = feat_b.reshape(b, c, hb * wb)
    for r0 in range(0, ha // k, rows):
        r1 = min(ha // k, r0 + rows)
        fa = feat_a[:, :, r0 * k:r1 * k]
        corr = torch.bmm(fa.reshape(b, c, -1).transpose(1, 2), fb).view(b, 1, (r1 - r0) * k, wa, hb, wb)
        p, code = maxpool4d(corr, k)
        pooled_chunks.append(p)
        code_chunks.append(code)
        del corr
    return torch.cat(pooled_chunks, dim=2), torch.cat(code_chunks, dim=2)


def correlation_flops(ha: int, wa: int, hb: int, wb: int, channels: int) -> float:
    """Floating-point operations of one dense correlation (multiply-adds counted as 2)."""
    return 2.0 * channels * ha * wa * hb * wb


__all__ = ["feature_l2norm", "correlation_4d", "correlation_4d_maxpool", "correlation_flops"]
