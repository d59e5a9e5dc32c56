"""Dense pose verification (DensePV, InLoc): render DB points into the query, compare dense RootSIFT.

For a candidate pose: project coloured world points into the query camera at reduced resolution
with a z-buffer; grey conversion; normalise query and rendering to zero mean / unit std over the
rendered pixels; fill holes in the rendering (inpainting); dense RootSIFT (bin 8, step 4) on both;
score = 1 / median over rendered grid points of ||d_query - d_render||_2 (higher is better).

Rendering resolution: ``scale`` if given (InLoc: 1/8 of 4032x3024), otherwise the query is
reduced so that its longer side is at most ``target_size`` px (default 512, about InLoc's 504).
Outside the rendered region both normalised images are set to 0 (their mean) so that descriptors
near the border see the same cut in both.

Points rendered for a candidate (``point_source``): its own database image(s), or with
``whole_scan`` every cutout of the same scan (InLoc layout: the images of one folder).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from localize.core.config import from_dict
from localize.core.errors import InputError
from localize.core.geometry import Camera, Pose
from localize.core.records import DbImage, load_rgb
from localize.core.threads import map_threads, num_threads
from matching.dense_sift import dense_rootsift

logger = logging.getLogger(__name__)
DESCRIBE_BATCH = 4  # candidates described together (2 images each; memory grows with it)


@dataclass(frozen=True)
class DensePVConfig:
    """DensePV settings: render size, descriptor grid, hole filling and validity thresholds."""

    scale: float | None = None  # render scale w.r.t. the query camera; None -> target_size
    target_size: int = 512  # longer side of the rendering in px when scale is None (never upsampled)
    bin_size: int = 8
    step: int = 4
    inpaint_radius: float = 3.0
    close_kernel: int = 3  # morphological closing of the splat mask (px) -> the rendered region
    min_coverage: float = 0.5  # fraction of a descriptor's 4x4-cell support that must be rendered
    min_grid_points: int = 16  # fewer valid grid points -> score 0
    point_stride: int = 1  # subsample DB point maps (rows and columns) when building point clouds
    cache_mb: int = 1024  # point clouds kept in memory across queries (MiB, least recently used dropped)
    whole_scan: bool = False  # render every cutout of the candidate's scan (InLoc), not only its own image(s)
    scan_stride: int = 4  # with whole_scan: point subsampling (rows and columns) of each cutout


def densepv_config(conf: Mapping[str, Any] | DensePVConfig | None) -> DensePVConfig:
    """DensePVConfig from a dict (unknown keys raise ConfigError naming them), an instance or None (defaults)."""
    return from_dict(DensePVConfig, conf, "densepv")


def render_size(camera: Camera, conf: DensePVConfig) -> tuple[int, int]:
    """(width, height) of the rendering for a query camera."""
    W, H = camera.width, camera.height
    s = conf.scale if conf.scale is not None else min(1.0, conf.target_size / max(W, H))
    return max(1, int(round(W * s))), max(1, int(round(H * s)))


def render_points(points: np.ndarray, colours: np.ndarray, camera: Camera, pose: Pose
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffered splat of world points N x 3 with colours N x 3 (uint8) -> (rgb HxWx3, mask, depth).

    One pixel per point (the pixel containing its projection, COLMAP convention); the nearest
    point wins. Depth is z in the camera frame (m), NaN where nothing is rendered.
    """
    W, H = camera.width, camera.height
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    depth = np.full((H, W), np.nan)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cols = np.asarray(colours).reshape(-1, 3)
    ok = np.isfinite(pts).all(1)
    if not ok.all():
        pts, cols = pts[ok], cols[ok]
    if len(pts) == 0:
        return rgb, np.zeros((H, W), dtype=bool), depth
    Xc = pose.transform(pts)
    uv, front = camera.project(Xc)
    with np.errstate(invalid="ignore"):  # NaN projections fail every comparison: outside
        ins = front & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    idx = np.flatnonzero(ins)
    lin = uv[idx, 1].astype(np.int64) * W + uv[idx, 0].astype(np.int64)  # truncation = floor (all >= 0)
    z = Xc[idx, 2]
    # z-buffer: the nearest depth per pixel, then per pixel the first point (input order) at that depth
    zbuf = np.full(H * W, np.inf)
    np.minimum.at(zbuf, lin, z)
    near = np.flatnonzero(z == zbuf[lin])
    _, first = np.unique(lin[near], return_index=True)
    sel = near[first]
    rgb.reshape(-1, 3)[lin[sel]] = cols[idx[sel]].astype(np.uint8)
    depth.reshape(-1)[lin[sel]] = z[sel]
    mask = np.isfinite(depth)
    return rgb, mask, depth


def _grey(rgb: np.ndarray) -> np.ndarray:
    img = np.asarray(rgb)
    if img.ndim == 2:
        g = img.astype(np.float32)
    else:
        g = cv2.cvtColor(np.ascontiguousarray(img[..., :3]).astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return g / 255.0 if img.dtype == np.uint8 else g


def _normalise(g: np.ndarray, region: np.ndarray) -> np.ndarray:
    vals = g[region]
    mu, sd = float(vals.mean()), float(vals.std())
    out = (g - mu) / max(sd, 1e-6)
    out[~region] = 0.0
    return out.astype(np.float32)


@dataclass
class _Prepared:
    """A candidate's rendering, ready for description: normalised grey query and rendering at render size."""

    q: np.ndarray  # query resized to the rendering (H x W x 3)
    rgb: np.ndarray  # raw splat
    filled: np.ndarray  # splat with holes inpainted
    splat: np.ndarray
    region: np.ndarray
    depth: np.ndarray
    h: int  # descriptor grid
    w: int
    gq: np.ndarray | None  # None: nothing comparable (score 0)
    gr: np.ndarray | None


def _render_size_query(query_rgb: np.ndarray, camera: Camera, conf: DensePVConfig) -> tuple[np.ndarray, Camera]:
    """(query resized to the rendering size, the query camera at that size)."""
    Wr, Hr = render_size(camera, conf)
    q = np.asarray(query_rgb)
    if q.shape[0] != Hr or q.shape[1] != Wr:
        q = cv2.resize(q, (Wr, Hr), interpolation=cv2.INTER_AREA)
    return q, camera.scaled(Wr, Hr)


def _prepare(q: np.ndarray, cam_r: Camera, pose: Pose, points_world: np.ndarray, colours: np.ndarray,
             conf: DensePVConfig) -> _Prepared:
    """Render the points into the (resized) query camera, close and inpaint, normalise both grey images."""
    Hr, Wr = q.shape[:2]
    rgb, splat, depth = render_points(points_world, colours, cam_r, pose)
    if conf.close_kernel > 1:
        k = np.ones((conf.close_kernel, conf.close_kernel), np.uint8)
        region = cv2.morphologyEx(splat.astype(np.uint8), cv2.MORPH_CLOSE, k).astype(bool)
    else:
        region = splat.copy()
    holes = region & ~splat
    filled = rgb
    if holes.any():
        filled = cv2.inpaint(rgb, holes.astype(np.uint8), float(conf.inpaint_radius), cv2.INPAINT_TELEA)
    h, w = Hr // conf.step, Wr // conf.step
    gq = gr = None
    if region.sum() >= 2 and h > 0 and w > 0:
        gq = _normalise(_grey(q), region)
        gr = _normalise(_grey(filled), region)
    return _Prepared(q, rgb, filled, splat, region, depth, h, w, gq, gr)


def _describe(grey: Sequence[np.ndarray], conf: DensePVConfig) -> np.ndarray:
    """Dense RootSIFT of equally sized normalised grey images -> [N, 128, h, w] (one batch; the fast
    computation: a score is a median of distances, unmoved by the last bits of the descriptors)."""
    with torch.no_grad():
        return dense_rootsift(torch.from_numpy(np.stack(grey))[:, None], bin_size=conf.bin_size,
                              step=conf.step, exact=False).numpy()


def _score(p: _Prepared, d_query: np.ndarray | None, d_render: np.ndarray | None, conf: DensePVConfig
           ) -> tuple[float, dict]:
    """Score from the two descriptor maps [128, h, w] (None: nothing comparable) and the debug dict."""
    Hr, Wr = p.q.shape[:2]
    score = 0.0
    errors = np.full((max(p.h, 0), max(p.w, 0)), np.nan, dtype=np.float32)
    valid = np.zeros_like(errors, dtype=bool)
    if d_query is not None and d_render is not None:
        dist = np.linalg.norm(d_query - d_render, axis=0)  # h x w
        # coverage of each descriptor's support (4 x 4 cells of bin_size px) by the rendered region
        support = 4 * conf.bin_size
        cov = cv2.boxFilter(p.region.astype(np.float32), -1, (support, support), normalize=True,
                            borderType=cv2.BORDER_CONSTANT)
        rows = np.minimum(np.arange(p.h) * conf.step + conf.step // 2, Hr - 1)
        cols = np.minimum(np.arange(p.w) * conf.step + conf.step // 2, Wr - 1)
        valid = p.region[np.ix_(rows, cols)] & (cov[np.ix_(rows, cols)] >= conf.min_coverage)
        errors = np.where(valid, dist, np.nan).astype(np.float32)
        if valid.sum() >= conf.min_grid_points:
            med = float(np.median(dist[valid]))
            score = 1.0 / max(med, 1e-6)
    debug = {"query": p.q, "render": p.filled, "render_raw": p.rgb, "splat_mask": p.splat, "region": p.region,
             "depth": p.depth, "errors": errors, "valid": valid, "query_norm": p.gq, "render_norm": p.gr,
             "score": score, "num_grid_points": int(valid.sum()), "step": conf.step}
    return score, debug


def densepv_score(query_rgb: np.ndarray, camera: Camera, pose: Pose, points_world: np.ndarray,
                  colours: np.ndarray, scale: float | None = None, conf: DensePVConfig | None = None,
                  return_debug: bool = False) -> float | tuple[float, dict]:
    """DensePV score (1 / median RootSIFT distance, higher is better; 0 when nothing comparable).

    ``query_rgb`` H x W x 3 uint8 (any size; resized to the rendering size), ``camera`` the query
    camera (COLMAP pixels), ``pose`` world-to-camera, ``points_world`` N x 3 (m), ``colours`` N x 3
    uint8 RGB. With ``return_debug`` also returns a dict of images (query, render, mask, errors).
    """
    conf = conf or DensePVConfig()
    if scale is not None:
        conf = dataclasses.replace(conf, scale=scale)
    q, cam_r = _render_size_query(query_rgb, camera, conf)
    p = _prepare(q, cam_r, pose, points_world, colours, conf)
    d = _describe([p.gq, p.gr], conf) if p.gq is not None else (None, None)
    score, debug = _score(p, d[0], d[1], conf)
    return (score, debug) if return_debug else score


def save_render_debug(path: str | Path, debug: Mapping, title: str = "") -> None:
    """Write a PNG with the query, the rendering and the per-grid-point descriptor error map."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render = np.array(debug["render"], copy=True)
    render[~debug["region"]] = (0, 0, 96)  # dark blue = nothing rendered
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    ax[0].imshow(debug["query"])
    ax[0].set_title("query")
    ax[1].imshow(render)
    ax[1].set_title("rendering (blue: no points)")
    H, W = render.shape[:2]
    im = ax[2].imshow(debug["errors"], cmap="magma", vmin=0.0, vmax=1.0, extent=(0, W, H, 0))
    ax[2].set_title(f"RootSIFT error (score {debug['score']:.3f}, {debug['num_grid_points']} pts)")
    fig.colorbar(im, ax=ax[2], fraction=0.035)
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


# ----------------------------------------------------------------------------- point clouds
def db_point_cloud(db_image: DbImage, stride: int = 1, rgb: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A DB image's valid world points K x 3 (m) and their RGB colours K x 3 uint8."""
    xyz = db_image.world_xyz()[::stride, ::stride]
    if rgb is None:
        rgb = load_rgb(db_image.image_path)
    if rgb.shape[:2] != (db_image.camera.height, db_image.camera.width):
        rgb = cv2.resize(rgb, (db_image.camera.width, db_image.camera.height), interpolation=cv2.INTER_AREA)
    rgb = rgb[::stride, ::stride]
    ok = np.isfinite(xyz).all(-1)
    return xyz[ok].astype(np.float64), rgb[ok].astype(np.uint8)


PointSource = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


def db_point_source(db: Mapping[str, DbImage], conf: DensePVConfig | None = None) -> PointSource:
    """Callable: DB image names -> concatenated (points, colours), clouds kept in an LRU of ``conf.cache_mb`` MiB
    (the newest always stays)."""
    conf = conf or DensePVConfig()
    cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
    limit = int(conf.cache_mb) * 2**20
    held = [0]  # bytes in the cache

    def get(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for n in names:
            if n in cache:
                cache.move_to_end(n)
            else:
                cache[n] = db_point_cloud(db[n], conf.point_stride)
                for a in cache[n]:
                    a.flags.writeable = False  # handed out as they are: shared by every later caller
                    held[0] += a.nbytes
                while held[0] > limit and len(cache) > 1:
                    held[0] -= sum(a.nbytes for a in cache.popitem(last=False)[1])
            parts.append(cache[n])
        if not parts:
            return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
        if len(parts) == 1:  # the cached (read-only) arrays themselves
            return parts[0]
        return np.concatenate([p for p, _ in parts]), np.concatenate([c for _, c in parts])

    return get


def scan_point_source(db: Mapping[str, DbImage], conf: DensePVConfig | None = None,
                      stride: int | None = None) -> PointSource:
    """Callable for the InLoc layout: names -> points of WHOLE scans (all cutouts in the same folder).

    A name 'DUC1/024/x.jpg' selects every DB image under 'DUC1/024/', each subsampled by
    ``stride`` (default ``conf.scan_stride``; a full InLoc scan is 36 cutouts of 1600 x 1200 points).
    """
    conf = conf or DensePVConfig()
    stride = conf.scan_stride if stride is None else stride
    by_scan: dict[str, list[str]] = {}
    for n in db:
        by_scan.setdefault(str(Path(n).parent), []).append(n)
    per_image = db_point_source(db, dataclasses.replace(conf, point_stride=stride))

    def get(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        scans = sorted({str(Path(n).parent) for n in names})
        return per_image([m for sc in scans for m in sorted(by_scan.get(sc, []))])

    return get


def point_source(db: Mapping[str, DbImage], conf: DensePVConfig | None = None) -> PointSource:
    """The points DensePV renders for a candidate, per ``conf``: whole scans (``whole_scan``) or its own image(s)."""
    conf = conf or DensePVConfig()
    return scan_point_source(db, conf) if conf.whole_scan else db_point_source(db, conf)


def order_by_densepv(query_rgb: np.ndarray, camera: Camera, candidates: list,
                     points: PointSource | Mapping[str, DbImage], conf: DensePVConfig | None = None,
                     save_dir: str | Path | None = None, query_name: str = "query") -> list:
    """Score each successful candidate with DensePV (sets ``densepv_score``); return them best first.

    ``points`` is either the DB records (rendered points chosen by ``point_source(records, conf)``)
    or a callable names -> (points, colours). Candidates that failed PnP or whose points cannot be
    loaded or rendered keep ``densepv_score=None`` and go last.
    With ``save_dir``, writes ``save_dir/<query_name>__<rank>_<db>.png`` debug pictures.
    Each candidate's score equals ``densepv_score`` for it: the renderings are made a few at a time on the
    thread budget (points loaded one candidate after the other), the descriptors in batches.
    """
    conf = conf or DensePVConfig()
    source = points if callable(points) else point_source(points, conf)
    q, cam_r = _render_size_query(query_rgb, camera, conf)
    todo = [(i, c) for i, c in enumerate(candidates) if c.success]
    chunk = max(2, num_threads())
    prepared: list[tuple[int, Any, _Prepared]] = []
    for s in range(0, len(todo), chunk):
        loaded = []
        for i, c in todo[s:s + chunk]:
            try:
                loaded.append((i, c, source(c.db_names or [c.db_name])))
            except (InputError, OSError, ValueError) as e:  # a bad DB image must not stop the query
                logger.warning("DensePV failed for %s / %s: %s", query_name, c.db_name, e)
                c.densepv_score = None

        def prepare(item: tuple[int, Any, tuple[np.ndarray, np.ndarray]]) -> _Prepared | Exception:
            _, c, (P, C) = item
            try:
                return _prepare(q, cam_r, c.result.pose, P, C, conf)
            except (InputError, ValueError, cv2.error) as e:
                return e

        for (i, c, _), p in zip(loaded, map_threads(prepare, loaded), strict=True):
            if isinstance(p, Exception):
                logger.warning("DensePV failed for %s / %s: %s", query_name, c.db_name, p)
                c.densepv_score = None
            else:
                prepared.append((i, c, p))
    described = [t for t in prepared if t[2].gq is not None]
    desc: dict[int, np.ndarray] = {}
    for s in range(0, len(described), DESCRIBE_BATCH):
        part = described[s:s + DESCRIBE_BATCH]
        d = _describe([g for _, _, p in part for g in (p.gq, p.gr)], conf)
        desc.update((i, d[2 * k:2 * k + 2]) for k, (i, _, _) in enumerate(part))
    for i, c, p in prepared:
        d = desc.get(i, (None, None))
        score, dbg = _score(p, d[0], d[1], conf)
        c.densepv_score = float(score)
        if save_dir is not None:
            safe = f"{query_name}__{i:02d}_{c.db_name}".replace("/", "-").replace("<", "").replace(">", "")
            try:
                save_render_debug(Path(save_dir) / f"{safe}.png", dbg,
                                  title=f"{query_name} vs {c.db_name}: {c.num_inliers} inliers")
            except OSError as e:  # the picture is a by-product: the score stands
                logger.warning("DensePV picture not written for %s / %s: %s", query_name, c.db_name, e)
    return sorted(candidates, key=lambda c: (c.densepv_score is None, -(c.densepv_score or 0.0),
                                             -c.num_inliers))
