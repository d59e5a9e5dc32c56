"""Per-item work of the pipeline's stages, as picklable workers that an executor can run anywhere.

A worker is built once per process (it may hold a model or database records) from plain
arguments (configurations, paths), and then called on small tasks; it returns plain dicts of
numpy arrays / strings that the driver writes to the stage cache. Inputs travel by path, so a
worker never needs the whole database in memory.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from datasets.database import load_database
from localize.core.geometry import Camera
from localize.core.records import load_rgb
from matching.features import FeatureLRU, FeatureStore, ImageFeatures
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
    """NCNet matcher: task (query image path, database image path) -> matches (pixels, scores, seconds).

    Each image's features are computed once: the query's are kept while its tasks follow one another (the
    stage sends them grouped per query), database images' are kept across queries in a ``FeatureLRU`` of
    ``conf.feature_cache_mb`` MiB keyed by path, size and modification time, and with ``conf.store_db_features``
    in ``store_dir`` in float16 (``FeatureStore``: later runs and other workers read them back). ``time_s`` counts the backbone
    passes this task needed (none for a cached image) and the matching head.
    """

    def __init__(self, conf: MatchConfig, device: str = "cpu", store_dir: str | None = None) -> None:
        self.conf, self.device, self.store_dir = conf, device, store_dir
        self._matcher: Matcher | None = None
        self._store: FeatureStore | None = None
        self._query: tuple[tuple, np.ndarray, ImageFeatures] | None = None
        self.db_features = FeatureLRU(int(conf.feature_cache_mb) * 2**20)

    def __call__(self, task: tuple[str, str]) -> dict[str, Any]:
        q_path, db_path = task
        if self._matcher is None:
            self._matcher = Matcher(self.conf, self.device)
            if self.store_dir is not None and self.conf.store_db_features:
                self._store = FeatureStore(self.store_dir, self._matcher.feature_identity())
        t0 = time.time()
        if self._matcher.pyramid:  # one network pass per scale of the pair: nothing per image to keep
            m = self._matcher.match(load_rgb(q_path), load_rgb(db_path))
            return _match_record(m, time.time() - t0)
        q_key = _file_key(q_path)
        if self._query is None or self._query[0] != q_key:
            self._query = None  # the previous query's features are released before the next are computed
            q_img = load_rgb(q_path)
            self._query = (q_key, q_img, self._matcher.features(q_img))
        _, q_img, q_feat = self._query
        db_key = _file_key(db_path)
        db_feat = self.db_features.get(db_key)
        db_img = load_rgb(db_path) if self.conf.refine else None
        if db_feat is None:
            matcher = self._matcher

            def compute() -> ImageFeatures:
                return matcher.features(db_img if db_img is not None else load_rgb(db_path))

            db_feat = compute() if self._store is None else self._store.fetch(db_path, compute)
            self.db_features.put(db_key, db_feat)
        m = self._matcher.match_features(q_feat, db_feat, q_img, db_img)
        return _match_record(m, time.time() - t0)


def _match_record(m: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    """A pair's matches as the matching cache stores them (float32 pixels and scores, seconds)."""
    return {"keypoints0": m["keypoints0"].astype(np.float32), "keypoints1": m["keypoints1"].astype(np.float32),
            "scores": m["scores"].astype(np.float32), "time_s": np.float64(seconds)}


def _file_key(path: str) -> tuple[str, int, int]:
    """(path, size, modification time ns): a replaced image file never reuses the features of the old one."""
    st = os.stat(path)
    return str(path), st.st_size, st.st_mtime_ns


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
