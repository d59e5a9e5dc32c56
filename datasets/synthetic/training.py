"""Training renders around random anchors and labelled NCNet pairs (positives co-visible, negatives disjoint)."""

from __future__ import annotations

import math

import numpy as np
from tqdm import tqdm

from datasets.correspondences import covisibility
from datasets.inloc import cutout_camera
from datasets.synthetic.appearance import Appearance, random_appearance
from datasets.synthetic.changes import scene_variant
from datasets.synthetic.config import SizeConfig, camera_pose, rng_for
from datasets.synthetic.rendering import render
from datasets.synthetic.sampling import sample_pose, texture_fraction
from datasets.synthetic.scene import Scene
from datasets.synthetic.views import View


def make_train(scene: Scene, cfg: SizeConfig, seed: int) -> tuple[list, list[tuple[str, str, int, bool]]]:
    """Training renders around random anchors (appearance and furniture changes) and labelled pairs."""
    rng = rng_for(seed, 8)
    cam = cutout_camera(*cfg.train_size)
    small_cam = cam.scaled(cam.width // 2, cam.height // 2)
    variants = [scene.compile()] + [scene.compile(scene_variant(scene, rng_for(seed, 9, k))) for k in range(2)]
    rooms = scene.rooms
    items, views = [], []
    anchor_of, room_of = [], []
    bar = tqdm(total=cfg.train_anchors * cfg.train_views, desc="train renders", leave=False, disable=None)
    for a in range(cfg.train_anchors):
        room = rooms[int(rng.integers(len(rooms)))]
        for _ in range(20):
            base = sample_pose(scene, rng, variants[0].boxes, room, pitch_sd=5, roll_sd=0)
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
            img, depth, xyz = render(variants[k], cam, pose, appearance=app, rng=rng_for(seed, 10, a, v))
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
