"""Classical baseline: OpenCV SIFT + Lowe ratio test + PnP-RANSAC (pycolmap) against the same RGB-D database.

The yardstick of ``benchmarks/bench_localize.py tum``: what a plain classical pipeline costs and achieves on
the same database, queries and intrinsics as the NCNet pipeline.

* database (offline part, counted in the total time): per image, OpenCV SIFT keypoints and descriptors
  (``--max-features``), the keypoints lifted to world points with the database depth (``DbImage.lift``,
  the pipeline's lifting), and a tiny-image global descriptor (grey, ``THUMB`` px, zero mean, unit norm);
* retrieval (classical, no learned or trained descriptor): the ``--top-k`` database images whose tiny
  images are closest (cosine) to the query's;
* matching: query SIFT vs each retrieved image's SIFT, two nearest neighbours (L2, brute force),
  Lowe's ratio test (``--ratio``);
* pose: the retrieved images' ratio-test matches pooled into one 2D-3D set, one PnP-RANSAC + refinement
  with the project's ``pose.pnp.estimate_pose`` and the ``default`` preset's PnP settings (pycolmap,
  the query camera with its distortion).

Keypoints are converted from OpenCV's pixel convention to COLMAP's (+0.5 px) before lifting and PnP.
Seconds per query = total wall time (database included) / queries.

    python benchmarks/sift_pnp.py --db DB --query-dir DIR --queries-list LIST --out poses.txt [--top-k 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets.database import load_database
from datasets.queries import list_query_images
from localize.core.formats import write_poses
from localize.core.geometry import Pose
from localize.core.records import DbImage, load_rgb
from localize.pipeline.presets import resolve_conf
from pose.pnp import PnPConfig, estimate_pose

logger = logging.getLogger("sift_pnp")

THUMB = (32, 24)  # tiny-image retrieval descriptor size (width, height) in px


@dataclass
class SiftImage:
    """SIFT keypoints N x 2 (COLMAP pixels), descriptors N x 128 float32 and the tiny-image descriptor."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    thumb: np.ndarray


@dataclass
class SiftDb:
    """A database image's SIFT with its keypoints' world points (m) where the depth has them."""

    name: str
    image: SiftImage
    points3d: np.ndarray
    lifted: np.ndarray


def describe(rgb: np.ndarray, sift: cv2.SIFT) -> SiftImage:
    """H x W x 3 uint8 RGB -> SIFT (COLMAP pixel convention) and the normalised tiny image."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    kps, desc = sift.detectAndCompute(grey, None)
    kp = np.array([k.pt for k in kps], dtype=np.float64).reshape(-1, 2) + 0.5
    desc = np.zeros((0, 128), np.float32) if desc is None else desc.astype(np.float32)
    t = cv2.resize(grey, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return SiftImage(kp, desc, t / max(float(np.linalg.norm(t)), 1e-6))


def describe_database(records: list[DbImage], sift: cv2.SIFT) -> list[SiftDb]:
    """SIFT, lifted keypoints and tiny images of every database image (the offline part)."""
    out = []
    for rec in records:
        im = describe(load_rgb(rec.image_path), sift)
        p3, ok = rec.lift(im.keypoints) if len(im.keypoints) else (np.zeros((0, 3)), np.zeros(0, bool))
        out.append(SiftDb(rec.name, im, p3, ok))
    return out


def ratio_matches(a: np.ndarray, b: np.ndarray, matcher: cv2.BFMatcher, ratio: float) -> np.ndarray:
    """Descriptor rows (ia, ib) as K x 2 that pass Lowe's ratio test (nearest < ratio x second nearest)."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    pairs = matcher.knnMatch(a, b, k=2)
    good = [(m[0].queryIdx, m[0].trainIdx) for m in pairs if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    return np.array(good, dtype=np.int64).reshape(-1, 2)


def localize_query(q: SiftImage, camera, db: list[SiftDb], thumbs: np.ndarray, matcher: cv2.BFMatcher,
                   top_k: int, ratio: float, pnp: PnPConfig) -> tuple[Pose | None, str, str]:
    """(pose world-to-camera or None, top-1 database image, failure reason) of one query."""
    order = np.argsort(-(thumbs @ q.thumb), kind="stable")[:top_k]
    p2, p3 = [], []
    for i in order:
        m = ratio_matches(q.descriptors, db[i].image.descriptors, matcher, ratio)
        ok = db[i].lifted[m[:, 1]]
        p2.append(q.keypoints[m[ok, 0]])
        p3.append(db[i].points3d[m[ok, 1]])
    res = estimate_pose(np.concatenate(p2), np.concatenate(p3), camera, pnp)
    return (res.pose if res.success else None), db[order[0]].name, res.reason


def run(db_path: str | Path, query_dir: str | Path, queries_list: str | Path | None, out: str | Path,
        db_format: str = "rgbd", top_k: int = 3, ratio: float = 0.8, max_features: int = 0) -> dict:
    """Localize every query of ``query_dir``; write ``out`` (poses file); returns counts and seconds."""
    t0 = time.time()
    sift = cv2.SIFT_create(nfeatures=max_features)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pnp = resolve_conf("default").pose.pnp
    db = describe_database(list(load_database(db_path, db_format).values()), sift)
    thumbs = np.stack([d.image.thumb for d in db])
    db_s = time.time() - t0
    poses, failures = {}, {}
    queries = [q for q in list_query_images(query_dir, queries_list, db_format) if not q.error and q.camera]
    for q in queries:
        pose, _, why = localize_query(describe(load_rgb(q.path), sift), q.camera, db, thumbs, matcher, top_k,
                                      ratio, pnp)
        if pose is None:
            failures[q.name] = why
        else:
            poses[q.name] = pose
    write_poses(out, poses)
    wall = time.time() - t0
    logger.info("SIFT+PnP: %d/%d queries localized in %.1f s (database %.1f s)", len(poses), len(queries), wall,
                db_s)
    return {"queries": len(queries), "localized": len(poses), "failures": failures, "wall_s": wall,
            "db_s": db_s, "s_per_query": wall / max(len(queries), 1),
            "settings": {"top_k": top_k, "ratio": ratio, "max_features": max_features, "retrieval": "tiny images"}}


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True)
    p.add_argument("--db-format", default="rgbd")
    p.add_argument("--query-dir", required=True)
    p.add_argument("--queries-list", default=None)
    p.add_argument("--out", required=True, help="poses file to write")
    p.add_argument("--top-k", type=int, default=3, help="database images retrieved (tiny images) and matched")
    p.add_argument("--ratio", type=float, default=0.8, help="Lowe's ratio")
    p.add_argument("--max-features", type=int, default=0, help="SIFT features per image (0 = all)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    doc = run(a.db, a.query_dir, a.queries_list, a.out, a.db_format, a.top_k, a.ratio, a.max_features)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
