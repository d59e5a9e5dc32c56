"""The full NCNet: features -> 4D correlation (optionally max-pooled) -> mutual NN -> consensus -> mutual NN."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from matching.checkpoint import consensus_config, feature_name, load_checkpoint_file, split_official_state
from matching.consensus import NeighConsensus
from matching.correlation import correlation_4d, correlation_4d_maxpool
from matching.features import DenseRootSIFTFeatures, ResNet101Features, build_features, load_backbone_state
from matching.mutual import mutual_matching

log = logging.getLogger(__name__)

PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "ncnet_dense_rootsift.pth.tar"
DEFAULT_KERNEL_SIZES = (3, 3)
DEFAULT_CHANNELS = (16, 1)
RANDOM_INIT_SEED = 0


@dataclass
class NCNetOutput:
    """Filtered correlation [B, 1, hA, wA, hB, wB] (pooled grid when k > 1) and relocalization data."""

    corr: Tensor
    code: Tensor | None  # argmax codes of the k^4 pooling (None without relocalization)
    k: int  # pooling size (1 = none)


class NCNet(nn.Module):
    """NCNet. ``features``: an extractor (see ``matching.features``); ``neigh_consensus``: a NeighConsensus
    or None (correlation + mutual NN only); ``relocalization_k`` > 1 max-pools the correlation by k^4
    (``correlation_method``: see ``matching.correlation.correlation_4d_maxpool``)."""

    def __init__(self, features: nn.Module, neigh_consensus: NeighConsensus | None,
                 relocalization_k: int = 1) -> None:
        super().__init__()
        self.features = features
        self.neigh_consensus = neigh_consensus
        self.relocalization_k = int(relocalization_k)
        self.correlation_method = "blocked"

    @property
    def cell_multiple(self) -> int:
        """Image sides must be multiples of this (feature stride x pooling size)."""
        return int(self.features.stride) * max(1, self.relocalization_k)

    def filter_correlation(self, corr: Tensor) -> Tensor:
        """mutual NN -> consensus -> mutual NN on corr [B, 1, hA, wA, hB, wB] (just mutual NN if no consensus)."""
        corr = mutual_matching(corr)
        if self.neigh_consensus is not None:
            corr = mutual_matching(self.neigh_consensus(corr))
        return corr

    def correlate(self, feat_a: Tensor, feat_b: Tensor) -> tuple[Tensor, Tensor | None]:
        """Features -> (correlation, argmax codes or None); pooled by k^4 in blocks when k > 1."""
        if self.relocalization_k > 1:
            return correlation_4d_maxpool(feat_a, feat_b, self.relocalization_k, method=self.correlation_method)
        return correlation_4d(feat_a, feat_b), None

    def head(self, feat_a: Tensor, feat_b: Tensor) -> NCNetOutput:
        """Both images' features [B, C, h, w] (from ``self.features``) -> filtered correlation."""
        corr, code = self.correlate(feat_a, feat_b)
        return NCNetOutput(self.filter_correlation(corr), code, self.relocalization_k)

    def forward(self, image_a: Tensor, image_b: Tensor) -> NCNetOutput:
        """Images [B, 3, H, W] RGB 0..1 (sides multiples of ``cell_multiple``) -> filtered correlation."""
        return self.head(self.features(image_a), self.features(image_b))


def load_weights(model: NCNet, ckpt: dict) -> None:
    """Copy an official-layout checkpoint's tensors into ``model`` (backbone when it has one)."""
    backbone, consensus = split_official_state(ckpt["state_dict"])
    if model.neigh_consensus is not None:
        model.neigh_consensus.load_state_dict(consensus, strict=True)
    if isinstance(model.features, ResNet101Features):
        if not backbone:
            raise KeyError("checkpoint has no FeatureExtraction weights for the resnet101 backbone")
        load_backbone_state(model.features.model, backbone)


def build_ncnet(weights: str | Path | None = None, features: str | None = None,
                backbone_weights: str | Path | None = None, relocalization_k: int = 1, consensus: bool = True,
                half: bool = False, device: str | torch.device = "cpu", conv_method: str = "auto",
                symmetric: bool = True, allow_random_backbone: bool = False) -> NCNet:
    """NCNet from a checkpoint (official layout) or the defaults, in eval mode on ``device``.

    Without ``weights``: features ``dense-rootsift`` (or ``features``), consensus [3,3]/[16,1] from the
    packaged ``matching/weights/ncnet_dense_rootsift.pth.tar`` when present, else a fixed-seed random
    initialisation (logged warning). resnet101 needs backbone weights (checkpoint or torchvision .pth)
    unless ``allow_random_backbone``. ``consensus=False`` gives correlation + mutual NN only.
    """
    ckpt = None
    if weights is None and features in (None, "dense-rootsift", "dense_rootsift", "learned") \
            and PACKAGED_WEIGHTS.exists():
        weights = PACKAGED_WEIGHTS
    if weights is not None:
        ckpt = load_checkpoint_file(weights)
        features = features or feature_name(ckpt)
        kernel_sizes, channels = consensus_config(ckpt)
        args = ckpt.get("args")
        symmetric = bool(getattr(args, "symmetric_mode", symmetric)) if args is not None else symmetric
    else:
        features = features or "dense-rootsift"
        kernel_sizes, channels = list(DEFAULT_KERNEL_SIZES), list(DEFAULT_CHANNELS)
    step = int(getattr(ckpt.get("args"), "feature_stride", 8)) if ckpt is not None and ckpt.get("args") is not None \
        else 8
    fe = build_features(features, backbone_weights=backbone_weights, step=step)
    nc = None
    if consensus:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            nc = NeighConsensus(kernel_sizes, channels, symmetric=symmetric, method=conv_method, half=half)
    model = NCNet(fe, nc, relocalization_k)
    if ckpt is not None:
        backbone, cons = split_official_state(ckpt["state_dict"])
        if nc is not None:
            nc.load_state_dict(cons, strict=True)
        if isinstance(fe, ResNet101Features):
            if backbone:  # the checkpoint's backbone wins (PF-Pascal fine-tuned layer3)
                load_backbone_state(fe.model, backbone)
            elif backbone_weights is None and not allow_random_backbone:
                raise ValueError(f"{weights} has no FeatureExtraction weights: give a torchvision resnet101 .pth")
        log.info("loaded NCNet weights from %s (features %s, kernels %s, channels %s)", weights, fe.name,
                 kernel_sizes, channels)
    else:
        if isinstance(fe, ResNet101Features) and backbone_weights is None and not allow_random_backbone:
            raise ValueError("resnet101 features need weights: --weights ncnet_ivd.pth.tar (official NCNet) or "
                             "a torchvision resnet101 .pth via backbone_weights; nothing is downloaded")
        if nc is not None:
            log.warning("no NCNet weights given and %s not found: the consensus network is UNTRAINED "
                        "(random init, seed %d)", PACKAGED_WEIGHTS, RANDOM_INIT_SEED)
    return model.to(device).eval()


__all__ = ["NCNet", "NCNetOutput", "build_ncnet", "load_weights", "PACKAGED_WEIGHTS", "DenseRootSIFTFeatures"]
