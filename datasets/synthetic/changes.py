"""Query-time changes of a building: movable furniture moved or removed, objects added, a person occluder."""

from __future__ import annotations

import numpy as np

from datasets.synthetic.raycast import Box, Surface
from datasets.synthetic.scene import Scene
from localize.core.geometry import Pose


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
