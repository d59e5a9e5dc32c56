"""What every stage of one run shares: configuration, database, queries, export folder, executor, per-query logs."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localize.core.geometry import Pose
from localize.core.records import DbImage, Query
from localize.pipeline.executors import Executor
from localize.pipeline.presets import PipelineConfig

logger = logging.getLogger("localize.run")


@dataclass
class QueryLog:
    """Everything the run learned about one query (one line of log.jsonl)."""

    name: str
    shortlist: list[tuple[str, float]] = field(default_factory=list)
    verified: list[tuple[str, int]] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)
    chosen_db: str | None = None
    pose: Pose | None = None
    errors: list[str] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)

    def fail(self, stage: str, msg: str) -> None:
        """Record a failure of this query at ``stage`` (logged as a warning naming the query)."""
        self.errors.append(f"{stage}: {msg}")
        logger.warning("query %s: %s: %s", self.name, stage, msg)

    def to_json(self) -> dict[str, Any]:
        """JSON object of log.jsonl."""
        d: dict[str, Any] = {"query": self.name, "status": "ok" if self.pose is not None else "failed",
                             "shortlist": [[n, round(float(s), 6) if math.isfinite(s) else None] for n, s in self.shortlist],
                             "verified": [[n, int(v)] for n, v in self.verified],
                             "candidates": self.candidates, "chosen_db": self.chosen_db, "errors": self.errors,
                             "time_s": {k: round(v, 4) for k, v in self.times.items()}}
        if self.pose is not None:
            d["qvec"] = [float(v) for v in self.pose.qvec]
            d["tvec"] = [float(v) for v in self.pose.t]
        return d


@dataclass
class RunContext:
    """One run: the resolved configuration and everything the stages read; ``queries`` = the usable ones."""

    conf: PipelineConfig
    database: dict[str, DbImage]
    queries: list[Query]
    export_dir: Path
    db_spec: tuple[str, str]  # (resolved database path, format): how workers reload the database
    dataset_id: dict[str, str]  # part of every cache key
    device: str
    executor: Executor
    logs: dict[str, QueryLog]
    fps: dict[str, str] = field(default_factory=dict)  # memo of input fingerprints (see stages.query_fp/db_fp)
    scale_searched: set[str] = field(default_factory=set)  # queries matched across scales (stages.match)
    pairs: dict[str, list[tuple[str, float]]] | None = None  # external shortlists (project names): no retrieval
    pairs_id: str | None = None  # identity of the external pairs (file fingerprint, name style) for the cache key
