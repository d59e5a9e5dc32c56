"""Scale benchmarks: Ray workers on the tiny synthetic building, and a 1 M-image IVF-PQ retrieval index.

    python benchmarks/bench_scale.py ray   [--queries 8]                 # queries/s with 1 and 2 Ray workers
    python benchmarks/bench_scale.py index [--n 1000000] [--dim 4096]    # chunked IVF-PQ build, mmap search, recall

``ray``: localizes the tiny building's queries ('fast' preset at test sizes) with the local executor
(which also fills the retrieval cache, then reused: retrieval runs in the driver), then with a
local Ray instance of 1 and 2 workers from an empty matching/pose cache; checks the poses are
identical and reports queries/s of the matching + pose stages (Ray start-up excluded, reported apart).

``index``: N synthetic 4096-D descriptors (``retrieval.scale.SyntheticDescriptors``: overlapping
Gaussian mixture, decaying spectrum, full-rank noise), generated block by block and never all in
memory; PCA 4096 -> 256 + IVF-PQ (32-byte codes) trained on a sample, rows added per block, saved,
memory-mapped, searched. Ground truth: exact inner-product top-10 in the original 4096-D space for
a sample of queries, accumulated during the same pass. Reports build time, index size, search
ms/query and recall@10 for several nprobe.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- ray
def bench_ray(args) -> dict:
    from datasets.synthetic import ensure_dataset
    from localize import run as runmod
    from localize.pipeline.executors import LocalExecutor
    from localize.pipeline.presets import preset
    from localize.pipeline.ray_executor import RayExecutor

    conf = preset("fast")
    conf["retrieval"]["top_k"] = 3
    conf["num_pairs"] = 3
    conf["matching"]["image_size"] = 160
    conf["pose"]["top_n"] = 3
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_scale_"))
    data = ensure_dataset(work / "tiny", seed=0, size="tiny")
    qdir, qlist, db = data / "queries" / "images", data / "queries" / "queries_with_intrinsics.txt", data / "db"
    out = {}
    ref = work / "local"
    t0 = time.time()
    runmod.main(conf, qdir, db, ref, "rgbd", qlist, executor=LocalExecutor())
    out["local_total_s"] = time.time() - t0
    nq = len((ref / "poses.txt").read_text().splitlines())
    # local executor, matching + pose only (retrieval cached), for a like-for-like figure
    for name in ["local"] + [f"ray{n}" for n in args.workers]:
        d = work / f"run-{name}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        for pat in ("shortlist-*.h5", "global-descriptors-*.h5", "retrieval-vocabulary-*.h5"):
            for f in ref.glob(pat):
                shutil.copy(f, d / f.name)
        t0 = time.time()
        ex = LocalExecutor() if name == "local" else RayExecutor(num_workers=int(name[3:]), num_cpus=args.cpus,
                                                                 progress=False)
        t_init = time.time() - t0
        t1 = time.time()
        s = runmod.main(conf, qdir, db, d, "rgbd", qlist, executor=ex)
        dt = time.time() - t1
        ex.shutdown()
        same = (d / "poses.txt").read_text() == (ref / "poses.txt").read_text()
        out[name] = {"workers": 1 if name == "local" else int(name[3:]), "init_s": round(t_init, 1),
                     "match_pose_s": round(dt, 1), "queries_per_s": round(s.num_queries / dt, 3),
                     "localized": s.num_localized, "poses_identical_to_local": same}
        print(name, out[name], flush=True)
    out["num_queries"] = nq
    return out


# ----------------------------------------------------------------------------- index
def bench_index(args) -> dict:
    import faiss

    from retrieval import scale

    faiss.omp_set_num_threads(args.threads)
    gen = scale.SyntheticDescriptors(dim=args.dim, seed=0, block=args.block)
    conf = scale.ScaleConfig(pca_dim=args.pca, nlist=args.nlist, pq_m=args.pq_m, pq_bits=8, nprobe=32,
                             train_size=args.train)
    res: dict = {"n": args.n, "dim": args.dim, "pca_dim": args.pca, "pq_m": args.pq_m, "queries": args.nq}
    q = gen.block_rows(0, args.nq, stream=2)
    # 1. train on a sample (the first blocks: rows are i.i.d.)
    t0 = time.time()
    nb = math.ceil(args.train / args.block)
    sample = np.concatenate([gen.block_rows(b) for b in range(nb)])[:args.train]
    t_gen_sample = time.time() - t0
    t0 = time.time()
    index = scale.train_index(sample, conf, args.n)
    res["train_s"] = round(time.time() - t0, 1)
    res["nlist"] = scale.ivf_of(index).nlist
    del sample
    pca = faiss.downcast_VectorTransform(index.chain.at(0))
    ivf = faiss.downcast_index(index.index)
    qr = pca.apply(q)
    qr /= np.linalg.norm(qr, axis=1, keepdims=True)
    # 2. one pass: generate a block, update exact top-k (4096-D and reduced), reduce, add
    k = 10
    ex_s = np.full((args.nq, 0), -np.inf, np.float32)
    ex_i = np.zeros((args.nq, 0), np.int64)
    rd_s, rd_i = ex_s.copy(), ex_i.copy()
    t_gen = t_exact = t_add = 0.0
    for b, start in enumerate(range(0, args.n, args.block)):
        t0 = time.time()
        x = gen.block_rows(b, min(args.block, args.n - start))
        t_gen += time.time() - t0
        ids = np.arange(start, start + len(x), dtype=np.int64)
        t0 = time.time()
        ex_s, ex_i = _topk_update(ex_s, ex_i, q @ x.T, ids, k)
        t_exact += time.time() - t0
        t0 = time.time()
        y = pca.apply(x)
        del x
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        ivf.add_with_ids(y, ids)
        t_add += time.time() - t0
        t0 = time.time()
        rd_s, rd_i = _topk_update(rd_s, rd_i, qr @ y.T, ids, k)
        t_exact += time.time() - t0
        if b % 10 == 0:
            print(f"  {start + len(y)}/{args.n} rows: gen {t_gen:.0f} s, add {t_add:.0f} s, exact {t_exact:.0f} s, "
                  f"rss {peak_rss_mb():.0f} MB", flush=True)
    res["add_s"] = round(t_add, 1)
    res["build_s"] = round(res["train_s"] + t_add, 1)
    res["synthetic_generation_s"] = round(t_gen + t_gen_sample, 1)
    res["exact_groundtruth_s"] = round(t_exact, 1)
    # 3. save, memory-map, search
    path = Path(args.out or tempfile.mkdtemp(prefix="bench_index_")) / "db.ivfpq"
    t0 = time.time()
    scale.save_index(index, path)
    res["save_s"] = round(time.time() - t0, 1)
    res["index_file_mb"] = round(path.stat().st_size / 2 ** 20, 1)
    del index, ivf, pca
    rss_before = peak_rss_mb()
    t0 = time.time()
    mm = scale.load_index(path, mmap=True)
    res["mmap_load_s"] = round(time.time() - t0, 3)
    res["peak_rss_mb_build"] = round(rss_before)
    res["search"] = []
    for nprobe in args.nprobe:
        scale.set_nprobe(mm, nprobe)
        scale.search(mm, q[:8], k)  # warm the page cache
        t0 = time.time()
        _, ids = scale.search(mm, q, k)
        batch_ms = (time.time() - t0) * 1000 / args.nq
        t0 = time.time()
        for j in range(min(args.nq, 50)):
            scale.search(mm, q[j:j + 1], k)
        single_ms = (time.time() - t0) * 1000 / min(args.nq, 50)
        r10 = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, ex_i)])
        r1 = np.mean([b[0] in a for a, b in zip(ids, ex_i)])
        r10_red = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, rd_i)])
        row = {"nprobe": nprobe, "ms_per_query_batch": round(batch_ms, 3), "ms_per_query_single": round(single_ms, 3),
               "recall10@10_vs_exact4096": round(float(r10), 3), "recall1@10_vs_exact4096": round(float(r1), 3),
               "recall10@10_vs_exact_pca": round(float(r10_red), 3)}
        res["search"].append(row)
        print(row, flush=True)
    # exact top-10 inside the PCA space vs exact 4096-D (what the reduction alone costs)
    res["recall10@10_exact_pca_vs_exact4096"] = round(float(np.mean(
        [len(set(a) & set(b)) / k for a, b in zip(rd_i, ex_i)])), 3)
    res["groundtruth_top1_top10_sim"] = [round(float(ex_s[:, 0].mean()), 3), round(float(ex_s[:, -1].mean()), 3)]
    if not args.out:
        shutil.rmtree(path.parent, ignore_errors=True)
    return res


def _topk_update(best_s, best_i, s, ids, k):
    kk = min(k, s.shape[1])
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    cs = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
    ci = np.concatenate([best_i, ids[part]], 1)
    order = np.argsort(-cs, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cs, order, 1), np.take_along_axis(ci, order, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["ray", "index"])
    p.add_argument("--work", default=None, help="ray: working folder (default: a temporary one)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cpus", type=int, default=2, help="ray: CPUs of the local Ray instance")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--pca", type=int, default=256)
    p.add_argument("--pq-m", type=int, default=32)
    p.add_argument("--nlist", type=int, default=2048)
    p.add_argument("--train", type=int, default=131072)
    p.add_argument("--block", type=int, default=16384)
    p.add_argument("--nq", type=int, default=200)
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="index: keep the index in this folder")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    res = bench_ray(a) if a.part == "ray" else bench_index(a)
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
