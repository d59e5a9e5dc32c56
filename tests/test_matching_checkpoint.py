"""Official-layout checkpoints: load (incl. numpy-1 pickles, old 'vgg' keys), save -> reload, allow-list."""

from __future__ import annotations

import argparse
import io
import pickle
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from localize.core.errors import CheckpointError
from matching.checkpoint import load_checkpoint_file, save_checkpoint
from matching.features import ResNet101Features
from matching.model import build_ncnet

CONFIGS = [([3, 3], [16, 1]), ([5, 5, 5], [16, 16, 1])]
NUMPY1_NAMES = {"numpy._core.multiarray": "numpy.core.multiarray", "numpy._core.numeric": "numpy.core.numeric"}


class Numpy1Pickler(pickle._Pickler):
    """Pure-python pickler that writes numpy-2 globals under their numpy-1 module names (release-era files)."""

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        if module in NUMPY1_NAMES:
            qualname = name or obj.__qualname__
            self.write(pickle.GLOBAL + f"{NUMPY1_NAMES[module]}\n{qualname}\n".encode("ascii"))
            self.memoize(obj)
            return
        super().save_global(obj, name)


NUMPY1_PICKLE = types.SimpleNamespace(Pickler=Numpy1Pickler, dump=pickle.dump, load=pickle.load,
                                      Unpickler=pickle.Unpickler, __name__="numpy1_pickle")


def official_consensus_state(kernels: list[int], channels: list[int], gen: torch.Generator) -> OrderedDict:
    """Random NeighConsensus tensors in the stored (k, out, in, k, k, k) layout."""
    sd: OrderedDict = OrderedDict()
    cin = 1
    for n, (k, c) in enumerate(zip(kernels, channels)):
        sd[f"NeighConsensus.conv.{2 * n}.weight"] = torch.randn(k, c, cin, k, k, k, generator=gen)
        sd[f"NeighConsensus.conv.{2 * n}.bias"] = torch.randn(c, generator=gen)
        cin = c
    return sd


def official_args(kernels: list[int], channels: list[int], cnn: str = "resnet101") -> argparse.Namespace:
    """An args Namespace like the released files'."""
    return argparse.Namespace(ncons_kernel_sizes=kernels, ncons_channels=channels, feature_extraction_cnn=cnn,
                              image_size=400, lr=0.0005, num_epochs=5, batch_size=16, fe_finetune_params=0)


def check_consensus(model: torch.nn.Module, sd: dict, kernels: list[int], gen: torch.Generator) -> None:
    """Standard weight W[o, i, a, b, c, d] must equal stored S[a, o, i, b, c, d]; biases unchanged."""
    layers = model.neigh_consensus.conv_layers()
    assert len(layers) == len(kernels)
    for n, layer in enumerate(layers):
        stored = sd[f"NeighConsensus.conv.{2 * n}.weight"]
        w = layer.weight.detach()
        assert w.shape == (stored.shape[1], stored.shape[2]) + (stored.shape[0],) * 4
        for _ in range(20):
            o, i = (int(torch.randint(s, (1,), generator=gen)) for s in w.shape[:2])
            a, b, c, d = (int(torch.randint(kernels[n], (1,), generator=gen)) for _ in range(4))
            assert w[o, i, a, b, c, d] == stored[a, o, i, b, c, d]
        assert torch.equal(layer.bias.detach(), sd[f"NeighConsensus.conv.{2 * n}.bias"])


def write_release_file(path: Path, sd: dict, args: argparse.Namespace, legacy: bool) -> None:
    """A release-era-like file: numpy-1 global names, numpy loss histories, optional legacy (non-zip) format."""
    ckpt = {"epoch": 5, "args": args, "state_dict": sd, "best_test_loss": np.float64(-0.31),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005, "params": [0, 1]}]},
            "train_loss": np.linspace(-0.1, -0.3, 5), "test_loss": np.linspace(-0.1, -0.31, 5).astype(np.float32)}
    torch.save(ckpt, path, pickle_module=NUMPY1_PICKLE, _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("kernels,channels", CONFIGS)
def test_official_consensus_only_numpy1_legacy(tmp_path: Path, kernels: list[int], channels: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    sd = official_consensus_state(kernels, channels, gen)
    path = tmp_path / "ncnet_release.pth.tar"
    write_release_file(path, sd, official_args(kernels, channels, "dense_rootsift"), legacy=True)
    raw = path.read_bytes()
    assert b"numpy.core.multiarray" in raw and b"numpy._core" not in raw
    with pytest.raises(pickle.UnpicklingError):  # weights_only without our allow-list refuses it
        torch.load(path, map_location="cpu", weights_only=True)
    ckpt = load_checkpoint_file(path)
    assert ckpt["epoch"] == 5 and isinstance(ckpt["args"], argparse.Namespace)
    assert np.allclose(ckpt["train_loss"], np.linspace(-0.1, -0.3, 5)) and ckpt["test_loss"].dtype == np.float32
    model = build_ncnet(weights=path)
    assert model.features.name == "dense-rootsift"
    assert model.neigh_consensus.kernel_sizes == kernels and model.neigh_consensus.channels == channels
    check_consensus(model, sd, kernels, gen)


def test_official_resnet_checkpoint_vgg_keys_no_batch_counts(tmp_path: Path) -> None:
    """IVD-like file: backbone under the old 'FeatureExtraction.vgg.' prefix, no num_batches_tracked, zip format."""
    gen = torch.Generator().manual_seed(1)
    kernels, channels = CONFIGS[0]
    ref = ResNet101Features()
    sd = OrderedDict()
    for key, value in ref.model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        sd["FeatureExtraction.vgg." + key] = torch.randn(value.shape, generator=gen) if value.is_floating_point() \
            else value
    sd.update(official_consensus_state(kernels, channels, gen))
    path = tmp_path / "ncnet_ivd.pth.tar"
    write_release_file(path, sd, official_args(kernels, channels), legacy=False)
    model = build_ncnet(weights=path)
    assert isinstance(model.features, ResNet101Features)
    got = model.features.model.state_dict()
    for key in ("0.weight", "1.running_var", "4.0.conv1.weight", "5.3.bn2.bias", "6.22.conv3.weight"):
        assert torch.equal(got[key], sd["FeatureExtraction.vgg." + key]), key
    check_consensus(model, sd, kernels, gen)


@pytest.mark.parametrize("kernels,channels", CONFIGS)
def test_save_reload(tmp_path: Path, kernels: list[int], channels: list[int]) -> None:
    torch.manual_seed(3)
    from matching.consensus import NeighConsensus
    from matching.features import DenseRootSIFTFeatures
    from matching.model import NCNet

    model = NCNet(DenseRootSIFTFeatures(step=8), NeighConsensus(kernels, channels)).eval()
    path = tmp_path / "ours.pth.tar"
    save_checkpoint(path, model, epoch=2, train_loss=np.array([0.1, 0.05]))
    ckpt = load_checkpoint_file(path)
    assert set(ckpt) == {"epoch", "args", "state_dict", "best_test_loss", "optimizer", "train_loss", "test_loss"}
    assert ckpt["args"].ncons_kernel_sizes == kernels and ckpt["args"].ncons_channels == channels
    for n, layer in enumerate(model.neigh_consensus.conv_layers()):  # official stored layout on disk
        stored = ckpt["state_dict"][f"NeighConsensus.conv.{2 * n}.weight"]
        k = kernels[n]
        assert stored.shape == (k, layer.out_channels, layer.in_channels, k, k, k)
        assert torch.equal(stored.permute(1, 2, 0, 3, 4, 5), layer.weight.detach())
    again = build_ncnet(weights=path)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    c = torch.rand(1, 1, 3, 4, 5, 3)
    with torch.no_grad():
        assert torch.equal(model.neigh_consensus(c), again.neigh_consensus(c))


def test_disallowed_global_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "args": io.BytesIO(b"x")}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth\.tar.*_io\.BytesIO") as info:
        load_checkpoint_file(path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError) and "\n" not in str(info.value)
    fe = ResNet101Features()  # torchvision backbone files go through the same safe reader
    with pytest.raises(CheckpointError, match="BytesIO"):
        fe.load_torchvision(path)


def test_missing_or_foreign_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(tmp_path / "none.pth.tar")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not an NCNet checkpoint"):
        load_checkpoint_file(tmp_path / "list.pth")
