"""Procedural building for (seed, size): storeys of rooms along a corridor, furniture, lamps, scan positions."""

from __future__ import annotations

import logging

import numpy as np

from datasets.synthetic import textures as T
from datasets.synthetic.config import (
    CEILING,
    CORRIDOR_W,
    DOOR_W,
    SCAN_HEIGHT,
    SIZES,
    STOREY,
    WALL,
    rng_for,
)
from datasets.synthetic.furniture import Builder, FurnitureModel, furnish
from datasets.synthetic.materials import Materials
from datasets.synthetic.raycast import Lamp, Surface
from datasets.synthetic.scene import Room, Scan, Scene

log = logging.getLogger(__name__)


def door_span(rng: np.random.Generator, a0: float, a1: float) -> tuple[float, float]:
    """A door opening inside [a0, a1] (metres along the wall)."""
    c = rng.uniform(a0 + 0.5 + DOOR_W / 2, a1 - 0.5 - DOOR_W / 2)
    return c - DOOR_W / 2, c + DOOR_W / 2


def build_scene(seed: int, size: str = "tiny") -> Scene:
    """Procedural building for (seed, size): rooms along a corridor, furniture, textures, lamps, scans."""
    cfg = SIZES[size]
    rng = rng_for(seed, 1)
    bank = T.TextureBank()
    M = Materials(bank, rng_for(seed, 2))
    B = Builder(M)
    rooms: list[Room] = []
    lamps: list[Lamp] = []
    scans: list[Scan] = []
    models = {
        "shelf": FurnitureModel("shelf", float(rng.uniform(0.8, 1.1)), 0.35, float(rng.uniform(1.8, 2.1))),
        "cabinet": FurnitureModel("cabinet", float(rng.uniform(0.8, 1.2)), 0.45, float(rng.uniform(0.75, 1.05))),
        "desk": FurnitureModel("desk", float(rng.uniform(1.2, 1.5)), 0.7, 0.75),
        "plant": FurnitureModel("plant", 0.45, 0.45, float(rng.uniform(0.9, 1.4))),
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

        def mat(r: Room) -> Surface:
            """Wall material of a room (its theme's; white for the corridor)."""
            return corridor_theme[0] if r.kind == "corridor" else themes[r.theme][0]

        # corridor north wall, one piece per north room, each with a door
        keep: dict[int, list] = {r.index: [] for r in rooms}
        door_off = None
        for i, r in enumerate(north):
            a0, a1 = xs_n[i], xs_n[i + 1]
            d = door_span(rng, a0 + h, a1 - h)
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
                d = door_span(rng, a0 + h, a1 - h)
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
                doors = [door_span(rng, cw + dn * 0.4, cw + dn)]
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
            n_l = max(1, round((x1 - x0) / 4.0)) if r.kind == "corridor" else 1
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
            layouts[r.index] = furnish(B, r, rng_for(seed, 3, r.index), models, keep[r.index], lay)
    scene = Scene(seed, size, B.boxes, bank, lamps, rooms)
    # scan positions: one per room near its centre, corridor scans spread along it
    srng = rng_for(seed, 4)
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
