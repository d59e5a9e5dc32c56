"""Neighbourhood consensus network: a stack of 4D convolutions + ReLU, optionally symmetric."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from matching import native
from matching.conv4d import (
    DEFAULT_CHUNK_BYTES,
    conv4d,
    conv4d_rows_valid,
    resolve_method,
    row_bytes,
    take_rows,
)


class Conv4d(nn.Module):
    """4D convolution layer (zero 'same' padding, bias); weight [out, in, k, k, k, k] over (hA, wA, hB, wB)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 method: str = "auto") -> None:
        super().__init__()
        k = kernel_size
        self.in_channels, self.out_channels, self.kernel_size, self.method = in_channels, out_channels, k, method
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, k, k, k, k))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights and uniform bias, as nn.ConvNd with fan_in = in * k^4."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size ** 4)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, in, hA, wA, hB, wB] -> [B, out, hA, wA, hB, wB]."""
        return conv4d(x, self.weight, self.bias, method=self.method)


def transpose_ab(x: Tensor) -> Tensor:
    """T: swap the (hA, wA) and (hB, wB) axis pairs of a [B, C, hA, wA, hB, wB] tensor."""
    return x.permute(0, 1, 4, 5, 2, 3)


def transpose_kernel(weight: Tensor) -> Tensor:
    """Kernel W_T with T(conv(T(x), W)) = conv(x, W_T): swaps the kernel's A and B axis pairs."""
    return weight.permute(0, 1, 4, 5, 2, 3)


class NeighConsensus(nn.Module):
    """NCNet's neighbourhood consensus N on corr [B, 1, hA, wA, hB, wB]; symmetric: N(c) + T(N(T(c))).

    Evaluated in chunks of hA rows (halo = sum of k//2) so the peak temporary memory stays near
    ``max_chunk_bytes``; the symmetric branch runs fused with the direct one, using transposed kernels
    (T(N(T(c))) equals N with every kernel transposed), as a grouped convolution. ``half=True`` runs
    the convolutions in float16 (CUDA). On CPU (float32, inference, ``method`` 'auto' or 'direct') the
    whole network runs in the compiled kernel (``matching.native.conv4d_stack``), which streams over hA
    rows with a ring of k rows per layer, so its temporary memory is a few rows whatever the size.
    """

    def __init__(self, kernel_sizes: tuple[int, ...] | list[int] = (3, 3),
                 channels: tuple[int, ...] | list[int] = (16, 1), symmetric: bool = True,
                 method: str = "auto", half: bool = False, max_chunk_bytes: int | None = None) -> None:
        super().__init__()
        if len(kernel_sizes) != len(channels):
            raise ValueError("kernel_sizes and channels must have the same length")
        self.kernel_sizes, self.channels = list(kernel_sizes), list(channels)
        self.symmetric, self.method, self.half, self.max_chunk_bytes = symmetric, method, half, max_chunk_bytes
        layers: list[nn.Module] = []
        cin = 1
        for k, c in zip(kernel_sizes, channels, strict=True):
            layers += [Conv4d(cin, c, k, method=method), nn.ReLU(inplace=False)]
            cin = c
        self.conv = nn.Sequential(*layers)  # official layout: conv.{0,2,4} are the Conv4d layers

    def conv_layers(self) -> list[Conv4d]:
        """The Conv4d layers in order."""
        return [m for m in self.conv if isinstance(m, Conv4d)]

    def fused_layers(self, dtype: torch.dtype) -> list[tuple[Tensor, Tensor | None, int]]:
        """(weight, bias, groups) per layer; symmetric mode stacks the direct and transposed branches."""
        out = []
        for n, layer in enumerate(self.conv_layers()):
            w, b = layer.weight, layer.bias
            if self.symmetric:
                w = torch.cat([w, transpose_kernel(w)], dim=0)
                b = None if b is None else torch.cat([b, b], dim=0)
                groups = 1 if n == 0 else 2
            else:
                groups = 1
            out.append((w.to(dtype), None if b is None else b.to(dtype), groups))
        return out

    def forward(self, corr: Tensor) -> Tensor:
        """corr [B, 1, hA, wA, hB, wB] -> filtered [B, 1, hA, wA, hB, wB] (same dtype as the input)."""
        b, c, ha, wa, hb, wb = corr.shape
        if c != 1:
            raise ValueError(f"NeighConsensus expects 1 input channel, got {c}")
        dtype = torch.float16 if (self.half and corr.device.type == "cuda") else corr.dtype
        layers = self.fused_layers(dtype)
        if self._native_ok(corr, layers):
            return self._forward_native(corr, layers)
        methods = [resolve_method(self.method, corr.device, w.shape[1], w.shape[0] // g, w.shape[2])
                   for w, _, g in layers]
        halos = [w.shape[2] // 2 for w, _, _ in layers]
        halo = sum(halos)
        budget = self.max_chunk_bytes or DEFAULT_CHUNK_BYTES.get(corr.device.type, 2**30)
        esize = torch.finfo(dtype).bits // 8
        cells = b * wa * hb * wb
        per_row = max(row_bytes(w.shape[1] * g, w.shape[0], w.shape[2], cells, esize, m)
                      for (w, _, g), m in zip(layers, methods, strict=True))
        rows = max(1, min(ha, budget // max(per_row, 1) - 2 * halo))
        xl = corr.transpose(1, 2)  # [b, hA, 1, wA, hB, wB]
        outs = []
        for r0 in range(0, ha, rows):
            r1 = min(ha, r0 + rows)
            start, stop = r0 - halo, r1 + halo
            h = take_rows(xl, start, stop).to(dtype)
            for (w, bias, groups), p, method in zip(layers, halos, methods, strict=True):
                h = torch.relu(conv4d_rows_valid(h, w, bias, groups, method))
                start, stop = start + p, stop - p
                if start < 0 or stop > ha:  # rows outside the tensor are zero padding for the next layer
                    h = _zero_outside(h, max(start, 0) - start, min(stop, ha) - start)
            if self.symmetric:
                h = h.sum(dim=2, keepdim=True)
            outs.append(h.to(corr.dtype))
        return torch.cat(outs, dim=1).transpose(1, 2).contiguous()

    def _native_ok(self, corr: Tensor, layers: list[tuple[Tensor, Tensor | None, int]]) -> bool:
        """True when the compiled whole-network kernel applies to this call."""
        if self.method not in ("auto", "direct"):
            return False
        ks = {w.shape[2] for w, _, _ in layers}
        if len(ks) != 1 or ks.pop() not in native.SUPPORTED_KERNELS:
            return False
        return native.usable(corr, *[t for w, b, _ in layers for t in (w, b)])

    def _forward_native(self, corr: Tensor, layers: list[tuple[Tensor, Tensor | None, int]]) -> Tensor:
        """Whole network in the compiled kernel, one call per batch item (rows stream inside)."""
        b, ha = corr.shape[0], corr.shape[2]
        halo = sum(w.shape[2] // 2 for w, _, _ in layers)
        w_last, _, g_last = layers[-1]
        sum_groups = self.symmetric and w_last.shape[0] // g_last == 1 and w_last.shape[1] % 16 == 0
        outs = []
        for i in range(b):
            x = corr[i].transpose(0, 1)  # [hA, 1, wA, hB, wB]
            h = native.conv4d_stack(x, layers, -halo, ha + halo, sum_groups=sum_groups)
            if self.symmetric and not sum_groups:
                h = h.sum(dim=1, keepdim=True)
            outs.append(h.transpose(0, 1))  # [1, hA, ...]: contiguous (size-1 axis), no copy
        return outs[0].unsqueeze(0) if b == 1 else torch.stack(outs)


def _zero_outside(h: Tensor, lo: int, hi: int) -> Tensor:
    """Keep rows [lo, hi) of a row-layout tensor and replace the others by zeros (autograd-safe)."""
    parts = []
    if lo > 0:
        parts.append(h.new_zeros((h.shape[0], lo) + tuple(h.shape[2:])))
    parts.append(h[:, lo:hi])
    if hi < h.shape[1]:
        parts.append(h.new_zeros((h.shape[0], h.shape[1] - hi) + tuple(h.shape[2:])))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def neigh_consensus_flops(ha: int, wa: int, hb: int, wb: int, kernel_sizes: list[int], channels: list[int],
                          symmetric: bool = True) -> float:
    """FLOPs (multiply-add = 2) of the consensus network on an hA x wA x hB x wB tensor."""
    total, cin = 0.0, 1
    for k, c in zip(kernel_sizes, channels, strict=True):
        total += 2.0 * ha * wa * hb * wb * cin * c * k ** 4
        cin = c
    return total * (2 if symmetric else 1)


__all__ = ["Conv4d", "NeighConsensus", "neigh_consensus_flops", "transpose_ab", "transpose_kernel"]
