"""Image-pair CSV readers for NCNet training/evaluation: synthetic, PF-Pascal and IVD layouts.

Layouts (NCNet's pair files; image paths relative to an image root):

- ``synthetic``: ``source_image,target_image,class,flip`` written by ``datasets.synthetic``; class 1 =
  positive (co-visible), class 0 = negative. Only class-1 rows are training positives.
- ``pfpascal``: ``source_image,target_image,class,XA,YA,XB,YB`` (test/val) — class is the object category,
  keypoint coordinates ``;``-separated, original image pixels — or ``source_image,target_image,class,flip``
  (train). Every row is a positive pair.
- ``ivd``: ``source_image,target_image,class,flip`` (Indoor Venues Dataset; class is the venue). Every row
  is a positive pair.

``layout="auto"`` picks ``pfpascal`` when the keypoint columns are present, ``synthetic`` when every class
is 0 or 1 (and some 0 or the folder has the synthetic ``pairs/`` layout), else ``ivd``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LAYOUTS = ("auto", "synthetic", "pfpascal", "ivd")


@dataclass
class ImagePair:
    """One row of a pair file. ``keypoints_a``/``keypoints_b``: N x 2 (x, y) pixels or None."""

    source: str
    target: str
    cls: int = 1
    flip: bool = False
    keypoints_a: np.ndarray | None = field(default=None, repr=False)
    keypoints_b: np.ndarray | None = field(default=None, repr=False)


def _floats(text: str) -> np.ndarray:
    """';'-separated numbers -> float64 array (empty string -> empty array)."""
    text = text.strip()
    return np.array([float(v) for v in text.split(";") if v.strip() != ""], dtype=np.float64)


def read_pair_csv(path: str | Path) -> list[ImagePair]:
    """Read any NCNet-style pair CSV (header required; columns by name) -> list of ``ImagePair``."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        if "source_image" not in fields or "target_image" not in fields:
            raise ValueError(f"{path}: not a pair file (header {fields}); need source_image,target_image,...")
        has_kp = all(c in fields for c in ("XA", "YA", "XB", "YB"))
        out = []
        for n, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "") for k, v in row.items()}
            try:
                cls = int(float(row["class"])) if row.get("class", "").strip() else 1
                flip = bool(int(float(row["flip"]))) if row.get("flip", "").strip() else False
                kpa = kpb = None
                if has_kp:
                    xa, ya, xb, yb = (_floats(row[c]) for c in ("XA", "YA", "XB", "YB"))
                    if not (len(xa) == len(ya) == len(xb) == len(yb)):
                        raise ValueError("keypoint lists of different lengths")
                    kpa, kpb = np.stack([xa, ya], 1), np.stack([xb, yb], 1)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}:{n}: bad row ({exc})") from exc
            out.append(ImagePair(row["source_image"].strip(), row["target_image"].strip(), cls, flip, kpa, kpb))
    return out


def detect_layout(path: str | Path, pairs: list[ImagePair] | None = None) -> str:
    """'pfpascal', 'synthetic' or 'ivd' for a pair CSV (see the module docstring)."""
    path = Path(path)
    pairs = read_pair_csv(path) if pairs is None else pairs
    with open(path) as f:
        header = [c.strip() for c in f.readline().strip().split(",")]
    if "XA" in header:
        return "pfpascal"
    if any("PF-dataset" in p.source for p in pairs[:5]):
        return "pfpascal"
    classes = {p.cls for p in pairs}
    if classes <= {0, 1} and (0 in classes or path.parent.name == "pairs"):
        return "synthetic"
    return "ivd"


def positive_pairs(pairs: list[ImagePair], layout: str) -> list[ImagePair]:
    """Training positives: class-1 rows of the synthetic layout, every row of PF-Pascal / IVD."""
    if layout == "synthetic":
        return [p for p in pairs if p.cls == 1]
    if layout in ("pfpascal", "ivd"):
        return list(pairs)
    raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS[1:]}")


def find_pair_csv(data: str | Path, split: str) -> Path | None:
    """The ``{split}_pairs.csv`` of a data folder: DIR/pairs/, DIR/, DIR/image_pairs/ (or DIR itself if a file)."""
    data = Path(data)
    if data.is_file():
        return data
    for sub in ("pairs", ".", "image_pairs"):
        p = data / sub / f"{split}_pairs.csv"
        if p.exists():
            return p.resolve() if sub == "." else p
    return None


def resolve_image(name: str, roots: list[Path]) -> Path:
    """First existing ``root / name`` among ``roots`` (FileNotFoundError naming all tried paths)."""
    tried = []
    for root in roots:
        p = Path(root) / name
        if p.exists():
            return p
        tried.append(str(p))
    raise FileNotFoundError(f"image {name!r} not found (tried {tried})")


def load_pairs(data: str | Path, split: str = "train", layout: str = "auto", csv_path: str | Path | None = None,
               positives_only: bool = True) -> tuple[list[ImagePair], str, Path | None]:
    """(pairs, layout, csv path) of a data folder's split; empty when the folder has no such CSV."""
    path = Path(csv_path) if csv_path is not None else find_pair_csv(data, split)
    if path is None:
        return [], layout, None
    pairs = read_pair_csv(path)
    lay = detect_layout(path, pairs) if layout == "auto" else layout
    if positives_only:
        pairs = positive_pairs(pairs, lay)
    return pairs, lay, path


__all__ = ["ImagePair", "LAYOUTS", "read_pair_csv", "detect_layout", "positive_pairs", "find_pair_csv",
           "resolve_image", "load_pairs"]
