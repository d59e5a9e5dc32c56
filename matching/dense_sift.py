"""Dense upright RootSIFT descriptors on a regular grid (weight-free features), in PyTorch.

Layout: input grey images [B, 1, H, W] in 0..1; output [B, 128, H // step, W // step], each
descriptor L2-normalised (RootSIFT: SIFT clipped at 0.2, L1-normalised, square-rooted).
Descriptor (i, j) is centred at pixel (j * step + step / 2, i * step + step / 2) in the COLMAP
convention (top-left pixel centre = (0.5, 0.5)); it covers 4 x 4 spatial cells of ``bin_size``
pixels with 8 orientation bins, bilinear (triangular) spatial and orientation weighting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from localize.core.errors import QueryError

NUM_ORIENTATIONS = 8
NUM_CELLS = 4
DESCRIPTOR_DIM = NUM_ORIENTATIONS * NUM_CELLS * NUM_CELLS


def grid_centers(height: int, width: int, step: int) -> np.ndarray:
    """Pixel centres (x, y), COLMAP convention, of the descriptor grid: array [h, w, 2]."""
    h, w = height // step, width // step
    xs = np.arange(w) * step + step / 2.0
    ys = np.arange(h) * step + step / 2.0
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], axis=-1)


def _triangle_kernel(bin_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """1D triangular window of half-width ``bin_size`` (odd length 2*bin_size - 1), sums to bin_size."""
    r = torch.arange(-(bin_size - 1), bin_size, device=device, dtype=dtype)
    return 1.0 - r.abs() / bin_size


def window_means(x: torch.Tensor, size: int, min_planes: int = 64) -> torch.Tensor:
    """Mean of every size x size window of each plane of [P, H, W] -> [P, H - size + 1, W - size + 1].

    The same numbers as ``avg_pool2d`` on [P, 1, H, W] (each window summed in the same order), faster on a
    CPU: the planes go in the channel axis of one channels-last image, so the pooling is vectorised across
    them; with fewer than ``min_planes`` planes, each is cut into horizontal strips (overlapping by size - 1
    rows) that become extra channels.
    """
    p, h, w = x.shape
    ho = h - size + 1
    strips = max(1, min(ho, -(-min_planes // p)))
    rows = -(-ho // strips)  # output rows per strip (the last strip's extra rows are dropped)
    if strips > 1:
        x = F.pad(x, (0, 0, 0, rows * strips - ho))
        idx = torch.arange(strips)[:, None] * rows + torch.arange(rows + size - 1)[None]
        x = x[:, idx.reshape(-1)].reshape(p * strips, rows + size - 1, w)
    out = F.avg_pool2d(x[None].contiguous(memory_format=torch.channels_last), size, stride=1)[0]
    return out.reshape(p, strips * rows, w - size + 1)[:, :ho]


def triangle_filter(x: torch.Tensor, bin_size: int,
                    lattice: tuple[int, Sequence[int], Sequence[int]] | None = None) -> torch.Tensor:
    """Separable triangular filter (weights 1 - |r|/bin_size, |r| < bin_size) of [B, C, H, W], zero padded.

    Computed as two box filters of width ``bin_size`` over the zero-padded input (the first covers
    [i - b + 1, i], the second shifts back by b - 1), exact and much faster than a 1-channel conv.
    ``lattice`` = (period, row residues, column residues): the second box filter only at the pixels whose
    row and column (mod period) are among the residues, with the same numbers there; 0 elsewhere.
    """
    b = bin_size
    B, C, H, W = x.shape
    y = F.pad(x, (b - 1, b - 1, b - 1, b - 1)).reshape(B * C, H + 2 * b - 2, W + 2 * b - 2)
    y = window_means(y, b)
    if lattice is None:
        return window_means(y, b).reshape(B, C, H, W) * (b * b)
    period, row_res, col_res = lattice
    y = y[None].contiguous(memory_format=torch.channels_last)  # the pooling of window_means, strided
    out = x.new_zeros(B * C, H, W)
    for r in row_res:
        for c in col_res:
            # windows starting at r + period * k: zero padding moves the start (padded windows are dropped)
            pr, pc = (period - r) % period, (period - c) % period
            if 2 * max(pr, pc) > b:  # avg_pool2d pads at most half a window: slice (a copy) instead
                part = F.avg_pool2d(y[:, :, r:, c:], b, stride=period)[0]
            else:
                part = F.avg_pool2d(y, b, stride=period, padding=(pr, pc))[0, :, int(pr > 0):, int(pc > 0):]
            rows, cols = out[:, r::period, c::period].shape[1:]
            out[:, r::period, c::period] = part[:, :rows, :cols] * (b * b)
    return out.reshape(B, C, H, W)


def sampled_residues(centres: np.ndarray, period: int) -> list[int]:
    """Residues (mod ``period``) of the pixels bilinear sampling at coordinates ``centres`` (array units, one
    per lattice of that period) reads: floor and floor + 1, and floor - 1 too near integers (rounding)."""
    res: set[int] = set()
    for x in np.asarray(centres, dtype=np.float64).ravel():
        f = math.floor(x)
        near_integer = abs(x - round(x)) < 1e-3
        res.update(i % period for i in range(f - near_integer, f + 2))
    return sorted(res)


def orientation_maps(gray: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
    """Gradient magnitude split into 8 orientation channels with linear angular weights: [B, 8, H, W]."""
    if sigma > 0:
        rad = max(1, int(math.ceil(3 * sigma)))
        x = torch.arange(-rad, rad + 1, device=gray.device, dtype=gray.dtype)
        g = torch.exp(-0.5 * (x / sigma) ** 2)
        g = g / g.sum()
        gray = F.conv2d(F.pad(gray, (rad, rad, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
        gray = F.conv2d(F.pad(gray, (0, 0, rad, rad), mode="replicate"), g.view(1, 1, -1, 1))
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    gy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    mag = torch.sqrt(gx * gx + gy * gy)
    ang = torch.atan2(gy, gx) % (2 * math.pi)  # 0..2pi
    pos = ang / (2 * math.pi / NUM_ORIENTATIONS)  # 0..8
    b0 = torch.floor(pos)
    frac = pos - b0
    b0 = b0.long() % NUM_ORIENTATIONS
    b1 = (b0 + 1) % NUM_ORIENTATIONS
    out = torch.zeros(gray.shape[0], NUM_ORIENTATIONS, *gray.shape[-2:], device=gray.device, dtype=gray.dtype)
    out.scatter_add_(1, b0, mag * (1 - frac))
    out.scatter_add_(1, b1, mag * frac)
    return out


def dense_rootsift(gray: torch.Tensor, bin_size: int = 8, step: int = 8, sigma: float = 0.0,
                   contrast_eps: float = 1e-3, min_contrast: float = 0.0, exact: bool = True) -> torch.Tensor:
    """Dense RootSIFT of grey images [B, 1, H, W] (0..1) -> [B, 128, H//step, W//step].

    Descriptors are L2-normalised, except with ``min_contrast`` > 0: each descriptor is then
    scaled by clamp(c / min_contrast, 0, 1)^2, c = mean gradient magnitude per pixel (image units)
    over its 4 x 4 cells, so flat or noise-only regions (blank walls, black areas) get
    near-zero descriptors instead of unit-norm noise that matches everything.
    ``exact=False``: the same descriptors computed faster on a CPU (OpenCV's separable filter, normalised
    along a contiguous axis; the returned tensor is a channels-last view): equal up to float rounding, so
    for callers whose results must not move with the last bits of the features, keep ``exact``.
    """
    if gray.dim() != 4 or gray.shape[1] != 1:
        raise ValueError(f"expected grey images [B,1,H,W], got {tuple(gray.shape)}")
    B, _, H, W = gray.shape
    h, w = H // step, W // step
    if h == 0 or w == 0:
        raise QueryError(f"image {W}x{H} smaller than one descriptor step {step}")
    gray = gray.float()
    omaps = orientation_maps(gray, sigma)
    # bilinear spatial binning = separable triangular filter (two box filters), then sampling at cell centres
    # descriptor centres in array coordinates (pixel centre convention: x_arr = x_pix - 0.5)
    cx = torch.arange(w, device=gray.device, dtype=gray.dtype) * step + step / 2.0 - 0.5
    cy = torch.arange(h, device=gray.device, dtype=gray.dtype) * step + step / 2.0 - 0.5
    offsets = (torch.arange(NUM_CELLS, device=gray.device, dtype=gray.dtype) - (NUM_CELLS - 1) / 2.0) * bin_size
    C = NUM_ORIENTATIONS
    if not exact and gray.device.type == "cpu":
        return _fast_descriptors(omaps, cx, cy, offsets, bin_size, contrast_eps, min_contrast)
    # the samples of each cell offset form a lattice of period ``step``: filter only the pixels they read
    first = step / 2.0 - 0.5 + (np.arange(NUM_CELLS) - (NUM_CELLS - 1) / 2.0) * bin_size
    res = sampled_residues(first, step)
    filt = triangle_filter(omaps, bin_size, None if len(res) == step else (step, res, res))
    parts = []
    for oy in offsets:
        for ox in offsets:
            xs = cx + ox
            ys = cy + oy
            # normalised coordinates for grid_sample with align_corners=True: -1 <-> 0, +1 <-> W-1
            gx = 2 * xs / max(W - 1, 1) - 1
            gy = 2 * ys / max(H - 1, 1) - 1
            grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
            grid = grid.unsqueeze(0).expand(B, h, w, 2)
            parts.append(F.grid_sample(filt, grid, mode="bilinear", padding_mode="zeros", align_corners=True))
    desc = torch.stack(parts, dim=1).reshape(B, NUM_CELLS * NUM_CELLS * C, h, w)  # cell-major, orientation-minor
    energy = desc.sum(dim=1, keepdim=True) / (NUM_CELLS * NUM_CELLS * bin_size * bin_size)  # mean |grad| per px
    # SIFT normalisation, clipping, then RootSIFT
    desc = desc / (desc.norm(dim=1, keepdim=True) + contrast_eps)
    desc = desc.clamp(max=0.2)
    desc = desc / (desc.sum(dim=1, keepdim=True) + 1e-12)
    desc = desc.clamp(min=0).sqrt()
    desc = desc / (desc.norm(dim=1, keepdim=True) + 1e-12)
    if min_contrast > 0:
        desc = desc * (energy / min_contrast).clamp(max=1.0) ** 2
    return desc


def _fast_descriptors(omaps: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, offsets: torch.Tensor,
                      bin_size: int, contrast_eps: float, min_contrast: float) -> torch.Tensor:
    """``dense_rootsift(exact=False)`` from the orientation maps [B, 8, H, W]: OpenCV's separable triangle
    filter, one sampling of all 4 x 4 cell offsets, normalisation along a contiguous last axis."""
    B, C, H, W = omaps.shape
    h, w = len(cy), len(cx)
    kernel = _triangle_kernel(bin_size, omaps.device, torch.float32).numpy()
    planes = omaps.reshape(B * C, H, W).numpy()
    filt = np.empty_like(planes)
    for i in range(B * C):
        cv2.sepFilter2D(planes[i], -1, kernel, kernel, dst=filt[i], borderType=cv2.BORDER_CONSTANT)
    gx = torch.cat([2 * (cx + o) / max(W - 1, 1) - 1 for o in offsets])  # 4w: cell column-major
    gy = torch.cat([2 * (cy + o) / max(H - 1, 1) - 1 for o in offsets])  # 4h
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].expand(B, 4 * h, 4 * w, 2)
    s = F.grid_sample(torch.from_numpy(filt).reshape(B, C, H, W), grid, mode="bilinear", padding_mode="zeros",
                      align_corners=True)  # [B, 8, 4h (cell row, y), 4w (cell column, x)]
    n = NUM_CELLS
    desc = s.view(B, C, n, h, n, w).permute(0, 3, 5, 2, 4, 1).reshape(B, h, w, n * n * C)  # cell-major, orient.-minor
    energy = desc.sum(dim=-1, keepdim=True) / (n * n * bin_size * bin_size)
    desc = desc / (torch.linalg.vector_norm(desc, dim=-1, keepdim=True) + contrast_eps)
    desc = desc.clamp(max=0.2)
    desc = desc / (desc.sum(dim=-1, keepdim=True) + 1e-12)
    desc = desc.clamp(min=0).sqrt()
    desc = desc / (torch.linalg.vector_norm(desc, dim=-1, keepdim=True) + 1e-12)
    if min_contrast > 0:
        desc = desc * (energy / min_contrast).clamp(max=1.0) ** 2
    return desc.permute(0, 3, 1, 2)


def to_gray(img: np.ndarray) -> torch.Tensor:
    """H x W (x 3) uint8/float image -> [H, W] float32 tensor in 0..1 (RGB luma weights)."""
    a = np.asarray(img)
    if a.ndim == 3:
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    a = a.astype(np.float32)
    if a.max() > 1.5:
        a = a / 255.0
    return torch.from_numpy(np.ascontiguousarray(a))


def dense_rootsift_image(image: np.ndarray, bin_size: int = 8, step: int = 8, sigma: float = 0.0,
                         device: str | torch.device = "cpu") -> np.ndarray:
    """Convenience: H x W (grey) or H x W x 3 (RGB) uint8/float image -> [h, w, 128] float32 descriptors."""
    t = to_gray(image)[None, None].to(device)
    with torch.no_grad():
        d = dense_rootsift(t, bin_size=bin_size, step=step, sigma=sigma)
    return d[0].permute(1, 2, 0).cpu().numpy()
