"""Query sampling: changed building, appearance and occluder, kept only when localizable from the database."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from datasets.correspondences import dense_correspondences
from datasets.inloc import cutout_camera
from datasets.synthetic.appearance import random_appearance
from datasets.synthetic.changes import person_occluder, scene_variant
from datasets.synthetic.config import SizeConfig, rng_for
from datasets.synthetic.rendering import render
from datasets.synthetic.sampling import sample_pose, texture_fraction
from datasets.synthetic.scene import Scene
from datasets.synthetic.views import View, apparent_scale
from localize.core.geometry import Camera, Pose


def make_queries(scene: Scene, cfg: SizeConfig, db_views: list[View], seed: int
                  ) -> Iterator[tuple[str, np.ndarray, np.ndarray, Camera, Pose, dict]]:
    """Sample, render and check the localizability of the queries."""
    rng = rng_for(seed, 5)
    cam = cutout_camera(*cfg.query_size, cfg.query_hfov)
    check_cam = cam.scaled(cam.width // 4, cam.height // 4)
    variants = [scene.compile(scene_variant(scene, rng_for(seed, 6, k))) for k in range(2)]
    variant_boxes = [cs.boxes for cs in variants]
    weights = np.array([1.0 if r.kind == "room" else 1.5 for r in scene.rooms])
    db_by_floor: dict[int, list[View]] = {}
    for v in db_views:
        db_by_floor.setdefault(scene.rooms[v.room].floor, []).append(v)
    for qi in tqdm(range(cfg.n_queries), desc="queries", leave=False, disable=None):
        for attempt in range(100):
            room = scene.rooms[int(rng.choice(len(scene.rooms), p=weights / weights.sum()))]
            k = int(rng.integers(2))
            pose = sample_pose(scene, rng, variant_boxes[k], room, pitch_sd=8.0, roll_sd=3.0)
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
                img, depth, xyz = render(cs, cam, pose, appearance=app, rng=rng_for(seed, 7, qi))
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
