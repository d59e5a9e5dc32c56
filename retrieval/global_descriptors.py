"""Global image descriptors (weight-free dense-RootSIFT VLAD or official NetVLAD), through the stage cache.

Configurations are the presets of ``retrieval.config.CONFS`` resolved into ``RetrievalConfig``. The
weight-free model (``retrieval.dense_vlad``) aggregates dense RootSIFT with the NetVLAD layer; its
vocabulary (k-means centroids, alpha, optional PCA-whitening) is fitted on the database and stored
in the cache stage ``retrieval-vocabulary`` keyed by the configuration and a fingerprint of the
database, so queries and reruns reuse it. Global descriptors are stored in the cache stage
``global-descriptors`` under keys ``"<role>/<image name>"`` (role ``db`` or ``query``) with the
image path as an attribute (a changed path is recomputed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from localize.core.cache import StageCache, content_fingerprint, file_fingerprint
from localize.core.errors import PER_ITEM_ERRORS
from localize.core.records import load_rgb
from retrieval.config import RetrievalConfig, find_weights, resolve_conf
from retrieval.dense_vlad import DenseVLAD, dense_local_features, resize_max
from retrieval.mat_loader import load_netvlad_mat
from retrieval.netvlad import NetVLAD, kmeans
from retrieval.pca import fit_pca
from retrieval.train import load_checkpoint

logger = logging.getLogger(__name__)


def images_fingerprint(images: Sequence[tuple[str, Path]]) -> str:
    """Identity of an image set: sorted names and file contents (12 hex digits)."""
    h = hashlib.sha1()
    for name, path in sorted((str(n), Path(p)) for n, p in images):
        h.update(f"{name}\0{content_fingerprint(path)}\n".encode())
    return h.hexdigest()[:12]


class GlobalExtractor:
    """A global-descriptor model bound to a configuration: ``describe(rgb) -> [dim] float32`` (L2-normalised)."""

    def __init__(self, conf: RetrievalConfig, model: nn.Module, dim: int, identity: str,
                 device: str | torch.device = "cpu", pca: Mapping[str, np.ndarray] | None = None) -> None:
        self.conf, self.model, self.device = conf, model.to(device).eval(), torch.device(device)
        self.identity = identity  # hash of what the descriptors depend on (weights / vocabulary)
        self.pca = None
        if pca is not None:
            self.pca = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=self.device) for k, v in pca.items()}
            dim = int(pca["proj"].shape[0])
        self.dim = dim

    @torch.no_grad()
    def describe_raw(self, rgb: np.ndarray) -> torch.Tensor:
        """RGB uint8 H x W x 3 -> descriptor before PCA: [1, D] tensor."""
        if self.conf.model == "netvlad":
            img = resize_max(rgb[..., :3], self.conf.resize_max)
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().to(self.device)
            return self.model(t)
        x = dense_local_features(rgb, self.conf, self.device)[None]
        v = self.model(x)
        p = float(self.conf.power_norm)
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


def _iter_rgb(images: Sequence[tuple[str, Path]], desc: str) -> Iterator[tuple[str, Path, np.ndarray]]:
    for name, path in tqdm(images, desc=desc, unit="img", leave=False, disable=len(images) < 5):
        yield name, path, load_rgb(path)


def _fit_dense_vocabulary(conf: RetrievalConfig, db: Sequence[tuple[str, Path]],
                          device: str | torch.device) -> dict[str, np.ndarray]:
    """k-means centroids + official alpha (and optional PCA) on the database images."""
    rng = np.random.default_rng(conf.seed)
    per_image = max(1, int(conf.kmeans_descriptors) // max(len(db), 1))
    samples = []
    for _, _, rgb in _iter_rgb(db, "vocabulary: descriptors"):
        d = dense_local_features(rgb, conf, device).T.cpu().numpy()
        samples.append(d[rng.choice(len(d), min(per_image, len(d)), replace=False)])
    x = np.concatenate(samples).astype(np.float32)
    K = int(conf.num_clusters)
    logger.info("k-means: %d clusters on %d dense RootSIFT descriptors from %d images", K, len(x), len(db))
    cent = kmeans(x, K, niter=int(conf.kmeans_iters), seed=int(conf.seed))
    layer = NetVLAD(K, x.shape[1], order="kd")
    alpha = layer.init_from_centroids(cent, x[rng.choice(len(x), min(len(x), 20000), replace=False)])
    return {"centroids": cent, "assign": layer.assign.weight.detach().numpy()[..., 0], "alpha": np.float32(alpha)}


def load_extractor(conf: str | Mapping[str, Any] | RetrievalConfig, db: Sequence[tuple[str, Path]] | None = None,
                   export_dir: str | Path | None = None, device: str | torch.device = "cpu",
                   weights: str | Path | None = None) -> GlobalExtractor:
    """Build the global-descriptor model of ``conf``; the weight-free one fits (or reloads) its vocabulary on ``db``."""
    conf = resolve_conf(conf, weights)
    if conf.model == "netvlad":
        path = find_weights(conf.weights)
        model = load_netvlad_mat(path)
        return GlobalExtractor(conf, model, model.output_dim, f"netvlad-{file_fingerprint(path)}", device)
    K = int(conf.num_clusters)
    if conf.weights:
        path = find_weights(conf.weights)
        model, ck_conf = load_checkpoint(path)
        trained = {k: ck_conf.get(k, getattr(conf, k)) for k in ("resize_max", "scales", "bin_size", "step")}
        trained["scales"] = tuple(trained["scales"])  # the features the layer was trained on
        conf = dataclasses.replace(conf, **trained)
        identity = f"trained-{file_fingerprint(path)}"
        vocab: dict[str, Any] = {}
    else:
        model, identity, vocab = DenseVLAD(K), "", {}
    need_fit = not conf.weights or int(conf.pca_dim) > 0
    if need_fit:
        if not db:
            raise ValueError("the weight-free retrieval model needs the database images to fit its vocabulary")
        vconf = {k: v for k, v in sorted(conf.as_dict().items()) if k != "power_norm"}
        vconf["identity"] = identity
        cache = StageCache(export_dir, "retrieval-vocabulary", vconf, depends=[images_fingerprint(db)]) \
            if export_dir is not None else None
        if cache is not None and cache.has("vocabulary"):
            vocab = cache.get("vocabulary")
            logger.info("reusing retrieval vocabulary %s", cache.path)
        else:
            vocab = {} if conf.weights else _fit_dense_vocabulary(conf, db, device)
            if not conf.weights:
                _load_vocab(model, vocab)
            if int(conf.pca_dim) > 0:
                ext = GlobalExtractor(conf, model, model.netvlad.output_dim, identity, device)
                rng = np.random.default_rng(conf.seed)
                sample = [db[i] for i in sorted(rng.choice(len(db), min(len(db), 5000), replace=False))]
                raw = np.stack([ext.describe_raw(rgb)[0].cpu().numpy() for _, _, rgb in _iter_rgb(sample, "PCA fit")])
                vocab.update(fit_pca(raw, int(conf.pca_dim), whiten_eps=float(conf.pca_whiten_eps)).as_dict())
            if cache is not None:
                cache.put("vocabulary", vocab)
                cache.finalize()
        if not conf.weights:
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
    return StageCache(export_dir, "global-descriptors", extractor.conf.as_dict(), depends=[extractor.identity])


def global_descriptors(extractor: GlobalExtractor, images: Sequence[tuple[str, Path]],
                       export_dir: str | Path | None = None, role: str = "db", finalize: bool = True,
                       errors: dict[str, str] | None = None) -> np.ndarray:
    """Global descriptors [N, dim] float32 of (name, path) images, in order, read from / written to the cache.

    Unreadable images raise OSError naming the file; with ``errors`` given, an image that cannot be read or
    described (``PER_ITEM_ERRORS``) is recorded there as {name: reason} instead and its row stays zero.
    Logs one line per call (computed / cached counts).
    """
    cache = descriptor_cache(extractor, export_dir) if export_dir is not None else None
    out = np.zeros((len(images), extractor.dim), np.float32)
    todo = []
    for i, (name, path) in enumerate(images):
        key = f"{role}/{name}"
        try:
            cached = cache is not None and cache.has(key, content_fingerprint(path))
        except OSError as e:  # a missing or unreadable file
            if errors is None:
                raise
            errors[name] = str(e)
            continue
        if cached:
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
        try:
            out[i] = extractor.describe(load_rgb(path))
        except PER_ITEM_ERRORS as e:
            if errors is None:
                raise
            errors[name] = str(e)
            continue
        if cache is not None:
            cache.put(f"{role}/{name}", {"descriptor": out[i], "path": str(path)}, content_fingerprint(path))
    if cache is not None and todo and finalize:
        cache.finalize()
    return out
