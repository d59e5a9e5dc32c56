"""Sparse neighbourhood consensus: NCNet's consensus network as submanifold sparse 4D convolutions.

Uses the parameters of a dense ``matching.consensus.NeighConsensus`` as they are (same state dict, same
checkpoints). Each layer: submanifold conv (``matching.sparse.conv4d``) + ReLU, output at the input
sites only. Symmetric mode N(c) + T(N(T(c))): T swaps the (iA, jA) <-> (iB, jB) coordinates; on the same
sites this equals running N with every kernel transposed (``transpose_kernel``), so both branches run
fused as one grouped network on one neighbour map (``symmetric_by='kernel'``, default), or literally on
swapped coordinates (``symmetric_by='coords'``, builds a second neighbour map; for checking).
"""

from __future__ import annotations

import torch
from torch import Tensor

from matching.consensus import NeighConsensus, transpose_kernel
from matching.sparse.conv4d import NeighbourMap, sparse_conv4d
from matching.sparse.correlation import SparseCorr4d


def _branch_layers(nc: NeighConsensus, fused_symmetric: bool) -> list[tuple[Tensor, Tensor | None, int]]:
    """(weight, bias, groups) per layer; fused symmetric stacks direct and transposed kernels."""
    out = []
    for n, layer in enumerate(nc.conv_layers()):
        w, b = layer.weight, layer.bias
        if fused_symmetric:
            w = torch.cat([w, transpose_kernel(w)], dim=0)
            b = None if b is None else torch.cat([b, b], dim=0)
            out.append((w, b, 1 if n == 0 else 2))
        else:
            out.append((w, b, 1))
    return out


def _run_layers(x: Tensor, layers: list[tuple[Tensor, Tensor | None, int]], maps: dict[int, NeighbourMap],
                max_chunk_bytes: int) -> Tensor:
    for w, b, g in layers:
        x = torch.relu(sparse_conv4d(x, maps[w.shape[2]], w, b, groups=g, max_chunk_bytes=max_chunk_bytes))
    return x


def neighbour_maps(corr: SparseCorr4d, kernel_sizes: list[int]) -> dict[int, NeighbourMap]:
    """One ``NeighbourMap`` per distinct kernel size (shared by layers and symmetric branches)."""
    keys = corr.keys()
    return {k: NeighbourMap(corr.coords, corr.shape, k, keys=keys) for k in sorted(set(kernel_sizes))}


def sparse_neigh_consensus(nc: NeighConsensus, corr: SparseCorr4d, symmetric_by: str = "kernel",
                           maps: dict[int, NeighbourMap] | None = None,
                           max_chunk_bytes: int = 256 * 2**20) -> SparseCorr4d:
    """Apply the consensus network ``nc`` (dense module, its weights) to a sparse tensor with 1 channel.

    Returns a ``SparseCorr4d`` on the same sites with 1 channel. Equals the dense network whose every
    layer output is set to zero outside the sites (submanifold semantics). Runs in the dtype of
    ``corr.values`` (weights cast).
    """
    if corr.values.shape[1] != 1:
        raise ValueError("sparse consensus expects 1 input channel")
    ks = [layer.kernel_size for layer in nc.conv_layers()]
    dtype = corr.values.dtype
    if nc.symmetric and symmetric_by == "coords":
        direct = [(w.to(dtype), None if b is None else b.to(dtype), g) for w, b, g in _branch_layers(nc, False)]
        m1 = maps or neighbour_maps(corr, ks)
        out1 = _run_layers(corr.values, direct, m1, max_chunk_bytes)
        ct = corr.transpose()
        out2 = _run_layers(ct.values, direct, neighbour_maps(ct, ks), max_chunk_bytes)
        back = SparseCorr4d(ct.coords, out2, ct.shape).transpose()  # same sites as corr, same order
        return corr.with_values(out1 + back.values)
    if symmetric_by not in ("kernel", "coords"):
        raise ValueError("symmetric_by must be 'kernel' or 'coords'")
    layers = [(w.to(dtype), None if b is None else b.to(dtype), g) for w, b, g in _branch_layers(nc, nc.symmetric)]
    maps = maps or neighbour_maps(corr, ks)
    h = _run_layers(corr.values, layers, maps, max_chunk_bytes)
    if nc.symmetric:
        h = h.sum(dim=1, keepdim=True)
    return corr.with_values(h)


class SparseNeighConsensus(torch.nn.Module):
    """Module wrapper: ``SparseNeighConsensus(nc)(sparse_corr)``; ``nc`` is shared (not copied)."""

    def __init__(self, nc: NeighConsensus, symmetric_by: str = "kernel") -> None:
        super().__init__()
        self.nc, self.symmetric_by = nc, symmetric_by

    def forward(self, corr: SparseCorr4d) -> SparseCorr4d:
        return sparse_neigh_consensus(self.nc, corr, self.symmetric_by)


__all__ = ["sparse_neigh_consensus", "neighbour_maps", "SparseNeighConsensus"]
