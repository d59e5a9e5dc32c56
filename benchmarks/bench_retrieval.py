"""Retrieval benchmark: descriptor speed, TUM and synthetic recall, weight-free vs trained, index search time.

    python benchmarks/bench_retrieval.py [--sections speed,tum,synthetic,index] [--syn-size small]
        [--syn-dir /tmp/retrieval_bench/syn] [--threads 1] [--json out.json]
        [--index-n 1000000] [--index-nq 100] [--index-nprobe 1,8,32,128] [--index-nlist 1024]
        [--index-kinds ivfsq8] [--index-dir /tmp]

* speed: global descriptors/s (weight-free default on TUM 640x480 frames; official VGG16-NetVLAD
  architecture with random weights, for scale).
* tum: ../shared/data/tum_fr1_xyz, even frames = database, odd = queries; a retrieved frame is
  correct within 0.10 m and 15 deg of the query; recall@1/@5 and the random-choice expectation.
* synthetic: ``datasets.synthetic`` building (database ``db/``, queries ``queries/``); correct =
  co-visibility (``datasets.synthetic.view_covisibility``) >= 0.3; recall@1/5/10 for the weight-free
  default and for the NetVLAD layer trained (``retrieval.train``) on the generator's ``train/``
  building (a different building: no test leakage).
* index: 4096-D search at 10k and ``--index-n`` (default 1M) database vectors. The database is
  ``retrieval.scale.SyntheticDescriptors`` (overlapping Gaussian mixture, decaying spectrum, unit
  norm), generated block by block into a float16 ``np.memmap`` under ``--index-dir`` (8 GB at 1M;
  float32 in RAM would be 16 GB), deleted afterwards. Queries (``--index-nq``) are database rows
  perturbed to cosine ~0.9. Measured: exact top-10 by streaming the memmap in float32 chunks
  (``retrieval.scale.exact_search_chunked``), ms/query for the whole batch and for single queries;
  faiss flat in RAM where float32 fits in 2 GB (10k); IVF (``retrieval.index.GlobalIndex``, default
  ``ivfsq8``: 8-bit scalar-quantised codes, 4 GB at 1M) trained on 64 rows per list, added in
  chunks: train/add time, index file size, then per nprobe ms/query (batch, single) and recall@10
  against the exact top-10; peak RSS of the process. ``--threads`` also sets faiss's OpenMP threads.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localize.core.geometry import pose_error

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS: dict = {}


def _recalls(pairs: dict, correct, ks=(1, 5, 10)) -> dict:
    return {f"R@{k}": float(np.mean([any(correct(q, d) for d, _ in lst[:k]) for q, lst in pairs.items()]))
            for k in ks}


def bench_speed() -> None:
    """Descriptors per second (weight-free default; VGG16-NetVLAD with random weights)."""
    from datasets.tum import read_tum
    from localize.core.records import load_rgb
    from retrieval.global_descriptors import load_extractor
    from retrieval.netvlad import NetVLADModel

    recs = read_tum(DATA / "tum_fr1_xyz")[:20]
    items = [(r.name, r.image_path) for r in recs]
    ext = load_extractor("dense-rootsift-vlad", items)
    imgs = [load_rgb(p) for _, p in items]
    ext.describe(imgs[0])
    t = time.perf_counter()
    for im in imgs:
        ext.describe(im)
    dt = time.perf_counter() - t
    RESULTS["speed"] = {"dense-rootsift-vlad desc/s (640x480 in, 320 px used)": len(imgs) / dt}
    model = NetVLADModel().eval()
    x = torch.from_numpy(imgs[0]).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        t = time.perf_counter()
        model(x)
        dt = time.perf_counter() - t
    RESULTS["speed"]["vgg16-netvlad desc/s (640x480, random weights)"] = 1.0 / dt
    print(json.dumps(RESULTS["speed"], indent=1))


def bench_tum(conf: str = "dense-rootsift-vlad") -> None:
    """TUM fr1_xyz even/odd split, recall@1/@5."""
    from datasets.tum import read_tum
    from retrieval.shortlist import main

    recs = read_tum(DATA / "tum_fr1_xyz")
    db, q = recs[0::2], recs[1::2]
    byn = {r.name: r for r in recs}

    def correct(a, b):
        d, ang = pose_error(byn[a].pose, byn[b].pose)
        return d <= 0.10 and ang <= 15

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pairs = main(conf, db, [(r.name, r.image_path) for r in q], tmp, top_k=10)
    dt = time.perf_counter() - t
    rand = float(np.mean([[correct(a.name, b.name) for b in db] for a in q]))
    RESULTS[f"tum/{conf}"] = {**_recalls(pairs, correct, (1, 5)), "random@1": rand, "seconds": dt,
                              "n_db": len(db), "n_query": len(q)}
    print(f"TUM {conf}:", json.dumps(RESULTS[f"tum/{conf}"]))


def bench_synthetic(size: str, root: Path, train_epochs: int) -> None:
    """Synthetic building recall@1/5/10: weight-free vs NetVLAD layer trained on the generator's train/ building."""
    from datasets.rgbd_folder import read_rgbd_folder
    from datasets.synthetic import ensure_dataset, view_covisibility
    from retrieval.shortlist import main
    from retrieval.train import train

    root = ensure_dataset(root / size, 0, size)
    db, qs = read_rgbd_folder(root / "db"), read_rgbd_folder(root / "queries")
    for r in db + qs:  # memoise the point maps (covisibility reads each many times)
        r.xyz_loader = functools.lru_cache(maxsize=1)(r.xyz_loader)
    ok = {q.name: {d.name for d in db if view_covisibility(q, d) >= 0.3} for q in qs}

    def correct(a, b):
        return b in ok[a]

    rand = float(np.mean([len(ok[q.name]) / len(db) for q in qs]))
    qitems = [(q.name, q.image_path) for q in qs]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        pairs = main("dense-rootsift-vlad", db, qitems, tmp, top_k=10)
        RESULTS[f"synthetic-{size}/weight-free"] = {**_recalls(pairs, correct), "random@1": rand,
                                                    "seconds": time.perf_counter() - t,
                                                    "n_db": len(db), "n_query": len(qs)}
        print(f"synthetic {size} weight-free:", json.dumps(RESULTS[f"synthetic-{size}/weight-free"]))
        train_recs = read_rgbd_folder(root / "train")
        ck = Path(tmp) / "trained.pt"
        t = time.perf_counter()
        summary = train(train_recs, ck, {"epochs": train_epochs, "pos_dist": 0.5, "pos_angle": 30.0,
                                         "neg_dist": 2.0, "neg_angle": 90.0}, seed=0)
        train_s = time.perf_counter() - t
        pairs = main("dense-rootsift-vlad-trained", db, qitems, tmp, top_k=10, weights=ck)
        RESULTS[f"synthetic-{size}/trained"] = {**_recalls(pairs, correct), "train_images": len(train_recs),
                                                "train_seconds": train_s,
                                                "train_loo_R@1": [summary["initial_recall_at_1"],
                                                                  summary["best_recall_at_1"]]}
        print(f"synthetic {size} trained:", json.dumps(RESULTS[f"synthetic-{size}/trained"]))


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _time_search(search, q: np.ndarray, n_single: int) -> tuple[float, float, np.ndarray]:
    """(ms/query for the whole batch, ms/query one query at a time on the first n_single, ids of the batch)."""
    t = time.perf_counter()
    _, ids = search(q)
    batch = 1e3 * (time.perf_counter() - t) / len(q)
    t = time.perf_counter()
    for j in range(n_single):
        search(q[j:j + 1])
    return batch, 1e3 * (time.perf_counter() - t) / n_single, ids


def _index_case(n: int, d: int, nq: int, nprobes: list[int], nlist: int, kinds: list[str], chunk: int,
                work: Path, flat_ram_gb: float = 2.0) -> dict:
    """One database size: float16 memmap on disk, exact streamed search, in-RAM flat if small, IVF nprobe sweep."""
    from retrieval import scale
    from retrieval.index import GlobalIndex, build_index

    k, rng = 10, np.random.default_rng(0)
    path = work / f"db_{n}x{d}.f16"
    t = time.perf_counter()
    db = scale.write_rows(path, scale.SyntheticDescriptors(dim=d, seed=0).chunks(n))
    row = {"n": n, "dim": d, "float16 memmap GB": path.stat().st_size / 2 ** 30,
           "generate+write s": time.perf_counter() - t, "queries": nq}
    # queries: perturbed database rows (cos ~0.9 to their source), so the exact top-10 is a real neighbourhood
    src = np.sort(rng.choice(n, nq, replace=False))
    q = np.asarray(db[src], dtype=np.float32)
    noise = rng.standard_normal(q.shape).astype(np.float32)
    q += 0.5 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    n_single = 20 if n * d <= 10 ** 9 else 3  # streaming the whole file per query is slow at 1 M
    b, one, exact = _time_search(functools.partial(scale.exact_search_chunked, db, k=k, chunk=chunk), q,
                                   n_single)
    row.update({"exact streamed (float16 memmap, float32 chunks) ms/query batch": b,
                "exact streamed ms/query single": one, "exact top-1 is the perturbed source": float(
                    np.mean(exact[:, 0] == src))})
    if n * d * 4 <= flat_ram_gb * 2 ** 30:  # in-RAM float32 flat only where it fits (1 M x 4096 would be 16 GB)
        x = np.concatenate([c for _, c in scale.iter_row_chunks(db, chunk)])
        t = time.perf_counter()
        flat = build_index(x, "flat", use_gpu=False)
        row["flat (faiss IndexFlatIP, in RAM) build s"] = time.perf_counter() - t
        b, one, ids = _time_search(functools.partial(flat.search, k=k), q, 20)
        row.update({"flat ms/query batch": b, "flat ms/query single": one,
                    "flat top-10 == exact streamed": bool(np.array_equal(ids, exact))})
        del x, flat
    else:
        row["flat in RAM"] = f"skipped: float32 would need {n * d * 4 / 2 ** 30:.1f} GB"
    nlist = min(nlist, max(1, n // 39))
    for kind in kinds:
        ivf = GlobalIndex(d, kind, nlist=nlist, use_gpu=False, backend="faiss")
        n_train = min(n, 64 * nlist)  # rows are i.i.d., so the first ones are a fair sample
        t = time.perf_counter()
        sample = []
        for s, c in scale.iter_row_chunks(db, chunk):
            sample.append(c[:n_train - s])
            if s + len(c) >= n_train:
                break
        ivf.train(np.concatenate(sample))
        del sample
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        for _, x in scale.iter_row_chunks(db, chunk):
            ivf.add(x)
        del x
        t_add = time.perf_counter() - t
        saved = ivf.save(work / f"{kind}.faiss")
        r = {"nlist": nlist, "train rows": n_train, "train s": t_train, "add s": t_add,
             "build s": t_train + t_add, "index file GB": saved.stat().st_size / 2 ** 30}
        saved.unlink()
        for nprobe in nprobes:
            ivf.set_nprobe(nprobe)
            b, one, ids = _time_search(functools.partial(ivf.search, k=k), q, 20)
            r[f"nprobe={nprobe}"] = {"ms/query batch": b, "ms/query single": one,
                                     "recall@10 vs exact": float(np.mean(
                                         [len(set(a) & set(e)) / k for a, e in zip(ids, exact)]))}
        row[kind] = r
        del ivf
    row["peak RSS GB (process, so far)"] = _peak_rss_gb()
    del db
    path.unlink()
    return row


def bench_index(n_big: int = 1_000_000, nq: int = 100, nprobes: tuple[int, ...] = (1, 8, 32, 128),
                nlist: int = 1024, kinds: tuple[str, ...] = ("ivfsq8",), chunk: int = 50_000,
                work: Path | None = None) -> None:
    """Flat vs IVF search time and IVF recall@10 vs exact, 4096-D, at 10k and n_big database vectors."""
    work = Path(tempfile.mkdtemp(prefix="bench_index_", dir=work))
    try:
        for n in dict.fromkeys((10_000, n_big)):
            row = _index_case(n, 4096, nq, list(nprobes), nlist, list(kinds), chunk, work)
            RESULTS[f"index/{n}x4096"] = row
            print(f"index {n} x 4096:", json.dumps(row, indent=1), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    """Run the selected sections and print/write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default="speed,tum,synthetic,index")
    ap.add_argument("--syn-size", default="small", choices=["tiny", "small", "medium"])
    ap.add_argument("--syn-dir", type=Path, default=Path(tempfile.gettempdir()) / "retrieval_bench" / "syn")
    ap.add_argument("--train-epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--index-n", type=int, default=1_000_000, help="index: size of the big database (4096-D)")
    ap.add_argument("--index-nq", type=int, default=100, help="index: queries per batch")
    ap.add_argument("--index-nprobe", default="1,8,32,128")
    ap.add_argument("--index-nlist", type=int, default=1024, help="index: IVF lists (at most n // 39)")
    ap.add_argument("--index-kinds", default="ivfsq8", help="index: IVF kinds of retrieval.index (ivf,ivfsq8,ivfpq)")
    ap.add_argument("--index-dir", type=Path, default=None,
                    help="index: where the float16 memmap goes (default: the temp dir; 8 GB at 1 M), deleted after")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if "index" in args.sections.split(","):
        import faiss

        faiss.omp_set_num_threads(args.threads)
    secs = args.sections.split(",")
    if "speed" in secs and (DATA / "tum_fr1_xyz").exists():
        bench_speed()
    if "tum" in secs and (DATA / "tum_fr1_xyz").exists():
        bench_tum()
    if "synthetic" in secs:
        bench_synthetic(args.syn_size, args.syn_dir, args.train_epochs)
    if "index" in secs:
        bench_index(args.index_n, args.index_nq, tuple(int(p) for p in args.index_nprobe.split(",")),
                    args.index_nlist, tuple(args.index_kinds.split(",")), work=args.index_dir)
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=1))
    print(json.dumps(RESULTS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
