"""Train the learned dense features from random initialisation: ``python -m matching.train_features``.

Data (never the Oxford sequences or TUM, which are validation only):
  (a) synthetic building pairs with exact dense ground truth (``datasets.synthetic.gt_correspondences``),
      packed by ``--pack-synthetic`` into one .npz (images + correspondences), B re-warped by a random
      in-plane rotation (+-45 deg) and scale (0.6-1.6x) per sample;
  (b) real photos (``../shared/data/realphotos_ssl``, ``split == train`` rows of manifest.csv, or a folder of
      pre-resized JPEGs made by ``--pack-photos``) with homographic adaptation: random perspective, rotation
      +-45 deg by default (the residual of a 90-degree test-time rotation set), scale ratio 0.5-2x, brightness / contrast / gamma, blur, noise, JPEG.
Loss: symmetric dense InfoNCE. For N ground-truth points per pair, A's (bilinear) descriptor against B's
descriptor at the true point (positive) and every B feature cell farther than ``exclude_cells`` cells from it
(negatives), temperature ``temperature``; and the same from B to A.

Every sample is a pure function of (seed, global sample index), so a run is deterministic given the seed on
the same device and ``--resume`` continues exactly where the checkpoint stopped. Training is time-bounded
(``--time-limit``): the checkpoint is always written before it runs out. ``--auto-iterations`` sizes the
cosine schedule to the time limit after timing the first steps (the count is stored in the checkpoint).

    python -m matching.train_features --photos DIR --synthetic PACK.npz --out outputs/learned/ckpt.pth \
        [--device cuda --amp] [--batch 32 --crop 256] [--iterations N | --auto-iterations] [--time-limit S]
        [--resume] [--init matching/weights/learned_features.pth] [--export matching/weights/learned_features.pth]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from datasets.rgbd_folder import read_rgbd_folder
from datasets.synthetic import gt_correspondences
from localize.core.config import from_dict
from localize.core.torchfile import load_torch_file
from matching.learned_features import (
    LearnedConfig,
    LearnedFeatures,
    load_learned_features,
    num_parameters,
    save_learned_weights,
)
from matching.pairs import load_pairs

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "realphotos_ssl"


@dataclass
class TrainFeaturesConfig:
    """Everything a run depends on (stored in the checkpoint)."""

    out: str = "outputs/learned_features/ckpt.pth"
    photos: str = str(DEFAULT_PHOTOS)  # realphotos_ssl root (manifest.csv) or a folder of JPEGs (--pack-photos)
    synthetic: str = ""  # .npz of --pack-synthetic ('' = photos only)
    synthetic_fraction: float = 0.25
    max_side: int = 384  # photos are resized to this longer side when loaded from the manifest
    crop: int = 256
    rotation: float = 45.0  # max in-plane rotation of B (deg); 45 = the residual of a 90-degree test-time rotation set
    scale_ratio: float = 2.0  # B/A scale ratio drawn log-uniformly in [1/r, r]
    batch: int = 16  # pairs per step
    points: int = 384  # GT points per pair for the loss
    temperature: float = 0.05
    exclude_cells: float = 0.75  # B cells closer than this (cells) to the true point are not negatives
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    iterations: int = 2000
    auto_iterations: bool = False
    time_limit: float = 0.0  # seconds (0 = none)
    stop_after: int = 0  # stop this invocation after this many iterations (training in chunks; 0 = none)
    seed: int = 0
    device: str = "cpu"
    amp: bool = False  # bf16 autocast (CUDA)
    workers: int = 0
    threads: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    val_pairs: int = 32
    resume: bool = False
    init: str = ""  # start from these packaged learned-feature weights (fine-tuning, fresh optimizer; '' = random)
    export: str = ""  # also write the packaged weight file here at the end
    feature: dict = field(default_factory=lambda: LearnedConfig().to_dict())


# ---------------------------------------------------------------------------------------------- data
def load_photos(root: str | Path, split: str = "train", max_side: int = 384) -> list[np.ndarray]:
    """Grey uint8 photos: a realphotos_ssl root (manifest.csv rows of ``split``) or a folder of ``split``/*.jpg."""
    root = Path(root)
    if (root / "manifest.csv").is_file():
        with open(root / "manifest.csv", newline="") as f:
            files = [root / r["file"] for r in csv.DictReader(f) if r["split"] == split]
    else:
        files = sorted((root / split).glob("*.jpg"))
    out = []
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"cannot read {p}")
        s = max_side / max(img.shape)
        if s < 1:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        out.append(img)
    if not out:
        raise ValueError(f"no {split} photos under {root}")
    return out


def pack_photos(src: str | Path, dst: str | Path, max_side: int = 384, quality: int = 92) -> int:
    """Write ``dst/{train,val}/NNNN.jpg``: the manifest's photos, grey, longer side <= max_side."""
    n = 0
    for split in ("train", "val"):
        d = Path(dst) / split
        d.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(load_photos(src, split, max_side)):
            cv2.imwrite(str(d / f"{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            n += 1
    return n


def pack_synthetic(roots: list[str | Path], out: str | Path, split: str = "train", step: int = 4,
                   max_pairs: int = 100000) -> int:
    """Positive pairs of generated synthetic datasets -> one .npz: grey images and GT correspondences
    (``gt_correspondences`` every ``step`` px of A), ragged arrays with offsets."""
    imgs, index, uva, uvb, offs = [], {}, [], [], [0]
    pa, pb = [], []
    for root in roots:
        root = Path(root)
        recs = {r.name: r for r in read_rgbd_folder(root / "train")}
        pairs, _, _ = load_pairs(root, split, "synthetic")
        for p in pairs[:max_pairs]:
            ra, rb = recs[Path(p.source).name], recs[Path(p.target).name]
            a, b = gt_correspondences(ra, rb, step=step)
            if len(a) < 50:
                continue
            for r in (ra, rb):
                key = f"{root}/{r.name}"
                if key not in index:
                    index[key] = len(imgs)
                    imgs.append(cv2.imread(str(r.image_path), cv2.IMREAD_GRAYSCALE))
            pa.append(index[f"{root}/{ra.name}"])
            pb.append(index[f"{root}/{rb.name}"])
            uva.append(a.astype(np.float32))
            uvb.append(b.astype(np.float32))
            offs.append(offs[-1] + len(a))
    if not pa:
        raise ValueError("no synthetic pairs with ground truth")
    np.savez_compressed(out, images=np.stack(imgs), pair_a=np.array(pa), pair_b=np.array(pb),
                        uv_a=np.concatenate(uva), uv_b=np.concatenate(uvb), offsets=np.array(offs))
    return len(pa)


def _rot_scale(theta: float, s: float) -> np.ndarray:
    c, si = math.cos(theta), math.sin(theta)
    return np.array([[s * c, -s * si, 0], [s * si, s * c, 0], [0, 0, 1]])


def _trans(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])


def photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness / contrast / gamma, blur, noise, JPEG on a grey uint8 image."""
    x = img.astype(np.float32) / 255.0
    x = np.clip((x - 0.5) * rng.uniform(0.6, 1.4) + 0.5 + rng.uniform(-0.2, 0.2), 0, 1)
    x = x ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.5:
        x = x + rng.normal(0, rng.uniform(0.0, 0.03), x.shape).astype(np.float32)
    out = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 91))])
        out = cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE)
    return out


def homography_pair(photo: np.ndarray, crop: int, rng: np.random.Generator, rotation: float = 45.0,
                    scale_ratio: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two crops of one photo: A (mild warp) and B (rotation +-``rotation`` deg, scale ratio 1/r..r, perspective);
    returns (A, B, H_ab 3x3 in crop pixels, valid mask of B)."""
    h, w = photo.shape
    c = np.array([w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)])
    base = rng.uniform(0.8, 1.6) * crop / max(h, w) * 1.2  # photo px -> crop px for A

    def view(theta: float, s: float, persp: float) -> np.ndarray:
        P = np.eye(3)
        P[2, :2] = rng.uniform(-persp, persp, 2) / crop
        return _trans(crop / 2, crop / 2) @ P @ _rot_scale(theta, s) @ _trans(-c[0], -c[1])

    Ha = view(math.radians(rng.uniform(-5, 5)), base, 0.1)
    ratio = math.exp(rng.uniform(-math.log(scale_ratio), math.log(scale_ratio)))
    Hb = view(math.radians(rng.uniform(-rotation, rotation)), base * ratio, 0.4)
    Hb = _trans(*rng.uniform(-0.1, 0.1, 2) * crop) @ Hb
    a = cv2.warpPerspective(photo, Ha, (crop, crop), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    b = cv2.warpPerspective(photo, Hb, (crop, crop), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    valid_b = cv2.warpPerspective(np.ones_like(photo), Hb, (crop, crop), flags=cv2.INTER_NEAREST) > 0
    Hab = Hb @ np.linalg.inv(Ha)
    if rng.random() < 0.5:  # scale change either way
        a, b = b, a
        Hab = np.linalg.inv(Hab)
        valid_b = np.ones_like(valid_b)  # old A (reflect-padded) covers the whole crop
    return a, b, Hab / Hab[2, 2], valid_b


def _apply_h(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    p = xy @ H[:2, :2].T + H[:2, 2]
    d = xy @ H[2, :2] + H[2, 2]
    return p / d[:, None]


def _points_from_h(H: np.ndarray, valid_b: np.ndarray, crop: int, n: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    xa = rng.uniform(0, crop, (4 * n, 2))
    xb = _apply_h(H, xa)
    ok = (xb[:, 0] >= 2) & (xb[:, 1] >= 2) & (xb[:, 0] < crop - 2) & (xb[:, 1] < crop - 2)
    ok &= np.abs(xb).max(1) < 1e6
    ok[ok] = valid_b[xb[ok, 1].astype(int), xb[ok, 0].astype(int)]
    return xa[ok][:n], xb[ok][:n]


class PairSource:
    """Sample ``i`` of a run = a deterministic function of (seed, i): photo pair or synthetic pair."""

    def __init__(self, conf: TrainFeaturesConfig, split: str = "train") -> None:
        self.conf = conf
        self.split = split
        self.photos = load_photos(conf.photos, split, conf.max_side)
        self.syn = None
        if conf.synthetic and split == "train":
            z = np.load(conf.synthetic)
            self.syn = {k: z[k] for k in z.files}

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> (A uint8 [S, S], B uint8 [S, S], points A [n, 2], points B [n, 2]) (n = conf.points, padded by
        repeating when fewer; crop pixels, COLMAP convention)."""
        conf = self.conf
        salt = 0 if self.split == "train" else 7777
        rng = np.random.default_rng([conf.seed, salt, i])
        for _ in range(20):
            if self.syn is not None and rng.random() < conf.synthetic_fraction:
                a, b, pa, pb = self._synthetic(rng)
            else:
                photo = self.photos[int(rng.integers(len(self.photos)))]
                a, b, H, valid = homography_pair(photo, conf.crop, rng, conf.rotation, conf.scale_ratio)
                pa, pb = _points_from_h(H, valid, conf.crop, conf.points, rng)
            if len(pa) >= 16:
                break
        else:
            raise RuntimeError(f"sample {i}: no overlapping pair after 20 tries")
        a, b = photometric(a, rng), photometric(b, rng)
        rep = rng.integers(len(pa), size=conf.points - len(pa)) if len(pa) < conf.points else np.zeros(0, int)
        pa = np.concatenate([pa, pa[rep]]).astype(np.float32)
        pb = np.concatenate([pb, pb[rep]]).astype(np.float32)
        return a, b, pa, pb

    def _synthetic(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s, S = self.syn, self.conf.crop
        k = int(rng.integers(len(s["pair_a"])))
        lo, hi = s["offsets"][k], s["offsets"][k + 1]
        ua, ub = s["uv_a"][lo:hi].astype(np.float64), s["uv_b"][lo:hi].astype(np.float64)
        ia, ib = s["images"][s["pair_a"][k]], s["images"][s["pair_b"][k]]
        if rng.random() < 0.5:
            ia, ib, ua, ub = ib, ia, ub, ua  # GT is symmetric enough: the (depth-checked) pairs both ways
        h, w = ia.shape
        sc = rng.uniform(0.8, 1.3) * S / min(h, w)
        ca = ua[int(rng.integers(len(ua)))]
        Ha = _trans(S / 2, S / 2) @ _rot_scale(0.0, sc) @ _trans(-ca[0], -ca[1])
        pa = _apply_h(Ha, ua)
        inside = (pa >= 2).all(1) & (pa < S - 2).all(1)
        if inside.sum() < 16:
            return ia[:0], ib[:0], pa[:0], pa[:0]
        cb = ub[inside].mean(0)
        ratio = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
        Hb = _trans(S / 2, S / 2) @ _rot_scale(math.radians(rng.uniform(-self.conf.rotation, self.conf.rotation)), sc * ratio) @ _trans(-cb[0], -cb[1])
        pb = _apply_h(Hb, ub)
        ok = inside & (pb >= 2).all(1) & (pb < S - 2).all(1)
        sel = np.flatnonzero(ok)
        sel = sel[rng.permutation(len(sel))[: self.conf.points]]
        a = cv2.warpPerspective(ia, Ha, (S, S), flags=cv2.INTER_AREA if sc < 1 else cv2.INTER_LINEAR)
        b = cv2.warpPerspective(ib, Hb, (S, S), flags=cv2.INTER_LINEAR)
        return a, b, pa[sel], pb[sel]


class _IndexDataset(torch.utils.data.Dataset):
    def __init__(self, source: PairSource, start: int, count: int) -> None:
        self.source, self.start, self.count = source, start, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int):
        a, b, pa, pb = self.source(self.start + k)
        return torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(pa), torch.from_numpy(pb)


# ---------------------------------------------------------------------------------------------- loss
def interp_matrix(xy: Tensor, image_hw: tuple[int, int], stride: int) -> Tensor:
    """Bilinear interpolation weights [B, N, h*w] of pixel points xy [B, N, 2] on a stride-s cell grid (cell (i, j)
    centred at ((j + .5) s, (i + .5) s)); border-clamped. A matmul, so its backward is deterministic."""
    H, W = image_hw
    h, w = H // stride, W // stride
    fx = (xy[..., 0] / stride - 0.5).clamp(0, w - 1)
    fy = (xy[..., 1] / stride - 0.5).clamp(0, h - 1)
    x0, y0 = fx.floor().clamp(max=w - 2).long(), fy.floor().clamp(max=h - 2).long()
    ax, ay = fx - x0, fy - y0
    M = xy.new_zeros(*xy.shape[:-1], h * w)
    for dy, dx, wt in ((0, 0, (1 - ax) * (1 - ay)), (0, 1, ax * (1 - ay)), (1, 0, (1 - ax) * ay), (1, 1, ax * ay)):
        M.scatter_add_(-1, ((y0 + dy) * w + x0 + dx)[..., None], wt[..., None])
    return M


def info_nce(fa: Tensor, fb: Tensor, pa: Tensor, pb: Tensor, image_hw: tuple[int, int], stride: int,
             temperature: float, exclude_cells: float) -> tuple[Tensor, Tensor]:
    """Symmetric dense InfoNCE. fa, fb [B, C, h, w] (L2-normalised); pa, pb [B, N, 2] pixels.
    Returns (loss, accuracy: share of points whose best cell of the other image is within 1 cell)."""
    losses, accs = [], []
    for f1, f2, p1, p2 in ((fa, fb, pa, pb), (fb, fa, pb, pa)):
        Bn, C, h, w = f2.shape
        flat1, flat2 = f1.flatten(2), f2.flatten(2)  # [B, C, hw]
        d1 = F.normalize(torch.bmm(interp_matrix(p1, image_hw, stride), flat1.transpose(1, 2)), dim=-1)  # [B,N,C]
        d2 = F.normalize(torch.bmm(interp_matrix(p2, image_hw, stride), flat2.transpose(1, 2)), dim=-1)
        neg = torch.bmm(d1, flat2) / temperature  # [B, N, hw]
        jj, ii = torch.meshgrid(torch.arange(w, device=f2.device), torch.arange(h, device=f2.device), indexing="xy")
        centres = torch.stack([(jj.flatten() + 0.5) * stride, (ii.flatten() + 0.5) * stride], -1).float()
        dist = torch.cdist(p2.float(), centres[None].expand(Bn, -1, -1))  # [B, N, hw]
        neg = neg.masked_fill(dist < exclude_cells * stride, float("-inf"))
        pos = (d1 * d2).sum(-1, keepdim=True) / temperature
        logits = torch.cat([pos, neg], -1)
        losses.append(-F.log_softmax(logits.float(), -1)[..., 0].mean())
        with torch.no_grad():
            best = torch.bmm(d1, flat2).argmax(-1)
            accs.append((dist.gather(-1, best[..., None])[..., 0] <= stride).float().mean())
    return 0.5 * (losses[0] + losses[1]), 0.5 * (accs[0] + accs[1])


# ---------------------------------------------------------------------------------------------- training
def set_determinism(conf: TrainFeaturesConfig) -> None:
    if conf.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    if conf.threads:
        torch.set_num_threads(conf.threads)


def build_model(conf: TrainFeaturesConfig) -> LearnedFeatures:
    torch.manual_seed(conf.seed)
    return LearnedFeatures(from_dict(LearnedConfig, dict(conf.feature)))


def lr_at(conf: TrainFeaturesConfig, it: int) -> float:
    if it < conf.warmup:
        return conf.lr * (it + 1) / conf.warmup
    t = min(1.0, (it - conf.warmup) / max(1, conf.iterations - conf.warmup))
    return conf.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def _to_images(x: Tensor, device: torch.device) -> Tensor:
    return x.to(device, non_blocking=True)[:, None].float().div_(255.0)


def step_loss(model: LearnedFeatures, batch, conf: TrainFeaturesConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    a, b, pa, pb = batch
    ia, ib = _to_images(a, device), _to_images(b, device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=conf.amp):
        f = model(torch.cat([ia, ib]))
    fa, fb = f[: len(a)].float(), f[len(a):].float()
    return info_nce(fa, fb, pa.to(device), pb.to(device), tuple(ia.shape[-2:]), model.stride, conf.temperature,
                    conf.exclude_cells)


def _loader(source: PairSource, start: int, count: int, conf: TrainFeaturesConfig):
    return torch.utils.data.DataLoader(_IndexDataset(source, start, count), batch_size=conf.batch, shuffle=False,
                                       num_workers=conf.workers, pin_memory=conf.device.startswith("cuda"),
                                       persistent_workers=False, prefetch_factor=4 if conf.workers else None)


@torch.no_grad()
def validate(model: LearnedFeatures, conf: TrainFeaturesConfig, device: torch.device, source: PairSource | None
             ) -> dict[str, float]:
    if source is None or conf.val_pairs <= 0:
        return {}
    model.eval()
    tot_l, tot_a, n = 0.0, 0.0, 0
    for batch in _loader(source, 0, conf.val_pairs, conf):
        loss, acc = step_loss(model, batch, conf, device)
        tot_l += float(loss) * len(batch[0])
        tot_a += float(acc) * len(batch[0])
        n += len(batch[0])
    model.train()
    return {"val_loss": tot_l / n, "val_acc": tot_a / n}


def save_checkpoint(path: Path, model, opt, conf: TrainFeaturesConfig, it: int, history: list) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
                "config": asdict(conf), "feature_config": model.config.to_dict(), "history": history}, tmp)
    os.replace(tmp, path)


def main(conf: TrainFeaturesConfig) -> dict:
    """Train (or resume) -> {'checkpoint', 'iteration', 'history', 'export'?, 'seconds'}."""
    t_start = time.perf_counter()
    set_determinism(conf)
    device = torch.device(conf.device)
    out = Path(conf.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    start = 0
    state = None
    if conf.resume and out.is_file():
        state = load_torch_file(out)
        saved = from_dict(TrainFeaturesConfig, state["config"])
        # the schedule and data come from the saved run; only run-control options may change
        for k in ("out", "time_limit", "stop_after", "resume", "export", "device", "workers", "threads", "log_every",
                  "checkpoint_every"):
            setattr(saved, k, getattr(conf, k))
        if conf.iterations != saved.iterations and not saved.auto_iterations:
            saved.iterations = conf.iterations  # extending a finished run is allowed
        conf = saved
        start, history = int(state["iteration"]), list(state["history"])
    model = build_model(conf).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=conf.lr, weight_decay=conf.weight_decay)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        log.info("resumed %s at iteration %d", out, start)
    elif conf.init:
        src = load_learned_features(conf.init)
        if src.config != model.config:
            raise ValueError(f"--init {conf.init}: features {src.config} differ from this run's {model.config}")
        model.load_state_dict(src.state_dict())
        log.info("initialised from %s", conf.init)
    log.info("features %s: %d parameters; config %s", model.config, num_parameters(model), conf)
    source = PairSource(conf, "train")
    val_source = PairSource(from_dict(TrainFeaturesConfig, {**asdict(conf), "synthetic": ""}), "val") \
        if conf.val_pairs > 0 else None
    model.train()
    it = start
    deadline = t_start + conf.time_limit if conf.time_limit > 0 else float("inf")
    save_margin = 15.0
    t_loop = time.perf_counter()
    timing_done = not conf.auto_iterations or start > 0
    run_l, run_a, run_n = 0.0, 0.0, 0
    stop_reason = "iterations"
    while it < conf.iterations:
        chunk = conf.iterations - it
        for batch in _loader(source, it * conf.batch, chunk * conf.batch, conf):
            for g in opt.param_groups:
                g["lr"] = lr_at(conf, it)
            loss, acc = step_loss(model, batch, conf, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
            run_l += loss.detach()
            run_a += acc
            run_n += 1
            now = time.perf_counter()
            if not timing_done and it - start == 20:
                t_loop = now
            if not timing_done and it - start == 80:
                per_it = (now - t_loop) / 60
                budget = deadline - now - save_margin - 30
                conf.iterations = max(it + 100, int(it + budget / per_it * 0.97))
                conf.auto_iterations = False
                timing_done = True
                log.info("auto iterations: %.4f s/it -> %d iterations", per_it, conf.iterations)
                break  # restart the loader with the new count (same sample indices)
            if it % conf.log_every == 0 or it == conf.iterations:
                rec = {"iteration": it, "loss": float(run_l) / run_n, "acc": float(run_a) / run_n, "lr": lr_at(conf, it - 1),
                       "seconds": round(now - t_start, 1)}
                if it % (conf.log_every * 10) == 0 or it == conf.iterations:
                    rec.update(validate(model, conf, device, val_source))
                history.append(rec)
                log.info("%s", json.dumps(rec))
                run_l, run_a, run_n = 0.0, 0.0, 0
            if it % conf.checkpoint_every == 0:
                save_checkpoint(out, model, opt, conf, it, history)
            if time.perf_counter() > deadline - save_margin:
                stop_reason = "time limit"
                break
            if conf.stop_after and it - start >= conf.stop_after and it < conf.iterations:
                stop_reason = "chunk"
                break
            if it >= conf.iterations:
                break
        if stop_reason in ("time limit", "chunk"):
            break
    if run_n:
        history.append({"iteration": it, "loss": float(run_l) / run_n, "acc": float(run_a) / run_n,
                        "seconds": round(time.perf_counter() - t_start, 1)})
    save_checkpoint(out, model, opt, conf, it, history)
    result = {"checkpoint": str(out), "iteration": it, "history": history, "stop": stop_reason,
              "seconds": time.perf_counter() - t_start, "parameters": num_parameters(model)}
    if conf.export:
        meta = {"iteration": it, "seed": conf.seed, "device": str(device), "train_seconds": round(result["seconds"], 1),
                "final": history[-1] if history else {}, "command": " ".join(sys.argv)}
        result["export"] = str(save_learned_weights(model, conf.export, meta))
    log.info("done: %d iterations (%s), %.1f s", it, stop_reason, result["seconds"])
    return result


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m matching.train_features", description=__doc__.splitlines()[0])
    d = TrainFeaturesConfig()
    for f in fields(TrainFeaturesConfig):
        if f.name == "feature":
            continue
        opt = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        if isinstance(default, bool):
            ap.add_argument(opt, action="store_true", default=default)
        else:
            ap.add_argument(opt, type=type(default), default=default)
    ap.add_argument("--stride", type=int, default=8, choices=[4, 8])
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--pack-photos", metavar="DIR", help="only write the resized photo pack (from --photos) to DIR")
    ap.add_argument("--pack-synthetic", nargs="+", metavar="ROOT",
                    help="only pack generated synthetic datasets' train pairs into --synthetic (.npz)")
    ap.add_argument("--export-from", metavar="CKPT", help="only convert a checkpoint to the packaged --export file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    if args.pack_photos:
        print(f"packed {pack_photos(args.photos, args.pack_photos, args.max_side)} photos into {args.pack_photos}")
        return 0
    if args.pack_synthetic:
        if not args.synthetic:
            ap.error("--pack-synthetic needs --synthetic OUT.npz")
        print(f"packed {pack_synthetic(args.pack_synthetic, args.synthetic)} pairs into {args.synthetic}")
        return 0
    if args.export_from:
        ck = load_torch_file(args.export_from)
        model = load_learned_features(args.export_from)
        hist = ck.get("history") or [{}]
        meta = {"iteration": ck["iteration"], "seed": ck["config"]["seed"], "device": ck["config"]["device"],
                "final": hist[-1], "source": Path(args.export_from).name}
        print(save_learned_weights(model, args.export or "learned_features.pth", meta))
        return 0
    vals = {f.name: getattr(args, f.name) for f in fields(TrainFeaturesConfig) if f.name != "feature"}
    vals["feature"] = LearnedConfig(channels=args.channels, stride=args.stride).to_dict()
    conf = from_dict(TrainFeaturesConfig, vals)
    res = main(conf)
    print(json.dumps({k: v for k, v in res.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
