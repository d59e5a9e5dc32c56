"""Weakly supervised NetVLAD training (triplet ranking loss) on pose-tagged images, CPU-friendly.

The dense RootSIFT features are frozen (computed once, a random subset of locations per
image); only the NetVLAD layer (centroids, assignment) and an optional 1x1 head are trained.
For a query image, positives are images within ``pos_dist`` metres and ``pos_angle`` degrees of
its pose; negatives are images farther than ``neg_dist`` metres or ``neg_angle`` degrees. Loss
(NetVLAD, Arandjelovic et al. 2016): sum over the ``num_hard`` hardest negatives of
max(0, margin + |q - p*|^2 - |q - n|^2), p* the best-matching positive.

CLI::

    python -m retrieval.train --db DB [--db-format rgbd|tum] --out dense_vlad_trained.pt [--epochs 5] [--seed 0]

Library use: ``main(conf, db, out)`` (hloc stage shape); ``cli(argv)`` parses the command line. Use the checkpoint with ``python -m retrieval.shortlist --conf dense-rootsift-vlad-trained --netvlad-weights FILE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets.database import load_database
from localize.core.config import from_dict
from localize.core.errors import CheckpointError, InputError
from localize.core.formats import atomic_write
from localize.core.geometry import pose_error
from localize.core.records import DbImage, load_rgb
from localize.core.torchfile import load_torch_file
from retrieval.config import CONFS, RetrievalConfig
from retrieval.dense_vlad import DenseVLAD, dense_local_features
from retrieval.netvlad import kmeans

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Triplet training settings: positives within both pos_dist (m) and pos_angle (deg), negatives beyond either."""

    pos_dist: float = 0.30
    pos_angle: float = 25.0
    neg_dist: float = 1.00
    neg_angle: float = 60.0
    margin: float = 0.1
    num_hard: int = 10
    neg_pool: int = 40
    max_locations: int = 1500  # frozen local descriptors kept per image
    epochs: int = 5
    batch: int = 4
    lr: float = 1e-3
    head: bool = True


TRAIN_DEFAULTS: dict[str, Any] = dataclasses.asdict(TrainConfig())
_FEATURE_KEYS = {f.name for f in dataclasses.fields(RetrievalConfig)}


def split_conf(conf: Mapping[str, Any] | None) -> tuple[RetrievalConfig, TrainConfig]:
    """One flat dict (model keys of the ``dense-rootsift-vlad`` preset + training keys) -> both typed configs."""
    conf = dict(conf or {})
    model = {**CONFS["dense-rootsift-vlad"], **{k: v for k, v in conf.items() if k in _FEATURE_KEYS}, "weights": None}
    return (from_dict(RetrievalConfig, model, "retrieval"),
            from_dict(TrainConfig, {k: v for k, v in conf.items() if k not in _FEATURE_KEYS}, "train"))


def pose_relations(records: Sequence[DbImage], conf: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(positive mask [N, N], negative mask [N, N]) from pairwise pose distance/angle; diagonal excluded."""
    n = len(records)
    dist = np.zeros((n, n))
    ang = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            d, a = pose_error(records[i].pose, records[j].pose)
            dist[i, j] = dist[j, i] = d
            ang[i, j] = ang[j, i] = a
    pos = (dist <= conf.pos_dist) & (ang <= conf.pos_angle)
    neg = (dist > conf.neg_dist) | (ang > conf.neg_angle)
    np.fill_diagonal(pos, False)
    np.fill_diagonal(neg, False)
    return pos, neg


def precompute_features(records: Sequence[DbImage], feat_conf: RetrievalConfig, max_locations: int,
                        seed: int = 0) -> torch.Tensor:
    """Frozen dense RootSIFT of each image, ``max_locations`` random locations: [N, 128, L] float32."""
    rng = np.random.default_rng(seed)
    out = []
    for r in tqdm(records, desc="train: local features", unit="img"):
        x = dense_local_features(load_rgb(r.image_path), feat_conf)
        L = x.shape[1]
        idx = rng.choice(L, max_locations, replace=max_locations > L)
        out.append(x[:, torch.from_numpy(np.sort(idx))])
    return torch.stack(out)


def init_model(feats: torch.Tensor, num_clusters: int, head: bool, seed: int = 0) -> DenseVLAD:
    """DenseVLAD with k-means centroids and the official alpha on the training descriptors."""
    x = feats.permute(0, 2, 1).reshape(-1, feats.shape[1]).numpy()
    rng = np.random.default_rng(seed)
    x = x[rng.choice(len(x), min(len(x), 100_000), replace=False)]
    model = DenseVLAD(num_clusters, feats.shape[1], head=head)
    model.netvlad.init_from_centroids(kmeans(x, num_clusters, seed=seed), x[:20000])
    return model


def recall_at_1(model: DenseVLAD, feats: torch.Tensor, pos: np.ndarray) -> float:
    """Leave-one-out recall@1 (top match among the other images is a positive) over images with positives."""
    with torch.no_grad():
        v = torch.cat([model(feats[i:i + 16]) for i in range(0, len(feats), 16)])
    s = (v @ v.T).numpy()
    np.fill_diagonal(s, -np.inf)
    has = pos.any(1)
    if not has.any():
        return float("nan")
    top = s.argmax(1)
    return float(pos[np.arange(len(s)), top][has].mean())


def save_checkpoint(path: str | Path, model: DenseVLAD, conf: Mapping[str, Any], **extra: Any) -> Path:
    """Atomically write {'state_dict', 'conf', ...} with torch.save."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save({"state_dict": model.state_dict(), "conf": dict(conf), **extra}, f)
    return path


def load_checkpoint(path: str | Path) -> tuple[DenseVLAD, dict[str, Any]]:
    """(DenseVLAD in eval mode, its training configuration) from a ``retrieval.train`` checkpoint; CheckpointError."""
    ck = load_torch_file(path, map_location="cpu")  # tensors, dicts, lists, numbers only
    if not isinstance(ck, dict) or "state_dict" not in ck or "conf" not in ck:
        raise CheckpointError(f"{path} is not a retrieval.train checkpoint (no 'state_dict' and 'conf')")
    conf = ck["conf"]
    sd = ck["state_dict"]
    if "num_clusters" not in conf or "netvlad.centroids" not in sd:
        raise CheckpointError(f"{path}: retrieval.train checkpoint without num_clusters or netvlad.centroids")
    model = DenseVLAD(int(conf["num_clusters"]), int(sd["netvlad.centroids"].shape[1]), head="head.weight" in sd)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:  # torch reports missing / unexpected / mis-shaped tensors this way
        raise CheckpointError(f"{path} does not fit DenseVLAD: {str(e).splitlines()[0]}") from e
    return model.eval(), conf


def train(records: Sequence[DbImage], out: str | Path, conf: Mapping[str, Any] | None = None,
          seed: int = 0) -> dict[str, Any]:
    """Train a DenseVLAD on pose-tagged records; writes the checkpoint each epoch; returns a summary dict.

    ``conf``: one flat dict of model keys (``retrieval.config.RetrievalConfig``) and ``TrainConfig`` keys.
    """
    fconf, tc = split_conf(conf)
    tconf = {**fconf.as_dict(), **dataclasses.asdict(tc)}  # stored in the checkpoint
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    records = [r for r in records if r.pose is not None]
    pos, neg = pose_relations(records, tc)
    queries = np.flatnonzero(pos.any(1) & neg.any(1))
    logger.info("training on %d images: %d usable queries, %.1f positives and %.1f negatives per image",
                len(records), len(queries), pos.sum(1).mean(), neg.sum(1).mean())
    if len(queries) == 0:
        raise ValueError("no image has both positives and negatives; adjust pos_/neg_ distance/angle thresholds")
    feats = precompute_features(records, fconf, tc.max_locations, seed)
    model = init_model(feats, fconf.num_clusters, tc.head, seed)
    r1_init = recall_at_1(model, feats, pos)
    logger.info("initial leave-one-out recall@1 %.3f", r1_init)
    opt = torch.optim.Adam(model.parameters(), lr=float(tc.lr))
    history = []
    best = r1_init
    save_checkpoint(out, model, tconf, epoch=0, recall_at_1=r1_init, seed=seed)
    for epoch in range(1, tc.epochs + 1):
        model.train()
        order = rng.permutation(queries)
        losses = []
        t0 = time.time()
        for b in tqdm(range(0, len(order), tc.batch), desc=f"epoch {epoch}", unit="batch", leave=False):
            loss = torch.zeros(())
            for qi in order[b:b + tc.batch]:
                pidx = np.flatnonzero(pos[qi])
                nidx = np.flatnonzero(neg[qi])
                nidx = rng.choice(nidx, min(len(nidx), tc.neg_pool), replace=False)
                idx = np.concatenate([[qi], pidx, nidx])
                v = model(feats[torch.from_numpy(idx)])
                q, p, n = v[0], v[1:1 + len(pidx)], v[1 + len(pidx):]
                dp = (2 - 2 * p @ q).min()  # best-matching positive (squared distance)
                with torch.no_grad():
                    hard = (n @ q).topk(min(len(n), tc.num_hard)).indices
                dn = 2 - 2 * n[hard] @ q
                loss = loss + F.relu(tc.margin + dp - dn).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
        r1 = recall_at_1(model, feats, pos)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "recall_at_1": r1, "seconds": time.time() - t0})
        logger.info("epoch %d: loss %.4f, leave-one-out recall@1 %.3f (%.1f s)", epoch, np.mean(losses), r1,
                    time.time() - t0)
        if r1 >= best:  # keep the best epoch (training-set recall; the data are small)
            best = r1
            save_checkpoint(out, model, tconf, epoch=epoch, recall_at_1=r1, seed=seed, history=history)
    return {"initial_recall_at_1": r1_init, "best_recall_at_1": best, "history": history, "checkpoint": str(out)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``python -m retrieval.train``."""
    p = argparse.ArgumentParser(prog="python -m retrieval.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--db", required=True, nargs="+", help="pose-tagged image folder(s): plain RGB-D folder or TUM")
    p.add_argument("--db-format", default="auto", choices=["auto", "rgbd", "tum"])
    p.add_argument("--out", default="dense_vlad_trained.pt", help="checkpoint file")
    p.add_argument("--seed", type=int, default=0)
    for k, v in TRAIN_DEFAULTS.items():
        if isinstance(v, bool):
            p.add_argument(f"--{k.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"), default=v)
        else:
            p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    p.add_argument("--num-clusters", type=int, default=CONFS["dense-rootsift-vlad"]["num_clusters"])
    p.add_argument("--resize-max", type=int, default=CONFS["dense-rootsift-vlad"]["resize_max"])
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = torch default; 1 is fastest on small shared CPUs)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(conf: Mapping[str, Any] | None, db: str | Path | Sequence[str | Path] | Sequence[DbImage],
         out: str | Path, db_format: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Train on the pose-tagged images of ``db`` (folder(s) or records), write the checkpoint ``out``; summary dict."""
    if isinstance(db, (str, Path)):
        db = [db]
    records: list[DbImage] = []
    for d in db:
        records += [d] if isinstance(d, DbImage) else list(load_database(d, db_format).values())
    return train(records, out, conf, seed)


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    conf = {k: getattr(args, k) for k in TRAIN_DEFAULTS}
    conf.update(num_clusters=args.num_clusters, resize_max=args.resize_max)
    try:
        summary = main(conf, args.db, args.out, args.db_format, args.seed)
    except (InputError, OSError, ValueError) as e:
        logger.error("%s", e)
        return 2
    print(f"checkpoint {summary['checkpoint']}: leave-one-out recall@1 {summary['initial_recall_at_1']:.3f} "
          f"(k-means init) -> {summary['best_recall_at_1']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
