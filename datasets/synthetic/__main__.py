"""Command line: ``python -m datasets.synthetic --out DIR --seed N [--size ...] [--preview] [--layouts ...]``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import datasets.synthetic
from datasets.synthetic.config import SIZES
from datasets.synthetic.generation import generate
from localize.core.errors import OutputError


def cli(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m datasets.synthetic",
                                 description=datasets.synthetic.__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical files)")
    ap.add_argument("--size", choices=list(SIZES), default="tiny", help="preset size (default tiny)")
    ap.add_argument("--preview", action="store_true", help="also write DIR/preview.png (contact sheet)")
    ap.add_argument("--layouts", default="rgbd,inloc", help="database layouts to write: rgbd,inloc (default both)")
    ap.add_argument("--force", action="store_true", help="regenerate even if a matching manifest exists (deletes only the files its manifest lists)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    layouts = tuple(s for s in args.layouts.split(",") if s)
    bad = set(layouts) - {"rgbd", "inloc"}
    if bad:
        ap.error(f"unknown layout(s) {sorted(bad)}")
    t = time.perf_counter()
    try:
        ds = generate(args.out, args.seed, args.size, preview=args.preview, layouts=layouts, force=args.force)
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{ds.root}: seed {ds.seed}, size {ds.size}, {ds.counts} ({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
