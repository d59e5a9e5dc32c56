"""InLoc-style pose candidates: one PnP per shortlisted database image, plus a pooled option (hloc).

Flow for one query: per shortlisted DB image, keep matches with score >= ``min_match_score``,
lift their DB pixels to world points (``pose.lifting``), then
* ``order_by="matches"`` (InLoc): order the shortlisted images by the number of lifted matches, keep the
  top ``top_n`` and run PnP on each;
* ``order_by="inliers"``: run PnP on every shortlisted image and keep the ``top_n`` with most
  inliers.
With ``pooled=True`` one more candidate (``db_name="<pooled>"``) is estimated from all kept images'
2D–3D matches in a single PnP. Candidates are returned best first (successful, most inliers).

This module also owns the rule choosing a query's final pose (``choose_pose``) and the one
conversion of candidates to the pose-stage cache record (``candidates_to_record`` /
``candidates_from_record``) and to the log.jsonl dict (``Candidate.to_log``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from localize.core.config import from_dict
from localize.core.errors import InputError
from localize.core.geometry import Camera, Pose
from localize.core.records import DbImage
from localize.core.threads import map_threads
from pose.lifting import PointMapCache, lift_matches
from pose.pnp import PnPConfig, PoseResult, estimate_pose

logger = logging.getLogger(__name__)

POOLED_NAME = "<pooled>"
ORDER_BY = ("matches", "inliers")


@dataclass
class PairMatches:
    """Matches between the query and one DB image: pixels N x 2 (COLMAP convention) and scores N."""

    db_name: str
    kpts_query: np.ndarray
    kpts_db: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.kpts_query = np.asarray(self.kpts_query, dtype=np.float64).reshape(-1, 2)
        self.kpts_db = np.asarray(self.kpts_db, dtype=np.float64).reshape(-1, 2)
        if self.scores is None:
            self.scores = np.ones(len(self.kpts_query))
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if not (len(self.kpts_query) == len(self.kpts_db) == len(self.scores)):
            raise ValueError(f"{self.db_name}: inconsistent match arrays ({len(self.kpts_query)}, "
                             f"{len(self.kpts_db)}, {len(self.scores)})")


@dataclass(frozen=True)
class CandidatesConfig:
    """Candidate generation settings (top_n after re-ranking, match-score threshold, pooled PnP)."""

    top_n: int = 10
    order_by: str = "matches"  # "matches" (InLoc) or "inliers"
    min_match_score: float = 0.0
    pooled: bool = False
    pooled_only: bool = False  # with pooled=True: skip the per-image candidates
    pnp: PnPConfig = field(default_factory=PnPConfig)

    def __post_init__(self) -> None:
        if self.order_by not in ORDER_BY:
            raise ValueError(f"unknown order_by {self.order_by!r} (use 'matches' or 'inliers')")


def candidates_config(conf: Mapping[str, Any] | CandidatesConfig | None) -> CandidatesConfig:
    """CandidatesConfig from the pipeline's 'pose' dict (nested 'pnp' dict); unknown keys raise ConfigError."""
    return from_dict(CandidatesConfig, conf, "pose")


@dataclass
class Candidate:
    """One pose candidate: DB image(s) it comes from, PnP result and counts; DensePV score once verified."""

    db_name: str
    result: PoseResult
    num_matches: int = 0
    num_lifted: int = 0
    db_names: list[str] = field(default_factory=list)
    densepv_score: float | None = None
    points2d: np.ndarray | None = field(default=None, repr=False)  # lifted query pixels (for plots)
    points3d: np.ndarray | None = field(default=None, repr=False)

    @property
    def success(self) -> bool:
        """True when PnP produced a pose."""
        return self.result.success

    @property
    def num_inliers(self) -> int:
        """PnP inliers (0 on failure)."""
        return self.result.num_inliers if self.result.success else 0

    @property
    def top1_db(self) -> str:
        """The database image reported for this candidate: the first kept image of a pooled one, else its own."""
        return self.db_names[0] if self.db_name.startswith("<") and self.db_names else self.db_name

    def to_log(self) -> dict[str, Any]:
        """The candidate's JSON object in log.jsonl (``localize.run``)."""
        return {"db": self.db_name, "matches": self.num_matches, "lifted": self.num_lifted,
                "inliers": self.num_inliers, "success": self.success, "reason": self.result.reason,
                "densepv": self.densepv_score}


@dataclass
class _Lifted:
    name: str
    num_matches: int
    p2: np.ndarray
    p3: np.ndarray
    error: str = ""


def _lift_one(pm: PairMatches, db: DbImage | None, min_score: float,
              point_maps: PointMapCache | None = None) -> _Lifted:
    keep = np.isfinite(pm.scores) & (pm.scores >= min_score)
    q, d = pm.kpts_query[keep], pm.kpts_db[keep]
    if db is None:
        return _Lifted(pm.db_name, len(q), np.zeros((0, 2)), np.zeros((0, 3)), f"unknown DB image {pm.db_name}")
    try:
        lr = lift_matches(db, d, None if point_maps is None else point_maps.get(db))
    except (InputError, OSError, ValueError) as e:  # unreadable / mis-sized point map: a failed candidate
        logger.warning("cannot lift matches of %s: %s", pm.db_name, e)
        return _Lifted(pm.db_name, len(q), np.zeros((0, 2)), np.zeros((0, 3)), f"lifting failed: {e}")
    return _Lifted(pm.db_name, len(q), q[lr.indices], lr.points3d)


def _candidate(lf: _Lifted, camera: Camera, pnp: PnPConfig) -> Candidate:
    if lf.error:
        res = PoseResult(False, lf.error, num_points=len(lf.p2), backend=pnp.backend)
    else:
        res = estimate_pose(lf.p2, lf.p3, camera, pnp)
    return Candidate(lf.name, res, lf.num_matches, len(lf.p2), [lf.name], points2d=lf.p2, points3d=lf.p3)


def _sort_key(c: Candidate) -> tuple:
    return (not c.success, -c.num_inliers, -c.num_lifted)


def estimate_candidates(camera: Camera, matches: Iterable[PairMatches], db: Mapping[str, DbImage],
                        conf: CandidatesConfig | None = None,
                        point_maps: PointMapCache | None = None) -> list[Candidate]:
    """Query camera + per-DB-image matches (shortlist order) + DB records -> candidates, best first.

    ``point_maps``: database point maps kept across calls (a worker's), else each is read once per call.
    """
    conf = conf or CandidatesConfig()
    matches = list(matches)
    point_maps = point_maps if point_maps is not None else PointMapCache()
    lifted = [_lift_one(pm, db.get(pm.db_name), conf.min_match_score, point_maps) for pm in matches]
    if conf.order_by == "matches":
        # stable sort: ties keep the retrieval order
        order = sorted(range(len(lifted)), key=lambda i: -len(lifted[i].p2))
        kept = [lifted[i] for i in order[: conf.top_n]]
        cands = [] if (conf.pooled and conf.pooled_only) else map_threads(lambda lf: _candidate(lf, camera, conf.pnp),
                                                                           kept)
    elif conf.order_by == "inliers":
        allc = map_threads(lambda lf: _candidate(lf, camera, conf.pnp), lifted)
        allc.sort(key=_sort_key)
        cands = allc[: conf.top_n]
        names = {c.db_name for c in cands}
        kept = [lf for lf in lifted if lf.name in names]
        if conf.pooled and conf.pooled_only:
            cands = []
    else:
        raise ValueError(f"unknown order_by {conf.order_by!r} (use {' or '.join(map(repr, ORDER_BY))})")
    if conf.pooled and kept:
        good = [lf for lf in kept if not lf.error and len(lf.p2)]
        p2 = np.concatenate([lf.p2 for lf in good]) if good else np.zeros((0, 2))
        p3 = np.concatenate([lf.p3 for lf in good]) if good else np.zeros((0, 3))
        res = estimate_pose(p2, p3, camera, conf.pnp)
        cands.append(Candidate(POOLED_NAME, res, sum(lf.num_matches for lf in kept), len(p2),
                               [lf.name for lf in good], points2d=p2, points3d=p3))
    cands.sort(key=_sort_key)
    for c in cands:
        logger.debug("candidate %s: %d matches, %d lifted, %s", c.db_name, c.num_matches, c.num_lifted,
                     c.result.summary())
    return cands


# ----------------------------------------------------------------------------- choice of the final pose
def choose_pose(candidates: Sequence[Candidate], densepv_scores: Sequence[float | None] | np.ndarray | None = None,
                use_densepv: bool = True) -> tuple[Candidate | None, str]:
    """The query's final pose: best DensePV score (then most inliers) among successful candidates, else most inliers.

    ``densepv_scores`` (one per candidate, NaN / None = not scored) are stored in the candidates'
    ``densepv_score`` first; None keeps the scores they hold. DensePV decides only when
    ``use_densepv`` and at least one successful candidate has a score; ties go to the earlier
    candidate. Returns (chosen candidate, "") or (None, reason); the chosen one's database image
    is ``Candidate.top1_db``.
    """
    if densepv_scores is not None:
        for c, s in zip(candidates, densepv_scores, strict=False):  # as the pipeline
            c.densepv_score = None if s is None or not np.isfinite(s) else float(s)
    ok = [c for c in candidates if c.success]
    if not ok:
        reasons = "; ".join(sorted({c.result.reason for c in candidates})) or "no candidates"
        return None, f"no candidate pose ({reasons})"
    if use_densepv and any(c.densepv_score is not None for c in ok):
        return max(ok, key=lambda c: (c.densepv_score is not None, c.densepv_score or 0.0, c.num_inliers)), ""
    return max(ok, key=lambda c: c.num_inliers), ""


# ----------------------------------------------------------------------------- cache record
def candidates_to_record(cands: Sequence[Candidate], time_s: float = 0.0) -> dict[str, Any]:
    """Pose-stage cache record: {"num", "time_s" (s), "cNNN": {"info" JSON, "P" world-to-camera, "inlier_points2d"}}."""
    rec: dict[str, Any] = {"num": np.int64(len(cands)), "time_s": np.float64(time_s)}
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


def candidates_from_record(rec: Mapping[str, Any]) -> list[Candidate]:
    """Candidates of a pose-stage cache record (``points2d`` = their inlier query pixels, no 3D points)."""
    out = []
    for i in range(int(rec["num"])):
        c = rec[f"c{i:03d}"]
        info = json.loads(c["info"])
        ok = bool(info["success"])
        res = PoseResult(ok, info["reason"], Pose.from_matrix(c["P"]) if ok else None,
                         num_points=info["lifted"], num_inliers=info["inliers"])
        cand = Candidate(info["db"], res, info["matches"], info["lifted"], info["db_names"])
        cand.points2d = c["inlier_points2d"]
        out.append(cand)
    return out
