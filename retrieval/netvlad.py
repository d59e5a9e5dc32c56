"""NetVLAD aggregation layer, its official initialisation, and the VGG16-NetVLAD(-PCA) model.

Layouts: local features ``[B, D, H, W]`` or ``[B, D, N]`` (channels first); the layer returns
``[B, K * D]``. The flattening order is configurable: ``"dk"`` (index ``d * K + k``, the
MATLAB / official-weights order, needed with the official whitening) or ``"kd"``
(index ``k * D + d``). Intra-normalisation (per cluster) and the final L2 normalisation do
not depend on the order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

EPS = 1e-12


class NetVLAD(nn.Module):
    """NetVLAD pooling: soft-assignment (1x1 conv, no bias, softmax over K), residual sums, intra-norm, L2."""

    def __init__(self, num_clusters: int = 64, dim: int = 128, order: str = "dk",
                 normalize_input: bool = True, intra_norm: bool = True) -> None:
        super().__init__()
        if order not in ("dk", "kd"):
            raise ValueError(f"order must be 'dk' or 'kd', got {order!r}")
        self.num_clusters, self.dim, self.order = int(num_clusters), int(dim), order
        self.normalize_input, self.intra_norm = normalize_input, intra_norm
        self.assign = nn.Conv1d(dim, num_clusters, kernel_size=1, bias=False)  # weight [K, D, 1]
        self.centroids = nn.Parameter(torch.randn(num_clusters, dim) * 0.1)  # [K, D]

    @property
    def output_dim(self) -> int:
        """Length of the VLAD vector, K * D."""
        return self.num_clusters * self.dim

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_from_centroids(self, centroids: np.ndarray | torch.Tensor,
                            descriptors: np.ndarray | torch.Tensor) -> float:
        """Official init: assign weights alpha * c/|c| with alpha = -log(0.01) / mean(d1 - d2); returns alpha.

        ``centroids`` [K, D] (k-means on local descriptors), ``descriptors`` [N, D] sample of
        (L2-normalised) training descriptors; d1, d2 are each descriptor's two largest dot
        products with the normalised centroids.
        """
        c = torch.as_tensor(np.asarray(centroids), dtype=torch.float32).reshape(self.num_clusters, self.dim)
        x = torch.as_tensor(np.asarray(descriptors), dtype=torch.float32).reshape(-1, self.dim)
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        cn = F.normalize(c, dim=1)
        top2 = (x @ cn.T).topk(2, dim=1).values
        gap = float((top2[:, 0] - top2[:, 1]).mean())
        alpha = -math.log(0.01) / max(gap, 1e-6)
        self.centroids.copy_(c)
        self.assign.weight.copy_((alpha * cn).unsqueeze(-1))
        logger.debug("NetVLAD init: K=%d D=%d alpha=%.2f (mean d1-d2 %.4f)", self.num_clusters, self.dim, alpha, gap)
        return alpha

    # ------------------------------------------------------------------ forward
    def soft_assign(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D, N] (already input-normalised) -> soft assignment [B, K, N]."""
        return F.softmax(self.assign(x), dim=1)

    def aggregate(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Un-normalised VLAD [B, K, D] = sum_n a_kn (x_n - c_k), with optional [B, N] location weights."""
        a = self.soft_assign(x)  # [B, K, N]
        if mask is not None:
            a = a * mask.unsqueeze(1).to(a.dtype)
        # sum_n a_kn x_n - c_k sum_n a_kn
        vlad = torch.bmm(a, x.transpose(1, 2)) - a.sum(-1, keepdim=True) * self.centroids.unsqueeze(0)
        return vlad

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Local features [B, D, H, W] or [B, D, N] -> L2-normalised VLAD [B, K*D]."""
        if x.dim() == 4:
            x = x.flatten(2)
        if x.dim() != 3 or x.shape[1] != self.dim:
            raise ValueError(f"NetVLAD expects [B, {self.dim}, N] or [B, {self.dim}, H, W], got {tuple(x.shape)}")
        if self.normalize_input:
            x = F.normalize(x, dim=1, eps=EPS)
        vlad = self.aggregate(x, mask)  # [B, K, D]
        if self.intra_norm:
            vlad = F.normalize(vlad, dim=2, eps=EPS)
        if self.order == "dk":
            vlad = vlad.transpose(1, 2)  # [B, D, K] -> index d*K + k
        vlad = vlad.reshape(x.shape[0], -1)
        return F.normalize(vlad, dim=1, eps=EPS)


def netvlad_reference(x: np.ndarray, assign_w: np.ndarray, centroids: np.ndarray, order: str = "dk",
                      normalize_input: bool = True) -> np.ndarray:
    """Plain loop implementation (float64) of NetVLAD for tests: x [D, N], assign_w [K, D], centroids [K, D] -> [K*D]."""
    x = np.asarray(x, np.float64)
    D, N = x.shape
    K = centroids.shape[0]
    if normalize_input:
        x = x / np.maximum(np.linalg.norm(x, axis=0, keepdims=True), EPS)
    vlad = np.zeros((K, D))
    for n in range(N):
        logits = assign_w @ x[:, n]
        e = np.exp(logits - logits.max())
        a = e / e.sum()
        for k in range(K):
            vlad[k] += a[k] * (x[:, n] - centroids[k])
    for k in range(K):
        vlad[k] /= max(np.linalg.norm(vlad[k]), EPS)
    flat = (vlad.T if order == "dk" else vlad).reshape(-1)
    return flat / max(np.linalg.norm(flat), EPS)


def kmeans(x: np.ndarray, k: int, niter: int = 20, seed: int = 0) -> np.ndarray:
    """k-means centroids [k, D] of descriptors x [N, D] (faiss if available, else torch)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"k-means needs at least {k} descriptors, got {len(x)}")
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False, max_points_per_centroid=10_000_000)
        km.train(x)
        return np.asarray(km.centroids, dtype=np.float32)
    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    # k-means++ seeding
    idx = [int(torch.randint(len(xt), (1,), generator=g))]
    d2 = ((xt - xt[idx[0]]) ** 2).sum(1)
    for _ in range(1, k):
        idx.append(int(torch.multinomial(d2 / d2.sum() if d2.sum() > 0 else torch.ones_like(d2), 1, generator=g)))
        d2 = torch.minimum(d2, ((xt - xt[idx[-1]]) ** 2).sum(1))
    c = xt[idx].clone()
    for _ in range(niter):
        assign = torch.cdist(xt, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, xt)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        c = torch.where(empty[:, None], xt[torch.randint(len(xt), (k,), generator=g)], sums / counts.clamp(min=1)[:, None])
    return c.numpy()


# ====================================================================== official model
class L2Norm(nn.Module):
    """L2 normalisation over dimension ``dim``."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x along ``self.dim``."""
        return F.normalize(x, dim=self.dim, eps=EPS)


VGG16_CFG: Sequence[int | str] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def vgg16_conv5_3(cfg: Sequence[int | str] = VGG16_CFG, in_channels: int = 3) -> nn.Sequential:
    """VGG16 conv1_1 ... conv5_3 (ReLU after every conv except the last; no pool5), random weights."""
    layers: list[nn.Module] = []
    c = in_channels
    convs = [v for v in cfg if v != "M"]
    n_conv = 0
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(nn.Conv2d(c, int(v), 3, padding=1))
            n_conv += 1
            if n_conv < len(convs):
                layers.append(nn.ReLU(inplace=True))
            c = int(v)
    return nn.Sequential(*layers)


class NetVLADModel(nn.Module):
    """Official VGG16-NetVLAD-PCA: backbone -> L2 over channels -> NetVLAD ('dk') -> whitening Linear -> L2.

    Input RGB [B, 3, H, W] in 0..255; the average colour ``mean_rgb`` (from the weight file)
    is subtracted, no division by a standard deviation. Output [B, out_dim], L2-normalised.
    """

    def __init__(self, backbone: nn.Module | None = None, num_clusters: int = 64, dim: int = 512,
                 whiten_dim: int | None = 4096, mean_rgb: Sequence[float] = (122.68, 116.67, 104.01)) -> None:
        super().__init__()
        self.backbone = vgg16_conv5_3() if backbone is None else backbone
        self.pre_l2 = L2Norm(1)
        self.netvlad = NetVLAD(num_clusters, dim, order="dk", normalize_input=False)
        self.whiten = nn.Linear(num_clusters * dim, whiten_dim) if whiten_dim else None
        self.register_buffer("mean_rgb", torch.tensor(list(mean_rgb), dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def output_dim(self) -> int:
        """Descriptor length (whitening output, or K * D without whitening)."""
        return self.whiten.out_features if self.whiten is not None else self.netvlad.output_dim

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, H, W] 0..255 -> L2-normalised conv5_3 features [B, D, h, w]."""
        return self.pre_l2(self.backbone(rgb - self.mean_rgb))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, H, W] 0..255 -> global descriptor [B, out_dim] (L2-normalised)."""
        v = self.netvlad(self.features(rgb))
        if self.whiten is not None:
            v = F.normalize(self.whiten(v), dim=1, eps=EPS)
        return v
