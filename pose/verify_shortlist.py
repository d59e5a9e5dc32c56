"""Spatial verification of a retrieval shortlist: re-sort database images by PnP inliers.

For each (query, shortlisted database image): dense weight-free features of both images on a
regular grid, hard mutual nearest neighbours between the two grids, the database cells lifted to
world points with the database depth, and one PnP-RANSAC; the shortlist is re-sorted by the
number of inliers (ties keep the retrieval order). This is InLoc's "re-rank the top 100 with
dense matches" done cheaply (coarse grid, no pose refinement), before the expensive NCNet.

Library use: ``main(conf, shortlists, database, queries)``; CLI (also ``python -m retrieval.rerank``)::

    python -m pose.verify_shortlist --pairs shortlist.txt --db DB [--db-format rgbd|tum|inloc|colmap]
        --query-dir DIR [--queries-list queries_with_intrinsics.txt] [--top-k 40] --out reranked.txt
        [--name-style inloc|hloc] [--with-scores]

reads ``query db [score]`` lines (names in ``--name-style``; a file whose names resolve to nothing is
an error naming the first), writes ``query_name db_name`` lines in the same names, best first per
query (``query_name db_name inliers`` with ``--with-scores``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from datasets.database import DB_FORMATS, load_database
from datasets.queries import list_query_images
from localize.core.config import from_dict, positive_float, positive_int
from localize.core.errors import PER_ITEM_ERRORS, InputError
from localize.core.formats import read_pairs, write_pairs
from localize.core.geometry import Camera
from localize.core.hloc import NAME_STYLES, resolve_pairs, to_hloc_name
from localize.core.records import DbImage, load_rgb
from localize.core.threads import map_threads
from matching.configuration_search import mutual_pairs
from matching.extract import cell_to_pixels
from matching.features import build_features
from matching.preprocess import image_to_tensor, resized_shape
from pose.pnp import PnPConfig, estimate_pose

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyConfig:
    """Verification settings: feature grid (``image_size`` = longer side in px), inlier threshold in cells."""

    features: str = "dense-rootsift"
    image_size: int = 320
    step: int = 8
    max_error_cells: float = 1.5  # PnP inlier threshold, in feature cells (scaled to query pixels)
    max_num_trials: int = 2000
    confidence: float = 0.999
    backend: str = "pycolmap"
    seed: int = 0
    db_cache_size: int = 512  # database feature maps kept in memory


def verify_config(conf: Mapping[str, Any] | VerifyConfig | None) -> VerifyConfig:
    """VerifyConfig from a dict (unknown keys raise ConfigError naming them), an instance or None (defaults)."""
    return from_dict(VerifyConfig, conf, "verify")


def mutual_nn(feat_a: torch.Tensor, feat_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard mutual nearest neighbours of L2-normalised features [C, Na], [C, Nb] -> flat indices (ia, ib)."""
    ia, ib, _ = mutual_pairs(feat_a.T @ feat_b)
    return ia, ib


def cell_centers(idx: np.ndarray, grid_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Flat cell indices on an h x w grid -> pixel centres N x 2 (x, y) of the original H x W image (COLMAP)."""
    flat = torch.as_tensor(np.asarray(idx, dtype=np.int64)).reshape(-1)
    w = grid_hw[1]
    return cell_to_pixels(torch.stack([flat // w, flat % w], dim=1), grid_hw, image_hw).numpy()


@dataclass(frozen=True)
class _DbEntry:
    """A database image's features [C, h*w] and its cells' world points [h*w, 3] (m), ``lifted`` where valid."""

    features: torch.Tensor
    points3d: np.ndarray
    lifted: np.ndarray


class ShortlistVerifier:
    """Counts PnP inliers of mutual-NN grid matches between a query and database images."""

    def __init__(self, conf: VerifyConfig | Mapping[str, Any], database: Mapping[str, DbImage],
                 device: str = "cpu") -> None:
        conf = verify_config(conf)
        self.conf, self.database, self.device = conf, database, device
        self.extractor = build_features(conf.features, step=conf.step).to(device).eval()
        self._db_feats: OrderedDict[str, _DbEntry] = OrderedDict()

    @torch.no_grad()
    def features(self, img: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """H x W x 3 uint8 RGB -> (features [C, h*w], grid (h, w), image (H, W))."""
        stride = int(getattr(self.extractor, "stride", self.conf.step))
        shape = resized_shape(img.shape[0], img.shape[1], self.conf.image_size, stride)
        f = self.extractor(image_to_tensor(img, shape, self.device))[0].float()
        return f.reshape(f.shape[0], -1), (int(f.shape[1]), int(f.shape[2])), (img.shape[0], img.shape[1])

    def _db_features(self, name: str) -> _DbEntry:
        """Features of a database image and its grid cells lifted to world points, computed once (LRU)."""
        if name in self._db_feats:
            self._db_feats.move_to_end(name)
            return self._db_feats[name]
        rec = self.database[name]
        f, g, hw = self.features(load_rgb(rec.image_path))
        p3, ok = rec.lift(cell_centers(np.arange(g[0] * g[1]), g, hw))
        out = _DbEntry(f, p3, ok)
        self._db_feats[name] = out
        while len(self._db_feats) > self.conf.db_cache_size:
            self._db_feats.popitem(last=False)
        return out

    def inliers(self, query_img: np.ndarray, camera: Camera, db_names: Sequence[str]) -> dict[str, int]:
        """{db name: PnP inliers} for the query (camera at the query image's resolution); 0 where PnP fails.

        A database image that is unknown or cannot be read or lifted counts 0 inliers (with a warning).
        """
        fq, gq, hq = self.features(query_img)
        px_per_cell = self.conf.step * max(hq) / float(self.conf.image_size)
        # only the inlier count is used: no non-linear refinement (most of pycolmap's time; its inlier mask is
        # RANSAC's either way, so pycolmap's counts are the same with or without it)
        pnp = PnPConfig(backend=self.conf.backend, max_error=self.conf.max_error_cells * px_per_cell,
                        max_num_trials=self.conf.max_num_trials, confidence=self.conf.confidence, seed=self.conf.seed,
                        refine=False)
        cam = camera.scaled(hq[1], hq[0]) if (camera.width, camera.height) != (hq[1], hq[0]) else camera
        out: dict[str, int] = {}
        problems: list[tuple[str, np.ndarray, np.ndarray]] = []  # (name, query pixels, world points)
        for name in db_names:
            if name not in self.database:
                logger.warning("verification: %s is not in the database", name)
                out[name] = 0
                continue
            try:
                d = self._db_features(name)
            except PER_ITEM_ERRORS as e:  # one bad database image must not stop the query
                logger.warning("verification: %s: %s", name, e)
                out[name] = 0
                continue
            ia, ib = mutual_nn(fq, d.features)
            ib_np = ib.cpu().numpy()
            ok = d.lifted[ib_np]
            problems.append((name, cell_centers(ia.cpu().numpy(), gq, hq)[ok], d.points3d[ib_np][ok]))
        # the PnP problems are independent and pycolmap releases the GIL: solved on the thread budget
        results = map_threads(lambda pr: estimate_pose(pr[1], pr[2], cam, pnp), problems)
        for (name, _, _), res in zip(problems, results):
            out[name] = int(res.num_inliers) if res.success else 0
        return out


def verify_shortlist(shortlist: Sequence[tuple[str, float]], inliers: Mapping[str, int]) -> list[tuple[str, int]]:
    """Shortlist [(db, retrieval score)] best first -> [(db, inliers)] by decreasing inliers (stable)."""
    order = sorted(range(len(shortlist)), key=lambda i: -inliers.get(shortlist[i][0], 0))
    return [(shortlist[i][0], int(inliers.get(shortlist[i][0], 0))) for i in order]


def main(conf: VerifyConfig | Mapping[str, Any] | None, shortlists: Mapping[str, Sequence[tuple[str, float]]],
         database: Mapping[str, DbImage], queries: Sequence[tuple[str, Path, Camera]], top_k: int | None = None,
         device: str = "cpu") -> dict[str, list[tuple[str, int]]]:
    """Verify the first ``top_k`` shortlisted images of each (name, path, camera) query: {query: [(db, inliers)]}."""
    verifier = ShortlistVerifier(conf, database, device)
    out: dict[str, list[tuple[str, int]]] = {}
    for name, path, camera in tqdm(queries, desc="verification", unit="query"):
        if name not in shortlists:
            continue
        try:
            img = load_rgb(path)
        except OSError as e:
            logger.warning("query %s: %s", name, e)
            continue
        lst = list(shortlists[name])[:top_k]
        out[name] = verify_shortlist(lst, verifier.inliers(img, camera, [n for n, _ in lst]))
    return out


def cli(argv: Sequence[str] | None = None, prog: str = "python -m pose.verify_shortlist") -> int:
    """Command-line entry point (also ``python -m retrieval.rerank``); returns the exit status."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="shortlist file: 'query db [score]' lines, best first")
    p.add_argument("--db", required=True)
    p.add_argument("--db-format", default="rgbd", choices=DB_FORMATS)
    p.add_argument("--query-dir", required=True)
    p.add_argument("--queries-list", default=None, help="'name MODEL W H params...' lines (query intrinsics)")
    p.add_argument("--top-k", type=positive_int, default=40, help="shortlisted images verified per query")
    p.add_argument("--image-size", type=positive_int, default=VerifyConfig.image_size)
    p.add_argument("--max-error-cells", type=positive_float, default=VerifyConfig.max_error_cells)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    p.add_argument("--name-style", choices=NAME_STYLES, default="inloc",
                   help="names of --pairs and --out: the project's ('inloc') or relative to the InLoc root ('hloc')")
    p.add_argument("--with-scores", action="store_true", help="write the inlier counts as a third column")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    conf = VerifyConfig(image_size=a.image_size, max_error_cells=a.max_error_cells)
    print("configuration:", asdict(conf))
    try:
        database = load_database(a.db, a.db_format)
        listed = list_query_images(a.query_dir, a.queries_list, a.db_format)
        pairs = resolve_pairs(read_pairs(a.pairs), [q.name for q in listed], database, a.pairs, a.name_style)
        queries = [(q.name, q.path, q.camera) for q in listed if not q.error and q.camera is not None]
    except (InputError, OSError, ValueError) as e:
        logger.error("%s", e)
        return 2
    t0 = time.time()
    res = main(conf, pairs, database, queries, a.top_k, a.device)
    write_pairs(a.out, {to_hloc_name(q, "query", a.name_style): [(to_hloc_name(n, "db", a.name_style), float(s))
                                                                  for n, s in lst] for q, lst in res.items()},
                a.with_scores)
    print(f"re-ranked {len(res)} queries in {time.time() - t0:.1f} s -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
