"""Per-item work of the pipeline's stages, as picklable workers that an executor can run anywhere.

A worker is built once per process (it may hold a model or database records) from plain
arguments (configurations, paths), and then called on small tasks; it returns plain dicts of
numpy arrays / strings that the driver writes to the stage cache. Inputs travel by path, so a
worker never needs the whole database in memory.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from datasets.database import load_database
from localize.core.geometry import Camera
from localize.core.records import load_rgb
from matching.match import MatchConfig, Matcher
from pose.candidates import (
    CandidatesConfig,
    PairMatches,
    candidates_from_record,
    candidates_to_record,
    estimate_candidates,
)
from pose.densepv import DensePVConfig, order_by_densepv, point_source
from pose.lifting import PointMapCache


class MatchWorker:
    """NCNet matcher: task (query image path, database image path) -> matches (pixels, scores, seconds)."""

    def __init__(self, conf: MatchConfig, device: str = "cpu") -> None:
        self.conf, self.device = conf, device
        self._matcher: Matcher | None = None
        self._query: tuple[str, np.ndarray] | None = None

    def __call__(self, task: tuple[str, str]) -> dict[str, Any]:
        q_path, db_path = task
        if self._matcher is None:
            self._matcher = Matcher(self.conf, self.device)
        if self._query is None or self._query[0] != q_path:
            self._query = (q_path, load_rgb(q_path))
        db_img = load_rgb(db_path)
        t0 = time.time()
        m = self._matcher.match(self._query[1], db_img)
        return {"keypoints0": m["keypoints0"].astype(np.float32), "keypoints1": m["keypoints1"].astype(np.float32),
                "scores": m["scores"].astype(np.float32), "time_s": np.float64(time.time() - t0)}


class PoseWorker:
    """PnP candidates: task (query camera, [(db name, kp_query, kp_db, scores)]) -> pose cache record."""

    def __init__(self, conf: CandidatesConfig, db: str, db_format: str) -> None:
        self.conf = conf
        self.database = load_database(db, db_format)
        self.point_maps = PointMapCache()  # database point maps, read once for all queries

    def __call__(self, task: tuple[Camera, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]) -> dict[str, Any]:
        camera, pairs = task
        t0 = time.time()
        cands = estimate_candidates(camera, [PairMatches(*p) for p in pairs], self.database, self.conf,
                                    self.point_maps)
        return candidates_to_record(cands, time.time() - t0)


class DensePVWorker:
    """DensePV: task (query name, query image path, camera, pose record) -> score per candidate (NaN = none)."""

    def __init__(self, conf: DensePVConfig, db: str, db_format: str, save_dir: str | None = None) -> None:
        self.conf = conf
        self.database = load_database(db, db_format)
        self.points = point_source(self.database, conf)  # point clouds kept across queries (LRU)
        self.save_dir = save_dir

    def __call__(self, task: tuple[str, str, Camera, dict]) -> dict[str, Any]:
        name, q_path, camera, record = task
        cands = candidates_from_record(record)
        qimg = load_rgb(q_path)
        t0 = time.time()
        ranked = order_by_densepv(qimg, camera, cands, self.points, self.conf, save_dir=self.save_dir,
                                  query_name=name)
        scores = {id(c): c.densepv_score for c in ranked}
        return {"scores": np.array([np.nan if scores[id(c)] is None else scores[id(c)] for c in cands]),
                "time_s": np.float64(time.time() - t0)}
