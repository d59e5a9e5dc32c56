"""Dense upright RootSIFT descriptors on a regular grid (weight-free features), in PyTorch.

Layout: input grey images [B, 1, H, W] in 0..1; output [B, 128, H // step, W // step], each
descriptor L2-normalised (RootSIFT: SIFT clipped at 0.2, L1-normalised, square-rooted).
Descriptor (i, j) is centred at pixel (j * step + step / 2, i * step + step / 2) in the COLMAP
convention (top-left pixel centre = (0.5, 0.5)); it covers 4 x 4 spatial cells of ``bin_size``
pixels with 8 orientation bins, bilinear (triangular) spatial and orientation weighting.
"""

from __future__ import annotations

import math

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


def _opencv_path(x: torch.Tensor) -> bool:
    """True for tensors OpenCV can filter in place of torch: CPU float32/float64 without autograd."""
    return x.device.type == "cpu" and not x.requires_grad and x.dtype in (torch.float32, torch.float64)


def box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over every size x size window of [..., H, W] (valid positions only: [..., H-size+1, W-size+1]).

    CPU float tensors without gradient go through OpenCV's running-sum box filter (all planes stacked
    into one tall image; a valid window never straddles two planes); anything else through avg_pool2d.
    """
    H, W = x.shape[-2:]
    if not _opencv_path(x) or size > min(H, W):
        return F.avg_pool2d(x.reshape(-1, 1, H, W), size, stride=1).reshape(*x.shape[:-2], H - size + 1,
                                                                             W - size + 1)
    planes = x.contiguous().reshape(-1, W).numpy()
    s = size // 2  # OpenCV's default anchor: the window of output row i starts at row i - size // 2
    out = torch.from_numpy(cv2.blur(planes, (size, size))).reshape(x.shape)
    return out[..., s:s + H - size + 1, s:s + W - size + 1]


def triangle_filter(x: torch.Tensor, bin_size: int) -> torch.Tensor:
    """Separable triangular filter (weights 1 - |r|/bin_size, |r| < bin_size) of [B, C, H, W], zero padded.

    CPU float tensors without gradient: one OpenCV separable filter over all planes stacked into one tall
    image, b - 1 zero rows above each plane (the zero padding between planes); otherwise two box filters
    of width b over the zero-padded input (the first covers [i - b + 1, i], the second shifts back by b - 1).
    """
    b = bin_size
    if _opencv_path(x):
        B, C, H, W = x.shape
        planes = F.pad(x.reshape(B * C, H, W), (0, 0, b - 1, 0))
        k = (1.0 - np.abs(np.arange(1 - b, b)) / b).astype(planes.numpy().dtype)
        out = cv2.sepFilter2D(planes.reshape(-1, W).numpy(), -1, k, k, borderType=cv2.BORDER_CONSTANT)
        return torch.from_numpy(out).reshape(B * C, H + b - 1, W)[:, b - 1:].reshape(B, C, H, W)
    y = F.pad(x, (b - 1, b - 1, b - 1, b - 1))
    y = box_mean(box_mean(y, b), b)
    return y * (b * b)


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


def sample_cells(filt: torch.Tensor, step: int, bin_size: int, h: int, w: int) -> torch.Tensor:
    """Binned orientation maps [B, C, H, W] sampled at the 4 x 4 cell centres of every descriptor of an h x w
    grid -> [B, 16 * C, h, w] (cell-major, orientation-minor), zero outside the image.

    Cell (m, n) of descriptor (i, j) is centred at array position (i * step + step/2 - 1/2 + (m - 3/2) * bin_size,
    j * step + ...): a whole or half pixel on each axis, so bilinear sampling is a plain read, or the mean of
    the two neighbouring pixels, of a zero-padded map: slices with stride ``step``, no interpolation grid.
    """
    B, C, H, W = filt.shape
    first = [step / 2.0 - 0.5 + (m - (NUM_CELLS - 1) / 2.0) * bin_size for m in range(NUM_CELLS)]
    half = first[0] % 1.0 != 0.0  # the same fraction (0 or 1/2) for every cell of an axis
    last = int(math.floor(first[-1])) + 2  # one past the farthest pixel a cell of the first descriptor reads
    pad = max(0, -int(math.floor(first[0])))
    fp = F.pad(filt, (pad, max(0, last + (w - 1) * step - W), pad, max(0, last + (h - 1) * step - H)))
    starts = [int(math.floor(p)) + pad for p in first]

    def grid(y0: int, x0: int) -> torch.Tensor:  # pixels (y0 + i * step, x0 + j * step) of the padded map
        return fp[..., y0:y0 + (h - 1) * step + 1:step, x0:x0 + (w - 1) * step + 1:step]

    if half:  # the bilinear sample half-way between four pixels is their mean
        parts = [0.25 * (grid(y0, x0) + grid(y0, x0 + 1) + grid(y0 + 1, x0) + grid(y0 + 1, x0 + 1))
                 for y0 in starts for x0 in starts]
    else:
        parts = [grid(y0, x0) for y0 in starts for x0 in starts]
    return torch.stack(parts, dim=1).reshape(B, NUM_CELLS * NUM_CELLS * C, h, w)


def dense_rootsift(gray: torch.Tensor, bin_size: int = 8, step: int = 8, sigma: float = 0.0,
                   contrast_eps: float = 1e-3, min_contrast: float = 0.0) -> torch.Tensor:
    """Dense RootSIFT of grey images [B, 1, H, W] (0..1) -> [B, 128, H//step, W//step].

    Descriptors are L2-normalised, except with ``min_contrast`` > 0: each descriptor is then
    scaled by clamp(c / min_contrast, 0, 1)^2, c = mean gradient magnitude per pixel (image units)
    over its 4 x 4 cells, so flat or noise-only regions (blank walls, black areas) get
    near-zero descriptors instead of unit-norm noise that matches everything.
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
    filt = triangle_filter(omaps, bin_size)
    desc = sample_cells(filt, step, bin_size, h, w)  # cell-major, orientation-minor
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
