"""Exact 4D convolution (cross-correlation, zero 'same' padding) with several interchangeable kernels.

Tensor layout: input [B, Cin, hA, wA, hB, wB]; weight [Cout, Cin/groups, k, k, k, k] whose kernel axes
follow (hA, wA, hB, wB); out[o, x] = bias[o] + sum_{c, d} W[o, c, d + k//2] * in[c, x + d].

Internally the work is done in the "row layout" [B, hA, C, wA, hB, wB] and in chunks of hA rows, so the
peak extra memory is bounded by ``max_chunk_bytes`` whatever the tensor size. Methods (all exact up to
float rounding; ``benchmarks/bench_ncnet.py`` measures them):

* ``stack3d``: stack the k row-shifts into channels and do ONE conv3d (k x fewer calls, k x input memory).
* ``loop3d``: k conv3d calls over the (wA, hB, wB) volume with all rows batched, accumulated.
* ``stack2d``: stack the k^2 (hA, wA) shifts into channels and do ONE conv2d over (hB, wB).
* ``gemm``: full im2col (k^4 shifts) + one matrix product.
* ``slice_loop``: the reference formulation of the official code: one conv3d per output row and kernel
  row (hA * k small calls). Kept as the baseline for benchmarks.
* ``direct``: the compiled CPU kernel of ``matching/csrc`` (``matching.native``; float32, k = 3 or 5,
  inference): register-blocked direct convolution over a padded, channel-blocked copy. The default on CPU
  whenever it is available; where it cannot be used (autograd, other dtypes, no compiler) the torch rule
  below applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from matching import native

METHODS = ("stack3d", "loop3d", "stack2d", "gemm", "slice_loop", "direct")
# fastest exact method per device type, from benchmarks/bench_ncnet.py (see README figures)
DEFAULT_METHOD: dict[str, str] = {"cpu": "gemm", "cuda": "stack3d"}
DEFAULT_WIDE_METHOD: dict[str, str] = {"cpu": "stack3d", "cuda": "stack3d"}
DEFAULT_CHUNK_BYTES: dict[str, int] = {"cpu": 768 * 2**20, "cuda": 4 * 2**30}


def resolve_method(method: str, device: torch.device, cin_per_group: int = 1, cout_per_group: int = 1,
                   kernel_size: int = 3, native_ok: bool = True) -> str:
    """'auto' -> the benchmarked default for the device type and layer shape; otherwise validate the name.

    On CPU the compiled ``direct`` kernel comes first when it is available, supports the kernel size and
    ``native_ok`` (no autograd, float32); an explicit ``direct`` that cannot run falls back to the rule
    below. Among the torch methods on CPU, GEMM-then-shift-and-add wins when the layer has few OUTPUT
    channels and k = 3 (the 16->1 layer: 0.08 s vs 0.15 s for conv3d on a 25^4 tensor, 2 idle cores); the
    1->16 layer is faster as one conv3d over row-stacked inputs (``stack3d``: 0.044 s vs 0.081 s for im2col
    GEMM at 25^4, 0.12 vs 0.34 s at 30x40x30x40), as are wide and k = 5 layers.
    """
    if method == "direct" and not (native_ok and device.type == "cpu" and native.available()
                                   and kernel_size in native.SUPPORTED_KERNELS):
        method = "auto"  # the compiled kernel cannot run this call: the torch rule applies
    if method == "auto":
        if (native_ok and device.type == "cpu" and kernel_size in native.SUPPORTED_KERNELS
                and native.available()):
            return "direct"
        if cout_per_group <= 2 and kernel_size <= 3:
            return DEFAULT_METHOD.get(device.type, "gemm")
        return DEFAULT_WIDE_METHOD.get(device.type, "stack3d")
    if method not in METHODS:
        raise ValueError(f"unknown conv4d method {method!r}; choose from {METHODS} or 'auto'")
    return method


def row_bytes(cin: int, cout: int, k: int, cells_per_row: int, element_size: int, method: str) -> int:
    """Approximate temporary bytes needed per output row of one conv4d layer with ``method``."""
    factor = {"stack3d": cin * k, "loop3d": cin + cout, "stack2d": 2 * cin * k * k,
              "gemm": min(cin, cout) * k ** 4, "slice_loop": cin + cout, "direct": 2 * cin}[method]
    return (factor + 2 * cout) * cells_per_row * element_size


def conv4d_rows_valid(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1,
                      method: str = "stack3d") -> Tensor:
    """4D conv in row layout: x [B, R + 2p, Cin, wA, hB, wB] -> [B, R, Cout, wA, hB, wB].

    'valid' along the row axis (the caller supplies p = k//2 halo rows), zero 'same' padding along the
    three other axes.
    """
    b, rp, cin, wa, hb, wb = x.shape
    cout, cin_g, k = weight.shape[0], weight.shape[1], weight.shape[2]
    p = k // 2
    r = rp - 2 * p
    if r <= 0:
        return x.new_zeros((b, 0, cout, wa, hb, wb))
    if method == "direct":
        if native.usable(x, weight, bias) and k in native.SUPPORTED_KERNELS:
            return native.conv4d_rows_valid(x, weight, bias, groups)
        return conv4d_rows_valid(x, weight, bias, groups,
                                 resolve_method("auto", x.device, cin_g, cout // groups, k, native_ok=False))
    if groups > 1 and method != "gemm":  # grouped conv3d/conv2d are slow on CPU: one call per group
        cin_g, cout_g = cin // groups, cout // groups
        return torch.cat([conv4d_rows_valid(x[:, :, g * cin_g:(g + 1) * cin_g], weight[g * cout_g:(g + 1) * cout_g],
                                            None if bias is None else bias[g * cout_g:(g + 1) * cout_g], 1, method)
                          for g in range(groups)], dim=2)
    if method == "stack3d":
        xs = torch.stack([x[:, d:d + r] for d in range(k)], dim=3)  # [b, r, cin, k, wa, hb, wb]
        xs = xs.reshape(b * r, cin * k, wa, hb, wb)
        out = F.conv3d(xs, weight.reshape(cout, cin_g * k, k, k, k), bias, padding=p, groups=groups)
        return out.view(b, r, cout, wa, hb, wb)
    if method == "loop3d":
        out = None
        for d in range(k):
            xd = x[:, d:d + r].reshape(b * r, cin, wa, hb, wb)
            o = F.conv3d(xd, weight[:, :, d], bias if d == 0 else None, padding=p, groups=groups)
            out = o if out is None else out + o
        return out.view(b, r, cout, wa, hb, wb)
    if method == "stack2d":
        xp = F.pad(x, (0, 0, 0, 0, p, p))  # pad wA
        xs = torch.stack([xp[:, d:d + r, :, e:e + wa] for d in range(k) for e in range(k)], dim=3)
        xs = xs.permute(0, 1, 4, 2, 3, 5, 6).reshape(b * r * wa, cin * k * k, hb, wb)
        out = F.conv2d(xs, weight.reshape(cout, cin_g * k * k, k, k), bias, padding=p, groups=groups)
        return out.view(b, r, wa, cout, hb, wb).permute(0, 1, 3, 2, 4, 5)
    if method == "gemm":
        return _conv4d_gemm(x, weight, bias, groups)
    if method == "slice_loop":
        rows = []
        for i in range(r):
            acc = None
            for d in range(k):
                o = F.conv3d(x[:, i + d], weight[:, :, d], bias if d == 0 else None, padding=p, groups=groups)
                acc = o if acc is None else acc + o
            rows.append(acc)
        return torch.stack(rows, dim=1)
    raise ValueError(f"unknown conv4d method {method!r}")


def _shift_ranges(n: int, s: int) -> tuple[slice, slice]:
    """(destination, source) slices for out[i] += src[i + s] with zero padding, along an axis of size n."""
    return slice(max(0, -s), min(n, n - s)), slice(max(0, s), min(n, n + s))


def _conv4d_gemm(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    """Row-layout 4D conv as batched GEMMs (all groups at once): im2col ("gather", when Cin <= Cout per
    group) or GEMM then shift-and-add ("scatter", when Cout < Cin), so the k^4-expanded buffer has
    min(Cin, Cout) channels per group."""
    b, rp, cin, wa, hb, wb = x.shape
    cout, cin_g, k = weight.shape[0], weight.shape[1], weight.shape[2]
    G, cout_g, p, k4 = groups, cout // groups, k // 2, k ** 4
    r = rp - 2 * p
    n = wa * hb * wb
    offsets = [(d, e, f, g) for d in range(k) for e in range(k) for f in range(k) for g in range(k)]
    if cin_g <= cout_g:  # gather: cols [b, r, cin, k^4, wa, hb, wb] (cin = G * cin_g, group-major)
        xp = F.pad(x, (p, p, p, p, p, p))
        cols = x.new_empty((b, r, cin, k4, wa, hb, wb))
        for t, (d, e, f, g) in enumerate(offsets):
            cols[:, :, :, t] = xp[:, d:d + r, :, e:e + wa, f:f + hb, g:g + wb]
        wmat = weight.reshape(G, cout_g, cin_g * k4)
        out = torch.matmul(wmat, cols.view(b * r, G, cin_g * k4, n))  # [b*r, G, cout_g, n]
        out = out.view(b, r, cout, wa, hb, wb)
    else:  # scatter: part[., G, k^4 * cout_g, n] = W_t^T h, then out[x] += part_t[x + offset_t]
        wmat = weight.view(G, cout_g, cin_g, k4).permute(0, 3, 1, 2).reshape(G, k4 * cout_g, cin_g)
        part = torch.matmul(wmat, x.reshape(b * rp, G, cin_g, n)).view(b, rp, G, k4, cout_g, wa, hb, wb)
        out = x.new_zeros((b, r, G, cout_g, wa, hb, wb))
        for t, (d, e, f, g) in enumerate(offsets):
            (oe, se), (of, sf), (og, sg) = (_shift_ranges(wa, e - p), _shift_ranges(hb, f - p),
                                            _shift_ranges(wb, g - p))
            out[:, :, :, :, oe, of, og] += part[:, d:d + r, :, t, :, se, sf, sg]
        out = out.view(b, r, cout, wa, hb, wb)
    if bias is not None:
        out = out + bias.view(1, 1, cout, 1, 1, 1)
    return out


def take_rows(x: Tensor, start: int, stop: int) -> Tensor:
    """Rows [start, stop) of a row-layout tensor [B, H, ...], zero rows where the range leaves [0, H)."""
    h = x.shape[1]
    lo, hi = max(start, 0), min(stop, h)
    parts = []
    if start < lo:
        parts.append(x.new_zeros((x.shape[0], lo - start) + tuple(x.shape[2:])))
    parts.append(x[:, lo:hi])
    if stop > hi:
        parts.append(x.new_zeros((x.shape[0], stop - hi) + tuple(x.shape[2:])))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def conv4d(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1, method: str = "auto",
           max_chunk_bytes: int | None = None) -> Tensor:
    """4D convolution of x [B, Cin, hA, wA, hB, wB] with weight [Cout, Cin/groups, k, k, k, k] ('same')."""
    b, cin, ha, wa, hb, wb = x.shape
    cout, k = weight.shape[0], weight.shape[2]
    if not (weight.shape[2] == weight.shape[3] == weight.shape[4] == weight.shape[5]) or k % 2 == 0:
        raise ValueError(f"conv4d needs an odd cubic kernel, got {tuple(weight.shape)}")
    method = resolve_method(method, x.device, cin // groups, cout // groups, k,
                            native_ok=native.usable(x, weight, bias))
    budget = max_chunk_bytes or DEFAULT_CHUNK_BYTES.get(x.device.type, 2**30)
    per_row = row_bytes(cin, cout, k, b * wa * hb * wb, x.element_size(), method)
    rows = max(1, min(ha, budget // max(per_row, 1)))
    p = k // 2
    xl = x.transpose(1, 2)  # row layout view [b, hA, cin, wA, hB, wB]
    outs = []
    for r0 in range(0, ha, rows):
        r1 = min(ha, r0 + rows)
        slab = take_rows(xl, r0 - p, r1 + p)
        outs.append(conv4d_rows_valid(slab, weight, bias, groups, method))
    return torch.cat(outs, dim=1).transpose(1, 2).contiguous()


def conv4d_flops(ha: int, wa: int, hb: int, wb: int, cin: int, cout: int, k: int, groups: int = 1) -> float:
    """Multiply-add FLOPs (x2) of one 'same' 4D convolution."""
    return 2.0 * ha * wa * hb * wb * cout * (cin // groups) * k ** 4


__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_WIDE_METHOD",
    "METHODS",
    "conv4d",
    "conv4d_flops",
    "conv4d_rows_valid",
    "resolve_method",
    "row_bytes",
    "take_rows",
]
