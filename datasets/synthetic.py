"""Synthetic indoor RGB-D buildings with exact ground truth: the project's test world and demo.

``python -m datasets.synthetic --out DIR --seed N [--size tiny|small|medium|inloc-size] [--preview]``

``inloc-size`` is a small building (two scans of 12 cutouts) at the real InLoc image sizes: 1600 x 1200
database cutouts (60 deg) and two 4032 x 3024 queries with iPhone 7 intrinsics (f = 3136 px), for
timing the pipeline (``benchmarks/bench_localize.py inloc-size``).

World frame: metres, **z up**, floor of the ground storey at z = 0; the building is a row of
rooms on both sides of a corridor running along +x (storey ``k`` has its floor at z = 3 k).
Cameras follow ``localize.core.geometry`` (x right, y down, z forward; poses WORLD-TO-CAMERA; COLMAP
pixel centres). Cutout yaw is measured in the scan frame about +z from the scan's +x axis;
positive pitch looks up.

Output layout (all names relative to the folder they are listed in)::

    DIR/db/                    plain RGB-D database folder (datasets.rgbd_folder), depth_scale 1000,
                               names 'FL1/000/SYN_cutout_000_30_0.jpg'
    DIR/inloc/                 the same cutouts in InLoc's native layout (datasets.inloc):
                               cutouts/FL1/000/SYN_cutout_000_30_0.jpg(.mat, XYZcut in the scan frame),
                               alignments/FL1/transformations/SYN_trans_000.txt (P_after scan -> world)
    DIR/queries/               plain RGB-D folder of the queries (images/, depth/, poses.txt, cameras.txt)
    DIR/queries/queries_with_intrinsics.txt   query list 'query_0000.jpg MODEL W H params'
    DIR/queries/poses_gt.txt   ground-truth poses file (world-to-camera)
    DIR/queries/queries_meta.json  per query: room, appearance, occluder, best database image + covisibility
    DIR/train/                 plain RGB-D folder of training renders (a *different* building, same size)
    DIR/pairs/train_pairs.csv, DIR/pairs/val_pairs.csv
                               NCNet pair layout 'source_image,target_image,class,flip'; paths relative
                               to DIR; class 1 = positive (same place, >= 30 % co-visible both ways),
                               class 0 = negative (different rooms); flip always 0; the validation
                               split holds out whole training places (anchors)
    DIR/scene.json             the boxes of the database-time building (for debugging/plots)
    DIR/preview.png            (--preview) contact sheet of database and query images
    DIR/manifest.json          written last: parameters, counts, sha256 of every file

Query-time changes: furniture flagged movable is moved or removed, objects are added, a
person-like occluder may stand in front of the camera, and the illumination / colour / noise /
blur differ. Every query is checked to see >= ``min_query_covis`` of its pixels in some database
image (depth-checked) at an apparent scale within ``max_query_scale_ratio`` of that image (as
for a query taken from about the distance the building was scanned from), else it is resampled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from datasets import textures as T
from datasets.correspondences import covisibility, dense_correspondences
from datasets.raycast import Box, CompiledScene, Illumination, Lamp, Surface, cast_rays, shade
from localize.core.records import DbImage
from localize.core.formats import atomic_write, write_poses, write_query_list
from localize.core.geometry import Camera, Pose, look_at

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.4"
# strength of the aperiodic wear on every surface (datasets.raycast.surface_wear): tiled materials
# would otherwise repeat exactly (a 2.7 m brick tile matches itself 2.7 m further along a wall)
SURFACE_WEAR = 0.25
BUILDING = "SYN"
STOREY = 3.0  # metres between storey floors
CEILING = 2.7  # room height, metres
WALL = 0.12  # wall thickness, metres
DOOR_W, DOOR_H = 0.95, 2.1
CORRIDOR_W = 2.0
SCAN_HEIGHT = 1.5  # scanner height above the floor
DEPTH_SCALE = 1000.0


# ============================================================================ configuration
@dataclass(frozen=True)
class SizeConfig:
    """Parameters of one preset size (image sizes are (width, height) pixels)."""

    name: str
    floors: int
    rooms_north: int
    rooms_south: int
    corridor_scans: int  # scan positions along the corridor, per storey
    db_size: tuple[int, int]
    yaws: tuple[int, ...]
    pitches: tuple[int, ...]
    n_queries: int
    query_size: tuple[int, int]
    query_hfov: float
    train_anchors: int
    train_views: int
    train_size: tuple[int, int]
    min_query_covis: float = 0.35
    max_query_scale_ratio: float = 1.6  # apparent-size ratio query / best database view (either way)
    min_query_texture: float = 0.33  # edge-pixel fraction at quarter resolution: no blank-wall queries


SIZES: dict[str, SizeConfig] = {
    "tiny": SizeConfig("tiny", 1, 2, 0, 1, (320, 240), tuple(range(0, 360, 60)), (0,), 8, (256, 192), 52.0,
                       6, 3, (240, 180)),
    "small": SizeConfig("small", 1, 3, 1, 3, (640, 480), tuple(range(0, 360, 30)), (0,), 40, (512, 384), 52.0,
                        32, 4, (400, 300)),
    "medium": SizeConfig("medium", 2, 4, 3, 3, (800, 600), tuple(range(0, 360, 30)), (-30, 0, 30), 100,
                         (640, 480), 52.0, 120, 4, (400, 300)),
    # InLoc image sizes for timings: 1600 x 1200 cutouts, 4032 x 3024 queries with the iPhone 7's
    # horizontal field of view (f = 3136 px, datasets.inloc.INLOC_QUERY_FOCAL); one room + corridor
    "inloc-size": SizeConfig("inloc-size", 1, 1, 0, 1, (1600, 1200), tuple(range(0, 360, 30)), (0,), 2,
                             (4032, 3024), math.degrees(2 * math.atan(4032 / 2 / (4032 * 28 / 36))), 2, 2,
                             (400, 300)),
}


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """Independent deterministic random stream for (seed, stream ids)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(s) for s in stream]]))


def cutout_camera(width: int, height: int, hfov_deg: float = 60.0) -> Camera:
    """Pinhole camera with the given horizontal field of view (InLoc cutouts: 60 deg)."""
    return Camera.pinhole(width, height, width / (2.0 * math.tan(math.radians(hfov_deg) / 2)))


def camera_pose(center: Sequence[float], yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> Pose:
    """World-to-camera pose at ``center`` looking along yaw (about +z from +x), pitch (up > 0), roll."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    fwd = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    pose = look_at(center, np.asarray(center, dtype=np.float64) + fwd)
    if roll_deg:
        r = math.radians(roll_deg)
        Rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
        pose = Pose(Rz @ pose.R, Rz @ pose.t)
    return pose


# ============================================================================ scene description
@dataclass
class Room:
    """A room (or corridor segment group): interior rectangle (x0, y0, x1, y1) metres, storey, theme."""

    index: int
    name: str
    floor: int
    rect: tuple[float, float, float, float]
    kind: str = "room"  # room | corridor
    theme: int = 0
    twin_of: int = -1

    @property
    def z0(self) -> float:
        """Floor height of the room (metres)."""
        return self.floor * STOREY

    def contains_xy(self, p: Sequence[float], margin: float = 0.0) -> bool:
        """True when (x, y) lies inside the interior shrunk by ``margin``."""
        x0, y0, x1, y1 = self.rect
        return x0 + margin <= p[0] <= x1 - margin and y0 + margin <= p[1] <= y1 - margin


@dataclass
class Scan:
    """A database scan position: world centre, scan-frame rotation about z (deg), room and storey."""

    index: int
    center: np.ndarray
    theta_deg: float
    room: int
    floor: int

    @property
    def scan_id(self) -> str:
        """Three-digit scan id as in InLoc ('000')."""
        return f"{self.index:03d}"

    @property
    def floor_name(self) -> str:
        """Storey label ('FL1', 'FL2')."""
        return f"FL{self.floor + 1}"

    @property
    def P_after(self) -> np.ndarray:
        """4 x 4 scan -> world transform (rotation about z by theta, translation = scan centre)."""
        t = math.radians(self.theta_deg)
        P = np.eye(4)
        P[:3, :3] = [[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]]
        P[:3, 3] = self.center
        return P


@dataclass
class Scene:
    """A procedural building: boxes, textures, lamps, rooms, scan positions (world frame z up, metres)."""

    seed: int
    size: str
    boxes: list[Box]
    bank: T.TextureBank
    lamps: list[Lamp]
    rooms: list[Room]
    scans: list[Scan] = field(default_factory=list)
    _mips: list[np.ndarray] | None = field(default=None, repr=False)
    _compiled: CompiledScene | None = field(default=None, repr=False)

    def mips(self) -> list[np.ndarray]:
        """Mip pyramid of the texture bank (built once)."""
        if self._mips is None:
            self._mips = T.mip_pyramid(self.bank.stack())
        return self._mips

    def compile(self, boxes: Sequence[Box] | None = None) -> CompiledScene:
        """Renderable arrays for ``boxes`` (default: the database-time building; cached)."""
        if boxes is None:
            if self._compiled is None:
                self._compiled = CompiledScene(self.boxes, self.mips(), self.lamps, SURFACE_WEAR)
            return self._compiled
        return CompiledScene(boxes, self.mips(), self.lamps, SURFACE_WEAR)

    def room_at(self, p: Sequence[float]) -> int:
        """Index of the room whose interior contains point p (x, y, z), -1 if none."""
        for r in self.rooms:
            if r.contains_xy(p) and r.z0 <= p[2] <= r.z0 + CEILING:
                return r.index
        return -1

    def is_free(self, p: Sequence[float], boxes: Sequence[Box] | None = None, clearance: float = 0.35) -> bool:
        """True when p is inside a room, >= clearance from walls and from every box (in xy)."""
        ri = self.room_at(p)
        if ri < 0 or not self.rooms[ri].contains_xy(p, margin=max(clearance, 0.45)):
            return False
        lo, hi = self._obstacles(self.boxes if boxes is None else boxes)
        p = np.asarray(p, dtype=np.float64)
        near = ((lo[:, :2] - clearance <= p[:2]).all(1) & (p[:2] <= hi[:, :2] + clearance).all(1)
                & (lo[:, 2] - 0.3 <= p[2]) & (p[2] <= hi[:, 2] + 2.0))
        return not bool(near.any())

    def _obstacles(self, boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) arrays of the furniture-like boxes of a box list (cached by list identity)."""
        cache = self.__dict__.setdefault("_obst_cache", {})
        key = id(boxes)
        if key not in cache or cache[key][0] is not boxes:
            sel = [b for b in boxes if b.label not in ("floor", "ceiling", "wall", "lamp")]
            lo = np.array([b.lo for b in sel]).reshape(-1, 3)
            hi = np.array([b.hi for b in sel]).reshape(-1, 3)
            cache[key] = (boxes, lo, hi)
        return cache[key][1], cache[key][2]

    def to_json(self) -> dict:
        """JSON-able description of rooms, scans and boxes (textures by name)."""
        return {
            "world_frame": "metres, z up; storey k floor at z = 3k",
            "rooms": [asdict(r) for r in self.rooms],
            "scans": [{"id": s.scan_id, "floor": s.floor_name, "center": [round(float(v), 6) for v in s.center],
                       "theta_deg": s.theta_deg, "room": s.room} for s in self.scans],
            "boxes": [{"lo": [round(float(v), 6) for v in b.lo], "hi": [round(float(v), 6) for v in b.hi],
                       "kind": b.kind, "room": b.room, "label": b.label,
                       "textures": [self.bank.names[f.tex] for f in b.faces]} for b in self.boxes],
        }


# ============================================================================ textures / themes
_PASTELS = ["#e8e4d8", "#dfe6e9", "#f0e6d2", "#d9e4dd", "#e6dada", "#d6dce8", "#ece8e1"]


class _Materials:
    """All surface materials of one building, created once (so identical furniture repeats exactly)."""

    def __init__(self, bank: T.TextureBank, rng: np.random.Generator) -> None:
        H = T.hexcol
        b = bank
        self.rng = rng
        self.white = Surface(b.add("paint_white", lambda: T.plain_texture(rng, H("#efeee9"), 0.015)), (2.0, 2.0))
        self.jamb = self.white
        cols = list(rng.permutation(_PASTELS))
        self.walls = [
            Surface(b.add("wall_plain0", lambda: T.plain_texture(rng, H(cols[0]), 0.02)), (2.0, 2.0)),
            Surface(b.add("wall_stripes", lambda: T.stripes_texture(rng, H(cols[1]), H("#b9c4c9"), 12)), (3.0, 3.0)),
            # 24 x 12 bricks of random tone per 2.7 m tile: repetitive, but not a 0.9 m grating
            Surface(b.add("wall_brick", lambda: T.brick_texture(rng, H("#9c5b44"), H("#cfc8bc"), 24, 12)),
                    (2.7, 2.7)),
            Surface(b.add("wall_plaster", lambda: T.noise_texture(rng, H(cols[2]), H("#b8b0a0"), 0.22)), (2.5, 2.5)),
            Surface(b.add("wall_plain1", lambda: T.plain_texture(rng, H(cols[3]), 0.03)), (2.0, 2.0)),
            Surface(b.add("wall_stripes2", lambda: T.stripes_texture(rng, H("#e9e1cf"), H(cols[4]), 16, True)),
                    (2.0, 2.0)),
        ]
        self.floors = [
            Surface(b.add("floor_tiles", lambda: T.tiles_texture(rng, H("#c9c3b6"), H("#6e6a63"), 4)), (2.0, 2.0)),
            Surface(b.add("floor_wood", lambda: T.wood_texture(rng, H("#a0703f"), H("#6b4423"), 8)), (1.6, 1.6)),
            Surface(b.add("floor_carpet", lambda: T.noise_texture(rng, H("#5d6b7a"), H("#2f3a45"), 0.35, 1.2)),
                    (1.0, 1.0)),
            Surface(b.add("floor_checker", lambda: T.tiles_texture(rng, H("#d8d4cc"), H("#8a847a"), 2, 0.02, 0.25)),
                    (1.2, 1.2)),
            Surface(b.add("floor_concrete", lambda: T.noise_texture(rng, H("#9a9a94"), H("#6c6c66"), 0.3)), (3.0, 3.0)),
        ]
        self.ceiling = Surface(b.add("ceiling_panels", lambda: T.tiles_texture(rng, H("#e4e4e0"), H("#a8a8a4"), 2,
                                                                                0.03, 0.02)), (1.2, 1.2))
        self.wood = Surface(b.add("wood", lambda: T.wood_texture(rng, H("#b78852"), H("#7a5230"), 5)), (1.0, 1.0))
        self.dark_wood = Surface(b.add("wood_dark", lambda: T.wood_texture(rng, H("#6a4a32"), H("#3b281b"), 7)),
                                 (0.8, 0.8))
        self.metal = Surface(b.add("metal", lambda: T.noise_texture(rng, H("#9aa0a6"), H("#6d7378"), 0.15, 3.0)),
                             (1.0, 1.0))
        self.laminate = Surface(b.add("laminate", lambda: T.noise_texture(rng, H("#e8e6e0"), H("#c9c6bd"), 0.2, 1.5)),
                                (1.0, 1.0))
        self.fabric = Surface(b.add("fabric", lambda: T.noise_texture(rng, H("#3d5a80"), H("#1d2d44"), 0.4, 0.8)),
                              (0.5, 0.5))
        self.black = Surface(b.add("plastic_black", lambda: T.noise_texture(rng, H("#2a2a2c"), H("#111113"), 0.2)),
                             (1.0, 1.0))
        self.book = Surface(b.add("book", lambda: T.stripes_texture(rng, H("#d0cfc8"), H("#8a8676"), 3, False)),
                            (0.3, 0.3))
        self.cardboard = Surface(b.add("cardboard", lambda: T.noise_texture(rng, H("#b48a5a"), H("#8c6a42"), 0.25)),
                                 (0.6, 0.6))
        self.leaves = Surface(b.add("leaves", lambda: T.noise_texture(rng, H("#4f8a3c"), H("#1f3f18"), 0.6, 1.0)),
                              (0.4, 0.4))
        self.lamp = Surface(b.add("lamp", lambda: T.plain_texture(rng, H("#ffffff"), 0.0)), None, (1.8, 1.8, 1.7))
        self.whiteboard = Surface(b.add("whiteboard", lambda: T.plain_texture(rng, H("#f4f6f6"), 0.01)), None)
        self.clothes = [Surface(b.add(f"clothes{i}", lambda c=c: T.noise_texture(rng, H(c), H("#202020"), 0.3, 1.0)),
                                (0.5, 0.5)) for i, c in enumerate(["#8b2f2f", "#2f5d8b", "#3f6b3f"])]
        self.skin = Surface(b.add("skin", lambda: T.noise_texture(rng, H("#d8a888"), H("#a87858"), 0.2)), (0.3, 0.3))
        self.posters = [Surface(b.add(f"poster{i}", lambda: T.poster_texture(rng)), None) for i in range(8)]
        self.photos: list[tuple[Surface, float]] = []
        for name in T.PHOTO_NAMES:
            img, aspect = T.load_photo(name, bank.size)
            self.photos.append((Surface(b.add(f"photo_{name}", lambda img=img: img), None), aspect))
        self.screen = self.photos[[n for n in T.PHOTO_NAMES].index("page")][0]
        self.book_tints = [tuple(float(v) for v in rng.uniform(0.25, 1.15, 3)) for _ in range(12)]


def _faces(front: Surface, rest: Surface, front_face: int) -> tuple[Surface, ...]:
    """Six face materials: ``front`` on face index ``front_face``, ``rest`` elsewhere."""
    return tuple(front if i == front_face else rest for i in range(6))


# ============================================================================ furniture
@dataclass
class _Slot:
    """Footprint against a wall: rectangle (x0, y0, x1, y1), front face index, along-wall axis."""

    rect: tuple[float, float, float, float]
    front: int  # face index pointing into the room (0..3)


def _local_boxes(slot: _Slot, z0: float, parts: list[tuple[float, float, float, float, float, float, tuple]]
                 ) -> list[tuple[np.ndarray, np.ndarray, tuple]]:
    """Map parts given in slot-local coords (a along wall, d from wall into room, z) to world boxes.

    Each part: (a0, a1, d0, d1, z0, z1, faces_local) where faces_local is a 6-tuple in local order
    (-a, +a, back(wall side), front(room side), bottom, top); a, d are fractions of the slot."""
    x0, y0, x1, y1 = slot.rect
    out = []
    for a0, a1, d0, d1, za, zb, fl in parts:
        back, front = fl[2], fl[3]
        if slot.front == 3:  # against the south wall (y0), front +y, a along +x
            lo = (x0 + a0 * (x1 - x0), y0 + d0 * (y1 - y0), z0 + za)
            hi = (x0 + a1 * (x1 - x0), y0 + d1 * (y1 - y0), z0 + zb)
            faces = (fl[0], fl[1], back, front, fl[4], fl[5])
        elif slot.front == 2:  # north wall (y1), front -y, a along -x
            lo = (x1 - a1 * (x1 - x0), y1 - d1 * (y1 - y0), z0 + za)
            hi = (x1 - a0 * (x1 - x0), y1 - d0 * (y1 - y0), z0 + zb)
            faces = (fl[1], fl[0], front, back, fl[4], fl[5])
        elif slot.front == 1:  # west wall (x0), front +x, a along -y
            lo = (x0 + d0 * (x1 - x0), y1 - a1 * (y1 - y0), z0 + za)
            hi = (x0 + d1 * (x1 - x0), y1 - a0 * (y1 - y0), z0 + zb)
            faces = (back, front, fl[1], fl[0], fl[4], fl[5])
        else:  # east wall (x1), front -x, a along +y
            lo = (x1 - d1 * (x1 - x0), y0 + a0 * (y1 - y0), z0 + za)
            hi = (x1 - d0 * (x1 - x0), y0 + a1 * (y1 - y0), z0 + zb)
            faces = (front, back, fl[0], fl[1], fl[4], fl[5])
        out.append((np.array(lo), np.array(hi), faces))
    return out


@dataclass(frozen=True)
class _Model:
    """A furniture model: kind, width along the wall, depth, height (metres); shared by all instances."""

    kind: str
    width: float
    depth: float
    height: float


def _model_parts(m: _Model, M: _Materials, rng: np.random.Generator) -> list[tuple]:
    """Parts of a furniture model in slot-local fractional coordinates (see ``_local_boxes``)."""
    W, D, Hh = m.width, m.depth, m.height
    s6 = lambda s: (s,) * 6  # noqa: E731
    if m.kind == "shelf":
        t = 0.025 / W
        td = 0.02 / D
        parts = [(0, t, 0, 1, 0, Hh, s6(M.wood)), (1 - t, 1, 0, 1, 0, Hh, s6(M.wood)),
                 (t, 1 - t, 0, td, 0, Hh, s6(M.dark_wood)), (0, 1, 0, 1, Hh - 0.025, Hh, s6(M.wood))]
        n_sh = 5
        for k in range(n_sh):
            z = 0.05 + k * (Hh - 0.1) / n_sh
            parts.append((t, 1 - t, td, 1, z, z + 0.025, s6(M.wood)))
            if k == 0 and rng.random() < 0.3:
                continue
            a = t + 0.01
            while a < 1 - t - 0.05:
                bw = rng.uniform(0.02, 0.06) / W
                if rng.random() < 0.12:
                    a += rng.uniform(0.05, 0.2) / W
                    continue
                bh = rng.uniform(0.16, min(0.3, (Hh - 0.1) / n_sh - 0.05))
                bd = rng.uniform(0.6, 0.95)
                tint = M.book_tints[int(rng.integers(len(M.book_tints)))]
                bs = Surface(M.book.tex, M.book.period, tint)
                parts.append((a, min(a + bw, 1 - t), td, td + bd * (1 - td), z + 0.025, z + 0.025 + bh, s6(bs)))
                a += bw + 0.002 / W
        return parts
    if m.kind == "cabinet":
        door = M.dark_wood
        parts = [(0, 1, 0, 1, 0.05, Hh, (M.wood, M.wood, M.wood, M.wood, M.wood, M.laminate)),
                 (0.02, 0.49, 0.98, 1.0, 0.1, Hh - 0.05, s6(door)), (0.51, 0.98, 0.98, 1.0, 0.1, Hh - 0.05, s6(door)),
                 (0.43, 0.47, 0.99, 1.02, Hh * 0.6, Hh * 0.8, s6(M.metal)),
                 (0.53, 0.57, 0.99, 1.02, Hh * 0.6, Hh * 0.8, s6(M.metal))]
        return parts
    if m.kind == "desk":
        lw, ld = 0.05 / W, 0.05 / D
        top = 0.72
        parts = [(0, 1, 0, 1, top, top + 0.03, s6(M.laminate))]
        for a0, d0 in ((0, 0), (1 - lw, 0), (0, 1 - ld), (1 - lw, 1 - ld)):
            parts.append((a0, a0 + lw, d0, d0 + ld, 0, top, s6(M.metal)))
        parts += [(0.3, 0.7, 0.08, 0.12, top + 0.03 + 0.08, top + 0.03 + 0.42,
                   (M.black, M.black, M.black, M.screen, M.black, M.black)),
                  (0.47, 0.53, 0.05, 0.1, top + 0.03, top + 0.03 + 0.1, s6(M.black)),
                  (0.3, 0.7, 0.45, 0.65, top + 0.03, top + 0.05, s6(M.black))]
        return parts
    if m.kind == "plant":
        return [(0.3, 0.7, 0.3, 0.7, 0, 0.35, s6(M.cardboard)), (0.1, 0.9, 0.1, 0.9, 0.35, Hh, s6(M.leaves))]
    raise ValueError(m.kind)


def _chair_boxes(cx: float, cy: float, z0: float, facing: int, M: _Materials) -> list[tuple[np.ndarray, np.ndarray,
                                                                                             tuple]]:
    """A chair centred at (cx, cy), back on the side opposite to ``facing`` (face index 0..3)."""
    s, h = 0.44, 0.45
    out = [(np.array([cx - s / 2, cy - s / 2, z0 + h]), np.array([cx + s / 2, cy + s / 2, z0 + h + 0.06]),
            (M.fabric,) * 6)]
    for dx in (-1, 1):
        for dy in (-1, 1):
            lx, ly = cx + dx * (s / 2 - 0.03), cy + dy * (s / 2 - 0.03)
            out.append((np.array([lx - 0.02, ly - 0.02, z0]), np.array([lx + 0.02, ly + 0.02, z0 + h]),
                        (M.metal,) * 6))
    axis, sign = facing // 2, (1 if facing % 2 else -1)  # chair faces +/- axis; back on the other side
    lo = np.array([cx - s / 2, cy - s / 2, z0 + h + 0.06])
    hi = np.array([cx + s / 2, cy + s / 2, z0 + h + 0.5])
    if sign > 0:
        hi[axis] = lo[axis] + 0.06
    else:
        lo[axis] = hi[axis] - 0.06
    out.append((lo, hi, (M.fabric,) * 6))
    return out


# ============================================================================ building
class _Builder:
    """Accumulates boxes of one building."""

    def __init__(self, M: _Materials) -> None:
        self.M = M
        self.boxes: list[Box] = []
        self.group = 0

    def add(self, lo, hi, faces, kind: str = "static", room: int = -1, label: str = "", group: int = -1) -> None:
        """Append a box (silently dropping degenerate ones)."""
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        if (hi - lo > 1e-4).all():
            self.boxes.append(Box(lo, hi, tuple(faces) if len(faces) == 6 else tuple(faces) * 6,
                                  kind, room, group, label))

    def new_group(self) -> int:
        """A fresh furniture group id."""
        self.group += 1
        return self.group

    def wall(self, axis: int, line: float, a0: float, a1: float, z0: float, doors: Sequence[tuple[float, float]],
             mat_neg: Surface, mat_pos: Surface) -> None:
        """Wall centred on coordinate ``line`` of ``axis`` (0: x = line, 1: y = line), spanning [a0, a1]
        along the other axis, with door openings [d0, d1]; ``mat_neg``/``mat_pos`` face -axis/+axis."""
        h = WALL / 2
        J = self.M.jamb
        cuts = [a0 - h] + [v for d in sorted(doors) for v in d] + [a1 + h]
        spans = [(cuts[i], cuts[i + 1], 0.0, CEILING) for i in range(0, len(cuts), 2)]
        spans += [(d0, d1, DOOR_H, CEILING) for d0, d1 in doors]
        for s0, s1, zb, zt in spans:
            if axis == 1:
                lo, hi = (s0, line - h, z0 + zb), (s1, line + h, z0 + zt)
                faces = (J, J, mat_neg, mat_pos, J, J)
            else:
                lo, hi = (line - h, s0, z0 + zb), (line + h, s1, z0 + zt)
                faces = (mat_neg, mat_pos, J, J, J, J)
            self.add(lo, hi, faces, label="wall")


def _door_span(rng: np.random.Generator, a0: float, a1: float) -> tuple[float, float]:
    """A door opening inside [a0, a1] (metres along the wall)."""
    c = rng.uniform(a0 + 0.5 + DOOR_W / 2, a1 - 0.5 - DOOR_W / 2)
    return c - DOOR_W / 2, c + DOOR_W / 2


def _rect_overlap(a: Sequence[float], b: Sequence[float], gap: float = 0.0) -> bool:
    """True when rectangles (x0, y0, x1, y1) overlap (with ``gap`` clearance)."""
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _slot_rect(room: Room, front: int, pos: float, width: float, depth: float) -> tuple[float, float, float, float]:
    """Footprint of an item of ``width`` x ``depth`` against the wall opposite to ``front`` at ``pos`` along it."""
    x0, y0, x1, y1 = room.rect
    if front == 3:
        return (x0 + pos, y0, x0 + pos + width, y0 + depth)
    if front == 2:
        return (x1 - pos - width, y1 - depth, x1 - pos, y1)
    if front == 1:
        return (x0, y1 - pos - width, x0 + depth, y1 - pos)
    return (x1 - depth, y0 + pos, x1, y0 + pos + width)


def _furnish(B: _Builder, room: Room, rng: np.random.Generator, models: dict[str, _Model],
             keepout: list[tuple[float, float, float, float]], layout: list | None = None) -> list:
    """Place furniture and wall decorations in a room; returns the layout (replayable for twin rooms)."""
    M = B.M
    x0, y0, x1, y1 = room.rect
    z0 = room.z0
    wall_len = {3: x1 - x0, 2: x1 - x0, 1: y1 - y0, 0: y1 - y0}
    placed: list[tuple[float, float, float, float]] = []
    tall: list[tuple[int, float, float]] = []  # (front, pos0, pos1) of items higher than 1.25 m
    replay = layout is not None
    items = layout if replay else []
    if not replay:
        wishlist = ["shelf", "desk", "cabinet", "shelf", "desk", "plant", "cabinet", "desk"]
        if room.kind == "corridor":
            wishlist = ["cabinet", "plant", "shelf", "cabinet", "plant", "cabinet"]
        for kind in wishlist[: int(rng.integers(4, len(wishlist) + 1))]:
            m = models[kind]
            for _ in range(30):
                front = int(rng.integers(4))
                if room.kind == "corridor" and front in (0, 1):
                    continue
                if wall_len[front] < m.width + 0.2:
                    continue
                pos = float(rng.uniform(0.05, wall_len[front] - m.width - 0.05))
                r = _slot_rect(room, front, pos, m.width, m.depth)
                if kind == "desk":  # room for the chair in front
                    r_ext = _slot_rect(room, front, pos, m.width, m.depth + 0.6)
                else:
                    r_ext = r
                if any(_rect_overlap(r_ext, q, 0.05) for q in placed + keepout):
                    continue
                items.append(("furniture", kind, front, pos))
                placed.append(r_ext)
                break
        if room.kind == "room" and (x1 - x0) > 3.3 and (y1 - y0) > 3.3 and rng.random() < 0.5:
            cxy = ((x0 + x1) / 2 + rng.uniform(-0.3, 0.3), (y0 + y1) / 2 + rng.uniform(-0.3, 0.3))
            r = (cxy[0] - 0.8, cxy[1] - 0.45, cxy[0] + 0.8, cxy[1] + 0.45)
            r_ext = (r[0] - 0.5, r[1] - 0.6, r[2] + 0.5, r[3] + 0.6)
            if not any(_rect_overlap(r_ext, q) for q in placed + keepout):
                items.append(("table", cxy))
                placed.append(r_ext)
        # wall decorations
        for _ in range(int(rng.integers(2, 5))):
            kind = rng.choice(["poster", "painting", "painting", "whiteboard"])
            items.append(("decor", str(kind), int(rng.integers(4)), float(rng.random()), int(rng.integers(1 << 30))))
    # ---- realise the layout
    deco_used: list[tuple[int, float, float]] = []
    for it in items:
        if it[0] == "furniture":
            _, kind, front, pos = it
            m = models[kind]
            g = B.new_group()
            slot = _Slot(_slot_rect(room, front, pos, m.width, m.depth), front)
            parts = _model_parts(m, M, _rng(hash_str(kind), 7, int(pos * 1000), front))
            for lo, hi, faces in _local_boxes(slot, z0, parts):
                B.add(lo, hi, faces, "movable" if kind == "plant" else "static", room.index, kind, g)
            if m.height > 1.25:
                tall.append((front, pos, pos + m.width))
            if kind == "desk":
                cr = _slot_rect(room, front, pos + m.width / 2 - 0.25, 0.5, m.depth + 0.45)
                # chair sits in the strip in front of the desk
                if front in (2, 3):
                    cx, cy = (cr[0] + cr[2]) / 2, (cr[3] - 0.22 if front == 3 else cr[1] + 0.22)
                else:
                    cx, cy = (cr[2] - 0.22 if front == 1 else cr[0] + 0.22), (cr[1] + cr[3]) / 2
                g = B.new_group()
                face_to_wall = front ^ 1  # chair faces the wall
                for lo, hi, faces in _chair_boxes(cx, cy, z0, face_to_wall, M):
                    B.add(lo, hi, faces, "movable", room.index, "chair", g)
            if not replay:
                placed.append(slot.rect)
        elif it[0] == "table":
            cx, cy = it[1]
            g = B.new_group()
            B.add((cx - 0.8, cy - 0.45, z0 + 0.72), (cx + 0.8, cy + 0.45, z0 + 0.76), (M.wood,), "static",
                  room.index, "table", g)
            for dx in (-0.72, 0.72):
                for dy in (-0.37, 0.37):
                    B.add((cx + dx - 0.03, cy + dy - 0.03, z0), (cx + dx + 0.03, cy + dy + 0.03, z0 + 0.72),
                          (M.metal,), "static", room.index, "table", g)
            for k, (ox, oy, facing) in enumerate([(-0.4, -0.75, 3), (0.4, -0.75, 3), (-0.4, 0.75, 2),
                                                  (0.4, 0.75, 2)]):
                g = B.new_group()
                for lo, hi, faces in _chair_boxes(cx + ox, cy + oy, z0, facing, M):
                    B.add(lo, hi, faces, "movable", room.index, "chair", g)
        elif it[0] == "decor":
            _, kind, front, frac, sub = it
            r2 = _rng(sub, 11, room.index if not replay else 0)
            if kind == "painting":
                surf, aspect = M.photos[int(r2.integers(len(M.photos)))]
                h = float(r2.uniform(0.5, 0.8))
                w = min(h * aspect, 1.3)
                h = w / aspect
                zc = 1.65
            elif kind == "poster":
                surf = M.posters[int(r2.integers(len(M.posters)))]
                w, h, zc = 0.55, 0.75, 1.55
            else:
                surf, w, h, zc = M.whiteboard, 1.5, 1.0, 1.5
            L = wall_len[front]
            if L < w + 0.4:
                continue
            pos = 0.2 + frac * (L - w - 0.4)
            if any(f == front and not (pos + w + 0.1 <= a or b + 0.1 <= pos) for f, a, b in tall + deco_used):
                continue
            if any(_rect_overlap(_slot_rect(room, front, pos, w, 0.03), q) for q in keepout):
                continue
            deco_used.append((front, pos, pos + w))
            slot = _Slot(_slot_rect(room, front, pos, w, 0.02), front)
            frame = M.black if kind != "poster" else M.white
            for lo, hi, faces in _local_boxes(slot, z0, [(0, 1, 0, 1, zc - h / 2, zc + h / 2,
                                                          (frame, frame, frame, surf, frame, frame))]):
                B.add(lo, hi, faces, "static", room.index, kind)
    return items


def hash_str(s: str) -> int:
    """Stable 31-bit hash of a string (Python's hash() is salted per process)."""
    return int(hashlib.sha1(s.encode()).hexdigest()[:7], 16)


def build_scene(seed: int, size: str = "tiny") -> Scene:
    """Procedural building for (seed, size): rooms along a corridor, furniture, textures, lamps, scans."""
    cfg = SIZES[size]
    rng = _rng(seed, 1)
    bank = T.TextureBank()
    M = _Materials(bank, _rng(seed, 2))
    B = _Builder(M)
    rooms: list[Room] = []
    lamps: list[Lamp] = []
    scans: list[Scan] = []
    models = {
        "shelf": _Model("shelf", float(rng.uniform(0.8, 1.1)), 0.35, float(rng.uniform(1.8, 2.1))),
        "cabinet": _Model("cabinet", float(rng.uniform(0.8, 1.2)), 0.45, float(rng.uniform(0.75, 1.05))),
        "desk": _Model("desk", float(rng.uniform(1.2, 1.5)), 0.7, 0.75),
        "plant": _Model("plant", 0.45, 0.45, float(rng.uniform(0.9, 1.4))),
    }
    n_themes = 4
    themes = [(M.walls[i % len(M.walls)], M.floors[(i * 2 + 1) % len(M.floors)]) for i in
              rng.permutation(max(n_themes, len(M.walls)))[:n_themes]]
    corridor_theme = (M.white, M.floors[0])
    h = WALL / 2
    for fl in range(cfg.floors):
        z0 = fl * STOREY
        nn, ns = cfg.rooms_north, cfg.rooms_south
        wn = rng.uniform(3.6, 4.8, nn)
        twin = nn >= 3
        if twin:
            wn[2] = wn[1]
        xs_n = np.concatenate([[0.0], np.cumsum(wn)])
        Lx = float(xs_n[-1])
        xs_s = np.concatenate([[0.0], np.cumsum(rng.dirichlet(np.ones(ns) * 6) * Lx)]) if ns else np.array([0.0, Lx])
        dn, ds = float(rng.uniform(4.0, 5.0)), float(rng.uniform(3.6, 4.5))
        cw = CORRIDOR_W
        room_defs: list[tuple[str, tuple[float, float, float, float], str]] = []
        corridor = Room(len(rooms), f"FL{fl + 1}_corridor", fl, (h, h, Lx - h, cw - h), "corridor", -1)
        rooms.append(corridor)
        north, south = [], []
        order = [int(v) for v in np.concatenate([rng.permutation(n_themes) for _ in range(4)])]
        for i in range(nn):
            r = Room(len(rooms), f"FL{fl + 1}_N{i}", fl, (xs_n[i] + h, cw + h, xs_n[i + 1] - h, cw + dn - h),
                     theme=order[i])
            if twin and i == 2:
                r.theme, r.twin_of = north[1].theme, north[1].index
            rooms.append(r)
            north.append(r)
        for i in range(ns):
            r = Room(len(rooms), f"FL{fl + 1}_S{i}", fl, (xs_s[i] + h, -ds + h, xs_s[i + 1] - h, -h),
                     theme=order[nn + i])
            rooms.append(r)
            south.append(r)
        del room_defs
        mat = lambda r: corridor_theme[0] if r.kind == "corridor" else themes[r.theme][0]  # noqa: E731
        # corridor north wall, one piece per north room, each with a door
        keep: dict[int, list] = {r.index: [] for r in rooms}
        door_off = None
        for i, r in enumerate(north):
            a0, a1 = xs_n[i], xs_n[i + 1]
            d = _door_span(rng, a0 + h, a1 - h)
            if twin and i == 2 and door_off is not None:
                d = (a0 + door_off[0], a0 + door_off[1])
            if twin and i == 1:
                door_off = (d[0] - a0, d[1] - a0)
            B.wall(1, cw, a0, a1, z0, [d], mat(corridor), mat(r))
            keep[r.index].append((d[0] - 0.35, cw, d[1] + 0.35, cw + 1.3))
            keep[corridor.index].append((d[0] - 0.35, cw - 1.3, d[1] + 0.35, cw))
            B.wall(1, cw + dn, a0, a1, z0, [], mat(r), M.jamb)
        # corridor south wall
        if ns:
            for i, r in enumerate(south):
                a0, a1 = xs_s[i], xs_s[i + 1]
                d = _door_span(rng, a0 + h, a1 - h)
                B.wall(1, 0.0, a0, a1, z0, [d], mat(r), mat(corridor))
                keep[r.index].append((d[0] - 0.35, -1.3, d[1] + 0.35, 0.0))
                keep[corridor.index].append((d[0] - 0.35, 0.0, d[1] + 0.35, 1.3))
                B.wall(1, -ds, a0, a1, z0, [], M.jamb, mat(r))
        else:
            B.wall(1, 0.0, 0.0, Lx, z0, [], M.jamb, mat(corridor))
        # partitions between north rooms (sometimes with a connecting door) and between south rooms
        for i in range(1, nn):
            doors = []
            if rng.random() < 0.4 or nn == 2:
                doors = [_door_span(rng, cw + dn * 0.4, cw + dn)]
                keep[north[i - 1].index].append((xs_n[i] - 1.3, doors[0][0] - 0.35, xs_n[i], doors[0][1] + 0.35))
                keep[north[i].index].append((xs_n[i], doors[0][0] - 0.35, xs_n[i] + 1.3, doors[0][1] + 0.35))
            B.wall(0, xs_n[i], cw, cw + dn, z0, doors, mat(north[i - 1]), mat(north[i]))
        for i in range(1, ns):
            B.wall(0, xs_s[i], -ds, 0.0, z0, [], mat(south[i - 1]), mat(south[i]))
        # end walls (west x = 0, east x = Lx), one piece per room they bound
        for x, side in ((0.0, 0), (Lx, 1)):
            parts = [(corridor, 0.0, cw)] + [(north[0 if side == 0 else -1], cw, cw + dn)]
            if ns:
                parts.append((south[0 if side == 0 else -1], -ds, 0.0))
            for r, a0, a1 in parts:
                B.wall(0, x, a0, a1, z0, [], M.jamb if side == 0 else mat(r), mat(r) if side == 0 else M.jamb)
        # floors, ceilings and lamps per room (extended to the wall centre lines)
        for r in [corridor] + north + south:
            fx0, fy0, fx1, fy1 = r.rect[0] - h, r.rect[1] - h, r.rect[2] + h, r.rect[3] + h
            fmat = corridor_theme[1] if r.kind == "corridor" else themes[r.theme][1]
            B.add((fx0, fy0, z0 - 0.1), (fx1, fy1, z0), (fmat,), room=r.index, label="floor")
            B.add((fx0, fy0, z0 + CEILING), (fx1, fy1, z0 + CEILING + 0.1), (M.ceiling,), room=r.index,
                  label="ceiling")
            x0, y0, x1, y1 = r.rect
            n_l = max(1, int(round((x1 - x0) / 4.0))) if r.kind == "corridor" else 1
            for k in range(n_l):
                sx0, sx1 = x0 + (x1 - x0) * k / n_l, x0 + (x1 - x0) * (k + 1) / n_l
                cx, cy = (sx0 + sx1) / 2, (y0 + y1) / 2
                lamps.append(Lamp(np.array([cx, cy, z0 + CEILING - 0.1]),
                                  (sx0 - h - 1e-3 if k == 0 else sx0, y0 - h - 1e-3,
                                   sx1 + h + 1e-3 if k == n_l - 1 else sx1, y1 + h + 1e-3),
                                  (z0 - 0.01, z0 + CEILING + 0.01)))
                if r.kind == "corridor":
                    B.add((cx - 0.6, cy - 0.15, z0 + CEILING - 0.03), (cx + 0.6, cy + 0.15, z0 + CEILING),
                          (M.lamp,), room=r.index, label="lamp")
                else:
                    B.add((cx - 0.3, cy - 0.6, z0 + CEILING - 0.03), (cx + 0.3, cy + 0.6, z0 + CEILING),
                          (M.lamp,), room=r.index, label="lamp")
        # furniture
        layouts: dict[int, list] = {}
        for r in [corridor] + north + south:
            lay = layouts.get(r.twin_of) if r.twin_of >= 0 else None
            layouts[r.index] = _furnish(B, r, _rng(seed, 3, r.index), models, keep[r.index], lay)
    scene = Scene(seed, size, B.boxes, bank, lamps, rooms)
    # scan positions: one per room near its centre, corridor scans spread along it
    srng = _rng(seed, 4)
    for r in rooms:
        x0, y0, x1, y1 = r.rect
        n_s = cfg.corridor_scans if r.kind == "corridor" else 1
        for k in range(n_s):
            cx = x0 + (x1 - x0) * (k + 0.5) / n_s
            cy = (y0 + y1) / 2
            for attempt in range(200):
                jit = 0.15 + 0.01 * attempt
                p = np.array([cx + srng.uniform(-jit, jit) * (1 if r.kind == "room" else 0.5),
                              cy + srng.uniform(-jit, jit) * (1 if r.kind == "room" else 0.2),
                              r.z0 + SCAN_HEIGHT + srng.uniform(-0.1, 0.1)])
                if scene.is_free(p, clearance=0.4):
                    scans.append(Scan(len(scans), p, float(srng.integers(0, 360)), r.index, r.floor))
                    break
            else:
                log.warning("no free scan position in %s", r.name)
    scene.scans = scans
    log.info("building seed %d (%s): %d rooms, %d boxes, %d textures, %d scans", seed, size, len(rooms),
             len(B.boxes), len(bank.images), len(scans))
    return scene


# ============================================================================ time changes / occluders
def scene_variant(scene: Scene, rng: np.random.Generator, move_prob: float = 0.5, remove_prob: float = 0.12,
                  add_prob: float = 0.6) -> list[Box]:
    """Boxes of the building at another time: movable furniture moved/removed, objects added."""
    card = Surface(scene.bank.names.index("cardboard"), (0.6, 0.6))
    dark = Surface(scene.bank.names.index("plastic_black"), (1.0, 1.0))
    out: list[Box] = []
    groups: dict[int, list[Box]] = {}
    for b in scene.boxes:
        if b.kind == "movable":
            groups.setdefault(b.group, []).append(b)
        else:
            out.append(b)
    for g in sorted(groups):
        bs = groups[g]
        u = rng.random()
        if u < remove_prob:
            continue
        if u < remove_prob + move_prob:
            room = scene.rooms[bs[0].room]
            lo = np.min([b.lo for b in bs], 0)
            hi = np.max([b.hi for b in bs], 0)
            d = rng.uniform(-0.6, 0.6, 2)
            x0, y0, x1, y1 = room.rect
            d[0] = np.clip(d[0], x0 - lo[0] + 0.01, x1 - hi[0] - 0.01)
            d[1] = np.clip(d[1], y0 - lo[1] + 0.01, y1 - hi[1] - 0.01)
            out += [b.moved((d[0], d[1], 0.0)) for b in bs]
        else:
            out += bs
    for r in scene.rooms:
        if rng.random() < add_prob:
            x0, y0, x1, y1 = r.rect
            for _ in range(int(rng.integers(1, 3))):
                sx, sy, sz = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.6)
                px, py = rng.uniform(x0 + 0.1, x1 - sx - 0.1), rng.uniform(y0 + 0.1, y1 - sy - 0.1)
                faces = (card,) * 6 if rng.random() < 0.7 else (dark,) * 6
                out.append(Box((px, py, r.z0), (px + sx, py + sy, r.z0 + sz), faces, "added", r.index, -1, "box"))
    return out


def person_occluder(scene: Scene, pose: Pose, rng: np.random.Generator) -> list[Box]:
    """A person-like occluder (body + head boxes) standing 1-2 m in front of the camera."""
    C = pose.center
    fwd = pose.R[2].copy()
    fwd[2] = 0
    fwd /= max(np.linalg.norm(fwd), 1e-9)
    side = np.array([-fwd[1], fwd[0], 0.0])
    p = C + fwd * rng.uniform(1.0, 2.0) + side * rng.uniform(-0.5, 0.5)
    ri = scene.room_at(C)
    z0 = scene.rooms[ri].z0 if ri >= 0 else 0.0
    cl = scene.bank.names
    body = Surface(cl.index(f"clothes{int(rng.integers(3))}"), (0.5, 0.5))
    skin = Surface(cl.index("skin"), (0.3, 0.3))
    w, d = 0.46, 0.28
    return [Box((p[0] - w / 2, p[1] - d / 2, z0), (p[0] + w / 2, p[1] + d / 2, z0 + 1.5), (body,), "occluder",
                ri, -2, "person"),
            Box((p[0] - 0.11, p[1] - 0.11, z0 + 1.5), (p[0] + 0.11, p[1] + 0.11, z0 + 1.76), (skin,), "occluder",
                ri, -2, "person")]


# ============================================================================ appearance
@dataclass(frozen=True)
class Appearance:
    """Illumination plus image-level changes: per-channel gain, gamma, Gaussian noise (0..255), blur (px)."""

    name: str = "db"
    illumination: Illumination = Illumination()
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    noise: float = 0.0
    blur: float = 0.0


def random_appearance(rng: np.random.Generator) -> Appearance:
    """A random query-time appearance: day / overcast / evening / night-like lighting and camera effects."""
    kind = str(rng.choice(["day", "overcast", "evening", "night"]))
    az = rng.uniform(0, 2 * np.pi)
    if kind == "day":
        el = rng.uniform(0.6, 1.2)
        il = Illumination((math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)),
                          tuple(rng.uniform(0.4, 0.6, 3)), tuple(rng.uniform(0.35, 0.5, 3)),
                          tuple(rng.uniform(0.3, 0.55, 3)))
    elif kind == "overcast":
        il = Illumination((0.0, 0.0, 1.0), (0.15, 0.15, 0.16), tuple(np.full(3, rng.uniform(0.6, 0.8))),
                          (0.25, 0.25, 0.25))
    elif kind == "evening":
        el = rng.uniform(0.1, 0.35)
        il = Illumination((math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)),
                          (0.6, 0.38, 0.2), (0.3, 0.27, 0.25), (0.6, 0.45, 0.3))
    else:
        il = Illumination((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), tuple(rng.uniform(0.08, 0.15) * np.array([0.8, 0.9, 1.2])),
                          tuple(rng.uniform(0.7, 1.0) * np.array([1.0, 0.8, 0.55])), lamp_range=2.5)
    gain = tuple(float(v) for v in rng.uniform(0.85, 1.15, 3))
    gamma = float(rng.uniform(0.8, 1.25))
    noise = float(rng.choice([0.0, rng.uniform(1.0, 6.0)]))
    blur = float(rng.choice([0.0, 0.0, rng.uniform(0.5, 1.5)]))
    return Appearance(kind, il, gain, gamma, noise, blur)


def finish_image(rgb: np.ndarray, app: Appearance, rng: np.random.Generator | None = None) -> np.ndarray:
    """Linear 0..1 colour -> uint8 image with the appearance's gain, gamma, blur and noise."""
    img = np.clip(rgb * np.asarray(app.gain, np.float32), 0, 1)
    if app.gamma != 1.0:
        img = img ** np.float32(app.gamma)
    img = img * 255.0
    if app.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), app.blur)
    if app.noise > 0:
        rng = rng or np.random.default_rng(0)
        img = img + rng.standard_normal(img.shape).astype(np.float32) * app.noise
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# ============================================================================ rendering
def render(scene: Scene | CompiledScene, camera: Camera, pose: Pose, illumination: Illumination | None = None,
           boxes: Sequence[Box] | None = None, appearance: Appearance | None = None,
           rng: np.random.Generator | None = None, return_ids: bool = False):
    """Ray-cast a view -> (rgb uint8 H x W x 3, z-depth H x W metres NaN = none, world XYZ H x W x 3 [, box ids]).

    ``boxes`` renders another state of the building (e.g. ``scene_variant``); ``appearance`` adds
    image-level changes (its illumination is used unless ``illumination`` is given)."""
    cs = scene if isinstance(scene, CompiledScene) else scene.compile(boxes)
    app = appearance or Appearance()
    il = illumination or app.illumination
    ids, _, dirs = cast_rays(cs, camera, pose)
    rgb, depth, xyz = shade(cs, ids, dirs, pose.center, float(np.mean(camera.focal)), il)
    img = finish_image(rgb, app, rng)
    return (img, depth, xyz, ids) if return_ids else (img, depth, xyz)


# ============================================================================ records / correspondences
@dataclass
class View:
    """A rendered view kept in memory: name, camera, world-to-camera pose, z-depth, world XYZ (may be None)."""

    name: str
    camera: Camera
    pose: Pose
    depth: np.ndarray
    xyz: np.ndarray | None = None
    room: int = -1

    def world_xyz(self) -> np.ndarray:
        """H x W x 3 world points (NaN = none)."""
        if self.xyz is None:
            from localize.core.geometry import depth_to_world
            self.xyz = depth_to_world(self.depth, self.camera, self.pose)
        return self.xyz


def _view_depth(v: View | DbImage) -> tuple[np.ndarray, Pose]:
    """(z-depth map, world-to-camera pose) of a view record (pose fitted by PnP for InLoc cutouts)."""
    if isinstance(v, View):
        return v.depth, v.pose
    pose = v.pose
    if pose is None:
        from datasets.inloc import estimate_cutout_pose
        pose = estimate_cutout_pose(v)
    xyz = v.world_xyz()
    return (xyz.reshape(-1, 3) @ pose.R[2] + pose.t[2]).reshape(xyz.shape[:2]), pose


def gt_correspondences(a: View | DbImage, b: View | DbImage, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Dense ground-truth matches between two view records -> (uv_a N x 2, uv_b N x 2), COLMAP pixels.

    Points of A (its world XYZ) that project into B and agree with B's depth (occlusion check),
    sampled every ``step`` pixels of A. Works with ``View``, plain-folder and InLoc ``DbImage`` records."""
    depth_b, pose_b = _view_depth(b)
    return dense_correspondences(a.world_xyz(), b.camera, pose_b, depth_b, step=step)


def view_covisibility(a: View | DbImage, b: View | DbImage, step: int = 8) -> float:
    """Fraction of A's valid pixels visible in B (depth-checked)."""
    depth_b, pose_b = _view_depth(b)
    return covisibility(a.world_xyz(), b.camera, pose_b, depth_b, step=step)


# ============================================================================ dataset generation
@dataclass
class SyntheticDataset:
    """Paths and counts of a generated dataset."""

    root: Path
    seed: int
    size: str
    counts: dict[str, int]

    @property
    def db(self) -> Path:
        """Plain RGB-D database folder."""
        return self.root / "db"

    @property
    def inloc(self) -> Path:
        """InLoc-layout database root (contains cutouts/ and alignments/)."""
        return self.root / "inloc"

    @property
    def queries(self) -> Path:
        """Query folder (images/, queries_with_intrinsics.txt, poses_gt.txt, plain RGB-D files)."""
        return self.root / "queries"

    @property
    def query_list(self) -> Path:
        """Query list with intrinsics."""
        return self.root / "queries" / "queries_with_intrinsics.txt"

    @property
    def poses_gt(self) -> Path:
        """Ground-truth query poses (world-to-camera)."""
        return self.root / "queries" / "poses_gt.txt"

    @property
    def train(self) -> Path:
        """Plain RGB-D folder of the training renders."""
        return self.root / "train"

    @property
    def train_pairs(self) -> Path:
        """NCNet pair CSV (training split)."""
        return self.root / "pairs" / "train_pairs.csv"

    @property
    def val_pairs(self) -> Path:
        """NCNet pair CSV (validation split)."""
        return self.root / "pairs" / "val_pairs.csv"


def _params(seed: int, size: str, layouts: Sequence[str]) -> dict:
    """The parameters a manifest must match for a dataset to be reused."""
    return {"generator_version": GENERATOR_VERSION, "seed": int(seed), "size": size,
            "config": asdict(SIZES[size]), "layouts": sorted(layouts)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a generated dataset, or None if missing/unreadable."""
    p = Path(out_dir) / "manifest.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_complete(out_dir: str | Path, seed: int, size: str, layouts: Sequence[str] = ("rgbd", "inloc")) -> bool:
    """True when ``out_dir`` holds a finished dataset generated with these parameters."""
    m = read_manifest(out_dir)
    return bool(m) and m.get("params") == json.loads(json.dumps(_params(seed, size, layouts)))


def _db_views(scene: Scene, cfg: SizeConfig) -> Iterator[tuple[Scan, int, int, str, Camera, Pose]]:
    """Database cutouts: (scan, yaw, pitch, name, camera, pose) for every scan x yaw x pitch."""
    cam = cutout_camera(*cfg.db_size)
    for s in scene.scans:
        for pitch in cfg.pitches:
            for yaw in cfg.yaws:
                name = f"{s.floor_name}/{s.scan_id}/{BUILDING}_cutout_{s.scan_id}_{yaw}_{pitch}.jpg"
                yield s, yaw, pitch, name, cam, camera_pose(s.center, s.theta_deg + yaw, pitch)


def texture_fraction(img: np.ndarray, threshold: float = 25.0, max_width: int = 256) -> float:
    """Fraction of pixels with a clear edge (Sobel magnitude > threshold after light blur), brightness-normalised.

    Images wider than ``max_width`` are first reduced to that width (INTER_AREA), so the measure does
    not fall with resolution (the thresholds were set on query checks of 64-160 px width)."""
    if img.shape[1] > max_width:
        img = cv2.resize(img, (max_width, max(1, round(img.shape[0] * max_width / img.shape[1]))),
                         interpolation=cv2.INTER_AREA)
    g = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    g *= 200.0 / max(float(np.percentile(g, 95)), 20.0)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    return float(np.mean(np.sqrt(gx * gx + gy * gy) > threshold))


def _sample_pose(scene: Scene, rng: np.random.Generator, boxes: Sequence[Box], room: Room,
                 pitch_sd: float = 8.0, roll_sd: float = 3.0) -> Pose | None:
    """A random free camera pose in ``room`` (height 1.2-1.8 m, random yaw, small pitch/roll)."""
    x0, y0, x1, y1 = room.rect
    for _ in range(100):
        p = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1), room.z0 + rng.uniform(1.2, 1.8)])
        if scene.is_free(p, boxes, clearance=0.3):
            return camera_pose(p, rng.uniform(0, 360), float(np.clip(rng.normal(0, pitch_sd), -20, 20)),
                               float(np.clip(rng.normal(0, roll_sd), -8, 8)))
    return None


def apparent_scale(depth_a: np.ndarray, cam_a: Camera, uv_a: np.ndarray, depth_b: np.ndarray, cam_b: Camera,
                   uv_b: np.ndarray) -> float:
    """Median ratio of the apparent size of matched surfaces in A vs B, for images resized to equal width.

    Size in pixels goes as (f / W) / z, so the ratio is (f_a / W_a) / (f_b / W_b) * z_b / z_a.
    """
    za = depth_a[np.clip(uv_a[:, 1].astype(int), 0, depth_a.shape[0] - 1), np.clip(uv_a[:, 0].astype(int), 0,
                                                                                     depth_a.shape[1] - 1)]
    zb = depth_b[np.clip(uv_b[:, 1].astype(int), 0, depth_b.shape[0] - 1), np.clip(uv_b[:, 0].astype(int), 0,
                                                                                     depth_b.shape[1] - 1)]
    ok = np.isfinite(za) & np.isfinite(zb) & (za > 0)
    if not ok.any():
        return float("nan")
    k = (cam_a.focal[0] / cam_a.width) / (cam_b.focal[0] / cam_b.width)
    return float(k * np.median(zb[ok] / za[ok]))


def _make_queries(scene: Scene, cfg: SizeConfig, db_views: list[View], seed: int
                  ) -> Iterator[tuple[str, np.ndarray, np.ndarray, Camera, Pose, dict]]:
    """Sample, render and check the localizability of the queries."""
    rng = _rng(seed, 5)
    cam = cutout_camera(*cfg.query_size, cfg.query_hfov)
    check_cam = cam.scaled(cam.width // 4, cam.height // 4)
    variants = [scene.compile(scene_variant(scene, _rng(seed, 6, k))) for k in range(2)]
    variant_boxes = [cs.boxes for cs in variants]
    weights = np.array([1.0 if r.kind == "room" else 1.5 for r in scene.rooms])
    db_by_floor: dict[int, list[View]] = {}
    for v in db_views:
        db_by_floor.setdefault(scene.rooms[v.room].floor, []).append(v)
    for qi in tqdm(range(cfg.n_queries), desc="queries", leave=False, disable=None):
        for attempt in range(100):
            room = scene.rooms[int(rng.choice(len(scene.rooms), p=weights / weights.sum()))]
            k = int(rng.integers(2))
            pose = _sample_pose(scene, rng, variant_boxes[k], room, pitch_sd=8.0, roll_sd=3.0)
            if pose is None:
                continue
            occl = rng.random() < 0.5
            cs = variants[k]
            if occl:
                cs = scene.compile(list(variant_boxes[k]) + person_occluder(scene, pose, rng))
            app = random_appearance(rng)
            # cheap checks on a quarter-resolution render first
            img, depth, xyz, ids = render(cs, check_cam, pose, appearance=app, return_ids=True)
            valid = ids >= 0
            sub = ids[valid]
            kinds = np.array([b.kind for b in cs.boxes])[sub]
            static_frac = float(np.mean(kinds == "static")) if len(sub) else 0.0
            occl_frac = float(np.mean(kinds == "occluder")) if len(sub) else 0.0
            if static_frac < 0.6 or occl_frac > 0.25 or texture_fraction(img) < cfg.min_query_texture:
                continue
            best, best_name, best_scale = 0.0, "", 1.0
            n_valid = max(int(np.isfinite(xyz[::2, ::2]).all(-1).sum()), 1)
            for dv in db_by_floor.get(room.floor, []):
                if np.linalg.norm(dv.pose.center - pose.center) > 9.0:
                    continue
                uv_q, uv_d = dense_correspondences(xyz, dv.camera, dv.pose, dv.depth, step=2)
                c = len(uv_q) / n_valid
                if c <= best:
                    continue
                scale = apparent_scale(depth, check_cam, uv_q, dv.depth, dv.camera, uv_d)
                if 1.0 / cfg.max_query_scale_ratio <= scale <= cfg.max_query_scale_ratio:
                    best, best_name, best_scale = c, dv.name, scale
            if best >= cfg.min_query_covis:
                img, depth, xyz = render(cs, cam, pose, appearance=app, rng=_rng(seed, 7, qi))
                view = View(f"query_{qi:04d}.jpg", cam, pose, depth, xyz, room.index)
                meta = {"room": room.name, "appearance": app.name, "occluder": occl, "time": k + 1,
                        "best_db": best_name, "best_covisibility": round(best, 4),
                        "best_scale_ratio": round(best_scale, 3),
                        "static_fraction": round(static_frac, 3), "occluder_fraction": round(occl_frac, 3),
                        "attempts": attempt + 1}
                yield view.name, img, depth, cam, pose, meta
                break
        else:
            raise RuntimeError(f"could not place query {qi} with enough overlap with the database")


def _make_train(scene: Scene, cfg: SizeConfig, seed: int) -> tuple[list, list[tuple[str, str, int, bool]]]:
    """Training renders around random anchors (appearance and furniture changes) and labelled pairs."""
    rng = _rng(seed, 8)
    cam = cutout_camera(*cfg.train_size)
    small_cam = cam.scaled(cam.width // 2, cam.height // 2)
    variants = [scene.compile()] + [scene.compile(scene_variant(scene, _rng(seed, 9, k))) for k in range(2)]
    rooms = scene.rooms
    items, views = [], []
    anchor_of, room_of = [], []
    bar = tqdm(total=cfg.train_anchors * cfg.train_views, desc="train renders", leave=False, disable=None)
    for a in range(cfg.train_anchors):
        room = rooms[int(rng.integers(len(rooms)))]
        for _ in range(20):
            base = _sample_pose(scene, rng, variants[0].boxes, room, pitch_sd=5, roll_sd=0)
            if base is None:
                continue
            img0, _, _ = render(variants[0], small_cam, base)
            if texture_fraction(img0) >= 0.06:
                break
        if base is None:
            continue
        C0 = base.center
        yaw0 = math.degrees(math.atan2(base.R[2, 1], base.R[2, 0]))
        for v in range(cfg.train_views):
            for _ in range(30):
                C = C0 + np.r_[rng.uniform(-0.7, 0.7, 2), rng.uniform(-0.2, 0.2)]
                k = int(rng.integers(len(variants)))
                if scene.is_free(C, variants[k].boxes, clearance=0.3):
                    break
            else:
                C, k = C0, 0
            pose = camera_pose(C, yaw0 + rng.uniform(-35, 35), rng.normal(0, 8), rng.normal(0, 4))
            app = random_appearance(rng) if rng.random() < 0.8 else Appearance()
            img, depth, xyz = render(variants[k], cam, pose, appearance=app, rng=_rng(seed, 10, a, v))
            name = f"a{a:03d}_v{v}.jpg"
            items.append((name, img, depth, cam, pose))
            views.append(View(name, cam, pose, depth.astype(np.float32), xyz.astype(np.float32), room.index))
            anchor_of.append(a)
            room_of.append(room.index)
            bar.update()
    bar.close()
    pairs: list[tuple[str, str, int, bool]] = []  # (a, b, class, is_val)
    n_val_every = 5
    by_anchor: dict[int, list[int]] = {}
    for i, a in enumerate(anchor_of):
        by_anchor.setdefault(a, []).append(i)
    for a, idx in by_anchor.items():
        val = a % n_val_every == n_val_every - 1
        for ii, i in enumerate(idx):
            for j in idx[ii + 1:]:
                c1 = covisibility(views[i].xyz, views[j].camera, views[j].pose, views[j].depth, step=8)
                c2 = covisibility(views[j].xyz, views[i].camera, views[i].pose, views[i].depth, step=8)
                if min(c1, c2) >= 0.3:
                    pairs.append((views[i].name, views[j].name, 1, val))
    # negatives: per split as many as positives, images of different rooms checked to share nothing
    for is_val in (False, True):
        idx = [i for i, a in enumerate(anchor_of) if (a % n_val_every == n_val_every - 1) == is_val]
        want = sum(1 for p in pairs if p[2] == 1 and p[3] == is_val)
        n_neg, tries, seen = 0, 0, set()
        while n_neg < want and tries < 50 * max(want, 1) and len(idx) > 1:
            tries += 1
            i, j = (idx[int(v)] for v in rng.integers(len(idx), size=2))
            if room_of[i] == room_of[j] or (i, j) in seen:
                continue
            seen.add((i, j))
            if covisibility(views[i].xyz, views[j].camera, views[j].pose, views[j].depth, step=16) > 0.02:
                continue
            pairs.append((views[i].name, views[j].name, 0, is_val))
            n_neg += 1
    return items, pairs


def _contact_sheet(entries: list[tuple[str, np.ndarray]], thumb: tuple[int, int] = (240, 180), cols: int = 6
                   ) -> np.ndarray:
    """Grid of labelled thumbnails (RGB uint8)."""
    tw, th = thumb
    rows = max(1, math.ceil(len(entries) / cols))
    pad = 16
    sheet = np.full((rows * (th + pad), cols * tw, 3), 255, np.uint8)
    for k, (label, img) in enumerate(entries):
        r, c = divmod(k, cols)
        t = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
        y = r * (th + pad)
        sheet[y + pad:y + pad + th, c * tw:(c + 1) * tw] = t
        cv2.putText(sheet, label[:40], (c * tw + 2, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.32, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return sheet


def generate(out_dir: str | Path, seed: int = 0, size: str = "tiny", preview: bool = False,
             layouts: Sequence[str] = ("rgbd", "inloc"), force: bool = False) -> SyntheticDataset:
    """Generate a synthetic dataset into ``out_dir`` (skipped when a matching complete manifest exists)."""
    from datasets.inloc import write_inloc_alignment, write_inloc_cutout
    from datasets.rgbd_folder import write_rgbd_folder

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; use one of {list(SIZES)}")
    cfg = SIZES[size]
    out = Path(out_dir)
    params = _params(seed, size, layouts)
    if not force and is_complete(out, seed, size, layouts):
        m = read_manifest(out)
        log.info("dataset in %s is complete (seed %d, %s): skipping generation", out, seed, size)
        if preview and not (out / "preview.png").exists():
            _write_preview(out)
        return SyntheticDataset(out, seed, size, m.get("counts", {}))
    t_all = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    for sub in ("db", "inloc", "queries", "train", "pairs", "preview.png", "scene.json"):
        p = out / sub
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    scene = build_scene(seed, size)
    scene.compile()
    timings["build"] = time.perf_counter() - t0
    with atomic_write(out / "scene.json") as f:
        json.dump(scene.to_json(), f, indent=1)

    # ---- database
    t0 = time.perf_counter()
    db_views: list[View] = []
    db_list = list(_db_views(scene, cfg))

    def db_items() -> Iterator[tuple[str, np.ndarray, np.ndarray, Camera, Pose]]:
        for s, yaw, pitch, name, cam, pose in tqdm(db_list, desc="database", leave=False, disable=None):
            img, depth, xyz = render(scene, cam, pose)
            if "inloc" in layouts:
                P = s.P_after
                xyz_scan = (xyz.reshape(-1, 3) - P[:3, 3]) @ P[:3, :3]
                pending.append(writer.submit(write_inloc_cutout, out / "inloc", s.floor_name, s.scan_id,
                                             Path(name).name, img, xyz_scan.reshape(xyz.shape)))
            db_views.append(View(name, cam, pose, depth.astype(np.float32), None, s.room))
            yield name, img, depth, cam, pose

    # the (zlib-compressed) InLoc .mat files are written by a background thread, overlapping rendering
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: list = []
        if "rgbd" in layouts:
            write_rgbd_folder(out / "db", db_items(), depth_scale=DEPTH_SCALE)
        else:
            for _ in db_items():
                pass
        for fut in pending:
            fut.result()
    if "inloc" in layouts:
        for s in scene.scans:
            write_inloc_alignment(out / "inloc", s.floor_name, BUILDING, s.scan_id, s.P_after)
    timings["database"] = time.perf_counter() - t0

    # ---- queries
    t0 = time.perf_counter()
    metas: dict[str, dict] = {}
    q_items = []
    for name, img, depth, cam, pose, meta in _make_queries(scene, cfg, db_views, seed):
        q_items.append((name, img, depth, cam, pose))
        metas[name] = meta
    write_rgbd_folder(out / "queries", q_items, depth_scale=DEPTH_SCALE)
    write_query_list(out / "queries" / "queries_with_intrinsics.txt", {n: c for n, _, _, c, _ in q_items})
    write_poses(out / "queries" / "poses_gt.txt", {n: p for n, _, _, _, p in q_items})
    with atomic_write(out / "queries" / "queries_meta.json") as f:
        json.dump(metas, f, indent=1, sort_keys=True)
    timings["queries"] = time.perf_counter() - t0

    # ---- training renders and pairs (a different building of the same size)
    t0 = time.perf_counter()
    train_scene = build_scene(_train_seed(seed), size)
    t_items, pairs = _make_train(train_scene, cfg, seed)
    write_rgbd_folder(out / "train", t_items, depth_scale=DEPTH_SCALE)
    for split in ("train", "val"):
        with atomic_write(out / "pairs" / f"{split}_pairs.csv") as f:
            f.write("source_image,target_image,class,flip\n")
            for a, b, c, is_val in pairs:
                if is_val == (split == "val"):
                    f.write(f"train/images/{a},train/images/{b},{c},0\n")
    timings["train"] = time.perf_counter() - t0
    n_train = len(t_items)
    del t_items

    if preview:
        _write_preview(out)

    counts = {"rooms": len(scene.rooms), "boxes": len(scene.boxes), "scans": len(scene.scans),
              "db_images": len(db_list), "queries": len(q_items), "train_images": n_train,
              "train_pairs_pos": sum(1 for p in pairs if p[2] == 1 and not p[3]),
              "train_pairs_neg": sum(1 for p in pairs if p[2] == 0 and not p[3]),
              "val_pairs_pos": sum(1 for p in pairs if p[2] == 1 and p[3]),
              "val_pairs_neg": sum(1 for p in pairs if p[2] == 0 and p[3])}
    files = {str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*"))
             if p.is_file() and p.name not in ("manifest.json", "preview.png") and not p.name.startswith(".")}
    manifest = {"params": params, "counts": counts, "world_frame": "metres, z up; poses world-to-camera",
                "files": files}
    with atomic_write(out / "manifest.json") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    log.info("generated %s (seed %d, %s) in %.1f s: %s; stage times %s", out, seed, size,
             time.perf_counter() - t_all, counts, {k: round(v, 2) for k, v in timings.items()})
    return SyntheticDataset(out, seed, size, counts)


def _train_seed(seed: int) -> int:
    """Seed of the training building (different from the evaluation building)."""
    return int(seed) * 7919 + 104729


def _write_preview(out: Path, n_db: int = 12, n_q: int = 12) -> Path:
    """Contact sheet of database and query images (with names) -> out/preview.png."""
    from localize.core.records import load_rgb
    from datasets.rgbd_folder import write_image

    db_imgs = sorted((out / "db" / "images").rglob("*.jpg")) or sorted((out / "inloc" / "cutouts").rglob("*.jpg"))
    q_imgs = sorted((out / "queries" / "images").glob("*.jpg"))
    t_imgs = sorted((out / "train" / "images").glob("*.jpg"))
    pick = lambda lst, n: [lst[int(i)] for i in np.linspace(0, len(lst) - 1, min(n, len(lst)))] if lst else []  # noqa
    entries = [("db " + str(p.relative_to(out / "db" / "images")) if (out / "db" / "images") in p.parents
                else "db " + p.name, load_rgb(p)) for p in pick(db_imgs, n_db)]
    entries += [("query " + p.name, load_rgb(p)) for p in pick(q_imgs, n_q)]
    entries += [("train " + p.name, load_rgb(p)) for p in pick(t_imgs, 6)]
    sheet = _contact_sheet(entries)
    write_image(out / "preview.png", sheet)
    return out / "preview.png"


def ensure_dataset(out_dir: str | Path, seed: int = 0, size: str = "tiny", preview: bool = False) -> Path:
    """Generate the dataset only if ``out_dir`` lacks a complete manifest with these parameters; returns the path."""
    generate(out_dir, seed, size, preview=preview)
    return Path(out_dir)


# ============================================================================ CLI
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m datasets.synthetic", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical files)")
    ap.add_argument("--size", choices=list(SIZES), default="tiny", help="preset size (default tiny)")
    ap.add_argument("--preview", action="store_true", help="also write DIR/preview.png (contact sheet)")
    ap.add_argument("--layouts", default="rgbd,inloc", help="database layouts to write: rgbd,inloc (default both)")
    ap.add_argument("--force", action="store_true", help="regenerate even if a matching manifest exists")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    layouts = tuple(s for s in args.layouts.split(",") if s)
    bad = set(layouts) - {"rgbd", "inloc"}
    if bad:
        ap.error(f"unknown layout(s) {sorted(bad)}")
    t = time.perf_counter()
    ds = generate(args.out, args.seed, args.size, preview=args.preview, layouts=layouts, force=args.force)
    print(f"{ds.root}: seed {ds.seed}, size {ds.size}, {ds.counts} ({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
