"""Retrieval benchmark: descriptor speed, TUM and synthetic recall, weight-free vs trained, index search time.

    python benchmarks/bench_retrieval.py [--sections speed,tum,synthetic,index] [--syn-size small]
        [--syn-dir /tmp/retrieval_bench/syn] [--threads 1] [--json out.json]

* speed: global descriptors/s (weight-free default on TUM 640x480 frames; official VGG16-NetVLAD
  architecture with random weights, for scale).
* tum: ../shared/data/tum_fr1_xyz, even frames = database, odd = queries; a retrieved frame is
  correct within 0.10 m and 15 deg of the query; recall@1/@5 and the random-choice expectation.
* synthetic: ``datasets.synthetic`` building (database ``db/``, queries ``queries/``); correct =
  co-visibility (``datasets.synthetic.view_covisibility``) >= 0.3; recall@1/5/10 for the weight-free
  default and for the NetVLAD layer trained (``retrieval.train``) on the generator's ``train/``
  building (a different building: no test leakage).
* index: search time for 10k x 4096-D and 1M x 256-D database vectors (1M x 4096 float32 is 16 GB,
  too much on the shared box, so the 1M case is PCA-reduced-sized), flat vs IVF, recall@10 of IVF vs exact.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localize.geometry import pose_error  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS: dict = {}


def _recalls(pairs: dict, correct, ks=(1, 5, 10)) -> dict:
    return {f"R@{k}": float(np.mean([any(correct(q, d) for d, _ in lst[:k]) for q, lst in pairs.items()]))
            for k in ks}


def bench_speed() -> None:
    """Descriptors per second (weight-free default; VGG16-NetVLAD with random weights)."""
    from datasets.records import load_rgb
    from datasets.tum import read_tum
    from retrieval.extract import load_extractor
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


def _clustered(n: int, d: int, n_clusters: int, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """n L2-normalised float32 vectors around n_clusters random centres (seed 0) (a stand-in for global descriptors)."""
    centres = np.random.default_rng(0).standard_normal((n_clusters, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, n_clusters, m)] + 0.7 * rng.standard_normal((m, d)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def bench_index() -> None:
    """Flat vs IVF search time and IVF recall@10 vs exact at 10k x 4096-D and 1M x 256-D."""
    from retrieval.index import GlobalIndex, build_index

    rng = np.random.default_rng(0)
    for n, d, nlist, nq in ((10_000, 4096, 100, 100), (1_000_000, 256, 1024, 100)):
        db = _clustered(n, d, max(50, n // 500), rng)
        q = _clustered(nq, d, max(50, n // 500), np.random.default_rng(1))  # fresh draws, not near-duplicates
        t = time.perf_counter()
        flat = build_index(db, "flat")
        t_build_flat = time.perf_counter() - t
        t = time.perf_counter()
        _, exact = flat.search(q, 10)
        t_flat = (time.perf_counter() - t) / nq
        ivf = GlobalIndex(d, "ivf", nlist=nlist)
        t = time.perf_counter()
        ivf.train(db[rng.choice(n, min(n, 100 * nlist), replace=False)])
        ivf.add(db)
        t_build_ivf = time.perf_counter() - t
        row = {"flat build s": t_build_flat, "flat ms/query": 1e3 * t_flat, "ivf nlist": nlist,
               "ivf build s": t_build_ivf}
        for nprobe in (1, 8, 32):
            ivf.set_nprobe(nprobe)
            t = time.perf_counter()
            _, got = ivf.search(q, 10)
            dt = (time.perf_counter() - t) / nq
            rec = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)]))
            row[f"ivf nprobe={nprobe} ms/query"] = 1e3 * dt
            row[f"ivf nprobe={nprobe} recall@10 vs exact"] = rec
        RESULTS[f"index/{n}x{d}"] = row
        print(f"index {n} x {d}:", json.dumps(row))
        del db, flat, ivf


def main(argv=None) -> int:
    """Run the selected sections and print/write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default="speed,tum,synthetic,index")
    ap.add_argument("--syn-size", default="small", choices=["tiny", "small", "medium"])
    ap.add_argument("--syn-dir", type=Path, default=Path(tempfile.gettempdir()) / "retrieval_bench" / "syn")
    ap.add_argument("--train-epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    secs = args.sections.split(",")
    if "speed" in secs and (DATA / "tum_fr1_xyz").exists():
        bench_speed()
    if "tum" in secs and (DATA / "tum_fr1_xyz").exists():
        bench_tum()
    if "synthetic" in secs:
        bench_synthetic(args.syn_size, args.syn_dir, args.train_epochs)
    if "index" in secs:
        bench_index()
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=1))
    print(json.dumps(RESULTS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
