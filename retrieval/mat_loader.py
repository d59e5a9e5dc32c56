"""Load the official MatConvNet NetVLAD weights (``Pitts30K_struct.mat``, ``TokyoTM_struct.mat``).

Layout of ``net.layers`` (read with ``loadmat(..., struct_as_record=False, squeeze_me=True)``):
layers 0-28 are VGG16 conv1_1 ... conv5_3 (``conv`` weights H x W x IN x OUT + bias, ``relu``,
``pool``), then the pre-L2 normalisation, layer 30 the VLAD core (``weights[0]`` the assignment
conv D x K, ``weights[1]`` the NEGATED centroids D x K), the intra-norm and L2 layers, layer 33
the whitening conv (``weights[0]`` 1 x 1 x (D*K) x OUT, ``weights[1]`` its bias; VLAD vector in
MATLAB order d * K + k), final L2. Preprocessing: RGB 0..255 minus
``net.meta.normalization.averageImage``. Sizes are read from the file, so reduced files load too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from retrieval.netvlad import NetVLADModel

logger = logging.getLogger(__name__)

VLAD_LAYER, WHITEN_LAYER, NUM_BACKBONE_LAYERS = 30, 33, 29


def _weights(layer: Any) -> list[np.ndarray]:
    """A layer's ``weights`` cell array as a list of float32 arrays (empty list when none)."""
    w = getattr(layer, "weights", None)
    if w is None:
        return []
    if isinstance(w, np.ndarray) and w.dtype == object:
        return [np.asarray(v, dtype=np.float32) for v in w.reshape(-1)]
    w = np.asarray(w)
    return [] if w.size == 0 else [w.astype(np.float32)]


def _str(layer: Any, field: str) -> str:
    v = getattr(layer, field, "")
    return str(v) if not isinstance(v, np.ndarray) or v.size else ""


def _pair(v: Any, default: int) -> tuple[int, int]:
    a = np.asarray(v if v is not None else default).reshape(-1).astype(int)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _conv_from_mat(layer: Any) -> nn.Conv2d:
    """MatConvNet conv layer -> nn.Conv2d (weights H x W x IN x OUT -> OUT x IN x H x W)."""
    ws = _weights(layer)
    w = ws[0]
    if w.ndim == 2:  # 1x1 conv squeezed: IN x OUT
        w = w[None, None]
    elif w.ndim == 3:  # single output channel squeezed
        w = w[..., None]
    kh, kw, cin, cout = w.shape
    pad = np.asarray(getattr(layer, "pad", [1 if kh == 3 else 0])).reshape(-1).astype(int)
    stride = _pair(getattr(layer, "stride", 1), 1)
    if pad.size == 4 and not (pad[0] == pad[1] == pad[2] == pad[3]):
        raise ValueError(f"asymmetric padding {pad.tolist()} in layer {_str(layer, 'name')} not supported")
    conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=int(pad[0]), bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))))
        b = ws[1].reshape(-1) if len(ws) > 1 else np.zeros(cout, np.float32)
        conv.bias.copy_(torch.from_numpy(b))
    return conv


def _pool_from_mat(layer: Any) -> nn.Module:
    """MatConvNet pool layer -> nn.MaxPool2d / AvgPool2d (default 2x2, stride 2)."""
    size = _pair(getattr(layer, "pool", 2), 2)
    stride = _pair(getattr(layer, "stride", 2), 2)
    pad = np.asarray(getattr(layer, "pad", 0)).reshape(-1).astype(int)
    if np.any(pad != 0):
        raise ValueError(f"padded pooling in layer {_str(layer, 'name')} not supported")
    if _str(layer, "method") == "avg":
        return nn.AvgPool2d(size, stride)
    return nn.MaxPool2d(size, stride)


def read_mat_net(path: str | Path) -> Any:
    """``net`` struct of an official NetVLAD .mat file (scipy object with ``layers`` and ``meta``)."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"NetVLAD weight file not found: {path}")
    try:
        mat = loadmat(str(path), struct_as_record=False, squeeze_me=True)
    except Exception as e:  # scipy raises several types for corrupt/HDF5 (v7.3) files
        raise OSError(f"cannot read NetVLAD weights {path}: {e}") from e
    if "net" not in mat:
        raise ValueError(f"{path} has no 'net' struct (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    return mat["net"]


def average_rgb(net: Any) -> np.ndarray:
    """Average colour (3,) from ``net.meta.normalization.averageImage`` (any H x W x 3 image is averaged)."""
    try:
        avg = np.asarray(net.meta.normalization.averageImage, dtype=np.float64)
    except AttributeError:
        logger.warning("weight file has no meta.normalization.averageImage; using the ImageNet mean")
        return np.array([122.6778, 116.6522, 103.9997])
    return avg.reshape(-1, 3).mean(0) if avg.size != 3 else avg.reshape(3)


def load_netvlad_mat(path: str | Path) -> NetVLADModel:
    """Build the official VGG16-NetVLAD-whitening model from a MatConvNet struct .mat (eval mode)."""
    net = read_mat_net(path)
    layers = list(np.atleast_1d(net.layers))
    modules: list[nn.Module] = []
    n_backbone = 0
    for layer in layers:  # leading conv/relu/pool layers: the VGG16 backbone (29 in the official files)
        kind = _str(layer, "type")
        if kind == "conv":
            modules.append(_conv_from_mat(layer))
        elif kind == "relu":
            modules.append(nn.ReLU(inplace=True))
        elif kind == "pool":
            modules.append(_pool_from_mat(layer))
        else:
            break
        n_backbone += 1
    if n_backbone != NUM_BACKBONE_LAYERS:
        logger.warning("%s: %d backbone layers before the VLAD part (official files have %d)",
                       path, n_backbone, NUM_BACKBONE_LAYERS)
    vlad_idx = next((i for i in range(n_backbone, len(layers)) if len(_weights(layers[i])) >= 2), None)
    if vlad_idx is None:
        raise ValueError(f"{path}: no VLAD core layer (two weight arrays) after the backbone")
    if vlad_idx != n_backbone + 1:
        logger.warning("%s: VLAD core found at layer %d (official files: %d)", path, vlad_idx, VLAD_LAYER)
    backbone = nn.Sequential(*modules)
    vlad_w = _weights(layers[vlad_idx])
    if len(vlad_w) != 2:
        raise ValueError(f"{path}: VLAD layer {vlad_idx} ({_str(layers[vlad_idx], 'name')}) has "
                         f"{len(vlad_w)} weight arrays, expected 2 (assignment, negated centroids)")
    assign = vlad_w[0].reshape(vlad_w[0].shape[-2], vlad_w[0].shape[-1])  # D x K
    neg_centroids = vlad_w[1].reshape(assign.shape)  # D x K
    D, K = assign.shape
    whiten_w: np.ndarray | None = None
    whiten_idx = next((i for i in range(vlad_idx + 1, len(layers)) if _weights(layers[i])), None)
    if whiten_idx is not None:
        ww = _weights(layers[whiten_idx])
        whiten_w = ww[0].reshape(D * K, -1)  # IN x OUT
        whiten_b = ww[1].reshape(-1) if len(ww) > 1 else np.zeros(whiten_w.shape[1], np.float32)
    mean = average_rgb(net)
    model = NetVLADModel(backbone, num_clusters=K, dim=D,
                         whiten_dim=None if whiten_w is None else whiten_w.shape[1], mean_rgb=mean)
    with torch.no_grad():
        model.netvlad.assign.weight.copy_(torch.from_numpy(np.ascontiguousarray(assign.T))[..., None])
        model.netvlad.centroids.copy_(torch.from_numpy(np.ascontiguousarray(-neg_centroids.T)))
        if whiten_w is not None:
            model.whiten.weight.copy_(torch.from_numpy(np.ascontiguousarray(whiten_w.T)))
            model.whiten.bias.copy_(torch.from_numpy(whiten_b))
    logger.info("loaded NetVLAD weights %s: %d backbone layers, K=%d, D=%d, output %d-D, mean RGB %s",
                path, len(modules), K, D, model.output_dim, np.round(mean, 2).tolist())
    return model.eval()


def save_netvlad_mat(path: str | Path, model: NetVLADModel) -> None:
    """Write a model in the official struct layout (for tests and round trips; backbone must be conv/relu/pool)."""
    from scipy.io import savemat

    layers: list[dict] = []
    for m in model.backbone:
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach().numpy().transpose(2, 3, 1, 0)
            layers.append({"name": f"conv{len(layers)}", "type": "conv", "weights": _cell([w, m.bias.detach().numpy()]),
                           "pad": float(m.padding[0]), "stride": float(m.stride[0])})
        elif isinstance(m, nn.ReLU):
            layers.append({"name": f"relu{len(layers)}", "type": "relu", "weights": _cell([])})
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            layers.append({"name": f"pool{len(layers)}", "type": "pool", "weights": _cell([]),
                           "method": "max" if isinstance(m, nn.MaxPool2d) else "avg",
                           "pool": np.array([2.0, 2.0]), "stride": 2.0})
        else:
            raise ValueError(f"cannot export backbone module {m}")
    layers.append({"name": "preL2", "type": "normalize", "weights": _cell([])})
    nv = model.netvlad
    layers.append({"name": "vlad:core", "type": "custom", "weights": _cell(
        [nv.assign.weight.detach().numpy()[..., 0].T[None, None], -nv.centroids.detach().numpy().T])})
    layers.append({"name": "vlad:intranorm", "type": "custom", "weights": _cell([])})
    layers.append({"name": "vlad:L2", "type": "custom", "weights": _cell([])})
    if model.whiten is not None:
        layers.append({"name": "WPCA", "type": "conv", "weights": _cell(
            [model.whiten.weight.detach().numpy().T[None, None], model.whiten.bias.detach().numpy()])})
        layers.append({"name": "L2", "type": "custom", "weights": _cell([])})
    arr = np.empty(len(layers), dtype=object)
    for i, d in enumerate(layers):
        arr[i] = d
    mean = model.mean_rgb.detach().numpy().reshape(1, 1, 3)
    savemat(str(path), {"net": {"layers": arr, "meta": {"normalization": {"averageImage": mean}}}})


def _cell(arrays: list[np.ndarray]) -> np.ndarray:
    """MATLAB cell array (1-D object array) of the given arrays."""
    c = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        c[i] = np.asarray(a, dtype=np.float32)
    return c
