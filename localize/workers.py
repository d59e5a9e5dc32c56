"""Per-item work of the pipeline's stages, as picklable workers that an executor can run anywhere.

A worker is built once per process (it may hold a model or database records) from plain
arguments (configurations, paths), and then called on small tasks; it returns plain dicts of
numpy arrays / strings that the driver writes to the stage cache. Inputs travel by path, so a
worker never needs the whole database in memory.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from localize.core.records import load_rgb
from localize.core.geometry import Camera, Pose


class MatchWorker:
    """NCNet matcher: task (query image path, database image path) -> matches (pixels, scores)."""

    def __init__(self, conf: dict, device: str = "cpu") -> None:
        self.conf, self.device = conf, device
        self._run = None
        self._query: tuple[str, np.ndarray] | None = None

    def _matcher(self):
        if self._run is None:
            self._run = build_matcher(self.conf, self.device)
        return self._run

    def __call__(self, task: tuple[str, str]) -> dict[str, Any]:
        q_path, db_path = task
        if self._query is None or self._query[0] != q_path:
            self._query = (q_path, load_rgb(q_path))
        db_img = load_rgb(db_path)
        t0 = time.time()
        m = self._matcher()(self._query[1], db_img)
        return {"keypoints0": m["keypoints0"].astype(np.float32), "keypoints1": m["keypoints1"].astype(np.float32),
                "scores": m["scores"].astype(np.float32), "time_s": np.float64(time.time() - t0)}


def build_matcher(conf: dict, device: str = "cpu"):
    """Function (query RGB, db RGB) -> matches dict, from the matching configuration."""
    import torch

    from matching.match import match_images
    from matching.model import build_ncnet

    model = build_ncnet(conf.get("weights"), features=conf.get("features"),
                        relocalization_k=2 if conf.get("relocalize") else 1, device=device,
                        half=bool(conf.get("half", False)), consensus=bool(conf.get("consensus", True)))

    def run(img_q: np.ndarray, img_db: np.ndarray) -> dict[str, np.ndarray]:
        if conf.get("sparse"):
            from matching.refine import refine_matches
            from matching.sparse_match import match_images_sparse

            with torch.no_grad():
                m = match_images_sparse(model, img_q, img_db, int(conf["image_size"]), top_k=int(conf.get("top_k", 10)),
                                        relocalization=conf.get("reloc_mode", "hard+soft") if conf.get("relocalize")
                                        else "none", max_matches=conf.get("max_matches"))
            if conf["refine"]:
                radius = model.features.stride * max(img_db.shape[:2]) / int(conf["image_size"])
                m = refine_matches(img_q, img_db, m, **{"radius": radius, **(conf.get("refine_options") or {})})
            return m
        with torch.no_grad():
            return match_images(model, img_q, img_db, image_size=int(conf["image_size"]), refine=bool(conf["refine"]),
                                max_matches=conf.get("max_matches"), refine_options=conf.get("refine_options"))

    return run


def pose_conf(conf: dict):
    """pose.candidates.CandidatesConfig from the pipeline's 'pose' configuration dict."""
    from pose.candidates import CandidatesConfig
    from pose.pnp import PnPConfig

    c = dict(conf)
    pnp = PnPConfig(**c.pop("pnp", {}))
    return CandidatesConfig(pnp=pnp, **c)


class PoseWorker:
    """PnP candidates: task (query camera, [(db name, kp_query, kp_db, scores)]) -> cache record."""

    def __init__(self, conf: dict, db: str, db_format: str) -> None:
        from datasets.database import load_database

        self.cconf = pose_conf(conf)
        self.database = load_database(db, db_format)

    def __call__(self, task: tuple[Camera, list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]) -> dict[str, Any]:
        from pose.candidates import PairMatches, estimate_candidates

        camera, pairs = task
        t0 = time.time()
        cands = estimate_candidates(camera, [PairMatches(*p) for p in pairs], self.database, self.cconf)
        rec: dict[str, Any] = {"num": np.int64(len(cands)), "time_s": np.float64(time.time() - t0)}
        for i, c in enumerate(cands):
            r = c.result
            rec[f"c{i:03d}"] = {
                "info": json.dumps({"db": c.db_name, "db_names": c.db_names, "matches": c.num_matches,
                                    "lifted": c.num_lifted, "inliers": c.num_inliers, "success": c.success,
                                    "reason": r.reason}),
                "P": r.pose.matrix if r.success else np.full((4, 4), np.nan),
                "inlier_points2d": (c.points2d[r.inlier_mask] if r.success and c.points2d is not None
                                    and len(r.inlier_mask) == len(c.points2d) else np.zeros((0, 2))),
            }
        return rec


def candidates_from_record(e: dict) -> list:
    """pose.candidates.Candidate objects from a pose-stage cache record."""
    from pose.candidates import Candidate
    from pose.pnp import PoseResult

    out = []
    for i in range(int(e["num"])):
        c = e[f"c{i:03d}"]
        info = json.loads(c["info"])
        ok = bool(info["success"])
        res = PoseResult(ok, info["reason"], Pose.from_matrix(c["P"]) if ok else None,
                         num_points=info["lifted"], num_inliers=info["inliers"])
        cand = Candidate(info["db"], res, info["matches"], info["lifted"], info["db_names"])
        cand.points2d = c["inlier_points2d"]
        out.append(cand)
    return out


class DensePVWorker:
    """DensePV: task (query name, query image path, camera, pose record) -> scores per candidate."""

    def __init__(self, conf: dict, db: str, db_format: str, save_dir: str | None = None) -> None:
        from datasets.database import load_database
        from pose.densepv import DensePVConfig

        self.dconf = DensePVConfig(**{k: v for k, v in conf.items() if k not in ("enabled", "whole_scan")})
        self.database = load_database(db, db_format)
        self.save_dir = save_dir

    def __call__(self, task: tuple[str, str, Camera, dict]) -> dict[str, Any]:
        from pose.densepv import rerank_candidates

        name, q_path, camera, record = task
        cands = candidates_from_record(record)
        qimg = load_rgb(q_path)
        t0 = time.time()
        ranked = rerank_candidates(qimg, camera, cands, self.database, self.dconf, save_dir=self.save_dir,
                                   query_name=name)
        scores = {id(c): c.densepv_score for c in ranked}
        return {"scores": np.array([np.nan if scores[id(c)] is None else scores[id(c)] for c in cands]),
                "time_s": np.float64(time.time() - t0)}
