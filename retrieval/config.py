"""Global-descriptor configurations: readable preset dicts (``CONFS``) resolved into a frozen ``RetrievalConfig``.

Presets are hloc-style named dicts. ``resolve_conf`` turns a preset name or a dict into a
``RetrievalConfig`` through ``localize.core.config.from_dict`` (an unknown key raises ConfigError
naming it). ``RetrievalConfig.as_dict`` gives back the dict that keys the cache stages, identical to
the preset dicts (so cache files made from presets stay valid).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localize.core.config import from_dict
from localize.core.errors import ConfigError

DEFAULT_WEIGHTS_DIRS = ("weights", "~/.cache/localize/weights")
MODELS = ("dense-rootsift-vlad", "netvlad")

CONFS: dict[str, dict[str, Any]] = {
    # weight-free default: NetVLAD layer over dense RootSIFT, vocabulary fitted on the database
    "dense-rootsift-vlad": {
        "model": "dense-rootsift-vlad",
        "resize_max": 320,          # longest image side (px) before description
        "scales": [1.0, 0.5],       # image scales whose descriptors are pooled together
        "bin_size": 4,              # RootSIFT spatial cell (px at each scale)
        "step": 4,                  # descriptor grid step (px)
        "num_clusters": 64,
        "kmeans_descriptors": 100_000,  # descriptors sampled from the database for k-means
        "kmeans_iters": 25,
        "power_norm": 0.5,          # signed power on the VLAD before the final L2 (1.0 = off)
        "pca_dim": 0,               # PCA-whitening dimension fitted on the database (0 = off)
        "pca_whiten_eps": 1.0,      # regulariser (x largest eigenvalue fraction) of the whitening
        "weights": None,            # optional checkpoint of retrieval.train (replaces k-means)
        "seed": 0,
    },
    # official VGG16-NetVLAD, 4096-D after whitening (weights: Pitts30K_struct.mat)
    "netvlad-pitts30k": {"model": "netvlad", "weights": "Pitts30K_struct.mat", "resize_max": 1024},
    "netvlad-tokyotm": {"model": "netvlad", "weights": "TokyoTM_struct.mat", "resize_max": 1024},
}
CONFS["dense-rootsift-vlad-pca"] = {**CONFS["dense-rootsift-vlad"], "pca_dim": 256}
CONFS["dense-rootsift-vlad-trained"] = {**CONFS["dense-rootsift-vlad"], "weights": "dense_vlad_trained.pt"}

# keys of an official NetVLAD configuration (the others only matter for the weight-free model)
NETVLAD_KEYS = ("model", "weights", "resize_max")


@dataclass(frozen=True)
class RetrievalConfig:
    """Global-descriptor model settings; sizes in px, ``scales`` relative to the resized image."""

    model: str = "dense-rootsift-vlad"
    resize_max: int | None = 320
    scales: tuple[float, ...] = (1.0, 0.5)
    bin_size: int = 4
    step: int = 4
    num_clusters: int = 64
    kmeans_descriptors: int = 100_000
    kmeans_iters: int = 25
    power_norm: float = 0.5
    pca_dim: int = 0
    pca_whiten_eps: float = 1.0
    weights: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"unknown retrieval model {self.model!r}; use one of {', '.join(MODELS)}")

    def as_dict(self) -> dict[str, Any]:
        """The plain dict of this configuration (cache key): NetVLAD keeps its keys and any non-default one."""
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        if self.model == "dense-rootsift-vlad":
            return d
        default = dataclasses.asdict(RetrievalConfig())
        default["scales"] = list(default["scales"])
        return {k: v for k, v in d.items() if k in NETVLAD_KEYS or v != default[k]}


def resolve_conf(conf: str | Mapping[str, Any] | RetrievalConfig,
                 weights: str | Path | None = None) -> RetrievalConfig:
    """Preset name, dict or RetrievalConfig -> RetrievalConfig (``weights`` overrides the preset's file)."""
    if isinstance(conf, RetrievalConfig):
        out = conf
    elif isinstance(conf, str):
        if conf not in CONFS:
            raise ConfigError(f"unknown retrieval configuration {conf!r}; presets: {sorted(CONFS)}")
        out = from_dict(RetrievalConfig, copy.deepcopy(CONFS[conf]), "retrieval")
    else:
        out = from_dict(RetrievalConfig, copy.deepcopy(dict(conf)), "retrieval")
    if weights is not None:
        out = dataclasses.replace(out, weights=str(weights))
    return out


def find_weights(name: str | Path) -> Path:
    """Locate a weight file: as given, else under ./weights or ~/.cache/localize/weights; FileNotFoundError otherwise."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    for d in DEFAULT_WEIGHTS_DIRS:
        q = Path(d).expanduser() / p.name
        if q.exists():
            return q
    raise FileNotFoundError(
        f"weight file {name} not found (looked in ., {', '.join(DEFAULT_WEIGHTS_DIRS)}); pass --netvlad-weights FILE. "
        "The official NetVLAD weights are Pitts30K_struct.mat / TokyoTM_struct.mat from the NetVLAD project page.")
