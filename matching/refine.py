"""Sub-cell match refinement at full image resolution by normalised cross-correlation (NCC) of patches.

Each match keeps its keypoint in the fixed image (A by default) and searches the other image within
+-``radius`` px of the coarse position for the patch that best matches A's patch; the integer NCC peak
is refined by a 1D parabola fit along x and y. Pixels in the COLMAP convention.

Scale: ``refine_with`` is given each image's matching cell in its own pixels (``cell_a``, ``cell_b``:
feature stride x original / resized side). A cell covers about the same part of the scene in both
images, so when the cells differ by more than ``max_scale_ratio`` the image with the larger cell (a
4032-px phone photo against a 1600-px cutout) is first area-resampled until its cell equals the other's:
both patches then have the same footprint in the scene, and the search radius (``radius_cells``
matching cells) is counted in pixels of that common scale, never in raw pixels of the larger image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor

from matching.dense_sift import to_gray, window_means

FIXED_IMAGES = ("a", "b")
PASSES = 4  # least-squares fits of local_affines, each without the previous fit's outlying neighbours


@dataclass(frozen=True)
class RefineConfig:
    """Options of ``refine_with``: search radius (``radius_cells`` matching cells of the coarser image at the
    common scale; ``radius`` in px of that scale overrides it), NCC patch side (px of the common scale), fixed
    image ('a' or 'b'), minimum peak NCC, drop window-edge peaks, and ``max_scale_ratio``: cell-size ratio
    of the two images above which the one with the larger cell is resampled to the other's scale (with
    ``at_moving_scale``: the fixed image is resampled to the moving one's scale, so the moving image's keypoints
    are refined at its own resolution). ``local_affine`` > 0: the fixed patch is sampled through the affine map
    fitted to that many neighbouring matches (``local_affines``), so it is turned, resized and sheared like the
    moving image around the match; 0: axis-aligned patches. ``max_affine_residual``: drop matches whose refined
    keypoint lies farther (px of the common scale) from the affine fit of its neighbours' refined keypoints."""

    radius: float | None = None
    radius_cells: float = 1.0
    patch: int = 15
    fixed: str = "a"
    min_ncc: float | None = None
    drop_border: bool = False
    max_scale_ratio: float = 1.3
    at_moving_scale: bool = False  # common scale = the moving image's own (the fixed one resampled, up or down)
    local_affine: int = 0  # neighbouring matches of the per-match affine patch warp (0: axis-aligned patches)
    max_affine_residual: float | None = None  # px of the common scale; needs local_affine

    def __post_init__(self) -> None:
        if self.local_affine < 0 or 0 < self.local_affine < 4:
            raise ValueError(f"local_affine must be 0 or >= 4 neighbours, got {self.local_affine}")
        if self.max_affine_residual is not None and not (self.local_affine and self.max_affine_residual > 0):
            raise ValueError("max_affine_residual must be > 0 and needs local_affine > 0")
        if self.fixed not in FIXED_IMAGES:
            raise ValueError(f"fixed must be 'a' or 'b', got {self.fixed!r}")
        if not self.radius_cells > 0:
            raise ValueError(f"radius_cells must be > 0, got {self.radius_cells}")
        if not self.max_scale_ratio >= 1.0:
            raise ValueError(f"max_scale_ratio must be >= 1, got {self.max_scale_ratio}")


def sample_patches(gray: Tensor, centers: Tensor, size: int, linear: Tensor | None = None) -> Tensor:
    """Bilinear size x size patches [N, size, size] centred at pixels centers [N, 2] (x, y), integer steps; with
    ``linear`` [N, 2, 2] the patch offset (u, v) is read at centre + linear @ (u, v) (an affinely warped patch)."""
    H, W = gray.shape
    r = (size - 1) / 2.0
    off = torch.arange(size, dtype=torch.float32) - r
    if linear is None:
        xs = centers[:, 0:1].float() + off[None]  # [N, size]
        ys = centers[:, 1:2].float() + off[None]
        xs, ys = xs[:, None, :].expand(-1, size, -1), ys[:, :, None].expand(-1, -1, size)
    else:
        L = linear.float()
        v, u = torch.meshgrid(off, off, indexing="ij")  # [size, size]: rows v, columns u
        xs = centers[:, 0, None, None].float() + L[:, 0, 0, None, None] * u + L[:, 0, 1, None, None] * v
        ys = centers[:, 1, None, None].float() + L[:, 1, 0, None, None] * u + L[:, 1, 1, None, None] * v
    gx = 2.0 * xs / W - 1.0  # align_corners=False: -1 is the left image border (pixel convention [0, W])
    gy = 2.0 * ys / H - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    img = gray[None, None].expand(len(centers), 1, H, W)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]


def ncc_maps(templates: Tensor, regions: Tensor) -> Tensor:
    """NCC of templates [N, P, P] at every position of regions [N, P + 2R, P + 2R] -> [N, 2R + 1, 2R + 1].

    Numerator: grouped conv2d of the zero-mean template with the region; denominator from box-filtered
    local moments (so memory is O(N * region), not O(N * positions * P^2)).
    """
    n, p, _ = templates.shape
    t = templates - templates.mean(dim=(1, 2), keepdim=True)
    t_norm = t.flatten(1).norm(dim=1)
    num = F.conv2d(regions[None], t[:, None], groups=n)[0]  # [N, S, S]
    mean = window_means(regions, p)
    mean_sq = window_means(regions ** 2, p)
    w_norm = torch.sqrt(torch.clamp(mean_sq - mean ** 2, min=0.0) * (p * p))
    return num / (t_norm[:, None, None] * w_norm + 1e-6)


def parabolic_offset(left: Tensor, centre: Tensor, right: Tensor) -> Tensor:
    """Sub-sample peak offset in [-0.5, 0.5] of a 1D parabola through three samples."""
    denom = left - 2 * centre + right
    off = 0.5 * (left - right) / torch.where(denom.abs() < 1e-9, torch.full_like(denom, -1e-9), denom)
    return off.clamp(-0.5, 0.5)


def local_affines(kp_fixed: np.ndarray, kp_moving: np.ndarray, neighbours: int, min_spread: float = 2.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(linear part [N, 2, 2] (fixed px -> moving px) of the affine map fitted by least squares to each match's
    ``neighbours`` nearest matches in the fixed image (itself included), fitted again without the neighbours
    whose residual exceeds twice the median (and 1 px), ``PASSES`` fits in all; residual [N] (moving px) of
    each match from its own fit). Identity and residual NaN where the fit is ill-posed: fewer than 4
    neighbours, neighbours spread over less than ``min_spread`` px (RMS along their narrowest direction), a
    mirror image or a scale change beyond 4x."""
    kf, km = np.asarray(kp_fixed, np.float64), np.asarray(kp_moving, np.float64)
    n = len(kf)
    out, residual = np.tile(np.eye(2), (n, 1, 1)), np.full(n, np.nan)
    k = min(int(neighbours), n)
    if k < 4:
        return out, residual
    idx = cKDTree(kf).query(kf, k=k)[1]
    X = np.concatenate([kf[idx] - kf[:, None], np.ones((n, k, 1))], axis=2)  # [N, K, 3], centred on the match
    Y = km[idx] - km[:, None]  # [N, K, 2]
    w = np.ones((n, k))
    for _ in range(PASSES):
        A = np.einsum("nk,nki,nkj->nij", w, X, X) + 1e-9 * np.eye(3)
        M = np.linalg.solve(A, np.einsum("nk,nki,nkj->nij", w, X, Y))  # [N, 3, 2]
        res = np.linalg.norm(np.einsum("nki,nij->nkj", X, M) - Y, axis=2)
        w = (res <= np.maximum(2.0 * np.median(res, axis=1, keepdims=True), 1.0)).astype(np.float64)
    L = np.transpose(M[:, :2, :], (0, 2, 1))  # moving offset = L @ fixed offset
    xc = X[..., :2] - (w[..., None] * X[..., :2]).sum(1, keepdims=True) / np.maximum(w.sum(1), 1)[:, None, None]
    cov = np.einsum("nk,nki,nkj->nij", w, xc, xc) / np.maximum(w.sum(1), 1)[:, None, None]
    spread = np.sqrt(np.clip(np.linalg.eigvalsh(cov)[:, 0], 0.0, None))
    sv = np.linalg.svd(L, compute_uv=False)
    ok = (w.sum(1) >= 4) & (spread >= min_spread) & (np.linalg.det(L) > 0) & (sv[:, 1] >= 0.25) & (sv[:, 0] <= 4.0)
    out[ok] = L[ok]
    own = np.linalg.norm(M[:, 2, :], axis=1)  # the fit is centred on the match: its offset is the residual
    residual[ok] = own[ok]
    return out, residual


def refine_positions(gray_fixed: Tensor, gray_moving: Tensor, kp_fixed: Tensor, kp_moving: Tensor,
                     radius: float, patch: int = 15, batch: int = 512, linear: Tensor | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Refine kp_moving [N, 2] so its patch best matches the patch at kp_fixed (read through ``linear``
    [N, 2, 2], moving px offsets -> fixed px offsets, when given). Returns (refined [N, 2] float64, peak NCC
    [N], on_border [N] bool: peak at the window edge = unreliable)."""
    R = int(math.ceil(radius))
    out, scores, border = [], [], []
    for s in range(0, len(kp_fixed), batch):
        pf, pm = kp_fixed[s:s + batch], kp_moving[s:s + batch]
        tmpl = sample_patches(gray_fixed, pf, patch, None if linear is None else linear[s:s + batch])
        reg = sample_patches(gray_moving, pm, patch + 2 * R)
        maps = ncc_maps(tmpl, reg)
        n, S, _ = maps.shape
        best, flat = maps.view(n, -1).max(dim=1)
        iy, ix = flat // S, flat % S
        inner = (ix > 0) & (ix < S - 1) & (iy > 0) & (iy < S - 1)
        cx, cy = ix.clamp(1, S - 2), iy.clamp(1, S - 2)
        ar = torch.arange(n)
        dx = parabolic_offset(maps[ar, cy, cx - 1], maps[ar, cy, cx], maps[ar, cy, cx + 1])
        dy = parabolic_offset(maps[ar, cy - 1, cx], maps[ar, cy, cx], maps[ar, cy + 1, cx])
        dx, dy = torch.where(inner, dx, 0.0), torch.where(inner, dy, 0.0)
        shift = torch.stack([ix - R + dx, iy - R + dy], dim=1)
        out.append(pm.double() + shift.double())
        scores.append(best)
        border.append(~inner)
    if not out:
        return kp_moving.double(), torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(out), torch.cat(scores), torch.cat(border)


def refine_matches(img_a: np.ndarray, img_b: np.ndarray, matches: dict[str, np.ndarray], radius: float = 8.0,
                   patch: int = 15, fixed: str = "a", min_ncc: float | None = None,
                   drop_border: bool = False, local_affine: int = 0, max_affine_residual: float | None = None
                   ) -> dict[str, np.ndarray]:
    """Refine the keypoints of the non-fixed image of ``matches`` (keypoints0/keypoints1/scores, pixels).

    Returns a copy with refined keypoints and ``ncc`` (peak NCC per match); with ``min_ncc`` matches below
    it are dropped, with ``drop_border`` matches whose peak hits the search-window edge are dropped;
    ``local_affine`` > 0: fixed patches warped by ``local_affines`` of that many neighbouring matches, fitted
    to the given keypoints, then to the refined ones for a second refinement from the given keypoints; with
    ``max_affine_residual`` (px) matches farther than that from the fit of their neighbours' refined matches are
    dropped.
    """
    if fixed not in FIXED_IMAGES:
        raise ValueError("fixed must be 'a' or 'b'")
    ga, gb = to_gray(img_a), to_gray(img_b)
    k0 = torch.as_tensor(np.asarray(matches["keypoints0"], dtype=np.float64))
    k1 = torch.as_tensor(np.asarray(matches["keypoints1"], dtype=np.float64))
    (gf, gm, kf, km) = (ga, gb, k0, k1) if fixed == "a" else (gb, ga, k1, k0)
    residual = None
    if local_affine:  # warps from the coarse matches, then again from the refined ones (precise where they were not)
        new = km
        for _ in range(2):
            linear = torch.as_tensor(np.linalg.inv(local_affines(kf.numpy(), new.numpy(), local_affine)[0]))
            new, ncc, border = refine_positions(gf, gm, kf, km, radius, patch, linear=linear)
        residual = local_affines(kf.numpy(), new.numpy(), local_affine)[1]
    else:
        new, ncc, border = refine_positions(gf, gm, kf, km, radius, patch)
    if fixed == "a":
        k1 = new
    else:
        k0 = new
    out = dict(matches)
    out["keypoints0"], out["keypoints1"] = k0.numpy(), k1.numpy()
    out["ncc"] = ncc.float().numpy()
    keep = np.ones(len(k0), dtype=bool)
    if min_ncc is not None:
        keep &= out["ncc"] >= min_ncc
    if drop_border:
        keep &= ~border.numpy()
    if max_affine_residual is not None:
        if residual is None:
            raise ValueError("max_affine_residual needs local_affine > 0")
        keep &= ~(residual > max_affine_residual)  # NaN (no fit) keeps the match
    return {k: (v[keep] if isinstance(v, np.ndarray) and len(v) == len(keep) else v) for k, v in out.items()}


def common_scale(cell_a: float, cell_b: float, max_scale_ratio: float, keep: str | None = None
                 ) -> tuple[float, float]:
    """Resampling factors (s_a, s_b) that bring both images to one scale: the image whose matching cell (px) is
    larger is shrunk until its cell equals the other's (factors <= 1), or with ``keep`` 'a' / 'b' that image stays
    and the other is resampled to its scale (up or down); (1, 1) while the ratio is <= max_scale_ratio."""
    if max(cell_a, cell_b) <= max_scale_ratio * min(cell_a, cell_b):
        return 1.0, 1.0
    if keep == "a":
        return 1.0, cell_a / cell_b
    if keep == "b":
        return cell_b / cell_a, 1.0
    return (cell_b / cell_a, 1.0) if cell_a > cell_b else (1.0, cell_a / cell_b)


def _resampled(img: np.ndarray, s: float) -> tuple[np.ndarray, float, float]:
    """(image area-resampled by s, x factor, y factor) with the exact factors of the rounded size; s = 1: as is."""
    if s == 1.0:
        return img, 1.0, 1.0
    H, W = img.shape[:2]
    w, h = max(1, round(W * s)), max(1, round(H * s))
    interp = cv2.INTER_AREA if s < 1.0 else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=interp), w / W, h / H


def refine_with(img_a: np.ndarray, img_b: np.ndarray, matches: dict[str, np.ndarray], conf: RefineConfig,
                cell_a: float, cell_b: float) -> dict[str, np.ndarray]:
    """``refine_matches`` at the common scale of ``common_scale(cell_a, cell_b)`` with the options of ``conf``.

    ``cell_a`` / ``cell_b``: one matching cell in px of each original image. The search radius is
    ``conf.radius_cells`` x the larger of the two cells at the common scale (``conf.radius`` px there when
    set). Keypoints in and out are pixels of the original images (COLMAP convention).
    """
    moving = "b" if conf.fixed == "a" else "a"
    s_a, s_b = common_scale(cell_a, cell_b, conf.max_scale_ratio, moving if conf.at_moving_scale else None)
    radius = conf.radius_cells * max(cell_a * s_a, cell_b * s_b) if conf.radius is None else conf.radius
    a, ax, ay = _resampled(img_a, s_a)
    b, bx, by = _resampled(img_b, s_b)
    m = dict(matches)
    if (ax, ay, bx, by) != (1.0, 1.0, 1.0, 1.0):
        m["keypoints0"] = np.asarray(matches["keypoints0"], dtype=np.float64) * [ax, ay]
        m["keypoints1"] = np.asarray(matches["keypoints1"], dtype=np.float64) * [bx, by]
    out = refine_matches(a, b, m, radius=radius, patch=conf.patch, fixed=conf.fixed,
                         min_ncc=conf.min_ncc, drop_border=conf.drop_border, local_affine=conf.local_affine,
                         max_affine_residual=conf.max_affine_residual)
    if (ax, ay, bx, by) != (1.0, 1.0, 1.0, 1.0):
        out["keypoints0"] = out["keypoints0"] / [ax, ay]
        out["keypoints1"] = out["keypoints1"] / [bx, by]
    return out


__all__ = ["FIXED_IMAGES", "RefineConfig", "common_scale", "local_affines", "refine_matches", "refine_with", "refine_positions", "ncc_maps",
           "sample_patches", "parabolic_offset", "to_gray"]
