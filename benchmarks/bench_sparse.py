"""Sparse-NCNet vs dense NCNet: time and peak memory of the consensus stage, and a 3200x2400 pair.

    python benchmarks/bench_sparse.py [--device cpu|cuda] [--quick] [--threads N] [--dense-max-cells N]

Features: weight-free dense RootSIFT (128 channels) of two TUM fr1/xyz frames (2 apart; a procedural
texture when the data is missing), resized so the feature grids have the benchmarked sizes (step 8).
Consensus: the default [3,3]/[16,1] symmetric network (fixed-seed weights; speed does not depend on
them). Stages: corr (dense 4D correlation / top-k sparse correlation, k=10), filter (mutual NN ->
consensus -> mutual NN; the sparse one includes the neighbour lookup), extract (matches).
Peak memory: CPU = ru_maxrss of a fresh subprocess per case minus its RSS before the stage; CUDA =
torch.cuda.max_memory_allocated. Dense cases above --dense-max-cells are timed on a slab of A rows and
extrapolated (marked "estimated"). Prints a table on stderr and ONE JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

SIZES = [(25, 25), (50, 38), (100, 75)]
SPARSE_ONLY = [(200, 150)]
TOP_K = 10


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def tum_images() -> tuple[np.ndarray, np.ndarray]:
    root = ROOT.parent / "shared" / "data" / "tum_fr1_xyz"
    if not root.exists():
        root = ROOT.parent / "shared" / "data" / "tum_fr1_xyz"
    try:
        from datasets.tum import read_tum_frames
        from localize.core.records import load_rgb

        frames = read_tum_frames(root)
        return load_rgb(root / frames[10].rgb_file), load_rgb(root / frames[12].rgb_file)
    except Exception:  # noqa: BLE001 - data missing: procedural texture, shifted copy
        import cv2

        rng = np.random.default_rng(0)
        big = cv2.resize((rng.random((60, 80, 3)) * 255).astype(np.uint8), (680, 520), interpolation=cv2.INTER_CUBIC)
        return big[:480, :640].copy(), big[12:492, 20:660].copy()


def make_model(device: str, step: int = 8):
    from matching.consensus import NeighConsensus
    from matching.features import DenseRootSIFTFeatures

    torch.manual_seed(0)
    return DenseRootSIFTFeatures(step=step).to(device), NeighConsensus([3, 3], [16, 1]).to(device).eval()


def features_at(grid_hw: tuple[int, int], device: str, step: int = 8):
    from matching.preprocess import image_to_tensor

    fe, nc = make_model(device, step)
    img_a, img_b = tum_images()
    h, w = grid_hw
    ta = image_to_tensor(img_a, (h * step, w * step), device)
    tb = image_to_tensor(img_b, (h * step, w * step), device)
    with torch.no_grad():
        return fe(ta), fe(tb), nc


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_reset(device: str) -> float:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return rss_mb()


def peak_read(device: str, base: float) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20 - base
    return max(0.0, maxrss_mb() - base)


@torch.no_grad()
def case_sparse(grid, device: str) -> dict:
    from matching.sparse.correlation import sparse_topk_correlation
    from matching.sparse.extract import extract_sparse_matches
    from matching.sparse.match import sparse_filter

    fa, fb, nc = features_at(grid, device)
    base = peak_reset(device)
    t0 = time.perf_counter()
    corr = sparse_topk_correlation(fa, fb, TOP_K)
    sync(device)
    t1 = time.perf_counter()
    out = sparse_filter(corr, nc)
    sync(device)
    t2 = time.perf_counter()
    m = extract_sparse_matches(out)
    sync(device)
    t3 = time.perf_counter()
    return {"kind": "sparse", "grid": list(grid), "entries": corr.n, "corr_s": t1 - t0, "filter_s": t2 - t1,
            "extract_s": t3 - t2, "total_s": t3 - t0, "peak_mb": peak_read(device, base),
            "matches": int(len(m["scores"]))}


@torch.no_grad()
def case_dense(grid, device: str, max_cells: float) -> dict:
    from matching.correlation import correlation_4d
    from matching.extract import extract_matches
    from matching.mutual import mutual_matching

    fa, fb, nc = features_at(grid, device)
    h, w = grid
    cells = float(h * w) ** 2
    rows = h
    if cells > max_cells:  # time a slab of A rows, extrapolate linearly
        rows = max(4, int(h * max_cells / cells))
        fa = fa[:, :, :rows]
    base = peak_reset(device)
    t0 = time.perf_counter()
    corr = correlation_4d(fa, fb)
    sync(device)
    t1 = time.perf_counter()
    out = mutual_matching(nc(mutual_matching(corr)))
    sync(device)
    t2 = time.perf_counter()
    m = extract_matches(out, (h, w), (h, w))
    sync(device)
    t3 = time.perf_counter()
    s = h / rows
    res = {"kind": "dense", "grid": list(grid), "cells": cells, "corr_s": (t1 - t0) * s, "filter_s": (t2 - t1) * s,
           "extract_s": (t3 - t2) * s, "total_s": (t3 - t0) * s, "peak_mb": peak_read(device, base) * s,
           "matches": int(len(m["scores"])), "estimated": rows < h}
    if rows < h:
        res["measured_rows"] = rows
    return res


@torch.no_grad()
def case_inloc(device: str, step: int = 16) -> dict:
    """A 3200x2400 pair through the sparse path with H+S relocalization (dense-rootsift, step 16)."""
    import cv2

    from matching.preprocess import image_to_tensor
    from matching.sparse.match import sparse_match_features

    img_a, img_b = tum_images()
    big_a = cv2.resize(img_a, (3200, 2400), interpolation=cv2.INTER_CUBIC)
    big_b = cv2.resize(img_b, (3200, 2400), interpolation=cv2.INTER_CUBIC)
    fe, nc = make_model(device, step)
    base = peak_reset(device)
    t0 = time.perf_counter()
    ta, tb = image_to_tensor(big_a, (2400, 3200), device), image_to_tensor(big_b, (2400, 3200), device)
    fa, fb = fe(ta), fe(tb)
    sync(device)
    t1 = time.perf_counter()
    m = sparse_match_features(fa, fb, nc, (2400, 3200), (2400, 3200), TOP_K, "hard+soft")
    sync(device)
    t2 = time.perf_counter()
    return {"kind": "sparse_3200x2400", "features_grid": list(fa.shape[-2:]), "matching_grid":
            [fa.shape[-2] // 2, fa.shape[-1] // 2], "entries": int(m["n_entries"]), "features_s": t1 - t0,
            "match_s": t2 - t1, "total_s": t2 - t0, "peak_mb": peak_read(device, base),
            "process_maxrss_mb": maxrss_mb(), "matches": int(len(m["scores"]))}


@torch.no_grad()
def agreement(device: str, grid=(50, 38)) -> dict:
    """Sparse filter on CUDA vs CPU (same sites) and sparse vs masked-dense are tested in tests/."""
    from matching.sparse.correlation import sparse_topk_correlation
    from matching.sparse.match import sparse_filter

    fa, fb, nc = features_at(grid, "cpu")
    corr = sparse_topk_correlation(fa, fb, TOP_K)
    ref = sparse_filter(corr, nc).values
    out = sparse_filter(corr.to(device), nc.to(device)).values.cpu()
    err = float((out - ref).abs().max() / ref.abs().max().clamp(min=1e-30))
    return {"grid": list(grid), "max_rel_err": err, "ok": err < 1e-4}


def run_case(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"]) if spec.get("threads") else None
    if spec["case"] == "sparse":
        return case_sparse(tuple(spec["grid"]), spec["device"])
    if spec["case"] == "dense":
        return case_dense(tuple(spec["grid"]), spec["device"], spec["max_cells"])
    if spec["case"] == "inloc":
        return case_inloc(spec["device"])
    raise ValueError(spec["case"])


def run_isolated(spec: dict) -> dict:
    """CPU: each case in a fresh process so ru_maxrss is its own peak."""
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"kind": spec["case"], "grid": spec.get("grid"), "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- accuracy
def box_consensus():
    """A hand-made non-negative consensus (both layers 4D box averages): a stand-in for trained weights."""
    from matching.consensus import NeighConsensus

    nc = NeighConsensus([3, 3], [16, 1])
    with torch.no_grad():
        l0, l1 = nc.conv_layers()
        l0.weight.fill_(1.0 / 81)
        l0.bias.zero_()
        l1.weight.fill_(1.0 / (16 * 81))
        l1.bias.zero_()
    return nc.eval()


def accuracy_methods(image_size: int, variants: tuple[str, ...]) -> dict:
    """name -> f(img_a, img_b) -> matches, dense and sparse with the same features and consensus weights."""
    from matching.consensus import NeighConsensus
    from matching.features import DenseRootSIFTFeatures
    from matching.match import match_images
    from matching.model import NCNet
    from matching.sparse.match import match_images_sparse

    fe = DenseRootSIFTFeatures(step=8)
    torch.manual_seed(0)
    ncs = {"mutual-only": None, "random-init": NeighConsensus([3, 3], [16, 1]).eval(), "box": box_consensus()}
    methods = {}
    for v in variants:
        nc = ncs[v]
        flat, reloc = NCNet(fe, nc, 1).eval(), NCNet(fe, nc, 2).eval()
        methods[f"{v} dense"] = lambda a, b, m=flat: match_images(m, a, b, image_size)
        methods[f"{v} sparse"] = lambda a, b, m=flat: match_images_sparse(m, a, b, image_size, TOP_K, "none")
        if v != "random-init":
            methods[f"{v} dense reloc"] = lambda a, b, m=reloc: match_images(m, a, b, image_size)
            methods[f"{v} sparse hard (corr-pool)"] = lambda a, b, m=flat: match_images_sparse(
                m, a, b, image_size, TOP_K, "hard", pool_mode="corr")
            methods[f"{v} sparse hard"] = lambda a, b, m=flat: match_images_sparse(m, a, b, image_size, TOP_K, "hard")
            methods[f"{v} sparse H+S"] = lambda a, b, m=flat: match_images_sparse(m, a, b, image_size, TOP_K,
                                                                                   "hard+soft")
    return methods


def synthetic_pairs(n_pairs: int):
    """(img_a, img_b, gt) for query -> best database image pairs of the tiny synthetic dataset (seed 0)."""
    from datasets import synthetic as S
    from datasets.rgbd_folder import read_rgbd_folder
    from localize.core.records import load_rgb

    root = Path("/tmp/ncdata/tiny_s0")
    if not S.is_complete(root, 0, "tiny"):
        root = S.ensure_dataset(Path("/tmp/sparse_bench_synth"), seed=0, size="tiny")
    db = {d.name: d for d in read_rgbd_folder(root / "db")}
    qs = {d.name: d for d in read_rgbd_folder(root / "queries")}
    meta = json.loads((root / "queries" / "queries_meta.json").read_text())
    for qn, m in list(meta.items())[:n_pairs]:
        q, d = qs[qn], db[m["best_db"]]
        img_a, img_b = load_rgb(q.image_path), load_rgb(d.image_path)
        uv_a, uv_b = S.gt_correspondences(q, d, step=1)
        H, W = img_a.shape[:2]
        table = np.full((H, W, 2), np.nan)
        ia = np.floor(uv_a).astype(int)
        table[ia[:, 1], ia[:, 0]] = uv_b

        def gt(kp, table=table, H=H, W=W):
            ix = np.clip(np.floor(kp[:, 0]).astype(int), 0, W - 1)
            iy = np.clip(np.floor(kp[:, 1]).astype(int), 0, H - 1)
            proj = table[iy, ix]
            return np.nan_to_num(proj), np.isfinite(proj[:, 0])
        yield img_a, img_b, gt


def run_accuracy(args) -> dict:
    from matching.evaluate import evaluate_tum, format_table, match_accuracy

    variants = tuple(args.variants)
    methods = accuracy_methods(args.image_size, variants)
    tum = ROOT.parent / "shared" / "data" / "tum_fr1_xyz"
    res_tum = evaluate_tum(tum, methods, gaps=tuple(args.gaps), n_pairs=args.pairs)
    print(f"TUM fr1/xyz (dense-rootsift step 8, image size {args.image_size})\n" + format_table(res_tum),
          file=sys.stderr, flush=True)
    syn = {name: [] for name in methods}
    for img_a, img_b, gt in synthetic_pairs(args.synthetic_pairs):
        for name, fn in methods.items():
            t = time.perf_counter()
            m = fn(img_a, img_b)
            r = match_accuracy(m["keypoints0"], m["keypoints1"], gt)
            r["seconds"] = time.perf_counter() - t
            syn[name].append(r)
    res_syn = {name: {0: {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "n"}
                      | {"matches": float(np.mean([r["n"] for r in rows]))}} for name, rows in syn.items() if rows}
    print("synthetic tiny (query -> best db image)\n" + format_table(res_syn), file=sys.stderr, flush=True)
    return {"tum": {m: {str(g): v for g, v in r.items()} for m, r in res_tum.items()},
            "synthetic": {m: r[0] for m, r in res_syn.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="sizes 25x25 and 50x38 (+ sparse 200x150, 3200 pair)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--dense-max-cells", type=float, default=6e7,
                    help="dense cases with more 4D cells are timed on a slab and extrapolated")
    ap.add_argument("--no-inloc", action="store_true", help="skip the 3200x2400 pair")
    ap.add_argument("--accuracy", action="store_true", help="match accuracy sparse vs dense (TUM + synthetic)")
    ap.add_argument("--image-size", type=int, default=320, help="--accuracy: longer image side")
    ap.add_argument("--gaps", type=int, nargs="+", default=[2, 4], help="--accuracy: TUM frame gaps")
    ap.add_argument("--pairs", type=int, default=3, help="--accuracy: TUM pairs per gap")
    ap.add_argument("--synthetic-pairs", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=["mutual-only", "box", "random-init"],
                    choices=["mutual-only", "box", "random-init"], help="--accuracy: consensus weights")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device")
    if args.accuracy:
        print(json.dumps({"accuracy": run_accuracy(args)}))
        return 0
    sizes = SIZES[:2] if args.quick else SIZES
    if args.quick and args.device == "cpu":
        args.dense_max_cells = min(args.dense_max_cells, 4e6)
    specs = []
    for g in sizes:
        specs.append({"case": "dense", "grid": list(g), "max_cells": args.dense_max_cells})
        specs.append({"case": "sparse", "grid": list(g)})
    for g in SPARSE_ONLY:
        specs.append({"case": "sparse", "grid": list(g)})
    if not args.no_inloc:
        specs.append({"case": "inloc"})
    results = []
    for spec in specs:
        spec.update(device=args.device, threads=args.threads)
        t = time.perf_counter()
        res = run_isolated(spec) if args.device == "cpu" else run_case(spec)
        if args.device == "cuda":
            torch.cuda.empty_cache()
        results.append(res)
        print(f"{res.get('kind')} {res.get('grid', res.get('features_grid'))}: "
              + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()
                          if k not in ("kind", "grid")) + f"  [{time.perf_counter() - t:.1f}s wall]",
              file=sys.stderr, flush=True)
    out = {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
           "threads": torch.get_num_threads(), "top_k": TOP_K, "results": results}
    if args.device == "cuda":
        out["cpu_gpu_agreement"] = agreement("cuda", (25, 25) if args.quick else (50, 38))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
