"""Generated dataset paths and its manifest (parameters, counts, sha256 of every file) for reuse checks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets.synthetic.config import GENERATOR_VERSION, SIZES


@dataclass
class SyntheticDataset:
    """Paths and counts of a generated dataset."""

    root: Path
    seed: int
    size: str
    counts: dict[str, int]

    @property
    def db(self) -> Path:
        """Plain RGB-D database folder."""
        return self.root / "db"

    @property
    def inloc(self) -> Path:
        """InLoc-layout database root (contains cutouts/ and alignments/)."""
        return self.root / "inloc"

    @property
    def queries(self) -> Path:
        """Query folder (images/, queries_with_intrinsics.txt, poses_gt.txt, plain RGB-D files)."""
        return self.root / "queries"

    @property
    def query_list(self) -> Path:
        """Query list with intrinsics."""
        return self.root / "queries" / "queries_with_intrinsics.txt"

    @property
    def poses_gt(self) -> Path:
        """Ground-truth query poses (world-to-camera)."""
        return self.root / "queries" / "poses_gt.txt"

    @property
    def train(self) -> Path:
        """Plain RGB-D folder of the training renders."""
        return self.root / "train"

    @property
    def train_pairs(self) -> Path:
        """NCNet pair CSV (training split)."""
        return self.root / "pairs" / "train_pairs.csv"

    @property
    def val_pairs(self) -> Path:
        """NCNet pair CSV (validation split)."""
        return self.root / "pairs" / "val_pairs.csv"


def manifest_params(seed: int, size: str, layouts: Sequence[str]) -> dict:
    """The parameters a manifest must match for a dataset to be reused."""
    return {"generator_version": GENERATOR_VERSION, "seed": int(seed), "size": size,
            "config": asdict(SIZES[size]), "layouts": sorted(layouts)}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a generated dataset, or None if missing/unreadable."""
    p = Path(out_dir) / "manifest.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_complete(out_dir: str | Path, seed: int, size: str, layouts: Sequence[str] = ("rgbd", "inloc")) -> bool:
    """True when ``out_dir`` holds a finished dataset generated with these parameters."""
    m = read_manifest(out_dir)
    return bool(m) and m.get("params") == json.loads(json.dumps(manifest_params(seed, size, layouts)))
