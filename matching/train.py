"""Weakly supervised training of NCNet's consensus network: ``python -m matching.train [options]``.

NCNet (Rocco et al. 2018) learns from pairs labelled only "same place": for a batch of positive pairs,
negatives are made inside the batch by pairing each source image with the next pair's target (roll by
one); the matching score of a pair is, for every cell, the maximum of the softmax of the filtered
correlation over the other image's cells, averaged over cells and both directions; the loss is
score(negatives) - score(positives). Only the consensus network trains unless ``--fe-finetune-params n``
unfreezes the last n blocks of ResNet-101's layer3. Fixed features (dense RootSIFT, or a frozen
backbone) are computed once per image and cached in memory.

Data: the synthetic generator's pair CSVs (default: generated on demand with ``--synthetic-seeds``),
or ``--data DIR`` folders holding NCNet pair files (synthetic, PF-Pascal or IVD layout; see
``matching.pairs``). Checkpoints are written in the official NCNet layout (``--out``, plus ``best_<name>``
for the lowest validation loss).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from datasets.synthetic import generate
from localize.core.errors import InputError
from matching.checkpoint import load_checkpoint_file, save_checkpoint, split_official_state
from matching.consensus import NeighConsensus
from matching.correlation import correlation_4d
from matching.features import FEATURE_NAMES, ResNet101Features, build_features, load_backbone_state
from matching.model import NCNet
from matching.pairs import LAYOUTS, ImagePair, load_pairs, resolve_image
from matching.preprocess import load_image_tensor

log = logging.getLogger(__name__)

PAPER_DEFAULTS: dict[str, Any] = {"image_size": (400,), "batch_size": 16, "epochs": 5, "lr": 5e-4}
# the preset the packaged weights were trained with (see matching/weights/README.md)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(PAPER_DEFAULTS),
    "cpu": {"image_size": (120, 90), "batch_size": 8, "epochs": 4, "lr": 5e-3},
}
SYNTHETIC_SIZES = ("tiny", "small", "medium")
_TUPLE_FIELDS = ("data_dirs", "synthetic_seeds", "ncons_kernel_sizes", "ncons_channels", "image_size")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of ``train`` (defaults: the paper preset; ``from_preset`` for the others).

    Data: data_dirs (folders or pair CSVs; empty = synthetic datasets of synthetic_seeds, generated as
    synthetic_size under synthetic_root), layout, train_csv / val_csv, image_root, max_pairs (0 = all).
    Model: features ('dense-rootsift' with a feature_step px grid, or 'resnet101' with backbone_weights),
    fe_finetune_params (last layer3 blocks trained), ncons_kernel_sizes / ncons_channels, init_bias,
    conv_method. Optimisation: image_size ((N,) = N x N px, or (W, H)), batch_size, epochs, lr (Adam),
    steps_per_epoch (0 = all batches), seed, threads (0 = torch default), device. Checkpoints: out
    (official layout, plus best_<name>), resume (continue a run), init (start from weights).
    """

    data_dirs: tuple[str, ...] = ()
    layout: str = "auto"
    train_csv: str | None = None
    val_csv: str | None = None
    image_root: str | None = None
    synthetic_root: str = "outputs/ncnet_synthetic"
    synthetic_seeds: tuple[int, ...] = (1, 2)
    synthetic_size: str = "small"
    max_pairs: int = 0
    features: str = "dense-rootsift"
    feature_step: int = 8
    backbone_weights: str | None = None
    allow_random_backbone: bool = False
    fe_finetune_params: int = 0
    ncons_kernel_sizes: tuple[int, ...] = (3, 3)
    ncons_channels: tuple[int, ...] = (16, 1)
    init_bias: float | None = None
    conv_method: str = "loop3d"
    image_size: tuple[int, ...] = PAPER_DEFAULTS["image_size"]
    batch_size: int = PAPER_DEFAULTS["batch_size"]
    epochs: int = PAPER_DEFAULTS["epochs"]
    lr: float = PAPER_DEFAULTS["lr"]
    steps_per_epoch: int = 0
    seed: int = 1
    threads: int = 2
    device: str = "cpu"
    out: str = "outputs/ncnet_train/ncnet_dense_rootsift.pth.tar"
    resume: str | None = None
    init: str | None = None

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:  # lists (from JSON or callers) become tuples: the config stays hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.image_size) not in (1, 2):
            raise ValueError(f"image_size takes (N,) or (W, H), got {self.image_size}")
        if len(self.ncons_kernel_sizes) != len(self.ncons_channels):
            raise ValueError("ncons_kernel_sizes and ncons_channels need the same length")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (negatives are made inside the batch)")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.features not in FEATURE_NAMES:
            raise ValueError(f"features must be one of {FEATURE_NAMES}, got {self.features!r}")
        if self.synthetic_size not in SYNTHETIC_SIZES:
            raise ValueError(f"synthetic_size must be one of {SYNTHETIC_SIZES}, got {self.synthetic_size!r}")

    @classmethod
    def from_preset(cls, preset: str = "paper", **changes: Any) -> TrainConfig:
        """The ``PRESETS[preset]`` image size / batch / epochs / lr, then ``changes`` (any field)."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **changes})


# ----------------------------------------------------------------------------------------------- loss
def matching_score(corr: Tensor) -> Tensor:
    """Per-pair matching score of a filtered correlation [B, 1, hA, wA, hB, wB] -> [B].

    For every cell of B, softmax over A's cells and take the maximum; the same for every cell of A over
    B's cells; the score is the average over cells of each direction, then over both directions.
    """
    b = corr.shape[0]
    ha, wa, hb, wb = corr.shape[-4:]
    c = corr.reshape(b, ha * wa, hb * wb)
    score_b = torch.softmax(c, dim=1).max(dim=1).values.mean(dim=1)  # B cells, softmax over A
    score_a = torch.softmax(c, dim=2).max(dim=2).values.mean(dim=1)  # A cells, softmax over B
    return 0.5 * (score_a + score_b)


def roll_negatives(feat_a: Tensor) -> Tensor:
    """Source features of the negatives: pair i gets the source of pair i + 1 (cyclic; NCNet's np.roll(-1))."""
    return torch.roll(feat_a, shifts=-1, dims=0)


def weak_loss(model: torch.nn.Module, feat_a: Tensor, feat_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, mean positive score, mean negative score) for a batch of positive pairs' features [B, C, h, w].

    ``model`` provides ``filter_correlation`` (an ``NCNet``). loss = score(negatives) - score(positives).
    """
    if feat_a.shape[0] < 2:
        raise ValueError("the weak loss needs at least 2 pairs per batch (negatives come from the batch)")
    pos = matching_score(model.filter_correlation(correlation_4d(feat_a, feat_b))).mean()
    neg = matching_score(model.filter_correlation(correlation_4d(roll_negatives(feat_a), feat_b))).mean()
    return neg - pos, pos.detach(), neg.detach()


# ----------------------------------------------------------------------------------------------- data
_VIEW_SUFFIX = re.compile(r"^(.*)_v\d+$")


def place_key(pair: ImagePair, layout: str) -> str:
    """Label of the place a pair shows, so that in-batch negatives never pair two images of one place.

    synthetic: the anchor (``a012`` of ``a012_v3.jpg``, with its folder); IVD: the venue folder;
    PF-Pascal: the object class.
    """
    src = Path(pair.source)
    if layout == "synthetic":
        m = _VIEW_SUFFIX.match(src.stem)
        return str(src.parent / (m.group(1) if m else src.stem))
    if layout == "ivd":
        return str(src.parent)
    return f"class{pair.cls}"


def arrange_batch(items: list[int], keys: list[str], rng: np.random.Generator) -> list[int]:
    """Order a batch so neighbours (cyclically) differ in place key when possible (greedy, deterministic)."""
    buckets: dict[str, list[int]] = {}
    for i in items:
        buckets.setdefault(keys[i], []).append(i)
    if len(buckets) == 1:
        return list(items)
    order: list[int] = []
    prev = None
    while any(buckets.values()):
        cands = sorted((k for k, v in buckets.items() if v and k != prev), key=lambda k: (-len(buckets[k]), k))
        if not cands:  # only the previous place left
            cands = [prev]
        k = cands[0]
        order.append(buckets[k].pop(0))
        prev = k
    if len(order) > 2 and keys[order[0]] == keys[order[-1]]:  # fix the cyclic wrap by one rotation if it helps
        for r in range(1, len(order)):
            rot = order[r:] + order[:r]
            if all(keys[rot[j]] != keys[rot[(j + 1) % len(rot)]] for j in range(len(rot))):
                return rot
    return order


def make_batches(n: int, batch_size: int, keys: list[str], seed: int, epoch: int, shuffle: bool = True
                 ) -> list[list[int]]:
    """Deterministic batches of pair indices for one epoch (a last batch of 1 joins the previous one)."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    perm = rng.permutation(n) if shuffle else np.arange(n)
    batches = [list(map(int, perm[i:i + batch_size])) for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2].extend(batches.pop())
    return [arrange_batch(b, keys, rng) for b in batches if len(b) >= 2]


class PairSet:
    """Positive pairs with their image roots; fixed-feature cache shared across epochs."""

    def __init__(self, pairs: list[ImagePair], roots: list[list[Path]], layouts: list[str]) -> None:
        self.pairs, self.roots, self.layouts = pairs, roots, layouts
        # data-source index prefix keeps places of different folders apart
        self.keys = [f"{r[0]}|{place_key(p, lay)}" for p, r, lay in zip(pairs, roots, layouts, strict=True)]

    def __len__(self) -> int:
        return len(self.pairs)

    def image_paths(self, i: int) -> tuple[Path, Path]:
        p = self.pairs[i]
        return resolve_image(p.source, self.roots[i]), resolve_image(p.target, self.roots[i])


class FeatureCache:
    """Features of fixed extractors, computed once per (image, flip) at the training size."""

    def __init__(self, features: torch.nn.Module, size_wh: tuple[int, int], device: torch.device,
                 enabled: bool = True) -> None:
        self.features, self.size_wh, self.device, self.enabled = features, size_wh, device, enabled
        self.store: dict[tuple[str, bool], Tensor] = {}

    def get(self, path: Path, flip: bool) -> Tensor:
        key = (str(path), bool(flip))
        if self.enabled and key in self.store:
            return self.store[key]
        img = load_image_tensor(path, self.size_wh, flip).to(self.device)[None]
        if self.enabled:
            with torch.no_grad():
                f = self.features(img)[0]
            self.store[key] = f
            return f
        return self.features(img)[0]

    def batch(self, data: PairSet, idx: list[int]) -> tuple[Tensor, Tensor]:
        fa, fb = [], []
        for i in idx:
            pa, pb = data.image_paths(i)
            flip = data.pairs[i].flip
            fa.append(self.get(pa, flip))
            fb.append(self.get(pb, flip))
        return torch.stack(fa), torch.stack(fb)


def collect_data(conf: TrainConfig, split: str) -> PairSet:
    """Positive pairs of ``split`` from every data folder (synthetic ones generated when needed)."""
    pairs, roots, layouts = [], [], []
    csv_opt = conf.train_csv if split == "train" else conf.val_csv
    for data in conf.data_dirs:
        d = Path(data)
        got, layout, path = load_pairs(d, split, conf.layout, csv_path=csv_opt)
        if path is None:
            continue
        base = [Path(conf.image_root)] if conf.image_root else []
        base += [d if d.is_dir() else d.parent, path.parent, path.parent.parent]
        base += [b / "images" for b in base[-3:]]
        uniq = list(dict.fromkeys(base))
        if conf.max_pairs and split == "train":
            got = got[:conf.max_pairs]
        pairs += got
        roots += [uniq] * len(got)
        layouts += [layout] * len(got)
        log.info("%s: %d positive %s pairs from %s (layout %s)", d, len(got), split, path, layout)
    return PairSet(pairs, roots, layouts)


def synthetic_dirs(root: str | Path, seeds: tuple[int, ...] | list[int], size: str) -> list[Path]:
    """Generate (when missing) the synthetic datasets of ``seeds`` under root/<size>_s<seed>; their paths."""
    out = []
    for s in seeds:
        d = Path(root) / f"{size}_s{s}"
        generate(d, seed=s, size=size, layouts=("rgbd",))
        out.append(d)
    return out


# ----------------------------------------------------------------------------------------------- model
def build_training_model(conf: TrainConfig, device: torch.device) -> NCNet:
    """NCNet with a freshly initialised consensus network (``conf.seed``), features per the configuration."""
    fe = build_features(conf.features, backbone_weights=conf.backbone_weights, step=conf.feature_step)
    if isinstance(fe, ResNet101Features) and conf.backbone_weights is None and not conf.allow_random_backbone:
        raise ValueError("resnet101 features need --backbone-weights (torchvision resnet101 .pth) or "
                         "--resume/--init a checkpoint with a backbone; nothing is downloaded")
    torch.manual_seed(conf.seed)
    nc = NeighConsensus(list(conf.ncons_kernel_sizes), list(conf.ncons_channels), symmetric=True,
                        method=conf.conv_method)
    if conf.init_bias is not None:
        with torch.no_grad():
            for layer in nc.conv_layers():
                if layer.bias is not None:
                    layer.bias.fill_(conf.init_bias)
    model = NCNet(fe, nc).to(device)
    for p in model.features.parameters():
        p.requires_grad_(False)
    if isinstance(fe, ResNet101Features) and conf.fe_finetune_params > 0:
        layer3 = fe.model[6]
        for block in list(layer3.children())[-conf.fe_finetune_params:]:
            for p in block.parameters():
                p.requires_grad_(True)
    return model


def load_into(model: NCNet, ckpt: dict) -> None:
    """Consensus (and backbone, if any) tensors of an official-layout checkpoint into ``model``."""
    backbone, cons = split_official_state(ckpt["state_dict"])
    model.neigh_consensus.load_state_dict(cons, strict=True)
    if isinstance(model.features, ResNet101Features) and backbone:
        load_backbone_state(model.features.model, backbone)


def checkpoint_args(conf: TrainConfig, **extra: Any) -> argparse.Namespace:
    """The ``args`` Namespace stored in checkpoints (the official files carry one; official readers and
    ``matching.checkpoint`` read its fields): official field names + ours, primitives only."""
    ns = argparse.Namespace(
        ncons_kernel_sizes=list(conf.ncons_kernel_sizes), ncons_channels=list(conf.ncons_channels),
        lr=float(conf.lr), num_epochs=int(conf.epochs), batch_size=int(conf.batch_size),
        image_size=int(conf.image_size[0]), image_size_wh=list(size_wh(conf)),
        fe_finetune_params=int(conf.fe_finetune_params),
        feature_extraction_cnn=conf.features.replace("-", "_"), feature_stride=int(conf.feature_step),
        dataset_image_path=str(conf.image_root or ""), dataset_csv_path=",".join(map(str, conf.data_dirs)),
        result_model_fn=Path(conf.out).name, result_model_dir=str(Path(conf.out).parent),
        checkpoint=str(conf.resume or ""), seed=int(conf.seed), layout=conf.layout,
        synthetic_seeds=list(conf.synthetic_seeds), synthetic_size=conf.synthetic_size,
        steps_per_epoch=int(conf.steps_per_epoch or 0), max_pairs=int(conf.max_pairs or 0),
        init_bias=float("nan") if conf.init_bias is None else float(conf.init_bias),
        symmetric_mode=True, torch_version=str(torch.__version__))
    for k, v in extra.items():
        setattr(ns, k, v)
    return ns


def size_wh(conf: TrainConfig) -> tuple[int, int]:
    """Training image size (W, H) px: one value = square (as NCNet's 400x400), two = W H."""
    s = list(conf.image_size)
    return (int(s[0]), int(s[0])) if len(s) == 1 else (int(s[0]), int(s[1]))


# ----------------------------------------------------------------------------------------------- loop
def run_epoch(model: NCNet, data: PairSet, cache: FeatureCache, batches: list[list[int]], optimizer=None,
              desc: str = "") -> tuple[float, ...]:
    """One pass; trains when ``optimizer`` is given. Returns mean (loss, positive score, negative score)."""
    train = optimizer is not None
    model.train(train)
    tot = np.zeros(3)
    n = 0
    bar = tqdm(batches, desc=desc, leave=False, disable=None)
    for idx in bar:
        with torch.set_grad_enabled(train):
            fa, fb = cache.batch(data, idx)
            loss, pos, neg = weak_loss(model, fa, fb)
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        tot += np.array([loss.item(), pos.item(), neg.item()]) * len(idx)
        n += len(idx)
        bar.set_postfix(loss=f"{loss.item():.4f}", pos=f"{pos.item():.4f}", neg=f"{neg.item():.4f}")
    return tuple(tot / max(n, 1))


def best_path(out: Path) -> Path:
    """``best_<name>`` next to ``out`` (as the official training script)."""
    return out.parent / f"best_{out.name}"


def train(conf: TrainConfig) -> dict[str, Any]:
    """Train per ``conf``; writes the checkpoints and returns a summary dict (per-epoch losses, pair counts, paths)."""
    t_start = time.perf_counter()
    torch.manual_seed(conf.seed)
    np.random.seed(conf.seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if conf.threads:
        torch.set_num_threads(conf.threads)
    device = torch.device(conf.device)
    if not conf.data_dirs:
        conf = dataclasses.replace(conf, data_dirs=tuple(str(d) for d in synthetic_dirs(
            conf.synthetic_root, conf.synthetic_seeds, conf.synthetic_size)))
    train_set, val_set = collect_data(conf, "train"), collect_data(conf, "val")
    if len(train_set) < 2:
        raise ValueError(f"need at least 2 positive training pairs, found {len(train_set)} in {list(conf.data_dirs)}")
    model = build_training_model(conf, device)
    if conf.init:
        load_into(model, load_checkpoint_file(conf.init))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=conf.lr)
    start_epoch, train_hist, val_hist, best = 1, [], [], float("inf")
    if conf.resume:
        ckpt = load_checkpoint_file(conf.resume)
        load_into(model, ckpt)
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt.get("epoch", 0)) + 1
        train_hist = [float(v) for v in np.asarray(ckpt.get("train_loss", []))[:start_epoch - 1]]
        val_hist = [float(v) for v in np.asarray(ckpt.get("test_loss", []))[:start_epoch - 1]]
        best = float(ckpt.get("best_test_loss", float("inf")))
        prev_seconds = float(getattr(ckpt.get("args"), "train_seconds", 0.0) or 0.0)
        log.info("resuming from %s at epoch %d", conf.resume, start_epoch)
    else:
        prev_seconds = 0.0
    fixed = not any(p.requires_grad for p in model.features.parameters())
    cache = FeatureCache(model.features, size_wh(conf), device, enabled=fixed)
    out = Path(conf.out)
    val_batches = make_batches(len(val_set), conf.batch_size, val_set.keys, conf.seed, 0) if len(val_set) >= 2 \
        else []
    summary = {"epochs": []}
    for epoch in range(start_epoch, conf.epochs + 1):
        batches = make_batches(len(train_set), conf.batch_size, train_set.keys, conf.seed, epoch)
        if conf.steps_per_epoch:
            batches = batches[:conf.steps_per_epoch]
        t0 = time.perf_counter()
        tr = run_epoch(model, train_set, cache, batches, optimizer, desc=f"epoch {epoch}/{conf.epochs}")
        with torch.no_grad():
            va = run_epoch(model, val_set, cache, val_batches, None, desc="validation") if val_batches else tr
        train_hist.append(tr[0])
        val_hist.append(va[0])
        is_best = va[0] < best
        best = min(best, va[0])
        seconds = prev_seconds + time.perf_counter() - t_start
        ns = checkpoint_args(conf, train_seconds=round(seconds, 1))
        common = dict(epoch=epoch, args=ns, optimizer=optimizer.state_dict(), train_loss=np.array(train_hist),
                      test_loss=np.array(val_hist), best_test_loss=float(best))
        save_checkpoint(out, model, **common)
        if is_best:
            save_checkpoint(best_path(out), model, **common)
        row = {"epoch": epoch, "train_loss": tr[0], "train_pos": tr[1], "train_neg": tr[2], "val_loss": va[0],
               "val_pos": va[1], "val_neg": va[2], "seconds": time.perf_counter() - t0, "best": bool(is_best)}
        summary["epochs"].append(row)
        print(f"epoch {epoch}: train loss {tr[0]:.5f} (pos {tr[1]:.5f} neg {tr[2]:.5f}), val loss {va[0]:.5f} "
              f"(pos {va[1]:.5f} neg {va[2]:.5f}){' best' if is_best else ''}, {row['seconds']:.1f} s", flush=True)
    summary.update(train_pairs=len(train_set), val_pairs=len(val_set), best_val_loss=best,
                   seconds=time.perf_counter() - t_start, out=str(out), best_out=str(best_path(out)))
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m matching.train`` (option dests = ``TrainConfig`` fields + preset, verbose)."""
    ap = argparse.ArgumentParser(prog="python -m matching.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("data")
    g.add_argument("--data", dest="data_dirs", nargs="+", default=[],
                   help="folders with {train,val}_pairs.csv (in DIR/pairs/, DIR/ or DIR/image_pairs/) or CSV files;"
                        " default: synthetic datasets of --synthetic-seeds")
    g.add_argument("--layout", choices=LAYOUTS, default="auto", help="pair-file layout (default: detected)")
    g.add_argument("--train-csv", help="explicit training pair CSV (overrides the folder lookup)")
    g.add_argument("--val-csv", help="explicit validation pair CSV")
    g.add_argument("--image-root", help="folder the CSV image paths are relative to (default: the data folder)")
    g.add_argument("--synthetic-root", default="outputs/ncnet_synthetic",
                   help="where default synthetic datasets are generated (default %(default)s)")
    g.add_argument("--synthetic-seeds", type=int, nargs="+", default=[1, 2], help="synthetic building seeds")
    g.add_argument("--synthetic-size", default="small", choices=list(SYNTHETIC_SIZES))
    g.add_argument("--max-pairs", type=int, default=0, help="use at most this many training pairs per folder")
    g = ap.add_argument_group("model")
    g.add_argument("--features", default="dense-rootsift", choices=list(FEATURE_NAMES))
    g.add_argument("--feature-step", type=int, default=8, help="dense-rootsift grid step (px)")
    g.add_argument("--backbone-weights", help="torchvision resnet101 .pth for --features resnet101")
    g.add_argument("--allow-random-backbone", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--fe-finetune-params", type=int, default=0,
                   help="unfreeze the last n blocks of ResNet-101 layer3 (default 0: consensus only)")
    g.add_argument("--ncons-kernel-sizes", type=int, nargs="+", default=[3, 3])
    g.add_argument("--ncons-channels", type=int, nargs="+", default=[16, 1])
    g.add_argument("--init-bias", type=float, default=None, help="initial value of every consensus bias")
    g.add_argument("--conv-method", default="loop3d",
                   help="4D conv implementation for training (default loop3d: fastest backward on CPU)")
    g = ap.add_argument_group("optimisation")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="paper: 400x400, batch 16, 5 epochs, lr 5e-4 (the defaults); cpu: 120x90, batch 8, 4 epochs, "
                        "lr 5e-3 (the packaged weights)")
    g.add_argument("--image-size", type=int, nargs="+", default=None, help="N (N x N, as NCNet) or W H")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (paper 5e-4)")
    g.add_argument("--steps-per-epoch", type=int, default=0, help="stop each epoch after this many batches")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch default)")
    g.add_argument("--device", default="cpu")
    g = ap.add_argument_group("checkpoints")
    g.add_argument("--out", default="outputs/ncnet_train/ncnet_dense_rootsift.pth.tar",
                   help="checkpoint written after every epoch; best_<name> keeps the lowest validation loss")
    g.add_argument("--resume", help="continue a run from its checkpoint (weights, optimizer, epoch, histories)")
    g.add_argument("--init", help="start from this checkpoint's weights (fresh optimizer, epoch 1)")
    g.add_argument("-v", "--verbose", action="store_true")
    return ap


def config_from_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """``TrainConfig`` of options parsed by ``ap`` (``build_parser``); ``--preset`` fills image size / batch /
    epochs / lr unless given explicitly. Bad options exit through ``ap.error`` (status 2)."""
    if len(args.image_size or [0]) not in (1, 2):
        ap.error("--image-size takes N or W H")
    if len(args.ncons_kernel_sizes) != len(args.ncons_channels):
        ap.error("--ncons-kernel-sizes and --ncons-channels need the same length")
    if args.batch_size is not None and args.batch_size < 2:
        ap.error("--batch-size must be >= 2 (negatives are made inside the batch)")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    try:
        conf = TrainConfig.from_preset(args.preset or "paper", **given)
    except ValueError as exc:
        ap.error(str(exc))
    return conf


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """``TrainConfig`` of a ``python -m matching.train`` command line (``config_from_args``)."""
    ap = build_parser()
    return config_from_args(ap, ap.parse_args(argv))


def cli(argv: list[str] | None = None) -> int:
    """``python -m matching.train``: exit status 0, or 2 on bad input."""
    ap = build_parser()
    args = ap.parse_args(argv)
    conf = config_from_args(ap, args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        summary = train(conf)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"trained on {summary['train_pairs']} pairs ({summary['val_pairs']} validation) in "
          f"{summary['seconds']:.1f} s; best validation loss {summary['best_val_loss']:.5f}; "
          f"wrote {summary['out']} and {summary['best_out']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
