"""NCNet checkpoints in the official layout (``ncnet_ivd.pth.tar`` / ``ncnet_pfpascal.pth.tar``).

File: a dict with ``epoch``, ``args`` (argparse.Namespace: ``ncons_kernel_sizes``, ``ncons_channels``,
...), ``state_dict``, ``best_test_loss``, ``optimizer``, ``train_loss``, ``test_loss``. State-dict keys:
backbone ``FeatureExtraction.model.{0,1,4,5,6}...`` (older files: ``FeatureExtraction.vgg...``),
consensus ``NeighConsensus.conv.{0,2,4}.weight|bias``. Official 4D conv weights are stored as
(k, out, in, k, k, k); our standard layout (out, in, k, k, k, k) is ``stored.permute(1, 2, 0, 3, 4, 5)``
and ``stored = standard.permute(2, 0, 1, 3, 4, 5)``.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from localize.core.errors import CheckpointError
from localize.core.torchfile import load_torch_file

log = logging.getLogger(__name__)

FE_PREFIX = "FeatureExtraction.model."
NC_PREFIX = "NeighConsensus.conv."
_NC_KEY = re.compile(r"^NeighConsensus\.conv\.(\d+)\.(weight|bias)$")


def stored_to_standard(weight: Tensor) -> Tensor:
    """Official stored 4D conv weight (k, out, in, k, k, k) -> standard (out, in, k, k, k, k)."""
    return weight.permute(1, 2, 0, 3, 4, 5).contiguous()


def standard_to_stored(weight: Tensor) -> Tensor:
    """Standard 4D conv weight (out, in, k, k, k, k) -> official stored (k, out, in, k, k, k)."""
    return weight.permute(2, 0, 1, 3, 4, 5).contiguous()


def safe_globals_for_checkpoints() -> list[Any]:
    """The exact allow-list for NCNet checkpoints: Namespace + numpy arrays/scalars/dtypes (numpy 1 and 2 names)."""
    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray
    items: list[Any] = [argparse.Namespace, np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        items += [(multiarray._reconstruct, f"{mod}._reconstruct"), (multiarray.scalar, f"{mod}.scalar")]
    if hasattr(np, "dtypes"):  # numpy >= 1.25 rebuilds dtypes as these classes
        items += [np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType, np.dtypes.Int32DType,
                  np.dtypes.BoolDType]
    return items


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``load_torch_file`` allowing only ``safe_globals_for_checkpoints()``; bare state dicts wrapped.

    Raises CheckpointError (one line naming the file) when the file is missing, unreadable, asks for a
    class outside the allow-list, or does not hold a dict.
    """
    ckpt = load_torch_file(path, safe_globals_for_checkpoints(), map_location)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an NCNet checkpoint (got {type(ckpt).__name__})")
    if "state_dict" not in ckpt:
        ckpt = {"state_dict": ckpt}
    return ckpt


def split_official_state(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Official state dict -> (backbone state for ``ResNet101Features.model``, consensus state for
    ``NeighConsensus`` with standard-layout weights, keys ``conv.N.weight|bias``)."""
    backbone, consensus = OrderedDict(), OrderedDict()
    for key, value in state_dict.items():
        key = key.replace("FeatureExtraction.vgg.", FE_PREFIX)
        if key.startswith(FE_PREFIX):
            backbone[key[len(FE_PREFIX):]] = value
        elif (m := _NC_KEY.match(key)) is not None:
            idx, kind = m.groups()
            consensus[f"conv.{idx}.{kind}"] = stored_to_standard(value) if kind == "weight" else value
        else:
            log.debug("ignoring checkpoint entry %s", key)
    return backbone, consensus


def consensus_config(ckpt: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(kernel sizes, channels) of the consensus network: from ``args`` or inferred from the weights."""
    args = ckpt.get("args")
    if args is not None and hasattr(args, "ncons_kernel_sizes") and hasattr(args, "ncons_channels"):
        return [int(k) for k in args.ncons_kernel_sizes], [int(c) for c in args.ncons_channels]
    _, cons = split_official_state(ckpt["state_dict"])
    idx = sorted(int(k.split(".")[1]) for k in cons if k.endswith(".weight"))
    if not idx:
        raise ValueError("checkpoint holds no NeighConsensus weights")
    ws = [cons[f"conv.{i}.weight"] for i in idx]
    return [int(w.shape[2]) for w in ws], [int(w.shape[0]) for w in ws]


def feature_name(ckpt: dict[str, Any]) -> str:
    """Feature extractor named by a checkpoint: args.feature_extraction_cnn, else resnet101 if it holds a backbone."""
    args = ckpt.get("args")
    name = getattr(args, "feature_extraction_cnn", None) if args is not None else None
    if name:
        return str(name).replace("_", "-")
    has_fe = any(k.startswith(("FeatureExtraction.model.", "FeatureExtraction.vgg.")) for k in ckpt["state_dict"])
    return "resnet101" if has_fe else "dense-rootsift"


def official_state_dict(model: torch.nn.Module) -> OrderedDict[str, Tensor]:
    """State dict of an ``NCNet`` in the official layout (backbone only for learned backbones)."""
    out: OrderedDict[str, Tensor] = OrderedDict()
    fe = getattr(model.features, "model", None)
    if fe is not None:
        for key, value in fe.state_dict().items():
            out[FE_PREFIX + key] = value.detach().cpu()
    if model.neigh_consensus is not None:
        for key, value in model.neigh_consensus.state_dict().items():
            value = value.detach().cpu()
            out["NeighConsensus." + key] = standard_to_stored(value) if key.endswith("weight") else value
    return out


def save_checkpoint(path: str | Path, model: torch.nn.Module, epoch: int = 0, args: argparse.Namespace | None = None,
                    optimizer: dict | None = None, train_loss: np.ndarray | None = None,
                    test_loss: np.ndarray | None = None, best_test_loss: float = float("inf"),
                    extra_args: dict[str, Any] | None = None) -> None:
    """Write ``model`` (an ``NCNet``) as an official-layout checkpoint (loads in the official code and ours)."""
    nc = model.neigh_consensus
    ns = argparse.Namespace(**vars(args)) if args is not None else argparse.Namespace()
    if nc is not None:
        ns.ncons_kernel_sizes, ns.ncons_channels = list(nc.kernel_sizes), list(nc.channels)
        ns.symmetric_mode = bool(nc.symmetric)
    ns.feature_extraction_cnn = model.features.name.replace("-", "_")
    if hasattr(model.features, "stride"):
        ns.feature_stride = int(model.features.stride)
    for key, value in (extra_args or {}).items():
        setattr(ns, key, value)
    # loss histories are never empty: an empty array pickles a bare `bytes` global, which weights_only refuses
    ckpt = {
        "epoch": int(epoch),
        "args": ns,
        "state_dict": official_state_dict(model),
        "best_test_loss": best_test_loss,
        "optimizer": optimizer if optimizer is not None else {},
        "train_loss": train_loss if train_loss is not None else np.zeros(max(int(epoch), 1)),
        "test_loss": test_loss if test_loss is not None else np.zeros(max(int(epoch), 1)),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


__all__ = ["stored_to_standard", "standard_to_stored", "safe_globals_for_checkpoints", "load_checkpoint_file",
           "split_official_state", "consensus_config", "feature_name", "official_state_dict", "save_checkpoint"]
