"""Procedural and photographic textures for the synthetic buildings (all deterministic per RNG).

Every texture is an S x S x 3 float32 RGB array in [0, 1]. Procedural textures tile seamlessly
(they are built from periodic noise / integer frequencies) so they can repeat over a surface
with a period given in metres; photographs (scikit-image sample images, shipped offline) are
meant to be stretched once over a poster or painting.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import cv2
import numpy as np
import skimage.data

log = logging.getLogger(__name__)

TEX_SIZE = 256

# scikit-image sample photographs that ship inside the package (no download needed)
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "coins", "camera", "page", "immunohistochemistry",
    "hubble_deep_field", "cat", "moon", "text", "clock", "colorwheel", "brick", "grass", "gravel",
)


def _hex(c: str) -> np.ndarray:
    """'#rrggbb' -> RGB float32 in [0, 1]."""
    c = c.lstrip("#")
    return np.array([int(c[i:i + 2], 16) / 255.0 for i in (0, 2, 4)], dtype=np.float32)


def periodic_noise(rng: np.random.Generator, size: int = TEX_SIZE, beta: float = 2.0,
                   min_freq: float = 1.0, max_freq: float | None = None) -> np.ndarray:
    """Seamless 1/f^beta noise (S x S, zero mean, unit std) built in the Fourier domain."""
    f = np.fft.fftfreq(size) * size
    fx, fy = np.meshgrid(f, f)
    r = np.sqrt(fx * fx + fy * fy)
    amp = np.where(r >= min_freq, 1.0 / np.maximum(r, 1e-6) ** (beta / 2.0), 0.0)
    if max_freq is not None:
        amp = amp * (r <= max_freq)
    spec = amp * (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size)))
    n = np.real(np.fft.ifft2(spec))
    n -= n.mean()
    return (n / (n.std() + 1e-12)).astype(np.float32)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours with weights t (S x S) -> S x S x 3."""
    t = np.clip(t, 0.0, 1.0)[..., None]
    return (a[None, None] * (1 - t) + b[None, None] * t).astype(np.float32)


def noise_texture(rng: np.random.Generator, c0: np.ndarray, c1: np.ndarray, contrast: float = 0.25,
                  beta: float = 2.0, size: int = TEX_SIZE) -> np.ndarray:
    """Multi-scale (fBm-like) noise between two colours, e.g. plaster, concrete, carpet."""
    n = periodic_noise(rng, size, beta)
    fine = periodic_noise(rng, size, 0.5, min_freq=size / 8)
    return _mix(c0, c1, 0.5 + contrast * n + 0.5 * contrast * fine)


def plain_texture(rng: np.random.Generator, colour: np.ndarray, amplitude: float = 0.02,
                  size: int = TEX_SIZE) -> np.ndarray:
    """Weakly textured paint: a colour with very faint low-frequency noise (a hard case)."""
    n = periodic_noise(rng, size, 3.0)
    return np.clip(colour[None, None] * (1.0 + amplitude * n[..., None]), 0, 1).astype(np.float32)


def tiles_texture(rng: np.random.Generator, colour: np.ndarray, grout: np.ndarray, n_tiles: int = 4,
                  grout_frac: float = 0.05, variation: float = 0.08, size: int = TEX_SIZE) -> np.ndarray:
    """Square tiles with grout lines and per-tile tone variation (identical, repetitive pattern)."""
    y, x = np.mgrid[0:size, 0:size] / size * n_tiles
    ix, iy = np.floor(x).astype(int), np.floor(y).astype(int)
    tone = 1.0 + variation * rng.standard_normal((n_tiles, n_tiles)).astype(np.float32)
    img = colour[None, None] * tone[iy % n_tiles, ix % n_tiles][..., None]
    img = img * (1.0 + 0.04 * periodic_noise(rng, size, 1.0, min_freq=8)[..., None])
    g = (np.minimum(x - ix, 1 - (x - ix)) < grout_frac / 2) | (np.minimum(y - iy, 1 - (y - iy)) < grout_frac / 2)
    img[g] = grout
    return np.clip(img, 0, 1).astype(np.float32)


def stripes_texture(rng: np.random.Generator, c0: np.ndarray, c1: np.ndarray, n_stripes: int = 8,
                    vertical: bool = True, size: int = TEX_SIZE) -> np.ndarray:
    """Wallpaper stripes of irregular widths (integer count: tiles seamlessly) with faint noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    s = x if vertical else y
    # 2 * n_stripes bands with random widths: locally aperiodic, so a wall is not a perfect grating
    edges = np.concatenate([[0.0], np.cumsum(rng.uniform(0.5, 1.5, 2 * n_stripes))])
    edges /= edges[-1]
    band = (np.searchsorted(edges, s, side="right") - 1) % 2
    img = _mix(c0, c1, band.astype(np.float32))
    return np.clip(img * (1 + 0.03 * periodic_noise(rng, size)[..., None]), 0, 1).astype(np.float32)


def wood_texture(rng: np.random.Generator, c0: np.ndarray, c1: np.ndarray, rings: int = 6,
                 size: int = TEX_SIZE) -> np.ndarray:
    """Wood grain: noisy bands along one axis plus fine fibres (seamless)."""
    y, _x = np.mgrid[0:size, 0:size] / size
    warp = periodic_noise(rng, size, 3.0)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * (rings * y + 0.15 * warp))
    fibres = periodic_noise(rng, size, 1.0, min_freq=size / 6)
    return _mix(c0, c1, t ** 2 + 0.15 * fibres)


def brick_texture(rng: np.random.Generator, colour: np.ndarray, mortar: np.ndarray, rows: int = 8,
                  cols: int = 4, size: int = TEX_SIZE) -> np.ndarray:
    """Running-bond brick wall (seamless; rows even)."""
    y, x = np.mgrid[0:size, 0:size] / size
    r = np.floor(y * rows).astype(int)
    xs = x * cols + 0.5 * (r % 2)
    c = np.floor(xs).astype(int) % cols
    tone = 1.0 + 0.12 * rng.standard_normal((rows, cols)).astype(np.float32)
    img = colour[None, None] * tone[r % rows, c][..., None]
    img = img * (1.0 + 0.08 * periodic_noise(rng, size, 1.5, min_freq=4)[..., None])
    fy, fx = y * rows - r, xs - np.floor(xs)
    m = (fy < 0.08) | (fx < 0.04)
    img[m] = mortar
    return np.clip(img, 0, 1).astype(np.float32)


def poster_texture(rng: np.random.Generator, size: int = TEX_SIZE) -> np.ndarray:
    """A poster/notice: background, a title bar, a coloured figure and lines of text-like marks."""
    bg = rng.uniform(0.75, 0.98, 3).astype(np.float32)
    img = np.ones((size, size, 3), np.float32) * bg
    accent = rng.uniform(0.05, 0.9, 3).astype(np.float32)
    top = int(size * rng.uniform(0.05, 0.12))
    img[top:top + size // 8, size // 12: size - size // 12] = accent
    # figure: circles / rectangles
    fig_y0 = top + size // 8 + size // 20
    fig_h = int(size * rng.uniform(0.2, 0.35))
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(rng.integers(2, 6)):
        col = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        cy = rng.integers(fig_y0, fig_y0 + fig_h)
        cx = rng.integers(size // 6, 5 * size // 6)
        rad = rng.integers(size // 20, size // 7)
        if kind == 0:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2
        else:
            m = (np.abs(yy - cy) < rad) & (np.abs(xx - cx) < int(rad * rng.uniform(0.5, 2.0)))
        m &= (yy >= fig_y0) & (yy < fig_y0 + fig_h)
        img[m] = col
    # text lines made of word blocks
    y = fig_y0 + fig_h + size // 20
    ink = rng.uniform(0.0, 0.25, 3).astype(np.float32)
    line_h = max(3, int(size * rng.uniform(0.025, 0.04)))
    while y + line_h < size - size // 16:
        x = size // 12
        xmax = size - size // 12 - rng.integers(0, size // 4)
        while x < xmax:
            w = int(rng.integers(line_h, 5 * line_h))
            w = min(w, xmax - x)
            img[y:y + line_h, x:x + w] = ink
            # letter gaps
            for gx in range(x + 2, x + w, max(2, line_h // 2 + 1)):
                if rng.random() < 0.5:
                    img[y:y + line_h, gx] = bg
            x += w + max(2, line_h // 2)
        y += int(line_h * 1.8)
    return img


@functools.lru_cache(maxsize=64)
def _load_photo_cached(name: str, size: int) -> tuple[np.ndarray, float]:
    img, aspect = _load_photo(name, size)
    img.setflags(write=False)
    return img, aspect


def load_photo(name: str, size: int = TEX_SIZE) -> tuple[np.ndarray, float]:
    """A scikit-image sample photo resized to S x S RGB float32 (cached, read-only) and its aspect (w / h)."""
    return _load_photo_cached(name, size)


def _load_photo(name: str, size: int = TEX_SIZE) -> tuple[np.ndarray, float]:
    """A scikit-image sample photo resized to S x S RGB float32, and its aspect ratio (w / h)."""
    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    aspect = img.shape[1] / img.shape[0]
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return (img.astype(np.float32) / 255.0), float(aspect)


def mip_pyramid(textures: np.ndarray, min_size: int = 4) -> list[np.ndarray]:
    """N x S x S x 3 textures -> list of levels (level l has side S / 2^l), box-filtered."""
    levels = [textures.astype(np.float32)]
    while levels[-1].shape[1] > min_size:
        t = levels[-1]
        levels.append(0.25 * (t[:, 0::2, 0::2] + t[:, 1::2, 0::2] + t[:, 0::2, 1::2] + t[:, 1::2, 1::2]))
    return levels


class TextureBank:
    """A growing list of named textures; ``add`` returns the integer id used by the renderer."""

    def __init__(self, size: int = TEX_SIZE) -> None:
        self.size = size
        self.names: list[str] = []
        self.images: list[np.ndarray] = []
        self._index: dict[str, int] = {}

    def add(self, name: str, make: Callable[[], np.ndarray]) -> int:
        """Id of texture ``name``, creating it with ``make()`` the first time."""
        if name in self._index:
            return self._index[name]
        img = np.asarray(make(), dtype=np.float32)
        if img.shape != (self.size, self.size, 3):
            img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
        self._index[name] = len(self.images)
        self.names.append(name)
        self.images.append(np.clip(img, 0, 1))
        return self._index[name]

    def stack(self) -> np.ndarray:
        """All textures as an N x S x S x 3 float32 array."""
        return np.stack(self.images) if self.images else np.zeros((1, self.size, self.size, 3), np.float32)


def hexcol(c: str) -> np.ndarray:
    """Public alias of the '#rrggbb' colour parser."""
    return _hex(c)
