"""Pluggable dense feature extractors: RGB batch [B, 3, H, W] in 0..1 -> L2-normalised [B, C, H/s, W/s].

Every extractor is an ``nn.Module`` with attributes ``name``, ``stride`` (pixels per feature cell) and
``channels``. Feature cell (i, j) is taken to be centred at pixel ((j + 0.5) * s, (i + 0.5) * s) of the
input image (COLMAP convention), i.e. the grid covers the image.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from localize.core.cache import StageCache, content_fingerprint
from localize.core.torchfile import load_torch_file
from matching.correlation import feature_l2norm
from matching.dense_sift import dense_rootsift
from matching.learned_features import load_learned_features

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_NAMES = ("dense-rootsift", "resnet101", "learned")
PRECISIONS = ("auto", "float32", "bfloat16")
CPUINFO = Path("/proc/cpuinfo")
FEATURE_STORE_STAGE = "db-features"
# torchvision resnet101 module name -> index in NCNet's Sequential(conv1, bn1, relu, maxpool, layer1..3)
TORCHVISION_TO_SEQUENTIAL = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6}


class ResNet101Features(nn.Module):
    """torchvision ResNet-101 cut after layer3 (1024 channels, stride 16), ImageNet normalisation, eval mode.

    ``self.model`` is Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3), so its state-dict keys
    are NCNet's ``FeatureExtraction.model.{0,1,4,5,6}...`` without the prefix. Weights are random until
    loaded (``load_torchvision`` or an NCNet checkpoint); nothing is downloaded.
    """

    name = "resnet101"
    stride = 16
    channels = 1024

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet101

        net = resnet101(weights=None)
        self.model = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.compute_dtype = torch.float32
        self.eval()

    def set_compute(self, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> None:
        """Run the convolutions in ``dtype`` (float32 or bfloat16) and memory format (channels-last or not);
        the output stays float32, L2-normalised in float32."""
        self.compute_dtype = dtype
        self.model.to(dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def train(self, mode: bool = True) -> ResNet101Features:
        """BatchNorm always stays in eval mode (frozen statistics), as in NCNet."""
        super().train(mode)
        self.model.apply(lambda m: m.eval() if isinstance(m, nn.BatchNorm2d) else None)
        return self

    def load_torchvision(self, path: str | Path) -> None:
        """Load a torchvision resnet101 state dict (.pth; layer4/fc ignored); CheckpointError if unreadable."""
        sd = load_torch_file(path, map_location="cpu")
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        mapped = {}
        for key, value in sd.items():
            head, _, rest = key.partition(".")
            if head in TORCHVISION_TO_SEQUENTIAL:
                mapped[f"{TORCHVISION_TO_SEQUENTIAL[head]}.{rest}"] = value
        load_backbone_state(self.model, mapped)
        log.info("loaded torchvision ResNet-101 weights from %s", path)

    def forward(self, image: Tensor) -> Tensor:
        """[B, 3, H, W] RGB 0..1 -> [B, 1024, H/16, W/16] float32 L2-normalised (contiguous NCHW)."""
        x = ((image - self.mean) / self.std).to(self.compute_dtype)
        if self.model[0].weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return feature_l2norm(self.model(x).float()).contiguous()


def load_backbone_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a state dict; only BatchNorm ``num_batches_tracked`` entries may be missing (release-era files)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise KeyError(f"backbone weights do not fit: missing {missing[:5]}..., unexpected {unexpected[:5]}...")


class DenseRootSIFTFeatures(nn.Module):
    """Weight-free dense RootSIFT on a regular grid (``matching.dense_sift``), 128 channels, stride ``step``."""

    name = "dense-rootsift"
    channels = 128

    def __init__(self, step: int = 8, bin_size: int | None = None, sigma: float = 0.0,
                 min_contrast: float = 0.0) -> None:
        super().__init__()
        self.stride = int(step)
        self.bin_size = int(bin_size or step)
        self.sigma = float(sigma)
        self.min_contrast = float(min_contrast)

    def forward(self, image: Tensor) -> Tensor:
        """[B, 3, H, W] RGB 0..1 -> [B, 128, H // step, W // step] L2-normalised RootSIFT."""
        w = torch.tensor([0.299, 0.587, 0.114], device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        gray = (image * w).sum(dim=1, keepdim=True) if image.shape[1] == 3 else image
        return dense_rootsift(gray.float(), bin_size=self.bin_size, step=self.stride, sigma=self.sigma,
                              min_contrast=self.min_contrast).to(image.dtype)


def cpu_has_bf16_matrix_units(cpuinfo: Path = CPUINFO) -> bool:
    """True when the CPU flags list AMX-BF16 (bfloat16 tile matrix units); False elsewhere or if unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any("amx_bf16" in line.split() for line in text.splitlines() if line.startswith("flags"))


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> torch.dtype:
    """Backbone compute dtype: 'float32', 'bfloat16', or 'auto' = bfloat16 on CPUs with AMX-BF16, else float32.

    AVX-512-BF16 alone is not enough for 'auto': there oneDNN's bfloat16 convolutions and GEMMs ran slower
    than float32 (measured with ``benchmarks/bench_ncnet.py --inloc --precision``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        on_cpu = torch.device(device).type == "cpu"
        return torch.bfloat16 if on_cpu and cpu_has_bf16_matrix_units() else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


@dataclass(frozen=True)
class ImageFeatures:
    """One image's matching features: ``tensor`` [1, C, h, w] L2-normalised float32 (h, w = ``input_hw`` /
    stride), ``image_hw`` the original image (H, W) px, ``input_hw`` the network input (h, w) px."""

    tensor: Tensor
    image_hw: tuple[int, int]
    input_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes held by the feature tensor."""
        return self.tensor.numel() * self.tensor.element_size()


class FeatureLRU:
    """In-memory ``ImageFeatures`` by key, least recently used dropped first, at most ``max_bytes`` in total
    (an item larger than the bound is not kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[object, ImageFeatures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: object) -> ImageFeatures | None:
        """The features under ``key`` (now the most recently used), or None."""
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item

    def put(self, key: object, item: ImageFeatures) -> None:
        """Keep ``item`` under ``key``, dropping the least recently used items beyond ``max_bytes``."""
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        if item.nbytes > self.max_bytes:
            return
        self._items[key] = item
        self.nbytes += item.nbytes
        while self.nbytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.nbytes -= dropped.nbytes


def extractor_identity(module: nn.Module) -> str:
    """Fingerprint of a feature extractor (16 hex digits): its class, its plain settings and every parameter
    and buffer value, whatever file they came from."""
    h = hashlib.sha1(type(module).__name__.encode())
    for k, v in sorted(vars(module).items()):
        if isinstance(v, bool | int | float | str) and not k.startswith("_") and k != "training":
            h.update(f"{k}={v!r};".encode())
    for k, t in sorted(module.state_dict().items()):
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureStore:
    """Database images' features on disk in float16: the stage cache ``db-features`` of an export folder,
    one entry per image content (``content_fingerprint``), for the extractor settings in ``identity``.

    ``fetch`` hands out the float16-rounded features whether it computed them now or read them back, so the
    matches do not depend on which. Entries stay as the stage's parts (never merged into one file: a
    3200 x 2400 ResNet-101 map is tens of MB) and are never deleted by the pipeline.
    """

    def __init__(self, export_dir: str | Path, identity: dict) -> None:
        self.cache = StageCache(export_dir, FEATURE_STORE_STAGE, identity)
        self.hits = self.misses = 0

    def fetch(self, path: str | Path, compute: Callable[[], ImageFeatures]) -> ImageFeatures:
        """The features of the image at ``path``: read from the store, or ``compute()``d, rounded and stored."""
        key = content_fingerprint(path)
        if self.cache.has(key):
            e = self.cache.get(key)
            self.hits += 1
            return ImageFeatures(torch.from_numpy(e["tensor"]).float(), tuple(int(v) for v in e["image_hw"]),
                                 tuple(int(v) for v in e["input_hw"]))
        self.misses += 1
        feat = compute()
        half = feat.tensor.detach().to(torch.float16).cpu()
        self.cache.put(key, {"tensor": half.numpy(), "image_hw": np.array(feat.image_hw, dtype=np.int64),
                             "input_hw": np.array(feat.input_hw, dtype=np.int64)}, key)
        return ImageFeatures(half.float().to(feat.tensor.device), feat.image_hw, feat.input_hw)


def build_features(name: str, backbone_weights: str | Path | None = None, step: int = 8) -> nn.Module:
    """Feature extractor by name: 'dense-rootsift' (``step`` px grid), 'resnet101' (optional torchvision .pth)
    or 'learned' (``matching.learned_features``; packaged weights, or ``backbone_weights`` = its weight file)."""
    key = name.lower().replace("_", "-")
    if key == "learned":
        return load_learned_features(backbone_weights)
    if key in ("dense-rootsift", "rootsift", "dense-sift"):
        return DenseRootSIFTFeatures(step=step)
    if key == "resnet101":
        fe = ResNet101Features()
        if backbone_weights is not None:
            fe.load_torchvision(backbone_weights)
        return fe
    raise ValueError(f"unknown features {name!r}; choose from {FEATURE_NAMES}")


__all__ = ["FEATURE_NAMES", "FEATURE_STORE_STAGE", "PRECISIONS", "TORCHVISION_TO_SEQUENTIAL", "DenseRootSIFTFeatures",
           "FeatureLRU", "FeatureStore", "extractor_identity",
           "ImageFeatures", "ResNet101Features", "build_features", "cpu_has_bf16_matrix_units", "load_backbone_state",
           "resolve_precision"]
