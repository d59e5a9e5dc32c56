"""Preview contact sheet of a generated dataset: labelled thumbnails of database, query and training images."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from datasets.rgbd_folder import write_image
from localize.core.records import load_rgb


def contact_sheet(entries: list[tuple[str, np.ndarray]], thumb: tuple[int, int] = (240, 180), cols: int = 6
                   ) -> np.ndarray:
    """Grid of labelled thumbnails (RGB uint8)."""
    tw, th = thumb
    rows = max(1, math.ceil(len(entries) / cols))
    pad = 16
    sheet = np.full((rows * (th + pad), cols * tw, 3), 255, np.uint8)
    for k, (label, img) in enumerate(entries):
        r, c = divmod(k, cols)
        t = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
        y = r * (th + pad)
        sheet[y + pad:y + pad + th, c * tw:(c + 1) * tw] = t
        cv2.putText(sheet, label[:40], (c * tw + 2, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.32, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return sheet


def write_preview(out: Path, n_db: int = 12, n_q: int = 12) -> Path:
    """Contact sheet of database and query images (with names) -> out/preview.png."""
    db_imgs = sorted((out / "db" / "images").rglob("*.jpg")) or sorted((out / "inloc" / "cutouts").rglob("*.jpg"))
    q_imgs = sorted((out / "queries" / "images").glob("*.jpg"))
    t_imgs = sorted((out / "train" / "images").glob("*.jpg"))

    def pick(lst: list[Path], n: int) -> list[Path]:
        """Up to ``n`` items spread evenly over ``lst``."""
        return [lst[int(i)] for i in np.linspace(0, len(lst) - 1, min(n, len(lst)))] if lst else []

    entries = [("db " + str(p.relative_to(out / "db" / "images")) if (out / "db" / "images") in p.parents
                else "db " + p.name, load_rgb(p)) for p in pick(db_imgs, n_db)]
    entries += [("query " + p.name, load_rgb(p)) for p in pick(q_imgs, n_q)]
    entries += [("train " + p.name, load_rgb(p)) for p in pick(t_imgs, 6)]
    sheet = contact_sheet(entries)
    write_image(out / "preview.png", sheet)
    return out / "preview.png"
