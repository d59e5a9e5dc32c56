"""Inner-product nearest-neighbour index over global descriptors: FAISS (flat / IVF / IVF-SQ8 / IVF-PQ) or exact torch.

Descriptors are float32 rows [N, D], L2-normalised, so inner product = cosine similarity.
``kind``: ``"flat"`` (exact, default), ``"ivf"`` (IVF-Flat, trained, ``nprobe`` lists searched),
``"ivfsq8"`` (IVF with 8-bit scalar-quantised residuals: 1 byte per dimension, a quarter of
IVF-Flat's memory), ``"ivfpq"`` (IVF with product quantisation, for millions of vectors). GPU is used only when
requested/auto and ``faiss.get_num_gpus() > 0``. Without faiss (or with ``backend="torch"``)
an exact chunked torch matmul + top-k is used for every kind.

This module is the one FAISS wrapper: ``make_faiss_index`` (untrained flat / IVF index),
``pca_transform`` (a fitted ``retrieval.pca.PCA`` as a FAISS pre-transform), ``write_faiss_index`` (atomic)
and ``read_faiss_index``; ``retrieval.scale`` builds its IVF-PQ indexes with them.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from localize.core.formats import atomic_path, atomic_write
from retrieval.pca import PCA

logger = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "ivfsq8", "ivfpq")

try:  # optional dependency
    import faiss
except ImportError:  # pragma: no cover - exercised by forcing faiss = None in tests
    faiss = None


def faiss_available() -> bool:
    """True when faiss imported and RETRIEVAL_NO_FAISS is not set."""
    return faiss is not None and os.environ.get("RETRIEVAL_NO_FAISS", "") in ("", "0")


def require_faiss() -> Any:
    """The faiss module; ImportError naming the package when it is not importable."""
    if faiss is None:
        raise ImportError("faiss is not importable (pip install faiss-cpu)")
    return faiss


def make_faiss_index(dim: int, kind: str, nlist: int = 1, pq_m: int = 64, pq_bits: int = 8) -> Any:
    """Untrained inner-product faiss index of ``kind`` (flat / ivf / ivfsq8 / ivfpq) over ``dim``-D rows."""
    fs = require_faiss()
    if kind == "flat":
        return fs.IndexFlatIP(dim)
    quant = fs.IndexFlatIP(dim)
    if kind == "ivf":
        idx = fs.IndexIVFFlat(quant, dim, nlist, fs.METRIC_INNER_PRODUCT)
    elif kind == "ivfsq8":
        idx = fs.IndexIVFScalarQuantizer(quant, dim, nlist, fs.ScalarQuantizer.QT_8bit, fs.METRIC_INNER_PRODUCT)
    elif kind == "ivfpq":
        if dim % pq_m:
            raise ValueError(f"ivfpq: dimension {dim} not divisible by pq_m={pq_m}")
        idx = fs.IndexIVFPQ(quant, dim, nlist, pq_m, pq_bits, fs.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
    idx.own_fields = True
    quant.this.disown()  # owned by the IVF index now
    return idx


def pca_transform(pca: PCA) -> Any:
    """A fitted PCA as a trained ``faiss.LinearTransform`` (y = proj (x - mean)), for ``IndexPreTransform``."""
    fs = require_faiss()
    a = np.ascontiguousarray(pca.proj, dtype=np.float32)  # [dim, d_in]
    lt = fs.LinearTransform(a.shape[1], a.shape[0], True)
    fs.copy_array_to_vector(a.ravel(), lt.A)
    fs.copy_array_to_vector((-a @ pca.mean).astype(np.float32), lt.b)
    lt.is_trained = True
    return lt


def write_faiss_index(index: Any, path: str | Path) -> Path:
    """Write a (CPU) faiss index atomically: a temporary file beside ``path``, renamed when complete."""
    path = Path(path)
    with atomic_path(path) as tmp:
        require_faiss().write_index(index, str(tmp))
    return path


def read_faiss_index(path: str | Path, mmap: bool = False, read_only: bool = False) -> Any:
    """Read a faiss index; ``mmap`` maps its inverted lists from the file (``IO_FLAG_MMAP``), optionally read-only."""
    fs = require_faiss()
    flags = (fs.IO_FLAG_MMAP | (fs.IO_FLAG_READ_ONLY if read_only else 0)) if mmap else 0
    return fs.read_index(str(path), flags)


def gpu_available() -> bool:
    """True only when faiss has GPU support AND sees at least one GPU (faiss-gpu imports without one)."""
    if not faiss_available() or not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001 - broken CUDA installs raise various errors
        return False


def default_nlist(n: int) -> int:
    """IVF list count for n vectors: about 4 sqrt(n), at least 1, at most n // 39 (faiss's training rule)."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), max(n // 39, 1))))


def exact_search(db: np.ndarray | torch.Tensor, queries: np.ndarray | torch.Tensor, k: int,
                 chunk: int = 65536, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k by chunked torch matmul: (scores [Q, k] float32, ids [Q, k] int64), best first."""
    qt = torch.as_tensor(np.array(queries, dtype=np.float32), device=device)
    n = db.shape[0]
    k = min(k, n)
    best_s = torch.full((qt.shape[0], 0), -float("inf"), device=device)
    best_i = torch.zeros((qt.shape[0], 0), dtype=torch.int64, device=device)
    for start in range(0, n, chunk):
        block = db[start:start + chunk]
        block = block.to(device, torch.float32) if isinstance(block, torch.Tensor) else \
            torch.from_numpy(np.array(block, dtype=np.float32)).to(device)  # copy: db may be a read-only mmap
        s = qt @ block.T
        kk = min(k, s.shape[1])
        v, i = s.topk(kk, dim=1)
        best_s = torch.cat([best_s, v], 1)
        best_i = torch.cat([best_i, i + start], 1)
        if best_s.shape[1] > k:
            best_s, order = best_s.topk(k, dim=1)
            best_i = best_i.gather(1, order)
    # stable order: by score desc, ties by id asc (matches faiss flat on exact ties)
    order = np.lexsort((best_i.cpu().numpy(), -best_s.cpu().numpy()), axis=1) if best_s.numel() else None
    s_np, i_np = best_s.cpu().numpy(), best_i.cpu().numpy()
    if order is not None:
        s_np, i_np = np.take_along_axis(s_np, order, 1), np.take_along_axis(i_np, order, 1)
    return s_np.astype(np.float32), i_np.astype(np.int64)


class GlobalIndex:
    """Inner-product index; ``add`` rows, ``search`` -> (scores, ids) best first; save/load to disk."""

    def __init__(self, dim: int, kind: str = "flat", nlist: int | None = None, nprobe: int = 16,
                 pq_m: int = 64, pq_bits: int = 8, use_gpu: bool | str = "auto", backend: str = "auto") -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"backend must be auto, faiss or torch, got {backend!r}")
        if backend == "faiss" and not faiss_available():
            raise ImportError("faiss backend requested but faiss is not importable (pip install faiss-cpu)")
        self.dim, self.kind, self.nlist, self.nprobe = int(dim), kind, nlist, int(nprobe)
        self.pq_m, self.pq_bits = pq_m, pq_bits
        self.backend = "faiss" if backend != "torch" and faiss_available() else "torch"
        if self.backend == "torch" and kind != "flat":
            logger.warning("faiss unavailable: %s index replaced by exact torch search", kind)
        self.use_gpu = (gpu_available() if use_gpu == "auto" else bool(use_gpu) and gpu_available())
        if use_gpu is True and not self.use_gpu:
            logger.warning("GPU index requested but faiss sees no GPU; using the CPU")
        self._index = None
        self._rows: list[np.ndarray] = []
        self._data: np.ndarray | None = None
        self.ntotal = 0

    # ------------------------------------------------------------------ building
    def _make_faiss(self, n_train: int) -> Any:
        if self.kind != "flat":
            self.nlist = self.nlist or default_nlist(n_train)
        return make_faiss_index(self.dim, self.kind, self.nlist or 1, self.pq_m, self.pq_bits)

    def _to_gpu(self, idx):
        if not self.use_gpu:
            return idx
        res = faiss.StandardGpuResources()
        self._gpu_res = res  # keep alive
        return faiss.index_cpu_to_gpu(res, 0, idx)

    @property
    def is_trained(self) -> bool:
        """True when the index can accept vectors (flat, torch, or a trained IVF)."""
        return self.backend == "torch" or (self._index is not None and self._index.is_trained)

    def train(self, x: np.ndarray) -> None:
        """Train the IVF coarse quantiser (and PQ) on rows x [N, D]; no-op for flat / torch."""
        x = self._check(x)
        if self.backend == "torch":
            return
        if self._index is None:
            self._index = self._to_gpu(self._make_faiss(len(x)))
        if self.kind != "flat" and not self._index.is_trained:
            if len(x) < 39 * self.nlist:
                logger.warning("IVF training on %d vectors for %d lists (faiss suggests >= %d)",
                               len(x), self.nlist, 39 * self.nlist)
            self._index.train(x)
        if self.kind != "flat":
            self.set_nprobe(self.nprobe)

    def add(self, x: np.ndarray) -> None:
        """Append rows x [N, D] (ids continue from ntotal); trains the IVF on the first batch if needed."""
        x = self._check(x)
        if self.backend == "torch":
            self._rows.append(x.copy())
            self._data = None
        else:
            if self._index is None or not self._index.is_trained:
                self.train(x)
            self._index.add(x)
        self.ntotal += len(x)

    def set_nprobe(self, nprobe: int) -> None:
        """Number of IVF lists visited per query."""
        self.nprobe = int(nprobe)
        if self.backend == "faiss" and self.kind != "flat" and self._index is not None:
            if self.use_gpu:
                faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", self.nprobe)
            else:
                faiss.extract_index_ivf(self._index).nprobe = self.nprobe

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores [Q, k'] float32, ids [Q, k'] int64), k' = min(k, ntotal), best first.

        IVF may return fewer than k' hits for a query (ids -1, score -inf) when few lists are probed.
        """
        q = self._check(queries)
        k = min(int(k), self.ntotal)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.backend == "torch":
            if self._data is None:
                self._data = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
                self._rows = [self._data]
            return exact_search(self._data, q, k)
        s, i = self._index.search(q, k)
        s = np.where(i < 0, -np.inf, s).astype(np.float32)
        return s, i.astype(np.int64)

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected descriptors [N, {self.dim}], got {x.shape}")
        return x

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the index (faiss file, or .npy for the torch backend); returns the written path."""
        path = Path(path)
        if self.backend == "torch":
            data = np.concatenate(self._rows) if self._rows else np.zeros((0, self.dim), np.float32)
            with atomic_write(path, "wb") as f:
                np.save(f, data)
            return path
        return write_faiss_index(faiss.index_gpu_to_cpu(self._index) if self.use_gpu else self._index, path)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False, nprobe: int = 16, use_gpu: bool | str = "auto") -> GlobalIndex:
        """Read an index written by ``save``; ``mmap`` memory-maps it (faiss IO_FLAG_MMAP / numpy mmap)."""
        path = Path(path)
        with open(path, "rb") as f:
            is_npy = f.read(6) == b"\x93NUMPY"
        if is_npy:
            data = np.load(path, mmap_mode="r" if mmap else None)
            out = cls(data.shape[1], "flat", backend="torch")
            out._rows, out.ntotal = [np.asarray(data, dtype=np.float32)], len(data)
            return out
        if not faiss_available():
            raise ImportError(f"{path} is a faiss index but faiss is not importable")
        idx = read_faiss_index(path, mmap=mmap)
        kind = "flat"
        if isinstance(idx, faiss.IndexIVF) or "IVF" in type(idx).__name__:
            name = type(idx).__name__
            kind = "ivfpq" if "PQ" in name else "ivfsq8" if "ScalarQuantizer" in name else "ivf"
        out = cls(idx.d, kind, nprobe=nprobe, use_gpu=use_gpu, backend="faiss")
        out._index = out._to_gpu(idx)
        out.ntotal = idx.ntotal
        if kind != "flat":
            out.nlist = faiss.extract_index_ivf(idx).nlist
            out.set_nprobe(nprobe)
        return out


def build_index(db: np.ndarray, kind: str = "flat", **kwargs: Any) -> GlobalIndex:
    """Index over db rows [N, D] (trains IVF kinds on db itself)."""
    db = np.ascontiguousarray(db, dtype=np.float32)
    idx = GlobalIndex(db.shape[1], kind, **kwargs)
    idx.train(db)
    idx.add(db)
    return idx
