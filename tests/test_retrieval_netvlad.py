"""NetVLAD layer vs a plain loop implementation; official initialisation."""

import math

import numpy as np
import pytest
import torch

from retrieval.netvlad import NetVLAD, kmeans, netvlad_reference


@pytest.mark.parametrize("order", ["dk", "kd"])
def test_netvlad_matches_loop_reference(order):
    torch.manual_seed(0)
    layer = NetVLAD(num_clusters=5, dim=7, order=order)
    torch.nn.init.normal_(layer.assign.weight, std=2.0)
    x = torch.randn(2, 7, 3, 4)
    out = layer(x).detach().numpy()
    assert out.shape == (2, 35)
    for b in range(2):
        ref = netvlad_reference(x[b].reshape(7, -1).numpy(), layer.assign.weight[..., 0].detach().numpy(),
                                layer.centroids.detach().numpy(), order=order)
        np.testing.assert_allclose(out[b], ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_flatten_orders_are_permutations():
    torch.manual_seed(1)
    a = NetVLAD(4, 6, order="dk")
    b = NetVLAD(4, 6, order="kd")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 6, 10)
    va, vb = a(x)[0].view(6, 4), b(x)[0].view(4, 6)
    torch.testing.assert_close(va, vb.T)


def test_official_initialisation_alpha():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = kmeans(x, 8, niter=10, seed=0)
    layer = NetVLAD(8, 16)
    alpha = layer.init_from_centroids(c, x)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    top2 = np.sort(x @ cn.T, axis=1)[:, -2:]
    assert alpha == pytest.approx(-math.log(0.01) / (top2[:, 1] - top2[:, 0]).mean(), rel=1e-4)
    np.testing.assert_allclose(layer.assign.weight[..., 0].detach().numpy(), alpha * cn, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.centroids.detach().numpy(), c)
    assert layer.assign.bias is None


def test_kmeans_torch_fallback(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *a, **k):
        if name == "faiss":
            raise ImportError("no faiss")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 4)) * 10
    x = np.concatenate([c + rng.standard_normal((50, 4)) * 0.1 for c in centres]).astype(np.float32)
    c = kmeans(x, 3, niter=20, seed=0)
    d = np.linalg.norm(c[:, None] - centres[None], axis=2).min(0)
    assert (d < 1.0).all()
