"""NCNet speed/memory benchmark: pairs/s, stage times, peak memory, conv4d methods, GEMM roofline.

Examples:
  python benchmarks/bench_ncnet.py                       # 400x400 and 800x600, both configurations, CPU
  python benchmarks/bench_ncnet.py --device cuda         # + CPU/GPU agreement check (fp32 and fp16)
  python benchmarks/bench_ncnet.py --consensus-vs-loop   # consensus stage vs the conv3d-loop formulation
  python benchmarks/bench_ncnet.py --inloc               # a query vs 10 database images, 3200x2400 + relocalization:
                                                         # old path (pairwise, float32) vs new (features once)
  python benchmarks/bench_ncnet.py --inloc --inloc-size 1600x1200 --db 4 --old-pairs 1   # development run
  python benchmarks/bench_ncnet.py --inloc --store      # + the query with the database features stored (float16)
Each case runs in a subprocess so its peak RSS (CPU) is its own. Random weights: timings only.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

CONFIGS = {"ivd": ([3, 3], [16, 1]), "pfpascal": ([5, 5, 5], [16, 16, 1])}
MAX_MATCHES_INLOC = 20000  # the inloc-ncnet preset's max_matches


def sync(device: str) -> None:
    """Wait for queued CUDA work."""
    if device == "cuda":
        torch.cuda.synchronize()


def gemm_gflops(device: str, sizes: tuple[int, ...] = (2048, 4096), reps: int = 3) -> float:
    """Achievable float32 GFLOP/s: the best square GEMM over ``sizes`` (best of ``reps`` each).

    This is the machine's FLOP limit used for "FLOP-limited time" (FLOPs / this rate)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b
        for _ in range(reps):
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def run_case(features: str, config: str, width: int, height: int, device: str, reloc: bool, half: bool,
             repeat: int) -> dict:
    """Time one configuration in this process; returns a JSON-able dict."""
    from matching.consensus import neigh_consensus_flops
    from matching.model import build_ncnet

    kernels, channels = CONFIGS[config]
    model = build_ncnet(features=features, allow_random_backbone=True, relocalization_k=2 if reloc else 1,
                        half=half, device=device)
    if model.neigh_consensus is not None and list(model.neigh_consensus.kernel_sizes) != kernels:
        from matching.consensus import NeighConsensus
        model.neigh_consensus = NeighConsensus(kernels, channels, half=half).to(device).eval()
    mult = model.cell_multiple
    h, w = height // mult * mult, width // mult * mult
    a, b = torch.rand(1, 3, h, w, device=device), torch.rand(1, 3, h, w, device=device)
    times = {"backbone": [], "correlation+mutual": [], "consensus": [], "total": []}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for _ in range(repeat):
            sync(device)
            t0 = time.perf_counter()
            fa, fb = model.features(a), model.features(b)
            sync(device)
            t1 = time.perf_counter()
            corr, _ = model.correlate(fa, fb)
            from matching.mutual import mutual_matching
            corr = mutual_matching(corr)
            sync(device)
            t2 = time.perf_counter()
            corr = mutual_matching(model.neigh_consensus(corr))
            sync(device)
            t3 = time.perf_counter()
            times["backbone"].append(t1 - t0)
            times["correlation+mutual"].append(t2 - t1)
            times["consensus"].append(t3 - t2)
            times["total"].append(t3 - t0)
    shape = tuple(corr.shape[2:])
    best = {k: min(v) for k, v in times.items()}
    cells = float(torch.tensor(shape).prod())
    out = {"features": features, "config": config, "size": f"{w}x{h}", "device": device, "reloc": reloc,
           "half": half, "corr_shape": shape, "cells": cells, "seconds": best, "pairs_per_s": 1.0 / best["total"],
           "consensus_gflop": neigh_consensus_flops(*shape, kernels, channels) / 1e9,
           "torch_threads": torch.get_num_threads()}
    out["consensus_gflops_achieved"] = out["consensus_gflop"] / best["consensus"]
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def consensus_vs_loop(shape: tuple[int, int, int, int], config: str, device: str, gflops: float) -> dict:
    """Consensus stage (ours, every conv4d method) vs the official conv3d-loop formulation, + FLOP bound."""
    from matching.consensus import NeighConsensus, neigh_consensus_flops, transpose_ab
    from matching.conv4d import METHODS, conv4d

    kernels, channels = CONFIGS[config]
    torch.manual_seed(0)
    nc = NeighConsensus(kernels, channels).to(device).eval()
    c = torch.rand(1, 1, *shape, device=device)

    def official(x: torch.Tensor) -> torch.Tensor:
        def net(y: torch.Tensor) -> torch.Tensor:
            for layer in nc.conv_layers():
                y = torch.relu(conv4d(y, layer.weight, layer.bias, method="slice_loop", max_chunk_bytes=2**40))
            return y
        return net(x) + transpose_ab(net(transpose_ab(x).contiguous()))

    def timed(fn, reps: int = 3) -> tuple[float, torch.Tensor]:
        best, out = float("inf"), None
        for _ in range(reps):
            sync(device)
            t = time.perf_counter()
            out = fn()
            sync(device)
            best = min(best, time.perf_counter() - t)
        return best, out

    res = {"shape": shape, "config": config, "device": device}
    with torch.no_grad():
        t_loop, ref = timed(lambda: official(c), reps=2)
        res["conv3d_loop_s"] = t_loop
        for m in ("auto",) + METHODS:
            if m == "slice_loop" or (m == "gemm" and max(channels[:-1]) > 1 and len(channels) > 2):
                continue  # gemm on 16->16 k=5 layers: 10^4-channel im2col, minutes; auto uses it where it pays
            nc.method = m
            t, out = timed(lambda: nc(c))
            res[f"ours_{m}_s"] = t
            res[f"ours_{m}_relerr"] = float((out - ref).abs().max() / ref.abs().max())
        # the machine's speed drifts (shared host): time GEMM and our consensus in alternation and compare
        # the best of each, so both see the same machine
        nc.method = "auto"
        flops = neigh_consensus_flops(*shape, kernels, channels)
        rates, times = [gflops], [res["ours_auto_s"]]
        for _ in range(5):
            rates.append(gemm_gflops(device, sizes=(2048,), reps=2))
            time.sleep(0.05)  # let the GEMM's OpenMP threads go idle
            times.append(timed(lambda: nc(c), reps=2)[0])
    res["gflop"] = flops / 1e9
    res["gemm_gflops_best"] = max(rates)
    res["ours_auto_best_s"] = min(times)
    res["flop_limited_s"] = flops / (max(rates) * 1e9)
    res["auto_speedup_vs_loop"] = t_loop / min(times)
    res["auto_vs_flop_limited"] = min(times) / res["flop_limited_s"]
    return res


def consensus_only(shape: tuple[int, int, int, int], config: str, device: str, method: str) -> dict:
    """Time and peak memory of the consensus stage alone on a random [1, 1, *shape] tensor (this process)."""
    from matching.consensus import NeighConsensus, neigh_consensus_flops

    kernels, channels = CONFIGS[config]
    torch.manual_seed(0)
    nc = NeighConsensus(kernels, channels, method=method).to(device).eval()
    c = torch.rand(1, 1, *shape, device=device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        sync(device)
        t = time.perf_counter()
        out = nc(c)
        sync(device)
        dt = time.perf_counter() - t
    res = {"shape": shape, "config": config, "device": device, "method": method, "seconds": dt,
           "gflop": neigh_consensus_flops(*shape, kernels, channels) / 1e9, "input_mb": c.numel() * 4 / 2**20,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": rss0,
           "finite": bool(torch.isfinite(out).all())}
    res["gflops_achieved"] = res["gflop"] / dt
    if device == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def agreement(device: str = "cuda") -> dict:
    """Max relative difference CPU vs GPU (fp32 and fp16 consensus) of the filtered correlation."""
    from matching.consensus import NeighConsensus

    out = {}
    for config, (kernels, channels) in CONFIGS.items():
        torch.manual_seed(0)
        nc = NeighConsensus(kernels, channels).eval()
        c = torch.rand(1, 1, 13, 17, 15, 11)
        with torch.no_grad():
            ref = nc(c)
            g32 = nc.to(device)(c.to(device)).cpu()
            nc.half = True
            g16 = nc(c.to(device)).cpu()
        out[config] = {"fp32_relerr": float((g32 - ref).abs().max() / ref.abs().max()),
                       "fp16_relerr": float((g16 - ref).abs().max() / ref.abs().max())}
    return out


def textured_images(width: int, height: int, n: int, seed: int = 0) -> list:
    """n H x W x 3 uint8 views of one smooth random texture (shifted, slightly zoomed crops), RGB."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    pad = max(width, height) // 8
    small = rng.random(((height + 2 * pad) // 8, (width + 2 * pad) // 8)).astype(np.float32)
    big = cv2.resize(small, (width + 2 * pad, height + 2 * pad), interpolation=cv2.INTER_CUBIC)
    big = cv2.GaussianBlur(big, (0, 0), 2.0) + 0.15 * rng.random(big.shape).astype(np.float32)
    big = ((big - big.mean()) / big.std() * 45 + 128).clip(0, 255).astype(np.uint8)
    out = []
    for i in range(n):
        dx, dy = rng.integers(0, pad, 2)
        zoom = 1.0 + 0.05 * (i % 3)
        w, h = int(width / zoom), int(height / zoom)
        crop = big[dy:dy + h, dx:dx + w]
        out.append(np.repeat(cv2.resize(crop, (width, height))[..., None], 3, 2))
    return out


def inloc_path(path: str, width: int, height: int, n_db: int, pairs: int, precision: str, channels_last: bool,
               out_npz: str, store_dir: str | None = None) -> dict:
    """One InLoc-style query against database images in this process (random official-layout weights).

    path 'old': today's pairwise matching (float32 NCHW backbone, slab correlation, both images' features
    recomputed for every pair) on the first ``pairs`` pairs; 'new': each image's features once (query once,
    then each database image), backbone in ``precision`` / channels-last, blocked correlation, all
    ``n_db`` pairs; with ``store_dir``, then the database features are written to a float16 ``FeatureStore``
    there (not timed: the offline description of the database) and the query is matched again with them read
    back (the query's features computed anew). Matches of each pair go to ``out_npz``."""
    import numpy as np

    from matching.features import FeatureStore, resolve_precision
    from matching.match import image_features, match_dense_head, match_images
    from matching.model import build_ncnet

    size = max(width, height)
    torch.manual_seed(0)  # the same random backbone in both paths' processes
    model = build_ncnet(features="resnet101", allow_random_backbone=True, relocalization_k=2, device="cpu")
    imgs = textured_images(width, height, n_db + 1)
    query, db = imgs[0], imgs[1:]
    dtype = resolve_precision(precision) if path == "new" else torch.float32
    model.features.set_compute(dtype, channels_last and path == "new")
    model.correlation_method = "blocked" if path == "new" else "slab"
    matches, backbone_s, untimed = {}, 0.0, 0.0
    store = None
    if store_dir is not None and path == "new":
        import cv2

        store = FeatureStore(store_dir, {"benchmark": "inloc", "size": size})
        for i in range(pairs):  # the store is keyed by file content: the database images as files
            cv2.imwrite(f"{store_dir}/db{i}.png", db[i][..., ::-1])
    t0 = time.perf_counter()
    with torch.no_grad():
        if path == "old":
            for i in range(pairs):
                matches[f"pair{i}"] = match_images(model, query, db[i], size, max_matches=MAX_MATCHES_INLOC)
        else:
            tb = time.perf_counter()
            fq = image_features(model, query, size, model.cell_multiple)
            backbone_s += time.perf_counter() - tb
            for i in range(pairs):
                tb = time.perf_counter()
                fd = image_features(model, db[i], size, model.cell_multiple)
                backbone_s += time.perf_counter() - tb
                matches[f"pair{i}"] = match_dense_head(model, fq, fd, max_matches=MAX_MATCHES_INLOC)
                if store is not None:  # offline description of the database for the phase below: not timed
                    tu = time.perf_counter()
                    store.fetch(f"{store_dir}/db{i}.png", lambda fd=fd: fd)
                    untimed += time.perf_counter() - tu
    total = time.perf_counter() - t0 - untimed
    stored = {}
    if store is not None:
        with torch.no_grad():
            ts = time.perf_counter()
            fq = image_features(model, query, size, model.cell_multiple)
            store_backbone = time.perf_counter() - ts
            for i in range(pairs):
                fd = store.fetch(f"{store_dir}/db{i}.png", lambda: None)
                stored[f"store{i}"] = match_dense_head(model, fq, fd, max_matches=MAX_MATCHES_INLOC)
            store_s = time.perf_counter() - ts
        matches.update(stored)
    np.savez(out_npz, **{f"{k}/{f}": v for k, m in matches.items() for f, v in m.items()})
    extra = {"store_seconds": store_s, "store_query_backbone_s": store_backbone} if stored else {}
    return {**extra, "path": path, "size": f"{width}x{height}", "pairs": pairs, "seconds": total,
            "seconds_per_pair": total / pairs, "backbone_s": backbone_s if path == "new" else None,
            "dtype": str(dtype).replace("torch.", ""), "channels_last": channels_last and path == "new",
            "matches_per_pair": float(np.mean([len(m["scores"]) for k, m in matches.items() if k.startswith("pair")])),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch_threads": torch.get_num_threads()}


def inloc_benchmark(args: argparse.Namespace) -> dict:
    """Old vs new path on one query (each in its own subprocess: own peak RSS); per-query seconds, ratio,
    the new path's peak memory and the match agreement on the pairs both ran."""
    import tempfile

    import numpy as np

    from matching.match import match_agreement

    width, height = (int(v) for v in args.inloc_size.split("x"))
    old_pairs = min(args.db, args.old_pairs or args.db)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(width=width, height=height, n_db=args.db, precision=args.precision,
                      channels_last=args.channels_last)
        new = subprocess_case(args.threads, inloc_path=True, path="new", pairs=args.db,
                              out_npz=f"{tmp}/new.npz", store_dir=tmp if args.store else None, **common)
        old = subprocess_case(args.threads, inloc_path=True, path="old", pairs=old_pairs,
                              out_npz=f"{tmp}/old.npz", **common)
        if "error" in new or "error" in old:
            return {"error": new.get("error") or old.get("error")}
        mo, mn = np.load(f"{tmp}/old.npz"), np.load(f"{tmp}/new.npz")

        def pair(store, i: int) -> dict:
            return {f: store[f"pair{i}/{f}"] for f in ("keypoints0", "keypoints1", "scores")}

        agree = [match_agreement(pair(mo, i), pair(mn, i)) for i in range(old_pairs)]
        agree_store = [match_agreement(pair(mo, i), {f: mn[f"store{i}/{f}"] for f in ("keypoints0", "keypoints1",
                                                                                      "scores")})
                       for i in range(old_pairs)] if args.store else []
    old_query = old["seconds_per_pair"] * args.db
    res = {"inloc": True, "size": f"{width}x{height}", "db_images": args.db, "old": old, "new": new,
           "old_seconds_per_query": old_query, "old_extrapolated_from_pairs": old_pairs if old_pairs < args.db else None,
           "new_seconds_per_query": new["seconds"], "new_over_old": new["seconds"] / old_query,
           "new_peak_rss_mb": new["peak_rss_mb"], "agreement_mean": float(np.mean(agree)),
           "agreement_min": float(np.min(agree)), "agreement_pairs": old_pairs}
    if args.store:
        res.update({"store_seconds_per_query": new["store_seconds"], "store_over_old": new["store_seconds"] / old_query,
                    "store_agreement_mean": float(np.mean(agree_store)), "store_agreement_min": float(np.min(agree_store))})
    label = f" (EXTRAPOLATED from {old_pairs} of {args.db} pairs)" if old_pairs < args.db else ""
    print(f"InLoc-style query, {res['size']}, {args.db} database images, relocalization, "
          f"{torch.get_num_threads()} threads")
    print(f"  old path (pairwise, float32, features per pair): {old_query:.1f} s per query{label}")
    print(f"  new path (features once, {new['dtype']}, channels-last {new['channels_last']}, blocked correlation): "
          f"{new['seconds']:.1f} s per query (backbone {new['backbone_s']:.1f} s)")
    print(f"  new / old: {res['new_over_old']:.2f}x; new path peak RSS {new['peak_rss_mb']:.0f} MB; "
          f"same matches (new vs old float32): mean {res['agreement_mean']:.4f}, min {res['agreement_min']:.4f} "
          f"over {old_pairs} pairs")
    if args.store:
        print(f"  with the database's features stored (float16, described offline; the query's computed): "
              f"{res['store_seconds_per_query']:.1f} s per query = {res['store_over_old']:.2f}x old "
              f"(query backbone {new['store_query_backbone_s']:.1f} s); same matches as old: mean "
              f"{res['store_agreement_mean']:.4f}, min {res['store_agreement_min']:.4f}")
    return res


def subprocess_case(threads: int, **kw: object) -> dict:
    """Run ``run_case`` in a fresh interpreter (its own peak RSS) with ``threads`` torch threads."""
    cmd = [sys.executable, __file__, "--threads", str(threads), "--single", json.dumps(kw)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if res.returncode != 0:
        return {"error": res.stderr[-2000:], **kw}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    """CLI."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", nargs="+", default=["400x400", "800x600"])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--features", nargs="+", default=["resnet101", "dense-rootsift"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--half", action="store_true")
    ap.add_argument("--consensus-vs-loop", action="store_true", help="ours vs conv3d loop vs FLOP bound")
    ap.add_argument("--loop-shape", default="25x25x25x25")
    ap.add_argument("--inloc", action="store_true",
                    help="a query against --db database images, resnet101 + relocalization: old vs new path")
    ap.add_argument("--inloc-size", default="3200x2400", help="--inloc: image size WxH")
    ap.add_argument("--db", type=int, default=10, help="--inloc: database images per query")
    ap.add_argument("--old-pairs", type=int, default=None,
                    help="--inloc: run the old path on this many pairs only and extrapolate (labelled)")
    ap.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="--inloc: the new path's backbone precision")
    ap.add_argument("--channels-last", action="store_true", help="--inloc: new path's backbone in channels-last")
    ap.add_argument("--store", action="store_true",
                    help="--inloc: also the query with the database features read from a float16 FeatureStore")
    ap.add_argument("--consensus-only", metavar="SHAPE",
                    help="time + peak RSS of the consensus stage alone on a random hAxwAxhBxwB tensor "
                         "(e.g. 100x75x100x75: a 3200x2400 pair pooled by relocalization), in a subprocess")
    ap.add_argument("--method", default="auto", help="conv4d method for --consensus-only")
    ap.add_argument("--single", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write all results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.single:
        kw = json.loads(args.single)
        fn = consensus_only if kw.pop("consensus_only", False) else run_case
        fn = inloc_path if kw.pop("inloc_path", False) else fn
        print(json.dumps(fn(**kw)))
        return 0
    if args.inloc:
        res = inloc_benchmark(args)
        print(json.dumps(res))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return 0 if "error" not in res else 1
    if args.consensus_only:
        shape = [int(v) for v in args.consensus_only.split("x")]
        for config in args.configs:
            r = subprocess_case(args.threads, consensus_only=True, shape=shape, config=config, device=args.device,
                                method=args.method)
            print(json.dumps(r))
        return 0
    results: list[dict] = []
    gflops = gemm_gflops(args.device)
    print(f"device {args.device}, {torch.get_num_threads()} threads, GEMM {gflops:.1f} GFLOP/s")
    results.append({"gemm_gflops": gflops, "device": args.device})
    if args.device == "cuda":
        ag = agreement()
        print("CPU/GPU agreement:", ag)
        results.append({"agreement": ag})
    if args.consensus_vs_loop:
        shape = tuple(int(v) for v in args.loop_shape.split("x"))
        for config in args.configs:
            r = consensus_vs_loop(shape, config, args.device, gflops)
            print(json.dumps(r))
            print(f"{config} {args.loop_shape}: ours {r['ours_auto_best_s'] * 1e3:.1f} ms, conv3d loop "
                  f"{r['conv3d_loop_s'] * 1e3:.0f} ms ({r['auto_speedup_vs_loop']:.1f}x faster), FLOP-limited "
                  f"{r['flop_limited_s'] * 1e3:.1f} ms at {r['gemm_gflops_best']:.0f} GFLOP/s "
                  f"({r['auto_vs_flop_limited']:.2f}x of it)", flush=True)
            results.append(r)
    cases = []
    for feat in args.features:
        for config in args.configs:
            if feat == "dense-rootsift" and config == "pfpascal":
                continue  # 16->16 k=5 layer on 128-px-stride-8 grids: > 5 GB per hA row, out of scope
            for size in args.sizes:
                w, h = (int(v) for v in size.split("x"))
                cases.append(dict(features=feat, config=config, width=w, height=h, reloc=False))
    print("| features | config | size | corr | backbone s | corr+mutual s | consensus s | pairs/s | "
          "consensus GFLOP/s | peak RSS MB | peak GPU MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        r = subprocess_case(args.threads, device=args.device, half=args.half, repeat=args.repeat, **case)
        results.append(r)
        if "error" in r:
            print(f"| {case} | error: {r['error'][-300:]} |")
            continue
        s = r["seconds"]
        print(f"| {r['features']} | {r['config']} | {r['size']} | {'x'.join(map(str, r['corr_shape']))} | "
              f"{s['backbone']:.2f} | {s['correlation+mutual']:.2f} | {s['consensus']:.2f} | {r['pairs_per_s']:.3f} | "
              f"{r['consensus_gflops_achieved']:.1f} | {r['peak_rss_mb']:.0f} | {r.get('peak_gpu_mb', float('nan')):.0f} |",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
