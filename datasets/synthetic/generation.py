"""Dataset generation: database (plain RGB-D and InLoc layouts), queries, training pairs, manifest."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasets.inloc import write_inloc_alignment, write_inloc_cutout
from datasets.rgbd_folder import write_rgbd_folder
from datasets.synthetic.building import build_scene
from datasets.synthetic.config import BUILDING, DEPTH_SCALE, SIZES
from datasets.synthetic.manifest import (
    SyntheticDataset,
    file_sha256,
    is_complete,
    manifest_params,
    read_manifest,
)
from datasets.synthetic.preview import write_preview
from datasets.synthetic.query_sampling import make_queries
from datasets.synthetic.rendering import render
from datasets.synthetic.sampling import cutout_views
from datasets.synthetic.training import make_train
from datasets.synthetic.views import View
from localize.core.errors import OutputError
from localize.core.formats import atomic_write, write_poses, write_query_list
from localize.core.geometry import Camera, Pose

log = logging.getLogger(__name__)


OUR_OUTPUTS = ("db", "inloc", "queries", "train", "pairs", "preview.png", "scene.json")


def generate(out_dir: str | Path, seed: int = 0, size: str = "tiny", preview: bool = False,
             layouts: Sequence[str] = ("rgbd", "inloc"), force: bool = False) -> SyntheticDataset:
    """Generate a synthetic dataset into ``out_dir`` (skipped when a matching complete manifest exists)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; use one of {list(SIZES)}")
    cfg = SIZES[size]
    out = Path(out_dir)
    params = manifest_params(seed, size, layouts)
    if not force and is_complete(out, seed, size, layouts):
        m = read_manifest(out)
        log.info("dataset in %s is complete (seed %d, %s): skipping generation", out, seed, size)
        if preview and not (out / "preview.png").exists():
            write_preview(out)
        return SyntheticDataset(out, seed, size, m.get("counts", {}))
    t_all = time.perf_counter()
    old = read_manifest(out)
    marker = out / ".generation-in-progress"  # an interrupted generation of ours: its outputs may be replaced
    if marker.is_file():
        old = {"files": {str(p.relative_to(out)): "" for sub in OUR_OUTPUTS for p in
                         ([out / sub] if (out / sub).is_file() else sorted((out / sub).rglob("*")))}}
    if out.is_dir() and any(out.iterdir()) and old is None:
        raise OutputError(f"{out} is not empty and holds no manifest.json of this generator: refusing to write "
                          f"into it (nothing was deleted); choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    # delete only what our manifest lists (never a file of the user's)
    listed = [out / f for f in (old or {}).get("files", {})] + [out / "preview.png"]
    (out / "manifest.json").unlink(missing_ok=True)
    for p in listed:
        if p.is_file() and out.resolve() in p.resolve().parents:
            p.unlink()
    for d in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    marker.touch()
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
    db_list = list(cutout_views(scene, cfg))

    def db_items() -> Iterator[tuple[str, np.ndarray, np.ndarray, Camera, Pose]]:
        for s, _yaw, _pitch, name, cam, pose in tqdm(db_list, desc="database", leave=False, disable=None):
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
    for name, img, depth, cam, pose, meta in make_queries(scene, cfg, db_views, seed):
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
    train_scene = build_scene(train_seed(seed), size)
    t_items, pairs = make_train(train_scene, cfg, seed)
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
        write_preview(out)

    counts = {"rooms": len(scene.rooms), "boxes": len(scene.boxes), "scans": len(scene.scans),
              "db_images": len(db_list), "queries": len(q_items), "train_images": n_train,
              "train_pairs_pos": sum(1 for p in pairs if p[2] == 1 and not p[3]),
              "train_pairs_neg": sum(1 for p in pairs if p[2] == 0 and not p[3]),
              "val_pairs_pos": sum(1 for p in pairs if p[2] == 1 and p[3]),
              "val_pairs_neg": sum(1 for p in pairs if p[2] == 0 and p[3])}
    files = {str(p.relative_to(out)): file_sha256(p) for p in sorted(out.rglob("*"))
             if p.is_file() and p.name not in ("manifest.json", "preview.png") and not p.name.startswith(".")}
    manifest = {"params": params, "counts": counts, "world_frame": "metres, z up; poses world-to-camera",
                "files": files}
    with atomic_write(out / "manifest.json") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    marker.unlink(missing_ok=True)
    log.info("generated %s (seed %d, %s) in %.1f s: %s; stage times %s", out, seed, size,
             time.perf_counter() - t_all, counts, {k: round(v, 2) for k, v in timings.items()})
    return SyntheticDataset(out, seed, size, counts)


def train_seed(seed: int) -> int:
    """Seed of the training building (different from the evaluation building)."""
    return int(seed) * 7919 + 104729


def ensure_dataset(out_dir: str | Path, seed: int = 0, size: str = "tiny", preview: bool = False) -> Path:
    """Generate the dataset only if ``out_dir`` lacks a complete manifest with these parameters; returns the path."""
    generate(out_dir, seed, size, preview=preview)
    return Path(out_dir)
