"""Retrieval at millions of images: FAISS IVF-PQ built in chunks, saved to disk, memory-mapped, sharded.

The index is one FAISS object, ``IndexPreTransform([PCA d_in -> d, L2 normalisation], IVF-PQ)``, so
it takes the raw global descriptors (e.g. 4096-D NetVLAD) at both build and search time and the
PCA travels with the index file. Building never holds all descriptors in memory:

1. ``train_index``: the PCA, the coarse quantiser (``nlist`` lists) and the PQ codebooks are learnt
   on a sample (``train_size`` rows, e.g. 100-250 k for 1-10 M images);
2. ``add_chunks``: descriptors are added chunk by chunk (e.g. from the ``global-descriptors``
   stage cache with ``iter_cached_descriptors``), with their global row ids;
3. ``save_index`` writes atomically; ``load_index(path, mmap=True)`` memory-maps the inverted lists
   (``faiss.IO_FLAG_MMAP``), so a 10 M-image index (32-byte codes: ~0.4 GB) costs no RAM until searched.

``build_from_cache`` does 1-3 for the descriptors of a ``retrieval.global_descriptors`` cache and writes the
row-id -> image-name table next to the index (``<index>.names.txt``).

Sharding recipe (database larger than one machine, or parallel building): train once, then build
one shard per row range from a *copy of the same trained empty index* (``build_shards``), adding
rows with their global ids; each shard is an ordinary index file that can be built and served on its
own machine (e.g. one Ray task or actor per shard). A query is sent to every shard and the per-shard
top-k lists are merged by score (``search_shards``, or ``faiss.IndexShards`` in one process). With
the same trained quantiser and codebooks, the merged result equals the single-index result exactly.

Raw descriptors too large for RAM (1 M x 4096 float32 = 16 GB) can live on disk as a float16
``np.memmap`` (``write_rows``), be read back in float32 chunks (``iter_row_chunks``, e.g. to ``add``
them to an index) and searched exactly by streaming (``exact_search_chunked``: ground truth for IVF recall).
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from localize.core.cache import StageCache, _group_name
from localize.core.config import from_dict
from localize.core.formats import atomic_write
from retrieval.index import (
    exact_search,
    make_faiss_index,
    pca_transform,
    read_faiss_index,
    require_faiss,
    write_faiss_index,
)
from retrieval.pca import fit_pca

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleConfig:
    """IVF-PQ index over (optionally PCA-reduced) L2-normalised descriptors, inner-product metric."""

    pca_dim: int | None = 256  # None: no reduction
    nlist: int | None = None  # None: about 4 sqrt(N), capped by the training sample (39 rows per list)
    pq_m: int = 32  # sub-quantisers: code size pq_m * pq_bits / 8 bytes per image
    pq_bits: int = 8
    nprobe: int = 32
    train_size: int = 100_000

    def resolved_nlist(self, n_total: int, n_train: int) -> int:
        """``nlist`` or the default for n_total rows, never more lists than n_train / 39."""
        nlist = self.nlist or int(4 * math.sqrt(max(n_total, 1)))
        return int(max(1, min(nlist, n_train // 39)))


def scale_config(conf: Mapping[str, Any] | ScaleConfig | None) -> ScaleConfig:
    """ScaleConfig from a dict (unknown keys raise ConfigError naming them), an instance or None (defaults)."""
    return from_dict(ScaleConfig, conf, "scale")


def fit_pca_transform(sample: np.ndarray, dim: int, max_rows: int = 20_000, seed: int = 0) -> Any:
    """PCA d_in -> dim (``retrieval.pca.fit_pca``, randomized) as a trained ``faiss.LinearTransform``.

    Cheaper than ``faiss.PCAMatrix`` at 4096-D (no full 4096x4096 eigendecomposition, and the file
    stores only the dim x d_in projection, not the full basis).
    """
    return pca_transform(fit_pca(sample, dim, randomized=True, max_rows=max_rows, seed=seed))


def make_index(d_in: int, conf: ScaleConfig, n_total: int, n_train: int, pca: Any = None) -> Any:
    """Untrained ``IndexPreTransform([PCA, L2 norm], IVF-PQ)`` (inner product); ``pca``: a fitted transform."""
    faiss = require_faiss()
    d = conf.pca_dim or d_in
    if d % conf.pq_m:
        raise ValueError(f"dimension {d} not divisible by pq_m={conf.pq_m}")
    ivf = make_faiss_index(d, "ivfpq", conf.resolved_nlist(n_total, n_train), conf.pq_m, conf.pq_bits)
    transforms = []
    if conf.pca_dim and conf.pca_dim < d_in:
        transforms.append(pca if pca is not None else faiss.PCAMatrix(d_in, conf.pca_dim, 0.0, False))
    transforms.append(faiss.NormalizationTransform(d, 2.0))
    index = faiss.IndexPreTransform(ivf)
    for t in reversed(transforms):  # prepend_transform: the last one prepended runs first
        index.prepend_transform(t)
        t.this.disown()
    ivf.this.disown()
    index.own_fields = True
    return index


def ivf_of(index: Any) -> Any:
    """The IVF index inside a (pre-transformed) index."""
    return require_faiss().extract_index_ivf(index)


def set_nprobe(index: Any, nprobe: int) -> None:
    """Number of inverted lists visited per query."""
    ivf_of(index).nprobe = int(nprobe)


def train_index(sample: np.ndarray, conf: ScaleConfig, n_total: int) -> Any:
    """Index trained (PCA, coarse quantiser, PQ) on ``sample`` [n, d_in] float32; empty."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    t0 = time.time()
    pca = fit_pca_transform(sample, conf.pca_dim) if conf.pca_dim and conf.pca_dim < sample.shape[1] else None
    index = make_index(sample.shape[1], conf, n_total, len(sample), pca)
    pq = require_faiss().downcast_index(ivf_of(index)).pq
    pq.cp.niter = 10  # PQ codebooks: 10 k-means iterations on at most 64 rows per centroid are plenty
    pq.cp.max_points_per_centroid = 64
    index.train(sample)
    set_nprobe(index, conf.nprobe)
    logger.info("trained IVF%d,PQ%dx%d (pca %s) on %d rows in %.1f s", ivf_of(index).nlist, conf.pq_m, conf.pq_bits,
                conf.pca_dim, len(sample), time.time() - t0)
    return index


def add_chunks(index: Any, chunks: Iterable[np.ndarray], start_id: int = 0) -> int:
    """Add row chunks with consecutive global ids from ``start_id``; returns the next id."""
    next_id = int(start_id)
    for x in chunks:
        x = np.ascontiguousarray(x, dtype=np.float32)
        index.add_with_ids(x, np.arange(next_id, next_id + len(x), dtype=np.int64))
        next_id += len(x)
    return next_id


def empty_copy(index: Any) -> Any:
    """A trained, empty copy of ``index`` (same PCA, quantiser and codebooks): the template of a shard."""
    faiss = require_faiss()
    out = faiss.deserialize_index(faiss.serialize_index(index))  # clone_index cannot copy the L2 normalisation
    out.reset()
    return out


def save_index(index: Any, path: str | Path) -> Path:
    """Write the index atomically (``retrieval.index.write_faiss_index``)."""
    return write_faiss_index(index, path)


def load_index(path: str | Path, mmap: bool = True, nprobe: int | None = None) -> Any:
    """Read an index; ``mmap`` maps its inverted lists from the file (read-only) instead of reading them."""
    index = read_faiss_index(path, mmap=mmap, read_only=True)
    if nprobe is not None:
        set_nprobe(index, nprobe)
    return index


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k] float32, ids [Q, k] int64), best first; missing hits: id -1, score -inf."""
    s, i = index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
    return np.where(i < 0, -np.inf, s).astype(np.float32), i.astype(np.int64)


# ----------------------------------------------------------------------------- shards
def build_shards(trained: Any, chunks: Iterable[np.ndarray], rows_per_shard: int, out_dir: str | Path,
                 prefix: str = "shard") -> list[Path]:
    """Split the row stream into shards of ``rows_per_shard`` rows (global ids kept), one index file each."""
    out_dir = Path(out_dir)
    paths: list[Path] = []
    shard, in_shard, next_id = empty_copy(trained), 0, 0

    def flush() -> None:
        nonlocal shard, in_shard
        paths.append(save_index(shard, out_dir / f"{prefix}-{len(paths):04d}.faiss"))
        shard, in_shard = empty_copy(trained), 0

    for x in chunks:
        x = np.ascontiguousarray(x, dtype=np.float32)
        pos = 0
        while pos < len(x):
            take = min(len(x) - pos, rows_per_shard - in_shard)
            next_id = add_chunks(shard, [x[pos:pos + take]], next_id)
            pos, in_shard = pos + take, in_shard + take
            if in_shard == rows_per_shard:
                flush()
    if in_shard:
        flush()
    return paths


def merge_topk(results: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (scores, ids) [Q, k_i] into the global top-k by score (ties: smaller id first)."""
    s = np.concatenate([r[0] for r in results], axis=1)
    i = np.concatenate([r[1] for r in results], axis=1)
    s = np.where(i < 0, -np.inf, s)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1).astype(np.float32), np.take_along_axis(i, order, 1)


def search_shards(paths: Sequence[str | Path], queries: np.ndarray, k: int, nprobe: int = 32,
                  mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard (memory-mapped) and merge: (scores [Q, k], global ids [Q, k]), best first.

    In a cluster, run the per-shard ``search`` where each shard lives (one task per shard) and
    ``merge_topk`` the results on the driver.
    """
    results = []
    for p in paths:
        index = load_index(p, mmap=mmap, nprobe=nprobe)
        results.append(search(index, queries, k))
        del index
    return merge_topk(results, k)


# ----------------------------------------------------------------------------- on-disk row arrays
def write_rows(path: str | Path, chunks: Iterable[np.ndarray], dtype: np.dtype | type = np.float16) -> np.memmap:
    """Append row chunks [n_i, D] to a raw ``dtype`` file chunk by chunk; returns it as a read-only np.memmap [N, D]."""
    n, d = 0, None
    with open(path, "wb") as f:
        for x in chunks:
            x = np.ascontiguousarray(x, dtype=dtype)
            if x.ndim != 2 or (d is not None and x.shape[1] != d):
                raise ValueError(f"expected row chunks [n, {d or 'D'}], got {x.shape}")
            d = x.shape[1]
            x.tofile(f)
            n += len(x)
    if not n:
        raise ValueError(f"no rows written to {path}")
    return np.memmap(path, dtype=dtype, mode="r", shape=(n, d))


def iter_row_chunks(db: np.ndarray, chunk: int = 50_000) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows [m, D] float32) of db [N, D] in chunks; a whole np.memmap is read with np.fromfile, never mapped in."""
    n, d = db.shape
    from_file = isinstance(db, np.memmap) and isinstance(db.base, mmap.mmap) and db.flags.c_contiguous
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        if from_file:  # plain reads: resident pages do not pile up in this process's RSS as a mapping would
            x = np.fromfile(db.filename, dtype=db.dtype, count=m * d,
                            offset=db.offset + s * d * db.dtype.itemsize).reshape(m, d)
        else:
            x = np.array(db[s:s + m])
        yield s, x if x.dtype == np.float32 else torch.from_numpy(x).float().numpy()  # torch converts f16 ~2x faster


def exact_search_chunked(db: np.ndarray, queries: np.ndarray, k: int, chunk: int = 50_000
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over db [N, D] (e.g. a float16 np.memmap) streamed as float32 chunks: (scores, ids)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best = (np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64))
    for s, x in iter_row_chunks(db, chunk):
        sc, ids = exact_search(torch.from_numpy(x), q, k, chunk=len(x))
        best = merge_topk([best, (sc, ids + s)], k)
    return best


# ----------------------------------------------------------------------------- from the descriptor cache
def iter_cached_descriptors(cache: StageCache | str | Path, role: str = "db", chunk_size: int = 65536
                            ) -> Iterator[tuple[list[str], np.ndarray]]:
    """(image names, descriptors [n, D] float32) chunks of a ``global-descriptors`` stage cache, sorted by name.

    ``cache`` is a ``localize.core.cache.StageCache`` (e.g. ``retrieval.global_descriptors.descriptor_cache``)
    or the path of its merged ``.h5`` file. Reads one chunk at a time.
    """
    names = cached_names(cache, role)
    if isinstance(cache, StageCache):
        for s in range(0, len(names), chunk_size):
            ns = names[s:s + chunk_size]
            yield ns, np.stack([cache.get(f"{role}/{n}")["descriptor"] for n in ns]).astype(np.float32)
        return
    with h5py.File(cache, "r") as f:
        for s in range(0, len(names), chunk_size):
            ns = names[s:s + chunk_size]
            yield ns, np.stack([f[_group_name(f"{role}/{n}")]["descriptor"][()] for n in ns]).astype(np.float32)


def build_from_cache(cache: StageCache | str | Path, out_path: str | Path,
                     conf: ScaleConfig | Mapping[str, Any] | None = None, role: str = "db",
                     chunk_size: int = 65536, seed: int = 0) -> tuple[Path, Path]:
    """IVF-PQ index of the cached descriptors, trained on a random sample, added chunk by chunk.

    Writes ``out_path`` and ``out_path.names.txt`` (row id -> image name); returns both paths.
    """
    conf = scale_config(conf)
    out_path = Path(out_path)
    # pass 1: names only (cheap) -> sample rows for training
    names = cached_names(cache, role)
    if not names:
        raise ValueError(f"no cached '{role}' descriptors in {cache}")
    n_total = len(names)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(n_total, size=min(conf.train_size, n_total), replace=False))
    sample, pos = [], 0
    for _, x in iter_cached_descriptors(cache, role, chunk_size):
        sel = take[(take >= pos) & (take < pos + len(x))] - pos
        sample.append(x[sel])
        pos += len(x)
    index = train_index(np.concatenate(sample), conf, n_total)
    del sample
    t0 = time.time()
    add_chunks(index, (x for _, x in iter_cached_descriptors(cache, role, chunk_size)))
    logger.info("added %d descriptors in %.1f s", index.ntotal, time.time() - t0)
    save_index(index, out_path)
    names_path = out_path.with_name(out_path.name + ".names.txt")
    with atomic_write(names_path) as f:
        f.write("".join(n + "\n" for n in names))
    return out_path, names_path


def cached_names(cache: StageCache | str | Path, role: str = "db") -> list[str]:
    """Sorted image names of the cached ``role`` descriptors (row order of ``iter_cached_descriptors``)."""
    prefix = f"{role}/"
    if isinstance(cache, StageCache):
        keys = cache.keys()
    else:
        with h5py.File(cache, "r") as f:
            keys = json.loads(f.attrs.get("keys", "[]"))
    return sorted(k[len(prefix):] for k in keys if k.startswith(prefix))


def read_names(path: str | Path) -> list[str]:
    """Row id -> image name table written by ``build_from_cache``."""
    return Path(path).read_text().splitlines()


# ----------------------------------------------------------------------------- synthetic descriptors
class SyntheticDescriptors:
    """Deterministic, realistic-enough global descriptors for capacity tests (no images needed).

    A Gaussian mixture with many overlapping components in a ``latent``-D space (places that look
    alike), embedded in ``dim`` D with a decaying spectrum (as PCA of real NetVLAD/VLAD shows),
    plus isotropic noise in all ``dim`` dimensions, L2-normalised. Rows are generated per block from
    (seed, block index), so any row range can be regenerated in any order without storing it.
    """

    def __init__(self, dim: int = 4096, latent: int = 384, components: int = 20000, spread: float = 0.7,
                 noise: float = 0.35, seed: int = 0, block: int = 16384) -> None:
        rng = np.random.default_rng([seed, 0xD35C])
        self.dim, self.latent, self.block, self.seed = dim, latent, block, seed
        self.centers = rng.standard_normal((components, latent), dtype=np.float32)
        q, _ = np.linalg.qr(rng.standard_normal((dim, latent)).astype(np.float32))  # orthonormal columns
        spectrum = (1.0 + np.arange(latent, dtype=np.float32)) ** -0.5
        self.basis = np.ascontiguousarray((q * spectrum).T)  # [latent, dim]
        self.spread, self.noise = spread, noise / math.sqrt(dim) * float(np.linalg.norm(spectrum))

    def block_rows(self, b: int, n: int | None = None, stream: int = 1) -> np.ndarray:
        """Rows of block ``b`` (``n`` <= block rows); ``stream`` separates database (1) from queries (2)."""
        n = self.block if n is None else n
        rng = np.random.default_rng([self.seed, stream, b])
        comp = rng.integers(0, len(self.centers), n)
        z = self.centers[comp] + self.spread * rng.standard_normal((n, self.latent), dtype=np.float32)
        x = z @ self.basis
        x += self.noise * rng.standard_normal((n, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def chunks(self, n_total: int, stream: int = 1) -> Iterator[np.ndarray]:
        """All rows [0, n_total) in blocks."""
        for b in range(math.ceil(n_total / self.block)):
            yield self.block_rows(b, min(self.block, n_total - b * self.block), stream)
