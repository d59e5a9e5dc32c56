"""Scene description of a synthetic building: rooms, scan positions and the Scene (boxes, textures, lamps)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from datasets.synthetic import textures as T
from datasets.synthetic.config import CEILING, STOREY, SURFACE_WEAR
from datasets.synthetic.raycast import Box, CompiledScene, Lamp


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
