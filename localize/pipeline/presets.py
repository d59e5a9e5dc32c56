"""Pipeline presets (readable dicts) and the typed configuration they resolve to.

A preset mirrors ``PipelineConfig``: one section per stage, each built into that stage's own
dataclass (unknown keys are rejected with the valid ones named); ``verify`` and ``densepv`` set
to None switch those stages off.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from localize.core.config import from_dict, to_dict
from localize.core.errors import ConfigError
from matching.match import MatchConfig
from pose.candidates import CandidatesConfig
from pose.densepv import DensePVConfig
from pose.verify_shortlist import VerifyConfig

REQUIRED = "REQUIRED: "  # a value the user must give on the command line


@dataclass(frozen=True)
class ShortlistConfig:
    """Retrieval stage: global-descriptor preset name, shortlist length, optional weight file."""

    method: str = "dense-rootsift-vlad"
    top_k: int = 40
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"retrieval.top_k must be >= 1, got {self.top_k}")


@dataclass(frozen=True)
class ScaleSearchConfig:
    """Scale search for hard queries: a query whose best verified database image has fewer than
    ``below_inliers`` verification inliers has its pairs matched at these relative scales
    (``matching.pyramid``); the others keep the single-scale matcher. Needs the verify stage."""

    scales: tuple[float, ...] = (0.7071, 1.0, 1.4142)
    below_inliers: int = 60

    def __post_init__(self) -> None:
        if len(self.scales) < 2 or any(float(s) <= 0 for s in self.scales):
            raise ConfigError(f"scale_search.scales must be >= 2 positive relative sizes, got {self.scales}")
        if self.below_inliers < 1:
            raise ConfigError(f"scale_search.below_inliers must be >= 1, got {self.below_inliers}")


@dataclass(frozen=True)
class PipelineConfig:
    """Every stage's configuration; ``num_pairs`` = re-ranked shortlist images matched per query;
    ``scale_search``: hard queries matched across scales (None = never)."""

    retrieval: ShortlistConfig = field(default_factory=ShortlistConfig)
    verify: VerifyConfig | None = field(default_factory=VerifyConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    num_pairs: int = 5
    pose: CandidatesConfig = field(default_factory=CandidatesConfig)
    densepv: DensePVConfig | None = field(default_factory=DensePVConfig)
    scale_search: ScaleSearchConfig | None = None

    def __post_init__(self) -> None:
        if self.num_pairs < 1:
            raise ConfigError(f"num_pairs must be >= 1, got {self.num_pairs}")

    @property
    def pairs_per_query(self) -> int:
        """Shortlisted images matched per query: num_pairs, at most the shortlist length."""
        return min(self.retrieval.top_k, self.num_pairs)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what the run prints and the cache hashes)."""
        return to_dict(self)


# PnP inlier threshold: max_error px per reference_size px of the query's longer side (never below max_error)
_PNP_CPU = {"backend": "pycolmap", "max_error": 4.0, "reference_size": 640, "seed": 0, "max_num_trials": 5000,
            "confidence": 0.9999}
_PNP_INLOC = {"backend": "pycolmap", "max_error": 48.0, "seed": 0}

CONFS: dict[str, dict[str, Any]] = {
    # built-in weights, CPU-friendly sizes
    # no pooled candidate: the costliest to render, and choosing without it gives the same poses on the
    # TUM split and the same recall on the demo (README "Measured results")
    "default": {
        "retrieval": {"method": "dense-rootsift-vlad", "top_k": 40},
        "verify": {"image_size": 320, "max_error_cells": 1.5},
        "matching": {"features": "dense-rootsift", "image_size": 320, "relocalize": False, "refine": True,
                     "weights": None, "max_matches": 2000},
        "num_pairs": 5,
        "pose": {"top_n": 10, "order_by": "matches", "pooled": False, "min_match_score": 0.0, "pnp": _PNP_CPU},
        "densepv": {"target_size": 320, "whole_scan": False},
        "scale_search": {"scales": (0.7071, 1.0, 1.4142), "below_inliers": 60},
    },
    # smaller images, fewer pairs, no DensePV
    "fast": {
        "retrieval": {"method": "dense-rootsift-vlad", "top_k": 20},
        "verify": {"image_size": 240, "max_error_cells": 1.5},
        "matching": {"features": "dense-rootsift", "image_size": 240, "relocalize": False, "refine": True,
                     "weights": None, "max_matches": 1500},
        "num_pairs": 5,
        "pose": {"top_n": 5, "order_by": "matches", "pooled": True, "min_match_score": 0.0, "pnp": _PNP_CPU},
        "densepv": None,
    },
    # the paper's configuration: official NCNet IVD weights, 3200 px with relocalization,
    # NetVLAD Pitts30K top-100 -> top-10 after re-ranking, DensePV at 1/8 of the query size
    "inloc-ncnet": {
        "retrieval": {"method": "netvlad-pitts30k", "top_k": 100},
        "verify": {"image_size": 480, "max_error_cells": 1.5},
        "matching": {"features": "resnet101", "image_size": 3200, "relocalize": True, "refine": False,
                     "weights": REQUIRED + "--ncnet-weights ncnet_ivd.pth.tar", "max_matches": 20000},
        "num_pairs": 10,
        "pose": {"top_n": 10, "order_by": "matches", "pooled": False, "min_match_score": 0.0, "pnp": _PNP_INLOC},
        "densepv": {"scale": 0.125, "whole_scan": False},
    },
    # Sparse-NCNet (ECCV 2020) at InLoc resolution: top-10 sparse correlation, hard+soft relocalization
    "inloc-sparse-ncnet": {
        "retrieval": {"method": "netvlad-pitts30k", "top_k": 100},
        "verify": {"image_size": 480, "max_error_cells": 1.5},
        "matching": {"features": "resnet101", "image_size": 3200, "relocalize": True, "refine": False,
                     "sparse": True, "top_k": 10, "reloc_mode": "hard+soft",
                     "weights": REQUIRED + "--ncnet-weights ncnet_ivd.pth.tar", "max_matches": 20000},
        "num_pairs": 10,
        "pose": {"top_n": 10, "order_by": "matches", "pooled": False, "min_match_score": 0.0, "pnp": _PNP_INLOC},
        "densepv": {"scale": 0.125, "whole_scan": False},
    },
}


def preset(name: str) -> dict[str, Any]:
    """A deep copy of a named preset dict; ConfigError naming the presets if unknown."""
    if name not in CONFS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(sorted(CONFS))}")
    return copy.deepcopy(CONFS[name])


def build_config(conf: str | dict[str, Any] | PipelineConfig) -> PipelineConfig:
    """A preset name, a preset-shaped dict or a PipelineConfig -> PipelineConfig (unknown keys rejected)."""
    if isinstance(conf, str):
        conf = preset(conf)
    return from_dict(PipelineConfig, conf)


def resolve_conf(name: str | dict[str, Any] | PipelineConfig, top_k: int | None = None,
                 ncnet_weights: str | None = None, netvlad_weights: str | None = None,
                 store_db_features: bool = False) -> PipelineConfig:
    """A preset with command-line overrides applied; ConfigError if a required weight file is missing."""
    conf = build_config(name)
    retrieval = conf.retrieval
    if top_k is not None:
        retrieval = dataclasses.replace(retrieval, top_k=top_k)
    if netvlad_weights:
        retrieval = dataclasses.replace(retrieval, weights=str(netvlad_weights))
    matching = dataclasses.replace(conf.matching, weights=str(ncnet_weights)) if ncnet_weights else conf.matching
    if store_db_features:
        matching = dataclasses.replace(matching, store_db_features=True)
    conf = dataclasses.replace(conf, retrieval=retrieval, matching=matching)
    w = conf.matching.weights
    if isinstance(w, str) and w.startswith(REQUIRED):
        label = name if isinstance(name, str) else "this configuration"
        raise ConfigError(f"--conf {label} needs {w[len(REQUIRED):]}")
    return conf
