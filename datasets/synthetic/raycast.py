"""Exact ray casting of textured axis-aligned boxes (numpy, CPU): colour, z-depth and world XYZ.

Conventions: world frame metres with **z up**; camera per ``localize.core.geometry`` (x right, y down,
z forward, world-to-camera ``Pose``, COLMAP pixel centres at +0.5). A pixel's ray is
``C + t * R^T K^-1 (u, v, 1)``, so the ray parameter t of the first hit *is* the z-depth.

Speed: each box is only intersected with the rays inside its projected screen rectangle
(exact bounding rectangle of the box clipped to the near plane), so cost grows with the screen
area covered by boxes rather than with pixels x boxes.

Faces are numbered 0..5 = -x, +x, -y, +y, -z, +z (the outward normal). Texture coordinates:
vertical faces use (horizontal along the wall as seen from outside, -z), horizontal faces (x, y).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from datasets.synthetic.textures import mip_pyramid
from localize.core.geometry import Camera, Pose

log = logging.getLogger(__name__)

# per face: texture u axis and sign, v axis and sign (image-upright and unmirrored seen from outside)
_AXU = np.array([1, 1, 0, 0, 0, 0])
_SU = np.array([-1.0, 1.0, 1.0, -1.0, 1.0, 1.0])
_AXV = np.array([2, 2, 2, 2, 1, 1])
_SV = np.array([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0])
_NORMALS = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=np.float64)
_EDGES = np.array([(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7)])
BACKGROUND = np.array([0.08, 0.08, 0.09], dtype=np.float32)


@dataclass(frozen=True)
class Surface:
    """Material of one face: texture id, tiling period in metres (None = stretched once), RGB tint."""

    tex: int
    period: tuple[float, float] | None = (1.0, 1.0)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class Box:
    """Axis-aligned solid box [lo, hi] (metres, world) with six face materials (-x,+x,-y,+y,-z,+z)."""

    lo: np.ndarray
    hi: np.ndarray
    faces: tuple[Surface, ...]
    kind: str = "static"  # static | movable | added | occluder
    room: int = -1
    group: int = -1  # furniture piece the box belongs to (moved together)
    label: str = ""

    def __post_init__(self) -> None:
        self.lo = np.asarray(self.lo, dtype=np.float64)
        self.hi = np.asarray(self.hi, dtype=np.float64)
        if len(self.faces) == 1:
            self.faces = tuple(self.faces) * 6
        if len(self.faces) != 6 or not (self.hi > self.lo).all():
            raise ValueError(f"bad box {self.label}: lo={self.lo} hi={self.hi} faces={len(self.faces)}")

    def moved(self, delta: Sequence[float], kind: str | None = None) -> Box:
        """A copy translated by ``delta`` metres."""
        d = np.asarray(delta, dtype=np.float64)
        return Box(self.lo + d, self.hi + d, self.faces, kind or self.kind, self.room, self.group, self.label)


@dataclass(frozen=True)
class Illumination:
    """Lighting: directional 'sun' (direction towards the light, world), ambient and room lamps (RGB)."""

    sun_dir: tuple[float, float, float] = (0.4, 0.25, 0.88)
    sun_colour: tuple[float, float, float] = (0.45, 0.45, 0.43)
    ambient: tuple[float, float, float] = (0.45, 0.45, 0.45)
    lamp_colour: tuple[float, float, float] = (0.55, 0.53, 0.5)
    lamp_range: float = 3.5  # metres at which a lamp's intensity has halved


@dataclass
class Lamp:
    """A ceiling lamp lighting only the points inside its room rectangle (xy metres, z range)."""

    pos: np.ndarray
    rect: tuple[float, float, float, float]  # x0, y0, x1, y1
    zrange: tuple[float, float]


class CompiledScene:
    """Boxes packed into arrays plus mip-mapped textures, ready for ``render``."""

    def __init__(self, boxes: Sequence[Box], textures: np.ndarray | list[np.ndarray],
                 lamps: Sequence[Lamp] = (), wear: float = 0.0) -> None:
        self.boxes = list(boxes)
        self.wear = float(wear)  # strength of the aperiodic surface wear (``surface_wear``), 0 = none
        n = len(self.boxes)
        self.lo = np.array([b.lo for b in self.boxes], dtype=np.float64).reshape(n, 3)
        self.hi = np.array([b.hi for b in self.boxes], dtype=np.float64).reshape(n, 3)
        self.tex = np.array([[s.tex for s in b.faces] for b in self.boxes], dtype=np.int64).reshape(n, 6)
        self.fit = np.array([[s.period is None for s in b.faces] for b in self.boxes], dtype=bool).reshape(n, 6)
        self.period = np.array([[s.period or (1.0, 1.0) for s in b.faces] for b in self.boxes],
                               dtype=np.float64).reshape(n, 6, 2)
        self.tint = np.array([[s.tint for s in b.faces] for b in self.boxes], dtype=np.float32).reshape(n, 6, 3)
        self._face_tables()
        # textures: N x S x S x 3 array, or an already built mip pyramid (list of levels) to share
        self.mips = list(textures) if isinstance(textures, list) else mip_pyramid(textures)
        self.tex_size = self.mips[0].shape[1]
        self.lamps = list(lamps)
        self.lamp_pos = np.array([lp.pos for lp in self.lamps], dtype=np.float64).reshape(-1, 3)
        self.lamp_rect = np.array([lp.rect for lp in self.lamps], dtype=np.float64).reshape(-1, 4)
        self.lamp_z = np.array([lp.zrange for lp in self.lamps], dtype=np.float64).reshape(-1, 2)
        self._lamp_grid()

    def _lamp_grid(self, cell: float = 0.02) -> None:
        """Rasterise the lamps' rectangles: per storey band (z range) a 2-D grid of lamp indices (-1 = none)."""
        self.lamp_cell = cell
        bands = sorted({tuple(z) for z in self.lamp_z.tolist()})
        self.lamp_bands = np.array(bands, dtype=np.float64).reshape(-1, 2)
        self.lamp_grids = []
        for z0, z1 in bands:
            sel = np.flatnonzero((self.lamp_z[:, 0] == z0) & (self.lamp_z[:, 1] == z1))
            r = self.lamp_rect[sel]
            gx0, gy0 = r[:, 0].min(), r[:, 1].min()
            nx = int(np.ceil((r[:, 2].max() - gx0) / cell)) + 1
            ny = int(np.ceil((r[:, 3].max() - gy0) / cell)) + 1
            grid = np.full((ny, nx), -1, dtype=np.int32)
            for li, (x0, y0, x1, y1) in zip(sel, r, strict=True):
                grid[int(np.ceil((y0 - gy0) / cell)):int(np.floor((y1 - gy0) / cell)) + 1,
                     int(np.ceil((x0 - gx0) / cell)):int(np.floor((x1 - gx0) / cell)) + 1] = li
            self.lamp_grids.append((gx0, gy0, grid))

    def lamp_index(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Index of the lamp lighting each point (-1 = none), from the rasterised room rectangles."""
        k = np.full(len(x), -1, dtype=np.int32)
        for (z0, z1), (gx0, gy0, grid) in zip(self.lamp_bands, self.lamp_grids, strict=True):
            m = (z >= z0) & (z <= z1)
            if not m.any():
                continue
            ix = np.floor((x[m] - gx0) / self.lamp_cell + 0.5).astype(np.int64)
            iy = np.floor((y[m] - gy0) / self.lamp_cell + 0.5).astype(np.int64)
            ok = (ix >= 0) & (iy >= 0) & (ix < grid.shape[1]) & (iy < grid.shape[0])
            km = np.full(len(ix), -1, dtype=np.int32)
            km[ok] = grid[iy[ok], ix[ok]]
            k[m] = km
        return k

    def _face_tables(self) -> None:
        """Flat per (box, face) tables: texture, fit flag, u/v offsets and periods (metres), tint."""
        n = len(self.lo)
        f = np.arange(6)
        su, sv = _SU[None, :], _SV[None, :]
        lo_u, hi_u = self.lo[:, _AXU], self.hi[:, _AXU]
        lo_v, hi_v = self.lo[:, _AXV], self.hi[:, _AXV]
        fit = self.fit
        self.f_tex = self.tex.reshape(-1)
        self.f_fit = fit.reshape(-1)
        self.f_per_u = np.where(fit, hi_u - lo_u, self.period[..., 0]).reshape(-1)
        self.f_per_v = np.where(fit, hi_v - lo_v, self.period[..., 1]).reshape(-1)
        self.f_off_u = np.where(fit, np.minimum(su * lo_u, su * hi_u), 0.0).reshape(-1)
        self.f_off_v = np.where(fit, np.minimum(sv * lo_v, sv * hi_v), 0.0).reshape(-1)
        self.f_tint = self.tint.reshape(-1, 3)
        self.lo_k = [np.ascontiguousarray(self.lo[:, k]) for k in range(3)]
        self.hi_k = [np.ascontiguousarray(self.hi[:, k]) for k in range(3)]
        del n, f

    def contains(self, p: np.ndarray, margin: float = 0.0) -> bool:
        """True when point ``p`` lies inside (or within ``margin`` of) any box."""
        p = np.asarray(p, dtype=np.float64)
        return bool(((self.lo - margin <= p) & (p <= self.hi + margin)).all(1).any())


def _screen_rects(cs: CompiledScene, camera: Camera, pose: Pose, near: float = 1e-3) -> np.ndarray:
    """Per box the pixel rows/cols [r0, r1, c0, c1) its projection can cover (r1 <= r0: invisible)."""
    n = len(cs.lo)
    sel = np.array([[(i >> k) & 1 for k in range(3)] for i in range(8)])  # corner k: bit -> hi
    corners = np.where(sel[None].astype(bool), cs.hi[:, None], cs.lo[:, None])  # n x 8 x 3
    cam = corners @ pose.R.T + pose.t
    z = cam[..., 2]
    p0, p1 = cam[:, _EDGES[:, 0]], cam[:, _EDGES[:, 1]]
    z0, z1 = p0[..., 2], p1[..., 2]
    cross = (z0 - near) * (z1 - near) < 0
    s = np.where(cross, (near - z0) / np.where(cross, z1 - z0, 1.0), 0.0)
    pe = p0 + s[..., None] * (p1 - p0)
    pts = np.concatenate([cam, pe], axis=1)
    ok = np.concatenate([z >= near, cross], axis=1)
    zz = np.where(ok, pts[..., 2], 1.0)
    (fx, fy), (cx, cy) = camera.focal, camera.principal_point
    u = fx * pts[..., 0] / zz + cx
    v = fy * pts[..., 1] / zz + cy
    inf = np.inf
    umin, umax = np.where(ok, u, inf).min(1), np.where(ok, u, -inf).max(1)
    vmin, vmax = np.where(ok, v, inf).min(1), np.where(ok, v, -inf).max(1)
    W, H = camera.width, camera.height
    with np.errstate(invalid="ignore"):
        c0 = np.clip(np.floor(umin - 0.5) - 1, 0, W)
        c1 = np.clip(np.ceil(umax - 0.5) + 2, 0, W)
        r0 = np.clip(np.floor(vmin - 0.5) - 1, 0, H)
        r1 = np.clip(np.ceil(vmax - 0.5) + 2, 0, H)
    rects = np.stack([r0, r1, c0, c1], 1)
    rects[~ok.any(1)] = 0
    return np.nan_to_num(rects).astype(np.int64).reshape(n, 4)


def _ray_dirs(camera: Camera, pose: Pose) -> np.ndarray:
    """World ray directions 3 x H x W (float64), parameterised so that the ray parameter is the z-depth."""
    if camera.has_distortion():
        raise ValueError("the ray caster renders pinhole cameras only")
    H, W = camera.height, camera.width
    (fx, fy), (cx, cy) = camera.focal, camera.principal_point
    xs = (np.arange(W) + 0.5 - cx) / fx
    ys = (np.arange(H) + 0.5 - cy) / fy
    Rt = pose.R.T
    return xs[None, None, :] * Rt[:, 0, None, None] + ys[None, :, None] * Rt[:, 1, None, None] + Rt[:, 2, None, None]


def cast_rays(cs: CompiledScene, camera: Camera, pose: Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First hit per pixel: (box id H x W, -1 = none; approx. ray parameter H x W float32; world rays 3 x H x W)."""
    H, W = camera.height, camera.width
    dirs = _ray_dirs(camera, pose)
    d32 = dirs.astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = (1.0 / np.where(np.abs(d32) < 1e-12, np.float32(1e-12), d32)).astype(np.float32)
    ix, iy, iz = inv[0], inv[1], inv[2]
    o = pose.center
    lo_rel = (cs.lo - o).astype(np.float32)
    hi_rel = (cs.hi - o).astype(np.float32)
    zbuf = np.full((H, W), np.inf, dtype=np.float32)
    ids = np.full((H, W), -1, dtype=np.int32)
    rects = _screen_rects(cs, camera, pose)
    mn, mx = np.minimum, np.maximum
    for b in np.flatnonzero((rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2])):
        r0, r1, c0, c1 = rects[b]
        (lx, ly, lz), (hx, hy, hz) = lo_rel[b], hi_rel[b]
        bx, by, bz = ix[r0:r1, c0:c1], iy[r0:r1, c0:c1], iz[r0:r1, c0:c1]
        ax1, ax2 = lx * bx, hx * bx
        ay1, ay2 = ly * by, hy * by
        az1, az2 = lz * bz, hz * bz
        tn = mx(mx(mn(ax1, ax2), mn(ay1, ay2)), mn(az1, az2))
        tf = mn(mn(mx(ax1, ax2), mx(ay1, ay2)), mx(az1, az2))
        zb = zbuf[r0:r1, c0:c1]
        hit = (tn <= tf) & (tn > 0) & (tn < zb)
        zb[hit] = tn[hit]
        ids[r0:r1, c0:c1][hit] = b
    return ids, zbuf, dirs


_ATLAS_CACHE: dict[int, tuple] = {}


def _atlas(cs: CompiledScene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All mip levels of all textures packed in one uint8 RGB image, each tile with a 1-texel wrapped border.

    Returns (atlas H x W x 3 uint8, origin of tile (texture, level) as n x L x 2 (x, y) of texel (0, 0),
    level sizes L). Cached per texture pyramid (shared by every CompiledScene of a building)."""
    key = id(cs.mips[0])
    hit = _ATLAS_CACHE.get(key)
    if hit is not None and hit[0] is cs.mips[0]:
        return hit[1]
    n = cs.mips[0].shape[0]
    sizes = np.array([m.shape[1] for m in cs.mips])
    width = max(2048, int(sizes[0]) + 2)
    origin = np.zeros((n, len(sizes), 2), dtype=np.int64)
    x = y = row_h = 0
    for lvl, S in enumerate(sizes):
        t = int(S) + 2
        for i in range(n):
            if x + t > width:
                x, y, row_h = 0, y + row_h, 0
            origin[i, lvl] = (x + 1, y + 1)
            x += t
            row_h = max(row_h, t)
    atlas = np.zeros((y + row_h, width, 3), dtype=np.uint8)
    for lvl, m in enumerate(cs.mips):
        q = np.clip(np.round(m * 255.0), 0, 255).astype(np.uint8)
        q = np.concatenate([q[:, -1:], q, q[:, :1]], axis=1)
        q = np.concatenate([q[:, :, -1:], q, q[:, :, :1]], axis=2)
        for i in range(n):
            ox, oy = origin[i, lvl]
            atlas[oy - 1:oy + q.shape[1] - 1, ox - 1:ox + q.shape[2] - 1] = q[i]
    out = (atlas, origin, sizes)
    _ATLAS_CACHE.clear()
    _ATLAS_CACHE[key] = (cs.mips[0], out)
    return out


def _sample_textures(cs: CompiledScene, tex: np.ndarray, u: np.ndarray, v: np.ndarray, fit: np.ndarray,
                     level: np.ndarray) -> np.ndarray:
    """Bilinear lookup (N x 3 float32, 0..1) of textures ``tex`` at normalised (u, v) in [0, 1] on mip
    ``level`` (wrapping, or clamped at the border for stretched 'fit' surfaces), via one cv2.remap."""
    atlas, origin, sizes = _atlas(cs)
    S = sizes.astype(np.float32)[level]
    x = u.astype(np.float32) * S - 0.5
    y = v.astype(np.float32) * S - 0.5
    x = np.where(fit, np.clip(x, 0, S - 1), x)
    y = np.where(fit, np.clip(y, 0, S - 1), y)
    o = origin[tex, level]
    n = len(u)
    cols = 1024
    rows = -(-n // cols)
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n] = x + o[:, 0]
    my[:n] = y + o[:, 1]
    out = cv2.remap(atlas, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 3)[:n].astype(np.float32) * np.float32(1.0 / 255.0)


# wear octaves: periods (x, y, z) in metres, incommensurate between axes, octaves and material tilings
WEAR_PERIODS = ((4.1, 3.7, 3.3), (1.53, 1.31, 1.17))
WEAR_WEIGHTS = (0.7, 0.3)
WEAR_SIZE = 48
_WEAR: list[np.ndarray] = []


def _noise_volume(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Seamless 3D 1/f^beta noise (S x S x S float32, zero mean, unit std)."""
    f = np.fft.fftfreq(size) * size
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    amp = np.where(r >= 1.0, 1.0 / np.maximum(r, 1e-6) ** (beta / 2.0), 0.0)
    spec = amp * (rng.standard_normal(r.shape) + 1j * rng.standard_normal(r.shape))
    n = np.real(np.fft.ifftn(spec))
    n -= n.mean()
    return (n / (n.std() + 1e-12)).astype(np.float32)


def _wear_volumes() -> np.ndarray:
    """The wear octaves' noise volumes (2 x S x S x S), from a fixed seed (the same for every building)."""
    if not _WEAR:
        rng = np.random.default_rng(20261127)
        _WEAR.append(np.stack([_noise_volume(rng, WEAR_SIZE, 3.0), _noise_volume(rng, WEAR_SIZE, 3.0)]))
    return _WEAR[0]


def _trilinear(vol: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Periodic trilinear lookup of an S x S x S volume at voxel coordinates (any real values)."""
    S = vol.shape[0]
    out = np.zeros(len(x), dtype=np.float32)
    i0 = [np.floor(c).astype(np.int64) for c in (x, y, z)]
    fr = [(c - i).astype(np.float32) for c, i in zip((x, y, z), i0, strict=True)]
    for dx in (0, 1):
        wx = fr[0] if dx else 1 - fr[0]
        for dy in (0, 1):
            wy = fr[1] if dy else 1 - fr[1]
            for dz in (0, 1):
                wz = fr[2] if dz else 1 - fr[2]
                out += wx * wy * wz * vol[(i0[0] + dx) % S, (i0[1] + dy) % S, (i0[2] + dz) % S]
    return out


def surface_wear(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Aperiodic wear/dirt field (N float32, -1..1) at world points (metres).

    A 3D field (two smooth noise octaves with incommensurate periods per axis) cut by the surfaces:
    no two places of a building carry the same pattern, even where a material tiles.
    """
    vols = _wear_volumes()
    out = np.zeros(len(x), dtype=np.float32)
    for k, (per, w) in enumerate(zip(WEAR_PERIODS, WEAR_WEIGHTS, strict=True)):
        out += np.float32(w) * _trilinear(vols[k], x / per[0] * WEAR_SIZE, y / per[1] * WEAR_SIZE,
                                          z / per[2] * WEAR_SIZE)
    return np.clip(out / 1.5, -1.0, 1.0)


def shade(cs: CompiledScene, ids: np.ndarray, dirs: np.ndarray, origin: np.ndarray,
          focal: float, illumination: Illumination) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour (H x W x 3 float32, 0..1), z-depth (H x W, NaN = miss) and world XYZ (H x W x 3) of the hits."""
    H, W = ids.shape
    hitm = ids >= 0
    b = ids[hitm]
    o = np.asarray(origin, dtype=np.float64)
    d = [dirs[k][hitm] for k in range(3)]
    # entry plane per axis (lo if the ray goes +, else hi); the entry face is the axis with the largest t
    ts, planes = [], []
    for k in range(3):
        pk = np.where(d[k] > 0, cs.lo_k[k][b], cs.hi_k[k][b])
        with np.errstate(divide="ignore", invalid="ignore"):
            tk = (pk - o[k]) / d[k]
        ts.append(np.where(np.isfinite(tk), tk, -np.inf))
        planes.append(pk)
    axis = np.where(ts[0] >= ts[1], 0, 1)
    axis = np.where(ts[2] > np.where(axis == 0, ts[0], ts[1]), 2, axis)

    def pick(a: Sequence[np.ndarray]) -> np.ndarray:
        """Per ray, the entry of ``a`` (one array per axis) for the ray's hit axis."""
        return np.where(axis == 0, a[0], np.where(axis == 1, a[1], a[2]))

    t = pick(ts)  # exact plane intersection (float64) = z-depth
    dax = pick(d)
    face = 2 * axis + (dax < 0)
    depth = np.full((H, W), np.nan)
    depth[hitm] = t
    p = [o[k] + t * d[k] for k in range(3)]
    for k in range(3):  # snap the hit coordinate onto the exact face plane
        p[k] = np.where(axis == k, planes[k], p[k])
    xyz = np.full((H, W, 3), np.nan)
    for k in range(3):
        xyz[..., k][hitm] = p[k]
    # texture coordinates (per-face constants looked up by box * 6 + face)
    bf = b.astype(np.int64) * 6 + face
    fit = cs.f_fit[bf]
    per_u, per_v = cs.f_per_u[bf], cs.f_per_v[bf]
    au, av = _AXU[face], _AXV[face]
    pu = np.where(au == 0, p[0], np.where(au == 1, p[1], p[2])) * _SU[face]
    pv = np.where(av == 1, p[1], p[2]) * _SV[face]
    u = (pu - cs.f_off_u[bf]) / per_u
    v = (pv - cs.f_off_v[bf]) / per_v
    u = np.where(fit, u, u - np.floor(u))
    v = np.where(fit, v, v - np.floor(v))
    # mip level from the pixel footprint (metres) and texels per metre
    dn = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    cos = np.abs(dax) / dn
    foot = t * dn / focal / np.sqrt(np.maximum(cos, 0.05))
    texels_per_m = cs.tex_size / np.minimum(per_u, per_v)
    level = np.clip(np.round(np.log2(np.maximum(foot * texels_per_m, 1e-6))), 0, len(cs.mips) - 1).astype(np.int64)
    albedo = _sample_textures(cs, cs.f_tex[bf], u, v, fit, level)
    if cs.wear > 0:
        albedo *= (1.0 + np.float32(cs.wear) * surface_wear(p[0], p[1], p[2]))[:, None]
    # lighting (scalar per pixel, colours per channel): ambient + directional + the lamp of the room
    il = illumination
    L = np.asarray(il.sun_dir, dtype=np.float64)
    L = L / np.linalg.norm(L)
    sun = np.maximum(_NORMALS @ L, 0.0)[face].astype(np.float32)
    lamp = None
    if len(cs.lamps):
        sgn = np.where(face % 2 == 1, 1.0, -1.0)
        q = [p[j] + np.where(axis == j, 0.03 * sgn, 0.0) for j in range(3)]  # 3 cm in front: the room it faces
        k = cs.lamp_index(q[0], q[1], q[2])
        kk = np.maximum(k, 0)
        vec = [cs.lamp_pos[:, j][kk] - p[j] for j in range(3)]
        dist = np.sqrt(vec[0] ** 2 + vec[1] ** 2 + vec[2] ** 2)
        lam = np.maximum(sgn * pick(vec) / np.maximum(dist, 1e-6), 0.0)
        fall = 1.0 / (1.0 + (dist / il.lamp_range) ** 2)
        lamp = np.where(k >= 0, lam * fall * 1.6, 0.0).astype(np.float32)
    rgb = np.empty((H, W, 3), dtype=np.float32)
    rgb[:] = BACKGROUND
    all_hit = bool(hitm.all())
    flat = rgb.reshape(-1, 3)
    for c in range(3):
        light_c = np.float32(il.ambient[c]) + sun * np.float32(il.sun_colour[c])
        if lamp is not None:
            light_c += lamp * np.float32(il.lamp_colour[c])
        val = albedo[:, c] * cs.f_tint[:, c][bf] * light_c
        if all_hit:
            flat[:, c] = val
        else:
            rgb[..., c][hitm] = val
    return rgb, depth, xyz


def render(cs: CompiledScene, camera: Camera, pose: Pose, illumination: Illumination | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast one view -> (rgb H x W x 3 float32 linear 0..1, z-depth H x W metres NaN = miss, world XYZ)."""
    illumination = illumination or Illumination()
    ids, _, dirs = cast_rays(cs, camera, pose)
    # the ray parameter of the hit is the z-depth (rays are z-depth parameterised)
    return shade(cs, ids, dirs, pose.center, float(np.mean(camera.focal)), illumination)


__all__ = [
    "BACKGROUND",
    "Box",
    "CompiledScene",
    "Illumination",
    "Lamp",
    "Surface",
    "cast_rays",
    "render",
]
