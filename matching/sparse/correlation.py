"""Sparse 4D correlation for Sparse-NCNet: the top-k matches of every cell, both directions, in chunks.

A sparse 4D tensor (``SparseCorr4d``) holds ``coords`` [N, 4] int64 (i, j, k, l) = (row, col) of a cell of
A and (row, col) of a cell of B, sorted by the linear key ((i * wA + j) * hB + k) * wB + l and unique, and
``values`` [N, C]. Cells not listed are zero. The dense tensor [hA, wA, hB, wB] is never built: the
correlation is evaluated one chunk of A's cells against all of B's cells at a time (bounded memory).

Top-k correlation (Rocco et al., Sparse-NCNet, ECCV 2020): for each cell of A its k best cells of B and
for each cell of B its k best cells of A; union. ``combine='sum'``: an entry found from both sides has its
value summed (value 2c), as the official implementation (sum of the two sparse tensors) does;
``combine='max'``: each entry keeps c, the dense correlation restricted to the union (what
``matching.sparse.match`` uses with dense-trained consensus weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_CHUNK_BYTES = 256 * 2**20


@dataclass
class SparseCorr4d:
    """Sparse 4D tensor: coords [N, 4] int64 (iA, jA, iB, jB) sorted by linear key, values [N, C]."""

    coords: Tensor
    values: Tensor
    shape: tuple[int, int, int, int]  # (hA, wA, hB, wB)

    @property
    def n(self) -> int:
        return int(self.coords.shape[0])

    def keys(self) -> Tensor:
        """Linear keys ((i * wA + j) * hB + k) * wB + l, int64 [N]."""
        return linear_keys(self.coords, self.shape)

    def index_a(self) -> Tensor:
        """Flat A cell index i * wA + j [N]."""
        return self.coords[:, 0] * self.shape[1] + self.coords[:, 1]

    def index_b(self) -> Tensor:
        """Flat B cell index k * wB + l [N]."""
        return self.coords[:, 2] * self.shape[3] + self.coords[:, 3]

    def with_values(self, values: Tensor) -> SparseCorr4d:
        return SparseCorr4d(self.coords, values, self.shape)

    def to_dense(self) -> Tensor:
        """Dense [C, hA, wA, hB, wB] (zeros outside the entries): for tests and small tensors only."""
        ha, wa, hb, wb = self.shape
        c = self.values.shape[1]
        out = self.values.new_zeros((ha * wa * hb * wb, c))
        out[self.keys()] = self.values
        return out.t().reshape(c, ha, wa, hb, wb)

    def transpose(self) -> SparseCorr4d:
        """T: swap the (iA, jA) and (iB, jB) coordinate pairs (re-sorted)."""
        ha, wa, hb, wb = self.shape
        coords = self.coords[:, [2, 3, 0, 1]]
        return sort_unique(coords, self.values, (hb, wb, ha, wa))

    def to(self, device: torch.device | str) -> SparseCorr4d:
        return SparseCorr4d(self.coords.to(device), self.values.to(device), self.shape)


def linear_keys(coords: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    """((i * wA + j) * hB + k) * wB + l for coords [N, 4]."""
    _, wa, hb, wb = shape
    c = coords.long()
    return ((c[:, 0] * wa + c[:, 1]) * hb + c[:, 2]) * wb + c[:, 3]


def keys_to_coords(keys: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    """Inverse of ``linear_keys``: [N] -> [N, 4] int64."""
    _, wa, hb, wb = shape
    col_b = keys % wb
    r = keys // wb
    row_b = r % hb
    r = r // hb
    col_a = r % wa
    row_a = r // wa
    return torch.stack([row_a, col_a, row_b, col_b], dim=1)


def sort_unique(coords: Tensor, values: Tensor, shape: tuple[int, int, int, int],
                reduce: str = "sum") -> SparseCorr4d:
    """Sort entries by linear key; duplicate coordinates are combined (``reduce`` 'sum' or 'max')."""
    keys = linear_keys(coords, shape)
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    if values.dim() == 1:
        values = values[:, None]
    out = values.new_zeros((len(uniq), values.shape[1]))
    if reduce == "sum":
        out.index_add_(0, inverse, values)
    elif reduce == "max":
        out = out.fill_(float("-inf")).scatter_reduce(0, inverse[:, None].expand_as(values), values, "amax")
    else:
        raise ValueError(f"reduce must be 'sum' or 'max', got {reduce!r}")
    return SparseCorr4d(keys_to_coords(uniq, shape), out, shape)


BlockFn = Callable[[int, int], Tensor]


def topk_from_blocks(block_fn: BlockFn, n_a: int, n_b: int, k: int, rows_per_chunk: int,
                     device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k both ways of an (n_a x n_b) score matrix delivered in row blocks ``block_fn(a0, a1)`` [a1-a0, n_b].

    Returns (a_idx, b_idx, value, found_by) for the union of A->B and B->A top-k entries (one row per
    direction that found the entry, so entries found twice appear twice). The B->A top-k is kept as a
    running top-k merged block by block, so each block is computed once.
    """
    ka, kb = min(k, n_b), min(k, n_a)
    ab_idx_a, ab_idx_b, ab_val = [], [], []
    best_val = best_idx = None
    for a0 in range(0, n_a, rows_per_chunk):
        a1 = min(n_a, a0 + rows_per_chunk)
        block = block_fn(a0, a1)  # [r, n_b]
        v, idx = torch.topk(block, ka, dim=1)
        ab_idx_a.append(torch.arange(a0, a1, device=device).repeat_interleave(ka))
        ab_idx_b.append(idx.reshape(-1))
        ab_val.append(v.reshape(-1))
        vb, ib = torch.topk(block, min(kb, a1 - a0), dim=0)  # [k', n_b]
        ib = ib + a0
        if best_val is None:
            best_val, best_idx = vb, ib
        else:
            cat_v, cat_i = torch.cat([best_val, vb]), torch.cat([best_idx, ib])
            best_val, sel = torch.topk(cat_v, min(kb, cat_v.shape[0]), dim=0)
            best_idx = torch.gather(cat_i, 0, sel)
        del block
    kk = best_val.shape[0]
    ba_idx_b = torch.arange(n_b, device=device).repeat(kk)
    a_idx = torch.cat(ab_idx_a + [best_idx.reshape(-1)])
    b_idx = torch.cat(ab_idx_b + [ba_idx_b])
    val = torch.cat(ab_val + [best_val.reshape(-1)])
    return a_idx, b_idx, val, torch.cat([torch.zeros(n_a * ka, dtype=torch.uint8, device=device),
                                         torch.ones(kk * n_b, dtype=torch.uint8, device=device)])


def _flat_features(f: Tensor) -> tuple[Tensor, int, int]:
    if f.dim() == 4:
        if f.shape[0] != 1:
            raise ValueError("sparse correlation handles one pair at a time (batch size 1)")
        f = f[0]
    c, h, w = f.shape
    return f.reshape(c, h * w).t().contiguous(), h, w


def sparse_topk_correlation(feat_a: Tensor, feat_b: Tensor, k: int = 10, combine: str = "sum",
                            max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> SparseCorr4d:
    """Top-k sparse correlation of L2-normalised features [1, C, hA, wA] / [1, C, hB, wB] (or [C, h, w]).

    c_ijkl = <fA_ij, fB_kl>; keeps, for each cell of A, its ``k`` best cells of B and, for each cell of B,
    its ``k`` best cells of A. ``combine='sum'``: an entry found from both sides gets value 2c (official
    Sparse-NCNet); 'max' keeps c. Memory: one [chunk, hB*wB] block of at most ``max_chunk_bytes``.
    Returns a ``SparseCorr4d`` with values [N, 1].
    """
    fa, ha, wa = _flat_features(feat_a)
    fb, hb, wb = _flat_features(feat_b)
    n_a, n_b = fa.shape[0], fb.shape[0]
    rows = max(1, min(n_a, max_chunk_bytes // max(1, 3 * n_b * fa.element_size())))
    fbt = fb.t().contiguous()

    def block(a0: int, a1: int) -> Tensor:
        return fa[a0:a1] @ fbt

    a_idx, b_idx, val, _ = topk_from_blocks(block, n_a, n_b, k, rows, fa.device)
    return _assemble(a_idx, b_idx, val, (ha, wa, hb, wb), combine)


def _assemble(a_idx: Tensor, b_idx: Tensor, val: Tensor, shape: tuple[int, int, int, int],
              combine: str) -> SparseCorr4d:
    """Union of the two directions' entries; duplicates summed ('sum') or kept once ('max')."""
    _, wa, _, wb = shape
    coords = torch.stack([a_idx // wa, a_idx % wa, b_idx // wb, b_idx % wb], dim=1)
    return sort_unique(coords, val[:, None], shape, reduce="sum" if combine == "sum" else "max")


def sparse_topk_correlation_maxpool(feat_a: Tensor, feat_b: Tensor, k: int = 10, pool: int = 2,
                                    combine: str = "sum",
                                    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> SparseCorr4d:
    """Top-k sparse version of the k^4 max-pooled correlation (``matching.correlation.correlation_4d_maxpool``).

    The pooled value of cell (i, j, k, l) is the maximum of the full-resolution correlation over its
    pool^4 window, exactly as the dense relocalization path; computed in chunks of pooled rows of A
    (cost pool^4 x the pooled correlation). Features at full resolution, sides multiples of ``pool``.
    """
    fa, ha, wa = _flat_features(feat_a)
    fb, hb, wb = _flat_features(feat_b)
    if ha % pool or wa % pool or hb % pool or wb % pool:
        raise ValueError(f"feature sizes {(ha, wa, hb, wb)} must be multiples of pool={pool}")
    pa, qa, pb, qb = ha // pool, wa // pool, hb // pool, wb // pool
    c = fa.shape[1]
    fbt = fb.t().contiguous()
    full_row = pool * wa * hb * wb * fa.element_size() * 3  # one pooled row of A at full resolution
    rows = max(1, min(pa, max_chunk_bytes // max(1, full_row)))
    fa_img = fa.t().reshape(c, ha, wa)

    def block(a0: int, a1: int) -> Tensor:  # a0, a1: flat pooled A cell range, multiples of qa
        r0, r1 = a0 // qa, a1 // qa
        f = fa_img[:, r0 * pool:r1 * pool].reshape(c, -1).t()  # [(r1-r0)*pool*wa, C]
        corr = (f @ fbt).view(r1 - r0, pool, qa, pool, pb, pool, qb, pool)
        return corr.amax(dim=(1, 3, 5, 7)).reshape((r1 - r0) * qa, pb * qb)

    a_idx, b_idx, val, _ = topk_from_blocks(block, pa * qa, pb * qb, k, rows * qa, fa.device)
    return _assemble(a_idx, b_idx, val, (pa, qa, pb, qb), combine)


def sparse_mutual_matching(corr: SparseCorr4d, eps: float = 1e-5) -> SparseCorr4d:
    """Soft mutual NN filter on a sparse tensor: c' = c * (c / (maxA + eps)) * (c / (maxB + eps)).

    maxA (per B cell, over A) and maxB (per A cell, over B) are taken over the entries and the implicit
    zeros, i.e. exactly ``matching.mutual.mutual_matching`` of the dense tensor that is zero outside the
    entries (as long as some cell of each line is not an entry; with a full line the zero is not there,
    which only matters for negative values). Per channel.
    """
    ha, wa, hb, wb = corr.shape
    v = corr.values
    ia, ib = corr.index_a(), corr.index_b()
    c = v.shape[1]
    cnt_a = torch.bincount(ia, minlength=ha * wa)  # entries per A cell (line over B)
    cnt_b = torch.bincount(ib, minlength=hb * wb)
    zero_b = (cnt_a < hb * wb)[:, None]  # the line of this A cell has implicit zeros
    zero_a = (cnt_b < ha * wa)[:, None]
    max_b = v.new_full((ha * wa, c), float("-inf")).scatter_reduce(0, ia[:, None].expand(-1, c), v, "amax")
    max_a = v.new_full((hb * wb, c), float("-inf")).scatter_reduce(0, ib[:, None].expand(-1, c), v, "amax")
    max_b = torch.where(zero_b, max_b.clamp(min=0.0), max_b)
    max_a = torch.where(zero_a, max_a.clamp(min=0.0), max_a)
    out = v * (v / (max_a[ib] + eps)) * (v / (max_b[ia] + eps))
    return corr.with_values(out)


__all__ = [
    "SparseCorr4d",
    "keys_to_coords",
    "linear_keys",
    "sort_unique",
    "sparse_mutual_matching",
    "sparse_topk_correlation",
    "sparse_topk_correlation_maxpool",
    "topk_from_blocks",
]
