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


CORRELATION_METHODS = ("blocked", "slab")
DEFAULT_BLOCK_BYTES = 64 * 2**20


def pooled_cell_order(features: Tensor, k: int) -> Tensor:
    """[B, C, h, w] -> [B, C, (h/k) * (w/k) * k * k]: cells ordered (pooled row, pooled col, di, dj)."""
    b, c, h, w = features.shape
    return features.reshape(b, c, h // k, k, w // k, k).permute(0, 1, 2, 4, 3, 5).reshape(b, c, -1)


def correlation_4d_maxpool(feat_a: Tensor, feat_b: Tensor, k: int = 2, max_chunk_bytes: int = 512 * 2**20,
                           method: str = "blocked",
                           block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[Tensor, Tensor]:
    """4D correlation max-pooled with a k^4 window without materialising the full tensor.

    Inputs [B, C, hA, wA] / [B, C, hB, wB] with all sides multiples of k. Returns
    (pooled [B, 1, hA/k, wA/k, hB/k, wB/k] (float32 for bfloat16 inputs), argmax code uint8 (k<=3) or int64, same shape; see
    ``matching.relocalize.unravel_offsets``; on ties the first position, as ``maxpool4d``).
    ``method='blocked'`` (default): both feature maps reordered so each k x k window is contiguous, then
    blocks of pooled rows of A of at most ``block_bytes`` of correlation are computed and reduced at once
    (each block written once, reduced in place, no permuted copy). ``method='slab'``: rows of A in slabs
    of about ``max_chunk_bytes``, each pooled by ``maxpool4d`` (a permuted copy per slab).
    """
    b, c, ha, wa = feat_a.shape
    _, _, hb, wb = feat_b.shape
    if ha % k or wa % k or hb % k or wb % k:
        raise ValueError(f"feature sizes {(ha, wa, hb, wb)} must be multiples of the pooling size k={k}")
    if method == "slab":
        return _correlation_maxpool_slabs(feat_a, feat_b, k, max_chunk_bytes)
    if method != "blocked":
        raise ValueError(f"method must be one of {CORRELATION_METHODS}, got {method!r}")
    pa, qa, pb, qb = ha // k, wa // k, hb // k, wb // k
    kk = k * k
    fa = pooled_cell_order(feat_a, k).transpose(1, 2)  # [B, pa*qa*kk, C]
    fb = pooled_cell_order(feat_b, k).contiguous()  # [B, C, pb*qb*kk]
    n_b = pb * qb
    out_dtype = torch.promote_types(feat_a.dtype, torch.float32)  # bfloat16 products: float32 maxima
    cell_bytes = b * kk * n_b * kk * torch.finfo(out_dtype).bits // 8  # one pooled cell of A against all of B
    cells = max(1, min(pa * qa, int(block_bytes // max(cell_bytes, 1))))
    pooled = torch.empty((b, pa * qa, n_b), dtype=out_dtype, device=feat_a.device)
    code = torch.empty((b, pa * qa, n_b), dtype=torch.uint8 if k ** 4 <= 256 else torch.int64,
                       device=feat_a.device)
    for a0 in range(0, pa * qa, cells):
        a1 = min(pa * qa, a0 + cells)
        block = torch.bmm(fa[:, a0 * kk:a1 * kk], fb).to(out_dtype).view(b, a1 - a0, kk, n_b, kk)
        v_b, i_b = block.max(dim=4)  # best offset in B's window, per offset in A's window: [b, r, kk, n_b]
        v, i_a = v_b.max(dim=2)  # best offset in A's window: [b, r, n_b]
        pooled[:, a0:a1] = v
        code[:, a0:a1] = (i_a * kk + torch.gather(i_b, 2, i_a[:, :, None]).squeeze(2)).to(code.dtype)
        del block, v_b, i_b
    return pooled.view(b, 1, pa, qa, pb, qb), code.view(b, 1, pa, qa, pb, qb)


def _correlation_maxpool_slabs(feat_a: Tensor, feat_b: Tensor, k: int,
                               max_chunk_bytes: int) -> tuple[Tensor, Tensor]:
    """``correlation_4d_maxpool(method='slab')``: rows of A in slabs, each max-pooled by ``maxpool4d``."""
    b, c, ha, wa = feat_a.shape
    _, _, hb, wb = feat_b.shape
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


__all__ = ["CORRELATION_METHODS", "correlation_4d", "correlation_4d_maxpool", "correlation_flops", "feature_l2norm",
           "pooled_cell_order"]
