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
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from matching.checkpoint import load_checkpoint_file, save_checkpoint, split_official_state
from matching.correlation import correlation_4d
from matching.pairs import LAYOUTS, ImagePair, load_pairs, resolve_image

log = logging.getLogger(__name__)

PAPER_DEFAULTS = {"image_size": [400], "batch_size": 16, "epochs": 5, "lr": 5e-4}
# the preset the packaged weights were trained with (see matching/weights/README.md)
PRESETS = {
    "paper": dict(PAPER_DEFAULTS),
    "cpu": {"image_size": [120, 90], "batch_size": 8, "epochs": 4, "lr": 5e-3},
}


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


def load_image_tensor(path: Path, size_wh: tuple[int, int], flip: bool = False) -> Tensor:
    """Image file -> [3, H, W] float 0..1 RGB resized to size_wh (area / linear), optionally flipped."""
    import cv2

    from localize.core.records import load_rgb

    img = load_rgb(path)
    if flip:
        img = img[:, ::-1]
    w, h = size_wh
    interp = cv2.INTER_AREA if w * h < img.shape[0] * img.shape[1] else cv2.INTER_LINEAR
    img = cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=interp)
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0


class PairSet:
    """Positive pairs with their image roots; fixed-feature cache shared across epochs."""

    def __init__(self, pairs: list[ImagePair], roots: list[list[Path]], layouts: list[str]) -> None:
        self.pairs, self.roots, self.layouts = pairs, roots, layouts
        # data-source index prefix keeps places of different folders apart
        self.keys = [f"{r[0]}|{place_key(p, lay)}" for p, r, lay in zip(pairs, roots, layouts)]

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


def collect_data(args: argparse.Namespace, split: str) -> PairSet:
    """Positive pairs of ``split`` from every data folder (synthetic ones generated when needed)."""
    pairs, roots, layouts = [], [], []
    csv_opt = args.train_csv if split == "train" else args.val_csv
    for data in args.data_dirs:
        d = Path(data)
        got, layout, path = load_pairs(d, split, args.layout, csv_path=csv_opt)
        if path is None:
            continue
        base = [Path(args.image_root)] if args.image_root else []
        base += [d if d.is_dir() else d.parent, path.parent, path.parent.parent]
        base += [b / "images" for b in base[-3:]]
        uniq = list(dict.fromkeys(base))
        if args.max_pairs and split == "train":
            got = got[:args.max_pairs]
        pairs += got
        roots += [uniq] * len(got)
        layouts += [layout] * len(got)
        log.info("%s: %d positive %s pairs from %s (layout %s)", d, len(got), split, path, layout)
    return PairSet(pairs, roots, layouts)


def synthetic_dirs(root: str | Path, seeds: list[int], size: str) -> list[Path]:
    """Generate (when missing) the synthetic datasets of ``seeds`` under root/<size>_s<seed>; their paths."""
    from datasets.synthetic import generate

    out = []
    for s in seeds:
        d = Path(root) / f"{size}_s{s}"
        generate(d, seed=s, size=size, layouts=("rgbd",))
        out.append(d)
    return out


# ----------------------------------------------------------------------------------------------- model
def build_training_model(args: argparse.Namespace, device: torch.device):
    """NCNet with a freshly initialised consensus network (``--seed``), features per the options."""
    from matching.consensus import NeighConsensus
    from matching.features import ResNet101Features, build_features
    from matching.model import NCNet

    fe = build_features(args.features, backbone_weights=args.backbone_weights, step=args.feature_step)
    if isinstance(fe, ResNet101Features) and args.backbone_weights is None and not args.allow_random_backbone:
        raise ValueError("resnet101 features need --backbone-weights (torchvision resnet101 .pth) or "
                         "--resume/--init a checkpoint with a backbone; nothing is downloaded")
    torch.manual_seed(args.seed)
    nc = NeighConsensus(args.ncons_kernel_sizes, args.ncons_channels, symmetric=True, method=args.conv_method)
    if args.init_bias is not None:
        with torch.no_grad():
            for layer in nc.conv_layers():
                if layer.bias is not None:
                    layer.bias.fill_(args.init_bias)
    model = NCNet(fe, nc).to(device)
    for p in model.features.parameters():
        p.requires_grad_(False)
    if isinstance(fe, ResNet101Features) and args.fe_finetune_params > 0:
        layer3 = fe.model[6]
        for block in list(layer3.children())[-args.fe_finetune_params:]:
            for p in block.parameters():
                p.requires_grad_(True)
    return model


def load_into(model, ckpt: dict) -> None:
    """Consensus (and backbone, if any) tensors of an official-layout checkpoint into ``model``."""
    from matching.features import ResNet101Features, load_backbone_state

    backbone, cons = split_official_state(ckpt["state_dict"])
    model.neigh_consensus.load_state_dict(cons, strict=True)
    if isinstance(model.features, ResNet101Features) and backbone:
        load_backbone_state(model.features.model, backbone)


def checkpoint_args(args: argparse.Namespace, **extra) -> argparse.Namespace:
    """The ``args`` Namespace stored in checkpoints: official field names + ours, primitives only."""
    ns = argparse.Namespace(
        ncons_kernel_sizes=list(args.ncons_kernel_sizes), ncons_channels=list(args.ncons_channels),
        lr=float(args.lr), num_epochs=int(args.epochs), batch_size=int(args.batch_size),
        image_size=int(args.image_size[0]), image_size_wh=list(size_wh(args)),
        fe_finetune_params=int(args.fe_finetune_params),
        feature_extraction_cnn=args.features.replace("-", "_"), feature_stride=int(args.feature_step),
        dataset_image_path=str(args.image_root or ""), dataset_csv_path=",".join(map(str, args.data_dirs)),
        result_model_fn=Path(args.out).name, result_model_dir=str(Path(args.out).parent),
        checkpoint=str(args.resume or ""), seed=int(args.seed), layout=args.layout,
        synthetic_seeds=list(args.synthetic_seeds), synthetic_size=args.synthetic_size,
        steps_per_epoch=int(args.steps_per_epoch or 0), max_pairs=int(args.max_pairs or 0),
        init_bias=float("nan") if args.init_bias is None else float(args.init_bias),
        symmetric_mode=True, torch_version=str(torch.__version__))
    for k, v in extra.items():
        setattr(ns, k, v)
    return ns


def size_wh(args: argparse.Namespace) -> tuple[int, int]:
    """Training image size (W, H): one value = square (as NCNet's 400x400), two = W H."""
    s = list(args.image_size)
    return (int(s[0]), int(s[0])) if len(s) == 1 else (int(s[0]), int(s[1]))


# ----------------------------------------------------------------------------------------------- loop
def run_epoch(model, data: PairSet, cache: FeatureCache, batches: list[list[int]], optimizer=None,
              desc: str = "") -> tuple[float, float, float]:
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


def train(args: argparse.Namespace) -> dict:
    """Train per ``args`` (see ``parse_args``); returns a summary dict."""
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.data_dirs:
        args.data_dirs = [str(d) for d in synthetic_dirs(args.synthetic_root, args.synthetic_seeds,
                                                         args.synthetic_size)]
    train_set, val_set = collect_data(args, "train"), collect_data(args, "val")
    if len(train_set) < 2:
        raise ValueError(f"need at least 2 positive training pairs, found {len(train_set)} in {args.data_dirs}")
    model = build_training_model(args, device)
    if args.init:
        load_into(model, load_checkpoint_file(args.init))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    start_epoch, train_hist, val_hist, best = 1, [], [], float("inf")
    if args.resume:
        ckpt = load_checkpoint_file(args.resume)
        load_into(model, ckpt)
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt.get("epoch", 0)) + 1
        train_hist = [float(v) for v in np.asarray(ckpt.get("train_loss", []))[:start_epoch - 1]]
        val_hist = [float(v) for v in np.asarray(ckpt.get("test_loss", []))[:start_epoch - 1]]
        best = float(ckpt.get("best_test_loss", float("inf")))
        prev_seconds = float(getattr(ckpt.get("args"), "train_seconds", 0.0) or 0.0)
        log.info("resuming from %s at epoch %d", args.resume, start_epoch)
    else:
        prev_seconds = 0.0
    fixed = not any(p.requires_grad for p in model.features.parameters())
    cache = FeatureCache(model.features, size_wh(args), device, enabled=fixed)
    out = Path(args.out)
    val_batches = make_batches(len(val_set), args.batch_size, val_set.keys, args.seed, 0) if len(val_set) >= 2 \
        else []
    summary = {"epochs": []}
    for epoch in range(start_epoch, args.epochs + 1):
        batches = make_batches(len(train_set), args.batch_size, train_set.keys, args.seed, epoch)
        if args.steps_per_epoch:
            batches = batches[:args.steps_per_epoch]
        t0 = time.perf_counter()
        tr = run_epoch(model, train_set, cache, batches, optimizer, desc=f"epoch {epoch}/{args.epochs}")
        with torch.no_grad():
            va = run_epoch(model, val_set, cache, val_batches, None, desc="validation") if val_batches else tr
        train_hist.append(tr[0])
        val_hist.append(va[0])
        is_best = va[0] < best
        best = min(best, va[0])
        seconds = prev_seconds + time.perf_counter() - t_start
        ns = checkpoint_args(args, train_seconds=round(seconds, 1))
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--preset`` fills image size / batch / epochs unless given explicitly)."""
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
    g.add_argument("--synthetic-size", default="small", choices=["tiny", "small", "medium"])
    g.add_argument("--max-pairs", type=int, default=0, help="use at most this many training pairs per folder")
    g = ap.add_argument_group("model")
    g.add_argument("--features", default="dense-rootsift", choices=["dense-rootsift", "resnet101"])
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
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset or "paper"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.image_size) not in (1, 2):
        ap.error("--image-size takes N or W H")
    if len(args.ncons_kernel_sizes) != len(args.ncons_channels):
        ap.error("--ncons-kernel-sizes and --ncons-channels need the same length")
    if args.batch_size < 2:
        ap.error("--batch-size must be >= 2 (negatives are made inside the batch)")
    return args


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        summary = train(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"trained on {summary['train_pairs']} pairs ({summary['val_pairs']} validation) in "
          f"{summary['seconds']:.1f} s; best validation loss {summary['best_val_loss']:.5f}; "
          f"wrote {summary['out']} and {summary['best_out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
