"""Submanifold sparse 4D convolution in plain PyTorch (CPU and CUDA; no MinkowskiEngine).

Input: sites ``coords`` [N, 4] int64 (sorted by linear key, unique) inside a grid (hA, wA, hB, wB) and
features [N, Cin]. Output only at the input sites:

    out[n] = bias + sum_{d in [-p, p]^4, n + d a site} W[:, :, d + p] @ x[site n + d]

with the weight in the dense layout of ``matching.consensus.Conv4d`` ([Cout, Cin, k, k, k, k], kernel
axes (hA, wA, hB, wB), cross-correlation), so the result equals the dense 'same' convolution of the tensor
that is zero outside the sites, read at the sites. Neighbours are found by linear keys + searchsorted on
the sorted keys (``NeighbourMap``, built once per kernel size and reused by every layer and both
symmetric branches); each kernel offset is a gather -> matmul -> scatter-add (index_add_). Pairs of
opposite offsets are looked up once. Memory is O(N * (Cin + Cout)) plus the neighbour pairs.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from matching.sparse.correlation import linear_keys


class NeighbourMap:
    """For every offset d of a k^4 kernel: (out_idx, in_idx) site pairs with site[in] = site[out] + d."""

    def __init__(self, coords: Tensor, shape: tuple[int, int, int, int], kernel_size: int,
                 keys: Tensor | None = None, index_dtype: torch.dtype = torch.int64) -> None:
        if kernel_size % 2 == 0:
            raise ValueError("submanifold conv needs an odd kernel size")
        self.kernel_size, self.shape, self.n = kernel_size, shape, int(coords.shape[0])
        p = kernel_size // 2
        keys = linear_keys(coords, shape) if keys is None else keys
        if self.n > 1 and not bool((keys[1:] > keys[:-1]).all()):
            raise ValueError("coords must be sorted by linear key and unique (use sort_unique)")
        _, wa, hb, wb = shape
        dims = torch.tensor(shape, device=coords.device)
        offsets = list(itertools.product(range(-p, p + 1), repeat=4))
        self.offsets = offsets
        self.pairs: list[tuple[Tensor, Tensor] | None] = [None] * len(offsets)
        centre = len(offsets) // 2
        ar = torch.arange(self.n, device=coords.device, dtype=index_dtype)
        self.pairs[centre] = (ar, ar)
        for t in range(centre):  # offsets t and len-1-t are opposite: one lookup serves both
            d = offsets[t]
            dt = torch.tensor(d, device=coords.device)
            nb = coords + dt
            ok = ((nb >= 0) & (nb < dims)).all(dim=1)
            src = torch.nonzero(ok).squeeze(1)
            delta = ((d[0] * wa + d[1]) * hb + d[2]) * wb + d[3]
            nkey = keys[src] + delta
            pos = torch.searchsorted(keys, nkey).clamp(max=max(self.n - 1, 0))
            hit = keys[pos] == nkey
            out_idx, in_idx = src[hit].to(index_dtype), pos[hit].to(index_dtype)
            self.pairs[t] = (out_idx, in_idx)
            self.pairs[len(offsets) - 1 - t] = (in_idx, out_idx)

    def num_pairs(self) -> int:
        return int(sum(len(o) for o, _ in self.pairs))


def _block_diag_weight(weight: Tensor, groups: int) -> Tensor:
    """Grouped weight [Cout, Cin/groups, k^4...] -> dense [Cout, Cin, ...] (block diagonal)."""
    if groups == 1:
        return weight
    cout, cin_g = weight.shape[:2]
    cout_g = cout // groups
    full = weight.new_zeros((cout, cin_g * groups) + tuple(weight.shape[2:]))
    for g in range(groups):
        full[g * cout_g:(g + 1) * cout_g, g * cin_g:(g + 1) * cin_g] = weight[g * cout_g:(g + 1) * cout_g]
    return full


def sparse_conv4d(x: Tensor, nmap: NeighbourMap, weight: Tensor, bias: Tensor | None = None,
                  groups: int = 1, max_chunk_bytes: int = 256 * 2**20) -> Tensor:
    """Submanifold 4D conv of site features x [N, Cin] -> [N, Cout] with a dense-layout weight.

    ``weight`` [Cout, Cin/groups, k, k, k, k] (``matching.consensus.Conv4d`` layout); ``nmap`` a
    ``NeighbourMap`` of the sites for kernel size k. Gather mode (Cin <= Cout): out += x[in] @ W_d^T
    scattered to out; otherwise scatter mode: y = x @ W^T for a group of offsets at once (bounded by
    ``max_chunk_bytes``), out += y[in, d]. Both exact (float rounding aside).
    """
    k = weight.shape[2]
    if k != nmap.kernel_size:
        raise ValueError(f"kernel size {k} but neighbour map for {nmap.kernel_size}")
    w = _block_diag_weight(weight, groups)
    cout, cin = w.shape[:2]
    if x.shape[1] != cin:
        raise ValueError(f"x has {x.shape[1]} channels, weight expects {cin}")
    n = x.shape[0]
    wt = w.reshape(cout, cin, -1).permute(2, 1, 0).to(x.dtype)  # [k^4, Cin, Cout]
    out = x.new_zeros((n, cout))
    if cin <= cout:
        for t, (o, i) in enumerate(nmap.pairs):
            if len(o):
                out.index_add_(0, o, x.index_select(0, i) @ wt[t])
    else:
        per = max(1, min(len(nmap.pairs), max_chunk_bytes // max(1, n * cout * x.element_size())))
        for t0 in range(0, len(nmap.pairs), per):
            t1 = min(len(nmap.pairs), t0 + per)
            y = x @ wt[t0:t1].permute(1, 0, 2).reshape(cin, (t1 - t0) * cout)  # [N, (t1-t0)*Cout]
            y = y.view(n, t1 - t0, cout)
            for t in range(t0, t1):
                o, i = nmap.pairs[t]
                if len(o):
                    out.index_add_(0, o, y[:, t - t0].index_select(0, i))
            del y
    if bias is not None:
        out += bias.to(x.dtype)
    return out


__all__ = ["NeighbourMap", "sparse_conv4d"]
