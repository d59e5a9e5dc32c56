"""Sparse-NCNet matching of two images with an ``NCNet`` model's features and consensus weights.

Pipeline (Rocco et al., ECCV 2020, in plain PyTorch): features -> [2x2 pooling for relocalization] ->
top-k sparse correlation (both ways, union) -> sparse soft mutual NN -> sparse consensus (submanifold
4D convs, the dense model's weights) -> sparse soft mutual NN -> matches both ways -> [hard
relocalization (2x2 argmax at full resolution) -> soft relocalization (3x3 soft-argmax, temperature
10)] -> pixels (COLMAP convention: top-left pixel centre (0.5, 0.5), image spans [0, W]).

Union of the two top-k sets: ``combine='max'`` (default) keeps each entry's correlation c once, i.e. the
sparse tensor is the dense correlation restricted to the union, so the consensus sees at its sites the
same input values as the dense NCNet whose weights it uses. ``combine='sum'`` is the official code
(MinkowskiUnion of the two directions: an entry found both ways gets 2c), which its own sparse-trained
weights expect; with the packaged dense-trained weights it shifts the consensus input (TUM pairs 1-2
frames apart, 320 px: about 12-16 points fewer matches within 8 px than 'max'; see
``benchmarks/bench_match_accuracy.py``).

Pooling for relocalization: ``pool='features'`` (default, the official Sparse-NCNet): 2x2 max-pooling of
the full-resolution features, L2-normalised again, then top-k correlation; ``pool='corr'``: top-k of the
2^4 max-pooled full-resolution correlation, as the dense path (exact, 16x the correlation cost).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from matching.correlation import feature_l2norm
from matching.preprocess import image_to_tensor, resized_shape
from matching.sparse.consensus import sparse_neigh_consensus
from matching.sparse.correlation import (
    SparseCorr4d,
    sparse_mutual_matching,
    sparse_topk_correlation,
    sparse_topk_correlation_maxpool,
)
from matching.sparse.extract import (
    extract_sparse_matches,
    hard_relocalize,
    matches_to_pixels,
    soft_relocalize,
)

RELOCALIZATION_MODES = ("none", "hard", "hard+soft")
DEFAULT_TOP_K = 10
DEFAULT_COMBINE = "max"


def sparse_filter(corr: SparseCorr4d, neigh_consensus) -> SparseCorr4d:
    """mutual NN -> consensus -> mutual NN on a sparse tensor (mutual NN only when ``neigh_consensus`` is None)."""
    corr = sparse_mutual_matching(corr)
    if neigh_consensus is not None:
        corr = sparse_mutual_matching(sparse_neigh_consensus(neigh_consensus, corr))
    return corr


def sparse_ncnet_features(feat_a: Tensor, feat_b: Tensor, neigh_consensus, top_k: int = DEFAULT_TOP_K,
                          pool: int = 1, pool_mode: str = "features", combine: str = DEFAULT_COMBINE) -> SparseCorr4d:
    """Filtered sparse correlation from L2-normalised features [1, C, h, w] (full resolution).

    ``pool`` > 1: matching on the pool x pool pooled grids (``pool_mode`` 'features' or 'corr').
    ``combine``: 'max' (the dense correlation on the union of the top-k sets) or 'sum' (official code).
    """
    if pool > 1 and pool_mode == "features":
        feat_a = feature_l2norm(F.max_pool2d(feat_a, pool, pool))
        feat_b = feature_l2norm(F.max_pool2d(feat_b, pool, pool))
        corr = sparse_topk_correlation(feat_a, feat_b, top_k, combine)
    elif pool > 1 and pool_mode == "corr":
        corr = sparse_topk_correlation_maxpool(feat_a, feat_b, top_k, pool, combine)
    elif pool > 1:
        raise ValueError("pool_mode must be 'features' or 'corr'")
    else:
        corr = sparse_topk_correlation(feat_a, feat_b, top_k, combine)
    return sparse_filter(corr, neigh_consensus)


def sparse_match_features(feat_a: Tensor, feat_b: Tensor, neigh_consensus, size_a: tuple[float, float],
                          size_b: tuple[float, float], top_k: int = DEFAULT_TOP_K,
                          relocalization: str = "hard+soft", pool_mode: str = "features",
                          temperature: float = 10.0, combine: str = DEFAULT_COMBINE) -> dict[str, Tensor]:
    """Matches from full-resolution features; keypoints in pixels of images of (H, W) size_a / size_b.

    Returns keypoints0 / keypoints1 [N, 2] float64 (x, y), scores [N], indices0 / indices1 [N, 2]
    (row, col) cells of the full-resolution grids (fractional after soft relocalization), n_entries.
    """
    if relocalization not in RELOCALIZATION_MODES:
        raise ValueError(f"relocalization must be one of {RELOCALIZATION_MODES}, got {relocalization!r}")
    pool = 1 if relocalization == "none" else 2
    corr = sparse_ncnet_features(feat_a, feat_b, neigh_consensus, top_k, pool, pool_mode, combine)
    m = extract_sparse_matches(corr)
    i0, i1 = m["indices0"], m["indices1"]
    if pool > 1:
        i0, i1 = hard_relocalize(i0, i1, feat_a, feat_b, pool)
        if relocalization == "hard+soft":
            i0, i1 = soft_relocalize(i0, i1, feat_a, feat_b, temperature)
    grid_a, grid_b = tuple(feat_a.shape[-2:]), tuple(feat_b.shape[-2:])
    kp0, kp1 = matches_to_pixels(i0, i1, grid_a, grid_b, size_a, size_b)
    return {"keypoints0": kp0, "keypoints1": kp1, "scores": m["scores"], "indices0": i0, "indices1": i1,
            "n_entries": torch.tensor(corr.n)}


@torch.no_grad()
def match_images_sparse(model, img_a: np.ndarray, img_b: np.ndarray, image_size: int = 400,
                        top_k: int = DEFAULT_TOP_K, relocalization: str = "hard+soft",
                        max_matches: int | None = None, min_score: float = 0.0,
                        pool_mode: str = "features", combine: str = DEFAULT_COMBINE) -> dict[str, np.ndarray]:
    """Sparse-NCNet match of two H x W x 3 uint8 RGB images -> dict(keypoints0 N x 2, keypoints1 N x 2, scores N).

    ``model``: an ``NCNet`` (its ``features`` and ``neigh_consensus``; its own ``relocalization_k`` is
    ignored: ``relocalization`` decides: 'none', 'hard' or 'hard+soft'). ``image_size``: longer side after
    resizing; sides rounded down to multiples of stride x 2 (x 1 without relocalization). Keypoints in
    pixels of the ORIGINAL images (COLMAP convention), sorted by decreasing score.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    mult = sparse_cell_multiple(model, relocalization)
    ta = image_to_tensor(img_a, resized_shape(img_a.shape[0], img_a.shape[1], image_size, mult), device)
    tb = image_to_tensor(img_b, resized_shape(img_b.shape[0], img_b.shape[1], image_size, mult), device)
    return match_sparse_head(model, model.features(ta), model.features(tb), img_a.shape[:2], img_b.shape[:2],
                             top_k, relocalization, max_matches, min_score, pool_mode, combine)


def sparse_cell_multiple(model, relocalization: str) -> int:
    """Image sides for Sparse-NCNet must be multiples of this (feature stride x 2 with relocalization)."""
    return int(model.features.stride) * (1 if relocalization == "none" else 2)


@torch.no_grad()
def match_sparse_head(model, feat_a: Tensor, feat_b: Tensor, image_hw_a: tuple[int, int],
                      image_hw_b: tuple[int, int], top_k: int = DEFAULT_TOP_K, relocalization: str = "hard+soft",
                      max_matches: int | None = None, min_score: float = 0.0, pool_mode: str = "features",
                      combine: str = DEFAULT_COMBINE) -> dict[str, np.ndarray]:
    """``match_images_sparse`` from both images' features [1, C, h, w] and original (H, W): numpy matches."""
    m = sparse_match_features(feat_a, feat_b, model.neigh_consensus, image_hw_a, image_hw_b, top_k,
                              relocalization, pool_mode, combine=combine)
    keep = m["scores"] >= min_score
    out = {"keypoints0": m["keypoints0"][keep].cpu().numpy(), "keypoints1": m["keypoints1"][keep].cpu().numpy(),
           "scores": m["scores"][keep].float().cpu().numpy()}
    if max_matches is not None:
        out = {k: v[:max_matches] for k, v in out.items()}
    return out


__all__ = [
    "DEFAULT_COMBINE",
    "DEFAULT_TOP_K",
    "RELOCALIZATION_MODES",
    "match_images_sparse",
    "match_sparse_head",
    "sparse_cell_multiple",
    "sparse_filter",
    "sparse_match_features",
    "sparse_ncnet_features",
]
