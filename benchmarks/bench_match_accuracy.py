"""Match accuracy of (a) correlation + mutual NN, (b) untrained consensus, (c) trained consensus (dense NCNet)
and (d) the same trained weights through Sparse-NCNet.

Fraction of the top-N matches (by score) within 2 / 4 / 8 px of the ground truth, on held-out synthetic
pairs (a building never used for training; GT from rendered depth + poses) and on real TUM fr1/xyz pairs
1, 2 and 4 frames apart (GT from depth + poses). Each pair weighs equally. (d) runs
``matching.sparse.match.match_images_sparse`` (top-k correlation both ways, k = ``--sparse-top-k``,
submanifold consensus, no relocalization) with the same image size, the same top-N and, like (c), no
refinement; a second table gives (d) - (c) in percentage points per dataset. ``--also learned sift`` adds
(e) the learned features (``--features learned``) with the packaged consensus and (f) OpenCV SIFT + ratio test
in the same run (e.g. ``--skip-synthetic --gaps 4 8 16 --also learned sift``: issue #17's TUM pairs).

    python benchmarks/bench_match_accuracy.py [--synthetic-seed 100] [--image-size 320] [--top 200]
        [--weights matching/weights/ncnet_dense_rootsift.pth.tar] [--tum-pairs 6] [--sparse-top-k 10]
        [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oxford_eval import main as oxford_main  # benchmarks/, the script's folder
from oxford_eval import sift_matches

from localize.core.records import load_rgb
from matching.evaluate import (
    THRESHOLDS,
    depth_ground_truth,
    evaluate_tum,
    match_accuracy,
)
from matching.match import match_images
from matching.model import PACKAGED_WEIGHTS, build_ncnet
from matching.sparse.match import DEFAULT_COMBINE, DEFAULT_TOP_K, match_images_sparse

DENSE, SPARSE = "(c) trained consensus", "(d) sparse trained"


def synthetic_pairs(root: Path, split: str = "both") -> list[tuple[str, str]]:
    """Positive (class 1) pairs of a synthetic dataset folder's train and/or val CSV."""
    from matching.pairs import load_pairs

    out = []
    for sp in (("train", "val") if split == "both" else (split,)):
        pairs, _, _ = load_pairs(root, sp, "synthetic")
        out += [(p.source, p.target) for p in pairs]
    return out


def evaluate_synthetic(root: Path, methods: dict, max_pairs: int = 20,
                       thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, dict[str, float]]:
    """Mean accuracy per method over up to ``max_pairs`` positive pairs of a synthetic dataset (both directions
    of the GT checked against depth)."""
    from datasets.rgbd_folder import depth_path, read_depth_png, read_rgbd_folder

    train = root / "train"
    recs = {r.name: r for r in read_rgbd_folder(train)}
    scale = float((train / "depth_scale.txt").read_text().split()[0])
    pairs = synthetic_pairs(root)
    if len(pairs) > max_pairs:
        pairs = [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, max_pairs).round()]
    acc: dict[str, list[dict]] = {m: [] for m in methods}
    for src, tgt in pairs:
        ra, rb = recs[Path(src).name], recs[Path(tgt).name]
        img_a, img_b = load_rgb(ra.image_path), load_rgb(rb.image_path)
        da = read_depth_png(depth_path(train, ra.name), scale)
        db = read_depth_png(depth_path(train, rb.name), scale)
        gt = depth_ground_truth(da, db, ra.camera, ra.pose, rb.camera, rb.pose)
        for name, fn in methods.items():
            t0 = time.perf_counter()
            m = fn(img_a, img_b)
            r = match_accuracy(m["keypoints0"], m["keypoints1"], gt, thresholds)
            r["seconds"] = time.perf_counter() - t0
            acc[name].append(r)
    res = {}
    for name, rows in acc.items():
        summary = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "n"}
        summary["matches"] = float(np.mean([r["n"] for r in rows]))
        summary["pairs"] = float(len(rows))
        res[name] = summary
    return res


def untrained_ncnet(weights: str | Path | None):
    """NCNet with the fixed-seed random consensus init of ``build_ncnet`` (what it gives without any weight file;
    built here because ``build_ncnet`` always loads the packaged weights when they exist)."""
    from matching.consensus import NeighConsensus
    from matching.model import RANDOM_INIT_SEED

    model = build_ncnet(weights=weights)
    nc = model.neigh_consensus
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model.neigh_consensus = NeighConsensus(nc.kernel_sizes, nc.channels, symmetric=nc.symmetric)
    return model.eval()


def make_methods(weights: str | Path | None, image_size: int, top: int | None, sparse_top_k: int = DEFAULT_TOP_K,
                 sparse_combine: str = DEFAULT_COMBINE) -> dict:
    """(a) corr + mutual NN, (b) untrained consensus (fixed-seed random init), (c) trained consensus, (d) the
    model of (c) through the sparse path (same image size and top-N; neither refines; no relocalization,
    so both resize to multiples of the feature stride and match on the same grids)."""
    import logging

    logging.getLogger("matching.model").setLevel(logging.ERROR)
    mutual = build_ncnet(weights=weights, consensus=False)
    untrained = untrained_ncnet(weights)
    trained = build_ncnet(weights=weights)
    return {
        "(a) corr + mutual NN": lambda a, b: match_images(mutual, a, b, image_size, max_matches=top),
        "(b) untrained consensus": lambda a, b: match_images(untrained, a, b, image_size, max_matches=top),
        DENSE: lambda a, b: match_images(trained, a, b, image_size, max_matches=top),
        SPARSE: lambda a, b: match_images_sparse(trained, a, b, image_size, top_k=sparse_top_k, relocalization="none",
                                                 max_matches=top, combine=sparse_combine),
    }


LEARNED = "(e) learned features + consensus"
SIFT = "(f) OpenCV SIFT, ratio 0.8"


def extra_methods(names: list[str], image_size: int, top: int | None) -> dict:
    """(e) the packaged learned features with the packaged consensus (single configuration, no search), (f) OpenCV
    SIFT with the ratio test (its matches in COLMAP pixels, best ratio first, the top N)."""
    out = {}
    if "learned" in names:
        learned = build_ncnet(features="learned")
        out[LEARNED] = lambda a, b: match_images(learned, a, b, image_size, max_matches=top)
    if "sift" in names:
        def sift(a: np.ndarray, b: np.ndarray) -> dict:
            m = sift_matches(a, b)
            return {"keypoints0": m["keypoints0"][:top] + 0.5, "keypoints1": m["keypoints1"][:top] + 0.5,
                    "scores": m["scores"][:top]}

        out[SIFT] = sift
    return out


def table(rows: list[tuple[str, str, dict]], thresholds: tuple[float, ...] = THRESHOLDS) -> str:
    """Markdown table: data, method, matches, fractions within thresholds, median error."""
    lines = ["| data | method | matches | " + " | ".join(f"<= {t:g} px" for t in thresholds) + " | median px |",
             "|---" * (len(thresholds) + 4) + "|"]
    for data, name, r in rows:
        lines.append(f"| {data} | {name} | {r['matches']:.0f} | "
                     + " | ".join(f"{100 * r[f'within_{t:g}px']:.1f}%" for t in thresholds)
                     + f" | {r['median_error']:.1f} |")
    return "\n".join(lines)


def sparse_vs_dense(rows: list[tuple[str, str, dict]], dense: str = DENSE, sparse: str = SPARSE,
                    thresholds: tuple[float, ...] = THRESHOLDS) -> list[dict]:
    """Per dataset of ``rows``: (sparse - dense) in percentage points at each threshold, matches, seconds."""
    by = {(data, name): r for data, name, r in rows}
    out = []
    for data in dict.fromkeys(d for d, _, _ in rows):
        if (data, dense) not in by or (data, sparse) not in by:
            continue
        d, s = by[(data, dense)], by[(data, sparse)]
        row = {"data": data, "matches_dense": d["matches"], "matches_sparse": s["matches"],
               "seconds_dense": d["seconds"], "seconds_sparse": s["seconds"]}
        for t in thresholds:
            k = f"within_{t:g}px"
            row[f"dense_{k}"], row[f"sparse_{k}"] = 100 * d[k], 100 * s[k]
            row[f"diff_{k}"] = 100 * (s[k] - d[k])
        out.append(row)
    return out


def comparison_table(comp: list[dict], thresholds: tuple[float, ...] = THRESHOLDS) -> str:
    """Markdown table of ``sparse_vs_dense``: dense / sparse % and the difference (points) per threshold."""
    lines = ["| data | matches dense / sparse | " + " | ".join(f"<= {t:g} px dense / sparse (diff)" for t in thresholds)
             + " | s/pair dense / sparse |", "|---" * (len(thresholds) + 3) + "|"]
    for c in comp:
        cells = [f"{c[f'dense_within_{t:g}px']:.1f}% / {c[f'sparse_within_{t:g}px']:.1f}% "
                 f"({c[f'diff_within_{t:g}px']:+.1f})" for t in thresholds]
        lines.append(f"| {c['data']} | {c['matches_dense']:.0f} / {c['matches_sparse']:.0f} | " + " | ".join(cells)
                     + f" | {c['seconds_dense']:.2f} / {c['seconds_sparse']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(PACKAGED_WEIGHTS), help="trained checkpoint for (c)")
    ap.add_argument("--synthetic-root", default="outputs/ncnet_synthetic", help="where held-out buildings live")
    ap.add_argument("--synthetic-seed", type=int, default=100, help="held-out building seed (not trained on)")
    ap.add_argument("--synthetic-size", default="small")
    ap.add_argument("--synthetic-pairs", type=int, default=20)
    ap.add_argument("--tum", default=str(ROOT.parent / "shared" / "data" / "tum_fr1_xyz"))
    ap.add_argument("--tum-pairs", type=int, default=6, help="pairs per frame gap")
    ap.add_argument("--gaps", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--image-size", type=int, default=320, help="longer image side for matching")
    ap.add_argument("--top", type=int, default=200, help="evaluate the top-N matches by score (0 = all)")
    ap.add_argument("--sparse-top-k", type=int, default=DEFAULT_TOP_K, help="(d): top-k of each cell, both ways")
    ap.add_argument("--sparse-combine", choices=["max", "sum"], default=DEFAULT_COMBINE,
                    help="(d): entries found both ways keep c ('max') or get 2c ('sum', official code)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-tum", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--also", nargs="*", choices=["learned", "sift"], default=[],
                    help="also (e) the learned features and / or (f) OpenCV SIFT in the same run")
    ap.add_argument("--oxford", nargs="*", metavar="SEQ", help="instead: Oxford sequences (default wall boat bark), "
                    "learned features vs OpenCV SIFT, MMA@1-10 px of the top 1000 + homography (benchmarks/oxford_eval.py)")
    args, rest = ap.parse_known_args(argv)
    if args.oxford is not None:
        return oxford_main(["--seqs", *(args.oxford or ["wall", "boat", "bark"]), "--threads", str(args.threads),
                            "--image-size", str(args.image_size if args.image_size != 320 else 640), *rest]
                           + (["--json", args.json] if args.json else []))
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    torch.set_num_threads(args.threads)
    top = args.top or None
    methods = make_methods(args.weights, args.image_size, top, args.sparse_top_k, args.sparse_combine)
    methods.update(extra_methods(args.also, args.image_size, top))
    rows, out = [], {"args": vars(args)}
    if not args.skip_synthetic:
        from datasets.synthetic import generate

        root = Path(args.synthetic_root) / f"{args.synthetic_size}_s{args.synthetic_seed}"
        generate(root, seed=args.synthetic_seed, size=args.synthetic_size, layouts=("rgbd",))
        res = evaluate_synthetic(root, methods, args.synthetic_pairs)
        out["synthetic"] = res
        rows += [(f"synthetic s{args.synthetic_seed} ({int(r['pairs'])} pairs)", n, r) for n, r in res.items()]
    if not args.skip_tum and Path(args.tum).exists():
        res = evaluate_tum(args.tum, methods, tuple(args.gaps), args.tum_pairs)
        out["tum"] = {n: {str(g): v for g, v in per.items()} for n, per in res.items()}
        for gap in args.gaps:
            rows += [(f"TUM gap {gap}", n, per[gap]) for n, per in res.items()]
    print(f"image size {args.image_size}, top {top or 'all'} matches, weights {args.weights}")
    print(table(rows))
    comp = sparse_vs_dense(rows)
    out["sparse_vs_dense"] = comp
    print(f"\nsparse (d, top-k {args.sparse_top_k}, '{args.sparse_combine}') vs dense (c), same weights: "
          "% within threshold, (d) - (c) in points")
    print(comparison_table(comp))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
