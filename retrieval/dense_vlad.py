"""The weight-free global-descriptor model: dense RootSIFT of all scales pooled by a NetVLAD layer.

``dense_local_features`` computes the local descriptors (grey, resized so the longest side is
``resize_max`` px, RootSIFT on a ``step`` px grid at each scale); ``DenseVLAD`` aggregates them.
Shared by descriptor extraction (``retrieval.global_descriptors``) and training (``retrieval.train``).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn as nn

from localize.core.errors import QueryError
from matching.dense_sift import DESCRIPTOR_DIM, dense_rootsift
from retrieval.config import RetrievalConfig
from retrieval.netvlad import NetVLAD


def resize_max(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale (INTER_AREA) so the longest side is at most ``max_side`` px; never upscales."""
    if not max_side:
        return img
    h, w = img.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


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


def dense_local_features(rgb: np.ndarray, conf: RetrievalConfig, device: str | torch.device = "cpu") -> torch.Tensor:
    """H x W x 3 uint8 RGB -> dense RootSIFT of all scales pooled: [128, N] float32 tensor."""
    img = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) if rgb.ndim == 3 \
        else rgb.astype(np.float32)
    img = resize_max(img / 255.0, conf.resize_max)
    parts = []
    for s in conf.scales:
        im = img if s == 1.0 else cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                                             interpolation=cv2.INTER_AREA)
        if min(im.shape) < conf.step * 2:
            continue
        t = torch.from_numpy(np.ascontiguousarray(im))[None, None].to(device)
        d = dense_rootsift(t, bin_size=conf.bin_size, step=conf.step)
        parts.append(d[0].flatten(1))
    if not parts:
        raise QueryError(f"image {rgb.shape[1]}x{rgb.shape[0]} too small for dense descriptors")
    return torch.cat(parts, 1)
