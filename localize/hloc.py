"""Export one run's shortlists, matches and global descriptors in hloc's layout (``localize.run --export-hloc DIR``).

Writes into DIR (layouts: ``localize.core.hloc``):

* ``pairs.txt`` — the matched pairs (each query's first verified images, best first, ``q r`` lines):
  exactly the pairs of ``matches.h5``, as hloc's localization expects;
* ``shortlist.txt`` — each query's whole shortlist after verification, best first (for hloc's matchers);
* ``features.h5`` + ``matches.h5`` — the NCNet matches of the matched pairs (exact keypoints per image,
  hloc pixels, ``matches0`` padded to the query's keypoint count, ``matching_scores0``);
* ``global-feats.h5`` — the retrieval's global descriptors of database images and queries (when the
  run retrieved; not with ``--pairs``).

Names follow ``name_style``: ``inloc`` keeps the project's names, ``hloc`` prefixes InLoc's
``database/cutouts/`` and ``query/iphone7/`` (hloc's InLoc names).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from localize.core.cache import StageCache
from localize.core.formats import write_pairs
from localize.core.hloc import (
    pair_matches_to_hloc,
    to_hloc_name,
    write_features,
    write_global_descriptors,
    write_matches,
)
from localize.pipeline.context import RunContext
from retrieval.global_descriptors import global_descriptors, load_extractor
from retrieval.shortlist import db_items

logger = logging.getLogger("localize.run")


@dataclass
class HlocExport:
    """Paths written by ``export_run`` (``global_feats`` None when the run took an external pairs file)."""

    pairs: Path
    features: Path
    matches: Path
    global_feats: Path | None
    num_pairs: int
    dropped_border: int
    dropped_duplicate: int


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header."""
    with Image.open(path) as im:
        return im.size


def export_run(ctx: RunContext, shortlists: dict[str, list[tuple[str, float]]], mcache: StageCache,
               out_dir: str | Path, name_style: str = "inloc") -> HlocExport:
    """Write pairs.txt, shortlist.txt, features.h5, matches.h5 (and global-feats.h5 when the run retrieved) into ``out_dir``."""
    out_dir = Path(out_dir)
    qname = {q.name: to_hloc_name(q.name, "query", name_style) for q in ctx.queries}
    dname = {n: to_hloc_name(n, "db", name_style) for n in ctx.database}
    write_pairs(out_dir / "shortlist.txt", {qname[q.name]: [(dname[d], s) for d, s in shortlists[q.name] if d in dname]
                                            for q in ctx.queries if q.name in shortlists})
    pair_matches, sizes = {}, {}
    for q in ctx.queries:
        for db, _ in shortlists.get(q.name, [])[:ctx.conf.pairs_per_query]:
            if not mcache.has(f"{q.name}/{db}") or db not in ctx.database:
                continue
            e = mcache.get(f"{q.name}/{db}")
            pair_matches[(qname[q.name], dname[db])] = (e["keypoints0"], e["keypoints1"], e["scores"])
            sizes[qname[q.name]] = _image_size(q.path)
            cam = ctx.database[db].camera
            sizes[dname[db]] = (cam.width, cam.height)
    pairs_path = out_dir / "pairs.txt"
    matched: dict[str, list[tuple[str, float]]] = {}
    for q, d in pair_matches:
        matched.setdefault(q, []).append((d, float("nan")))
    write_pairs(pairs_path, matched)
    hm = pair_matches_to_hloc(pair_matches, sizes)
    write_features(out_dir / "features.h5", hm)
    write_matches(out_dir / "matches.h5", hm)
    global_path = None
    if ctx.pairs is None:
        conf = ctx.conf.retrieval
        dbi = db_items(list(ctx.database.values()))
        ext = load_extractor(conf.method, dbi, ctx.export_dir, ctx.device, weights=conf.weights)
        qi = [(q.name, q.path) for q in ctx.queries]
        desc = dict(zip([dname[n] for n, _ in dbi], global_descriptors(ext, dbi, ctx.export_dir, role="db")))
        for (n, _), v in zip(qi, global_descriptors(ext, qi, ctx.export_dir, role="query"), strict=True):
            desc[qname[n]] = v
        gsizes = {dname[n]: (r.camera.width, r.camera.height) for n, r in ctx.database.items()}
        gsizes.update({qname[q.name]: _image_size(q.path) for q in ctx.queries})
        global_path = out_dir / "global-feats.h5"
        write_global_descriptors(global_path, {k: np.asarray(v) for k, v in desc.items()}, gsizes)
    logger.info("hloc export: %d pairs with matches to %s (%d matches within half a pixel of the border and %d "
                "repeated query keypoints left out)", len(pair_matches), out_dir, hm.dropped_border,
                hm.dropped_duplicate)
    return HlocExport(pairs_path, out_dir / "features.h5", out_dir / "matches.h5", global_path, len(pair_matches),
                      hm.dropped_border, hm.dropped_duplicate)
