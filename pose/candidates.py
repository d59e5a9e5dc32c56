"""InLoc-style pose candidates: one PnP per shortlisted database image, plus a pooled option (hloc).

Flow for one query: per shortlisted DB image, keep matches with score >= ``min_match_score``,
lift their DB pixels to world points (``pose.lifting``), then
* ``rerank_by="matches"`` (InLoc): re-rank the shortlist by the number of lifted matches, keep the
  top ``top_n`` and run PnP on each;
* ``rerank_by="inliers"``: run PnP on every shortlisted image and keep the ``top_n`` with most
  inliers.
With ``pooled=True`` one more candidate (``db_name="<pooled>"``) is estimated from all kept images'
2D–3D matches in a single PnP. Candidates are returned best first (successful, most inliers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from localize.core.records import DbImage
from localize.core.geometry import Camera
from pose.lifting import lift_matches
from pose.pnp import PnPConfig, PoseResult, estimate_pose

logger = logging.getLogger(__name__)

POOLED_NAME = "<pooled>"


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


@dataclass
class CandidatesConfig:
    """Candidate generation settings (top_n after re-ranking, match-score threshold, pooled PnP)."""

    top_n: int = 10
    rerank_by: str = "matches"  # "matches" (InLoc) or "inliers"
    min_match_score: float = 0.0
    pooled: bool = False
    pooled_only: bool = False  # with pooled=True: skip the per-image candidates
    pnp: PnPConfig = field(default_factory=PnPConfig)


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

    def to_dict(self) -> dict:
        """JSON-friendly summary (for log.jsonl)."""
        return {"db": self.db_name, "db_names": self.db_names, "matches": self.num_matches,
                "lifted": self.num_lifted, "inliers": self.num_inliers, "success": self.success,
                "reason": self.result.reason, "densepv": self.densepv_score}


@dataclass
class _Lifted:
    name: str
    num_matches: int
    p2: np.ndarray
    p3: np.ndarray
    error: str = ""


def _lift_one(pm: PairMatches, db: DbImage | None, min_score: float) -> _Lifted:
    keep = np.isfinite(pm.scores) & (pm.scores >= min_score)
    q, d = pm.kpts_query[keep], pm.kpts_db[keep]
    if db is None:
        return _Lifted(pm.db_name, len(q), np.zeros((0, 2)), np.zeros((0, 3)), f"unknown DB image {pm.db_name}")
    try:
        lr = lift_matches(db, d)
    except Exception as e:  # noqa: BLE001 - unreadable depth etc. becomes a failed candidate
        logger.warning("cannot lift matches of %s: %s", pm.db_name, e)
        return _Lifted(pm.db_name, len(q), np.zeros((0, 2)), np.zeros((0, 3)), f"lifting failed: {e}")
    return _Lifted(pm.db_name, len(q), q[lr.indices], lr.points3d)


def _candidate(l: _Lifted, camera: Camera, pnp: PnPConfig) -> Candidate:
    if l.error:
        res = PoseResult(False, l.error, num_points=len(l.p2), backend=pnp.backend)
    else:
        res = estimate_pose(l.p2, l.p3, camera, pnp)
    return Candidate(l.name, res, l.num_matches, len(l.p2), [l.name], points2d=l.p2, points3d=l.p3)


def _sort_key(c: Candidate) -> tuple:
    return (not c.success, -c.num_inliers, -c.num_lifted)


def estimate_candidates(camera: Camera, matches: Iterable[PairMatches], db: Mapping[str, DbImage],
                        conf: CandidatesConfig | None = None) -> list[Candidate]:
    """Query camera + per-DB-image matches (shortlist order) + DB records -> candidates, best first."""
    conf = conf or CandidatesConfig()
    matches = list(matches)
    lifted = [_lift_one(pm, db.get(pm.db_name), conf.min_match_score) for pm in matches]
    if conf.rerank_by == "matches":
        # stable sort: ties keep the retrieval order
        order = sorted(range(len(lifted)), key=lambda i: -len(lifted[i].p2))
        kept = [lifted[i] for i in order[: conf.top_n]]
        cands = [] if (conf.pooled and conf.pooled_only) else [_candidate(l, camera, conf.pnp) for l in kept]
    elif conf.rerank_by == "inliers":
        allc = [_candidate(l, camera, conf.pnp) for l in lifted]
        allc.sort(key=_sort_key)
        cands = allc[: conf.top_n]
        names = {c.db_name for c in cands}
        kept = [l for l in lifted if l.name in names]
        if conf.pooled and conf.pooled_only:
            cands = []
    else:
        raise ValueError(f"unknown rerank_by {conf.rerank_by!r} (use 'matches' or 'inliers')")
    if conf.pooled and kept:
        good = [l for l in kept if not l.error and len(l.p2)]
        p2 = np.concatenate([l.p2 for l in good]) if good else np.zeros((0, 2))
        p3 = np.concatenate([l.p3 for l in good]) if good else np.zeros((0, 3))
        res = estimate_pose(p2, p3, camera, conf.pnp)
        cands.append(Candidate(POOLED_NAME, res, sum(l.num_matches for l in kept), len(p2),
                               [l.name for l in good], points2d=p2, points3d=p3))
    cands.sort(key=_sort_key)
    for c in cands:
        logger.debug("candidate %s: %d matches, %d lifted, %s", c.db_name, c.num_matches, c.num_lifted,
                     c.result.summary())
    return cands
