"""Furniture models, wall slots and room furnishing (box lists in world metres, z up)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from datasets.synthetic.config import CEILING, DOOR_H, WALL, rng_for
from datasets.synthetic.materials import Materials
from datasets.synthetic.raycast import Box, Surface
from datasets.synthetic.scene import Room


@dataclass
class Slot:
    """Footprint against a wall: rectangle (x0, y0, x1, y1), front face index, along-wall axis."""

    rect: tuple[float, float, float, float]
    front: int  # face index pointing into the room (0..3)


def local_boxes(slot: Slot, z0: float, parts: list[tuple[float, float, float, float, float, float, tuple]]
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
class FurnitureModel:
    """A furniture model: kind, width along the wall, depth, height (metres); shared by all instances."""

    kind: str
    width: float
    depth: float
    height: float


def model_parts(m: FurnitureModel, M: Materials, rng: np.random.Generator) -> list[tuple]:
    """Parts of a furniture model in slot-local fractional coordinates (see ``local_boxes``)."""
    W, D, Hh = m.width, m.depth, m.height

    def s6(s: Surface) -> tuple[Surface, ...]:
        """The same material on all six faces."""
        return (s,) * 6

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


def chair_boxes(cx: float, cy: float, z0: float, facing: int, M: Materials) -> list[tuple[np.ndarray, np.ndarray,
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


class Builder:
    """Accumulates boxes of one building."""

    def __init__(self, M: Materials) -> None:
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


def rect_overlap(a: Sequence[float], b: Sequence[float], gap: float = 0.0) -> bool:
    """True when rectangles (x0, y0, x1, y1) overlap (with ``gap`` clearance)."""
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def slot_rect(room: Room, front: int, pos: float, width: float, depth: float) -> tuple[float, float, float, float]:
    """Footprint of an item of ``width`` x ``depth`` against the wall opposite to ``front`` at ``pos`` along it."""
    x0, y0, x1, y1 = room.rect
    if front == 3:
        return (x0 + pos, y0, x0 + pos + width, y0 + depth)
    if front == 2:
        return (x1 - pos - width, y1 - depth, x1 - pos, y1)
    if front == 1:
        return (x0, y1 - pos - width, x0 + depth, y1 - pos)
    return (x1 - depth, y0 + pos, x1, y0 + pos + width)


def furnish(B: Builder, room: Room, rng: np.random.Generator, models: dict[str, FurnitureModel],
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
                r = slot_rect(room, front, pos, m.width, m.depth)
                if kind == "desk":  # room for the chair in front
                    r_ext = slot_rect(room, front, pos, m.width, m.depth + 0.6)
                else:
                    r_ext = r
                if any(rect_overlap(r_ext, q, 0.05) for q in placed + keepout):
                    continue
                items.append(("furniture", kind, front, pos))
                placed.append(r_ext)
                break
        if room.kind == "room" and (x1 - x0) > 3.3 and (y1 - y0) > 3.3 and rng.random() < 0.5:
            cxy = ((x0 + x1) / 2 + rng.uniform(-0.3, 0.3), (y0 + y1) / 2 + rng.uniform(-0.3, 0.3))
            r = (cxy[0] - 0.8, cxy[1] - 0.45, cxy[0] + 0.8, cxy[1] + 0.45)
            r_ext = (r[0] - 0.5, r[1] - 0.6, r[2] + 0.5, r[3] + 0.6)
            if not any(rect_overlap(r_ext, q) for q in placed + keepout):
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
            slot = Slot(slot_rect(room, front, pos, m.width, m.depth), front)
            parts = model_parts(m, M, rng_for(hash_str(kind), 7, int(pos * 1000), front))
            for lo, hi, faces in local_boxes(slot, z0, parts):
                B.add(lo, hi, faces, "movable" if kind == "plant" else "static", room.index, kind, g)
            if m.height > 1.25:
                tall.append((front, pos, pos + m.width))
            if kind == "desk":
                cr = slot_rect(room, front, pos + m.width / 2 - 0.25, 0.5, m.depth + 0.45)
                # chair sits in the strip in front of the desk
                if front in (2, 3):
                    cx, cy = (cr[0] + cr[2]) / 2, (cr[3] - 0.22 if front == 3 else cr[1] + 0.22)
                else:
                    cx, cy = (cr[2] - 0.22 if front == 1 else cr[0] + 0.22), (cr[1] + cr[3]) / 2
                g = B.new_group()
                face_to_wall = front ^ 1  # chair faces the wall
                for lo, hi, faces in chair_boxes(cx, cy, z0, face_to_wall, M):
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
            for ox, oy, facing in [(-0.4, -0.75, 3), (0.4, -0.75, 3), (-0.4, 0.75, 2), (0.4, 0.75, 2)]:
                g = B.new_group()
                for lo, hi, faces in chair_boxes(cx + ox, cy + oy, z0, facing, M):
                    B.add(lo, hi, faces, "movable", room.index, "chair", g)
        elif it[0] == "decor":
            _, kind, front, frac, sub = it
            r2 = rng_for(sub, 11, room.index if not replay else 0)
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
            if w + 0.4 > L:
                continue
            pos = 0.2 + frac * (L - w - 0.4)
            if any(f == front and not (pos + w + 0.1 <= a or b + 0.1 <= pos) for f, a, b in tall + deco_used):
                continue
            if any(rect_overlap(slot_rect(room, front, pos, w, 0.03), q) for q in keepout):
                continue
            deco_used.append((front, pos, pos + w))
            slot = Slot(slot_rect(room, front, pos, w, 0.02), front)
            frame = M.black if kind != "poster" else M.white
            for lo, hi, faces in local_boxes(slot, z0, [(0, 1, 0, 1, zc - h / 2, zc + h / 2,
                                                          (frame, frame, frame, surf, frame, frame))]):
                B.add(lo, hi, faces, "static", room.index, kind)
    return items


def hash_str(s: str) -> int:
    """Stable 31-bit hash of a string (Python's hash() is salted per process)."""
    return int(hashlib.sha1(s.encode()).hexdigest()[:7], 16)
