"""Global image descriptors (weight-free dense-RootSIFT VLAD or official NetVLAD), through the stage cache.

Configurations are hloc-style named presets in ``CONFS``. The weight-free model
(``model: "dense-rootsift-vlad"``) aggregates dense RootSIFT (``matching.dense_sift``) with the
NetVLAD layer; its vocabulary (k-means centroids, alpha, optional PCA-whitening) is fitted on the
database and stored in the cache stage ``retrieval-vocabulary`` keyed by the configuration and
a fingerprint of the database, so queries and reruns reuse it. Global descriptors are stored in
the cache stage ``global-descriptors`` under keys ``"<role>/<image name>"`` (role ``db`` or
``query``) with the image path as an attribute (a changed path is recomputed).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from localize.core.records import load_rgb
from localize.core.cache import StageCache, file_fingerprint
from matching.dense_sift import DESCRIPTOR_DIM, dense_rootsift
from retrieval.netvlad import NetVLAD, kmeans

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIRS = ("weights", "~/.cache/localize/weights")

CONFS: dict[str, dict[str, Any]] = {
    # weight-free default: NetVLAD layer over dense RootSIFT, vocabulary fitted on the database
    "dense-rootsift-vlad": {
        "model": "dense-rootsift-vlad",
        "resize_max": 320,          # longest image side (px) before description
        "scales": [1.0, 0.5],       # image scales whose descriptors are pooled together
        "bin_size": 4,              # RootSIFT spatial cell (px at each scale)
        "step": 4,                  # descriptor grid step (px)
        "num_clusters": 64,
        "kmeans_descriptors": 100_000,  # descriptors sampled from the database for k-means
        "kmeans_iters": 25,
        "power_norm": 0.5,          # signed power on the VLAD before the final L2 (1.0 = off)
        "pca_dim": 0,               # PCA-whitening dimension fitted on the database (0 = off)
        "pca_whiten_eps": 1.0,      # regulariser (x largest eigenvalue fraction) of the whitening
        "weights": None,            # optional checkpoint of retrieval.train (replaces k-means)
        "seed": 0,
    },
    # official VGG16-NetVLAD, 4096-D after whitening (weights: Pitts30K_struct.mat)
    "netvlad-pitts30k": {"model": "netvlad", "weights": "Pitts30K_struct.mat", "resize_max": 1024},
    "netvlad-tokyotm": {"model": "netvlad", "weights": "TokyoTM_struct.mat", "resize_max": 1024},
}
CONFS["dense-rootsift-vlad-pca"] = {**CONFS["dense-rootsift-vlad"], "pca_dim": 256}
CONFS["dense-rootsift-vlad-trained"] = {**CONFS["dense-rootsift-vlad"], "weights": "dense_vlad_trained.pt"}


def resolve_conf(conf: str | Mapping[str, Any], weights: str | Path | None = None) -> dict[str, Any]:
    """Preset name or dict -> a full configuration dict (``weights`` overrides the preset's file)."""
    if isinstance(conf, str):
        if conf not in CONFS:
            raise ValueError(f"unknown retrieval configuration {conf!r}; presets: {sorted(CONFS)}")
        out = copy.deepcopy(CONFS[conf])
    else:
        out = copy.deepcopy(dict(conf))
        base = CONFS["dense-rootsift-vlad"] if out.get("model", "dense-rootsift-vlad") == "dense-rootsift-vlad" else {}
        out = {**copy.deepcopy(base), **out}
    if weights is not None:
        out["weights"] = str(weights)
    return out


def find_weights(name: str | Path) -> Path:
    """Locate a weight file: as given, else under ./weights or ~/.cache/localize/weights; FileNotFoundError otherwise."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    for d in DEFAULT_WEIGHTS_DIRS:
        q = Path(d).expanduser() / p.name
        if q.exists():
            return q
    raise FileNotFoundError(
        f"weight file {name} not found (looked in ., {', '.join(DEFAULT_WEIGHTS_DIRS)}); pass --netvlad-weights FILE. "
        "The official NetVLAD weights are Pitts30K_struct.mat / TokyoTM_struct.mat from the NetVLAD project page.")


def images_fingerprint(images: Sequence[tuple[str, Path]]) -> str:
    """Identity of an image set: sorted names and file sizes (12 hex digits)."""
    h = hashlib.sha1()
    for name, path in sorted((str(n), Path(p)) for n, p in images):
        size = path.stat().st_size if path.exists() else -1
        h.update(f"{name}\0{size}\n".encode())
    return h.hexdigest()[:12]


def resize_max(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale (INTER_AREA) so the longest side is at most ``max_side`` px; never upscales."""
    if not max_side:
        return img
    h, w = img.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


# ====================================================================== weight-free model
class DenseVLAD(nn.Module):
    """Optional 1x1 head (128 -> 128, identity init) + NetVLAD over dense RootSIFT: [B, 128, N] -> [B, K*128]."""

    def __init__(self, num_clusters: int = 64, dim: int = DESCRIPTOR_DIM, head: bool = False) -> None:
        super().__init__()
        self.head = nn.Conv1d(dim, dim, 1) if head else None
        if self.head is not None:
            with torch.no_grad():
                self.head.weight.copy_(torch.eye(dim)[..., None])
                self.head.bias.zero_()
        self.netvlad = NetVLAD(num_clusters, dim, order="kd")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Local descriptors [B, D, N] -> L2-normalised VLAD [B, K*D]."""
        if self.head is not None:
            x = self.head(x)
        return self.netvlad(x)


def dense_local_features(rgb: np.ndarray, conf: Mapping[str, Any], device: str | torch.device = "cpu") -> torch.Tensor:
    """H x W x 3 uint8 RGB -> dense RootSIFT of all scales pooled: [128, N] float32 tensor."""
    img = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) if rgb.ndim == 3 \
        else rgb.astype(np.float32)
    img = resize_max(img / 255.0, conf.get("resize_max"))
    parts = []
    for s in conf.get("scales", [1.0]):
        im = img if s == 1.0 else cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                                             interpolation=cv2.INTER_AREA)
        if min(im.shape) < conf["step"] * 2:
            continue
        t = torch.from_numpy(np.ascontiguousarray(im))[None, None].to(device)
        d = dense_rootsift(t, bin_size=conf["bin_size"], step=conf["step"])
        parts.append(d[0].flatten(1))
    if not parts:
        raise ValueError(f"image {rgb.shape[1]}x{rgb.shape[0]} too small for dense descriptors")
    return torch.cat(parts, 1)


class GlobalExtractor:
    """A global-descriptor model bound to a configuration: ``describe(rgb) -> [dim] float32`` (L2-normalised)."""

    def __init__(self, conf: Mapping[str, Any], model: nn.Module, dim: int, identity: str,
                 device: str | torch.device = "cpu", pca: Mapping[str, np.ndarray] | None = None) -> None:
        self.conf, self.model, self.device = dict(conf), model.to(device).eval(), torch.device(device)
        self.identity = identity  # hash of what the descriptors depend on (weights / vocabulary)
        self.pca = None
        if pca is not None:
            self.pca = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=self.device) for k, v in pca.items()}
            dim = int(pca["proj"].shape[0])
        self.dim = dim

    @torch.no_grad()
    def describe_raw(self, rgb: np.ndarray) -> torch.Tensor:
        """RGB uint8 H x W x 3 -> descriptor before PCA: [1, D] tensor."""
        if self.conf["model"] == "netvlad":
            img = resize_max(rgb[..., :3], self.conf.get("resize_max"))
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().to(self.device)
            return self.model(t)
        x = dense_local_features(rgb, self.conf, self.device)[None]
        v = self.model(x)
        p = float(self.conf.get("power_norm", 1.0))
        if p != 1.0:
            v = F.normalize(v.sign() * v.abs().pow(p), dim=1)
        return v

    @torch.no_grad()
    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Apply the fitted PCA-whitening (if any) and L2-normalise: [B, D] -> [B, dim]."""
        if self.pca is None:
            return v
        return F.normalize((v - self.pca["mean"]) @ self.pca["proj"].T, dim=1)

    def describe(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 H x W x 3 -> global descriptor [dim] float32, L2-normalised."""
        return self.project(self.describe_raw(rgb))[0].float().cpu().numpy()


def fit_pca_whitening(x: np.ndarray, dim: int, eps: float = 1.0) -> dict[str, np.ndarray]:
    """PCA-whitening of rows x [N, D]: {'mean' [D], 'proj' [P, D]} with P = min(dim, N-1, D).

    Components are scaled by 1 / sqrt(lambda + eps * lambda_mean) (regularised whitening, so
    small databases do not blow up noise directions).
    """
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    xc = x - mean
    p = int(min(dim, len(x) - 1, x.shape[1]))
    if p < 1:
        raise ValueError(f"PCA needs at least 2 vectors, got {len(x)}")
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    lam = s[:p] ** 2 / max(len(x) - 1, 1)
    scale = 1.0 / np.sqrt(lam + eps * lam.mean())
    return {"mean": mean.astype(np.float32), "proj": (vt[:p] * scale[:, None]).astype(np.float32)}


def _iter_rgb(images: Sequence[tuple[str, Path]], desc: str):
    for name, path in tqdm(images, desc=desc, unit="img", leave=False, disable=len(images) < 5):
        yield name, path, load_rgb(path)


def _fit_dense_vocabulary(conf: Mapping[str, Any], db: Sequence[tuple[str, Path]],
                          device: str | torch.device) -> dict[str, np.ndarray]:
    """k-means centroids + official alpha (and optional PCA) on the database images."""
    rng = np.random.default_rng(conf.get("seed", 0))
    per_image = max(1, int(conf["kmeans_descriptors"]) // max(len(db), 1))
    samples = []
    for _, _, rgb in _iter_rgb(db, "vocabulary: descriptors"):
        d = dense_local_features(rgb, conf, device).T.cpu().numpy()
        samples.append(d[rng.choice(len(d), min(per_image, len(d)), replace=False)])
    x = np.concatenate(samples).astype(np.float32)
    K = int(conf["num_clusters"])
    logger.info("k-means: %d clusters on %d dense RootSIFT descriptors from %d images", K, len(x), len(db))
    cent = kmeans(x, K, niter=int(conf["kmeans_iters"]), seed=int(conf.get("seed", 0)))
    layer = NetVLAD(K, x.shape[1], order="kd")
    alpha = layer.init_from_centroids(cent, x[rng.choice(len(x), min(len(x), 20000), replace=False)])
    return {"centroids": cent, "assign": layer.assign.weight.detach().numpy()[..., 0], "alpha": np.float32(alpha)}


def load_extractor(conf: str | Mapping[str, Any], db: Sequence[tuple[str, Path]] | None = None,
                   export_dir: str | Path | None = None, device: str | torch.device = "cpu",
                   weights: str | Path | None = None) -> GlobalExtractor:
    """Build the global-descriptor model of ``conf``; the weight-free one fits (or reloads) its vocabulary on ``db``."""
    conf = resolve_conf(conf, weights)
    kind = conf.get("model", "dense-rootsift-vlad")
    if kind == "netvlad":
        from retrieval.mat_loader import load_netvlad_mat

        path = find_weights(conf["weights"])
        model = load_netvlad_mat(path)
        return GlobalExtractor(conf, model, model.output_dim, f"netvlad-{file_fingerprint(path)}", device)
    if kind != "dense-rootsift-vlad":
        raise ValueError(f"unknown retrieval model {kind!r}")
    K = int(conf["num_clusters"])
    if conf.get("weights"):
        from retrieval.train import load_checkpoint

        path = find_weights(conf["weights"])
        model, ck_conf = load_checkpoint(path)
        for k in ("resize_max", "scales", "bin_size", "step"):  # the features the layer was trained on
            conf[k] = ck_conf.get(k, conf[k])
        identity = f"trained-{file_fingerprint(path)}"
        vocab: dict[str, Any] = {}
    else:
        model, identity, vocab = DenseVLAD(K), "", {}
    need_fit = not conf.get("weights") or int(conf.get("pca_dim", 0)) > 0
    if need_fit:
        if not db:
            raise ValueError("the weight-free retrieval model needs the database images to fit its vocabulary")
        vconf = {k: conf[k] for k in sorted(conf) if k not in ("power_norm",)}
        vconf["identity"] = identity
        cache = StageCache(export_dir, "retrieval-vocabulary", vconf, depends=[images_fingerprint(db)]) \
            if export_dir is not None else None
        if cache is not None and cache.has("vocabulary"):
            vocab = cache.get("vocabulary")
            logger.info("reusing retrieval vocabulary %s", cache.path)
        else:
            vocab = {} if conf.get("weights") else _fit_dense_vocabulary(conf, db, device)
            if not conf.get("weights"):
                _load_vocab(model, vocab)
            if int(conf.get("pca_dim", 0)) > 0:
                ext = GlobalExtractor(conf, model, model.netvlad.output_dim, identity, device)
                rng = np.random.default_rng(conf.get("seed", 0))
                sample = [db[i] for i in sorted(rng.choice(len(db), min(len(db), 5000), replace=False))]
                raw = np.stack([ext.describe_raw(rgb)[0].cpu().numpy() for _, _, rgb in _iter_rgb(sample, "PCA fit")])
                vocab.update(fit_pca_whitening(raw, int(conf["pca_dim"]), float(conf.get("pca_whiten_eps", 1.0))))
            if cache is not None:
                cache.put("vocabulary", vocab)
                cache.finalize()
        if not conf.get("weights"):
            _load_vocab(model, vocab)
        identity = cache.hash if cache is not None else hashlib.sha1(
            np.asarray(vocab.get("centroids", 0)).tobytes()).hexdigest()[:12]
    pca = {"mean": vocab["mean"], "proj": vocab["proj"]} if "proj" in vocab else None
    return GlobalExtractor(conf, model, model.netvlad.output_dim, identity, device, pca)


def _load_vocab(model: DenseVLAD, vocab: Mapping[str, Any]) -> None:
    with torch.no_grad():
        model.netvlad.centroids.copy_(torch.as_tensor(np.asarray(vocab["centroids"]), dtype=torch.float32))
        model.netvlad.assign.weight.copy_(torch.as_tensor(np.asarray(vocab["assign"]), dtype=torch.float32)[..., None])


def descriptor_cache(extractor: GlobalExtractor, export_dir: str | Path) -> StageCache:
    """The ``global-descriptors`` cache stage of this extractor (configuration + weights/vocabulary identity)."""
    return StageCache(export_dir, "global-descriptors", extractor.conf, depends=[extractor.identity])


def extract_global(extractor: GlobalExtractor, images: Sequence[tuple[str, Path]], export_dir: str | Path | None = None,
                   role: str = "db", finalize: bool = True) -> np.ndarray:
    """Global descriptors [N, dim] float32 of (name, path) images, in order, read from / written to the cache.

    Unreadable images raise IOError naming the file (callers decide whether to skip them).
    """
    cache = descriptor_cache(extractor, export_dir) if export_dir is not None else None
    out = np.zeros((len(images), extractor.dim), np.float32)
    todo = []
    for i, (name, path) in enumerate(images):
        key = f"{role}/{name}"
        if cache is not None and cache.has(key):
            e = cache.get(key)
            if e.get("path") == str(path) and e["descriptor"].shape == (extractor.dim,):
                out[i] = e["descriptor"]
                continue
            logger.info("cached descriptor of %s was made from %s; recomputing", key, e.get("path"))
        todo.append(i)
    if todo:
        logger.info("global descriptors (%s): %d to compute, %d cached", role, len(todo), len(images) - len(todo))
    for i in tqdm(todo, desc=f"global descriptors ({role})", unit="img", disable=len(todo) < 5):
        name, path = images[i]
        out[i] = extractor.describe(load_rgb(path))
        if cache is not None:
            cache.put(f"{role}/{name}", {"descriptor": out[i], "path": str(path)})
    if cache is not None and todo and finalize:
        cache.finalize()
    return out
