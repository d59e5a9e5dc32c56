"""Image retrieval shortlists: global descriptors of database and queries -> top-k pairs file.

CLI::

    python -m retrieval.shortlist --db DB [--db-format rgbd|tum|inloc] --queries DIR|LIST [--query-dir DIR]
        [--top-k 40] --out pairs.txt [--export-dir DIR] [--conf NAME] [--netvlad-weights FILE]
        [--index flat|ivf|ivfsq8|ivfpq] [--nprobe 16] [--device cpu|cuda] [--with-scores]

writes ``query_name db_name`` lines (hloc's pairs layout), best first per query, or ``query_name db_name
score`` with ``--with-scores`` (``localize.core.formats.write_pairs``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.database import DB_FORMATS, load_database
from datasets.queries import image_files
from localize.core.config import nonnegative_int, positive_int
from localize.core.errors import DatabaseError, InputError
from localize.core.formats import read_query_list, write_pairs
from localize.core.records import DbImage
from retrieval.config import CONFS, RetrievalConfig, resolve_conf
from retrieval.global_descriptors import descriptor_cache, global_descriptors, load_extractor
from retrieval.index import build_index

logger = logging.getLogger(__name__)


def query_items(queries: str | Path | Sequence[tuple[str, Path]],
                query_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """Queries as (name, path): a directory (recursive, names relative to it; ``datasets.queries.image_files``), a query list file, or pairs."""
    if not isinstance(queries, (str, Path)):
        return [(str(n), Path(p)) for n, p in queries]
    q = Path(queries)
    if q.is_dir():
        return [(n, q / n) for n in image_files(q)]
    if not q.exists():
        raise FileNotFoundError(f"queries not found: {q}")
    names = list(read_query_list(q)) if _looks_like_query_list(q) else \
        [ln.split()[0] for ln in q.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    roots = [Path(query_dir)] if query_dir else [q.parent / "images", q.parent]
    out = []
    for n in names:
        cand = [r / n for r in roots]
        path = next((c for c in cand if c.exists()), cand[0])
        out.append((n, path))
    return out


def _looks_like_query_list(path: Path) -> bool:
    for ln in path.read_text().splitlines():
        if ln.strip() and not ln.startswith("#"):
            return len(ln.split()) >= 4
    return False


def db_items(db: Sequence[DbImage] | Sequence[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """(name, image path) of database records or pairs."""
    return [(d.name, Path(d.image_path)) if isinstance(d, DbImage) else (str(d[0]), Path(d[1])) for d in db]


def search_pairs(db_desc: np.ndarray, db_names: Sequence[str], q_desc: np.ndarray, q_names: Sequence[str],
                 top_k: int, index: str = "flat", nprobe: int = 16) -> dict[str, list[tuple[str, float]]]:
    """Top-k database names per query by inner product: {query: [(db name, score), ...]} best first."""
    idx = build_index(db_desc, index, nprobe=nprobe) if index == "flat" or len(db_desc) >= 39 else \
        build_index(db_desc, "flat")
    scores, ids = idx.search(q_desc, top_k)
    return {q: [(db_names[j], float(s)) for s, j in zip(scores[r], ids[r], strict=True) if j >= 0]
            for r, q in enumerate(q_names)}


def main(conf: str | Mapping[str, Any] | RetrievalConfig, db: str | Path | Sequence[DbImage] | Sequence[tuple[str, Path]],
         queries: str | Path | Sequence[tuple[str, Path]], export_dir: str | Path | None, top_k: int = 40,
         out: str | Path | None = None, db_format: str = "auto", weights: str | Path | None = None,
         device: str = "cpu", index: str = "flat", nprobe: int = 16, query_dir: str | Path | None = None,
         skip_unreadable: bool = True, with_scores: bool = False) -> dict[str, list[tuple[str, float]]]:
    """Shortlist the top_k database images per query -> {query: [(db_name, score), ...]}; writes ``out`` if given
    (2 columns, or with the scores as a third with ``with_scores``).

    Unreadable query images are skipped with a warning naming them (``skip_unreadable``);
    unreadable database images raise.
    """
    conf = resolve_conf(conf, weights)
    records = list(load_database(db, db_format).values()) if isinstance(db, (str, Path)) else list(db)
    dbi = db_items(records)
    if not dbi:
        raise DatabaseError(f"database {db} has no images")
    qi = query_items(queries, query_dir)
    t0 = time.time()
    ext = load_extractor(conf, dbi, export_dir, device)
    db_desc = global_descriptors(ext, dbi, export_dir, role="db")
    failed: dict[str, str] = {}  # unreadable image / image too small for dense descriptors
    all_desc = global_descriptors(ext, qi, export_dir, role="query", finalize=False,
                                  errors=failed if skip_unreadable else None)
    for name, why in failed.items():
        logger.warning("query %s skipped: %s", name, why)
    keep = [i for i, (n, _) in enumerate(qi) if n not in failed]
    good, q_desc = [qi[i][0] for i in keep], list(all_desc[keep])
    if export_dir is not None:
        descriptor_cache(ext, export_dir).finalize()
    pairs = search_pairs(db_desc, [n for n, _ in dbi], np.stack(q_desc) if q_desc else
                         np.zeros((0, ext.dim), np.float32), good, top_k, index, nprobe)
    logger.info("retrieval: %d queries x %d database images, top-%d in %.1f s", len(good), len(dbi), top_k,
                time.time() - t0)
    if out is not None:
        write_pairs(out, pairs, with_scores)
        logger.info("wrote %s", out)
    return pairs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``python -m retrieval.shortlist``."""
    p = argparse.ArgumentParser(prog="python -m retrieval.shortlist", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--db", required=True, help="database: plain RGB-D folder, TUM sequence or InLoc root")
    p.add_argument("--db-format", default="auto", choices=DB_FORMATS)
    p.add_argument("--queries", required=True, help="query image directory, or a query list file (name first per line)")
    p.add_argument("--query-dir", default=None, help="images of a query list (default: LIST_DIR/images or LIST_DIR)")
    p.add_argument("--top-k", type=positive_int, default=40)
    p.add_argument("--out", required=True, help="pairs file: 'query db' lines (hloc), best first")
    p.add_argument("--with-scores", action="store_true", help="add the retrieval score as a third column")
    p.add_argument("--export-dir", default=None, help="cache folder (default: next to --out)")
    p.add_argument("--conf", default="dense-rootsift-vlad", choices=sorted(CONFS))
    p.add_argument("--netvlad-weights", default=None, help="weight file (official .mat or retrieval.train checkpoint)")
    p.add_argument("--index", default="flat", choices=["flat", "ivf", "ivfsq8", "ivfpq"])
    p.add_argument("--nprobe", type=positive_int, default=16)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=nonnegative_int, default=0,
                   help="torch intra-op threads (0 = torch default; 1 is fastest on small shared CPUs)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        logger.error("--device cuda but torch sees no GPU")
        return 2
    export = Path(args.export_dir) if args.export_dir else Path(args.out).resolve().parent / "retrieval-cache"
    try:
        pairs = main(args.conf, args.db, args.queries, export, args.top_k, args.out, args.db_format,
                     args.netvlad_weights, args.device, args.index, args.nprobe, args.query_dir,
                     with_scores=args.with_scores)
    except (InputError, OSError, ValueError) as e:
        logger.error("%s", e)
        return 2
    print(f"wrote {sum(len(v) for v in pairs.values())} pairs for {len(pairs)} queries to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
