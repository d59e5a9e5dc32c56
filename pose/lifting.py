"""Database pixels -> world points through the Foundation record (``DbImage.lift`` / ``lift_pixels``).

Bilinear where the four neighbouring pixels have 3D points, nearest otherwise, dropped when the
pixel has no point (no depth / NaN / outside the image). Works for every layout the record
covers: depth maps (plain RGB-D folder, TUM) and InLoc cutouts (XYZcut already mapped by P_after).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from localize.core.records import DbImage, lift_pixels

logger = logging.getLogger(__name__)


@dataclass
class LiftResult:
    """Lifted matches: ``points3d`` K x 3 (world, m) for the input rows ``indices`` (K,)."""

    points3d: np.ndarray
    indices: np.ndarray
    num_input: int

    @property
    def num_valid(self) -> int:
        """How many matches got a 3D point."""
        return len(self.indices)

    @property
    def mask(self) -> np.ndarray:
        """Boolean mask over the input rows (True = lifted)."""
        m = np.zeros(self.num_input, dtype=bool)
        m[self.indices] = True
        return m


def _lift(sampler: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], uv_db: np.ndarray) -> LiftResult:
    uv = np.asarray(uv_db, dtype=np.float64).reshape(-1, 2)
    finite = np.flatnonzero(np.isfinite(uv).all(1))  # non-finite pixels never reach the sampler
    if len(finite) == 0:
        return LiftResult(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), len(uv))
    pts, valid = sampler(uv[finite])
    keep = np.flatnonzero(valid)
    return LiftResult(np.asarray(pts, dtype=np.float64)[keep], finite[keep], len(uv))


def lift_points(xyz: np.ndarray, uv_db: np.ndarray) -> LiftResult:
    """Lift DB pixels N x 2 (COLMAP convention) with a preloaded H x W x 3 world point map."""
    return _lift(lambda uv: lift_pixels(xyz, uv), uv_db)


def lift_matches(db_image: DbImage, uv_db: np.ndarray, xyz: np.ndarray | None = None) -> LiftResult:
    """Lift DB pixels N x 2 of ``db_image`` to world points; pass ``xyz`` to reuse a loaded point map."""
    res = _lift(db_image.lift, uv_db) if xyz is None else lift_points(xyz, uv_db)
    logger.debug("%s: lifted %d / %d matches", db_image.name, res.num_valid, res.num_input)
    return res


class PointMapCache:
    """World point maps (H x W x 3, m) of database images, each computed once and kept in an LRU bounded in bytes.

    A point map costs a depth read and a back-projection (with undistortion); a worker that lifts matches
    of many queries against the same database images keeps them here instead of recomputing them.
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self._maps: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, db_image: DbImage) -> np.ndarray:
        """The record's ``world_xyz()``, from the cache when present (errors of the record propagate)."""
        key = (db_image.name, str(db_image.image_path))
        if key in self._maps:
            self._maps.move_to_end(key)
            return self._maps[key]
        xyz = db_image.world_xyz()
        self._maps[key] = xyz
        self._bytes += xyz.nbytes
        while self._bytes > self.max_bytes and len(self._maps) > 1:
            _, old = self._maps.popitem(last=False)
            self._bytes -= old.nbytes
        return xyz
