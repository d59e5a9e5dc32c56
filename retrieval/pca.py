"""PCA of global descriptors, the one owner: exact (SVD, optional regularised whitening) or randomized (large D).

A fitted PCA maps a row x [D] to ``proj @ (x - mean)`` [P]. The descriptor model uses the exact,
whitened form (its projection is stored in the ``retrieval-vocabulary`` cache stage); the FAISS
index (``retrieval.index.pca_transform``) uses the randomized, unwhitened form as a pre-transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PCA:
    """Fitted PCA: ``mean`` [D] float32 and ``proj`` [P, D] float32 (rows = components, whitening folded in)."""

    mean: np.ndarray
    proj: np.ndarray

    @property
    def dim(self) -> int:
        """Output dimension P."""
        return int(self.proj.shape[0])

    def as_dict(self) -> dict[str, np.ndarray]:
        """{'mean', 'proj'} arrays (the layout of the vocabulary cache)."""
        return {"mean": self.mean, "proj": self.proj}


def fit_pca(x: np.ndarray, dim: int, whiten_eps: float | None = None, randomized: bool = False,
            max_rows: int | None = None, seed: int = 0) -> PCA:
    """PCA of rows x [N, D] to at most ``dim`` components.

    Exact (default): float64 SVD, P = min(dim, N-1, D); with ``whiten_eps`` components are scaled by
    1 / sqrt(lambda + whiten_eps * mean(lambda)) (regularised whitening). ``randomized``: float32
    ``torch.svd_lowrank`` on at most ``max_rows`` rows sampled with ``seed`` (no whitening), for 4096-D
    descriptors where a full decomposition is too costly.
    """
    if randomized:
        if whiten_eps is not None:
            raise ValueError("randomized PCA does not whiten")
        xs = np.asarray(x, dtype=np.float32)
        if max_rows is not None and len(xs) > max_rows:
            xs = xs[np.sort(np.random.default_rng(seed).choice(len(xs), max_rows, replace=False))]
        mean = xs.mean(0)
        torch.manual_seed(seed)
        _, _, v = torch.svd_lowrank(torch.from_numpy(xs - mean), q=min(dim + 32, min(xs.shape)), niter=2)
        return PCA(mean, np.ascontiguousarray(v[:, :dim].T.numpy(), dtype=np.float32))
    xd = np.asarray(x, np.float64)
    mean = xd.mean(0)
    p = int(min(dim, len(xd) - 1, xd.shape[1]))
    if p < 1:
        raise ValueError(f"PCA needs at least 2 vectors, got {len(xd)}")
    _, s, vt = np.linalg.svd(xd - mean, full_matrices=False)
    proj = vt[:p]
    if whiten_eps is not None:
        lam = s[:p] ** 2 / max(len(xd) - 1, 1)
        proj = proj * (1.0 / np.sqrt(lam + whiten_eps * lam.mean()))[:, None]
    return PCA(mean.astype(np.float32), proj.astype(np.float32))
