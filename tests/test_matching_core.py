"""Correlation, mutual filtering, 4D conv, consensus, max-pooling and match extraction vs float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_matching import (
    ref_consensus,
    ref_conv4d,
    ref_correlation,
    ref_l2norm,
    ref_matches,
    ref_maxpool4d,
    ref_mutual,
)

from matching.consensus import NeighConsensus
from matching.conv4d import METHODS, conv4d
from matching.correlation import correlation_4d, correlation_4d_maxpool, feature_l2norm
from matching.extract import extract_matches
from matching.mutual import mutual_matching
from matching.relocalize import maxpool4d, relocalize_indices, unravel_offsets

SIZES = (3, 5, 4, 7)  # odd, unequal hA, wA, hB, wB


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random float64 tensor."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_correlation_and_norm() -> None:
    fa, fb = rand(2, 6, 3, 5, seed=1), rand(2, 6, 4, 7, seed=2)
    na, nb = feature_l2norm(fa), feature_l2norm(fb)
    assert rel_err(na.numpy(), ref_l2norm(fa.numpy())) < 1e-12
    c = correlation_4d(na, nb)
    assert c.shape == (2, 1, 3, 5, 4, 7)
    assert rel_err(c.numpy(), ref_correlation(na.numpy(), nb.numpy())) < 1e-12
    # swapping A and B transposes the output
    assert torch.allclose(correlation_4d(nb, na), c.permute(0, 1, 4, 5, 2, 3))


def test_mutual_matching() -> None:
    c = rand(2, 1, *SIZES, seed=3).abs()
    out = mutual_matching(c)
    assert rel_err(out.numpy(), ref_mutual(c.numpy())) < 1e-12
    ct = c.permute(0, 1, 4, 5, 2, 3)
    assert torch.allclose(mutual_matching(ct), out.permute(0, 1, 4, 5, 2, 3))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cin,cout,k", [(1, 3, 3), (2, 3, 5)])
def test_conv4d_methods(method: str, cin: int, cout: int, k: int) -> None:
    x, w, b = rand(1, cin, *SIZES, seed=4), rand(cout, cin, k, k, k, k, seed=5), rand(cout, seed=6)
    ref = ref_conv4d(x.numpy(), w.numpy(), b.numpy())
    out = conv4d(x, w, b, method=method)
    assert rel_err(out.numpy(), ref) < 1e-6
    # tiny chunk budget: one row per chunk, same result
    out2 = conv4d(x, w, b, method=method, max_chunk_bytes=1)
    assert rel_err(out2.numpy(), ref) < 1e-6


@pytest.mark.parametrize("kernels,channels", [([3, 3], [16, 1]), ([5, 5, 5], [16, 16, 1])])
@pytest.mark.parametrize("symmetric", [True, False])
def test_neigh_consensus(kernels: list[int], channels: list[int], symmetric: bool) -> None:
    torch.manual_seed(0)
    nc = NeighConsensus(kernels, channels, symmetric=symmetric).double()
    sizes = SIZES if kernels[0] == 3 else (3, 4, 5, 3)
    c = rand(1, 1, *sizes, seed=7)
    ws = [l.weight.detach().numpy() for l in nc.conv_layers()]
    bs = [l.bias.detach().numpy() for l in nc.conv_layers()]
    ref = ref_consensus(c.numpy(), ws, bs, symmetric)
    with torch.no_grad():
        out = nc(c)
        assert rel_err(out.numpy(), ref) < 1e-6
        nc.max_chunk_bytes = 1  # one row per chunk, halo rows crossing the borders
        assert rel_err(nc(c).numpy(), ref) < 1e-6
        if symmetric:  # swapping A and B transposes the output
            outt = nc(c.permute(0, 1, 4, 5, 2, 3).contiguous())
            assert rel_err(outt.numpy(), out.permute(0, 1, 4, 5, 2, 3).numpy()) < 1e-6


def test_neigh_consensus_float32_and_grad() -> None:
    torch.manual_seed(1)
    nc = NeighConsensus([3, 3], [4, 1])
    c = torch.rand(2, 1, *SIZES, requires_grad=True)
    ref = ref_consensus(c.detach().double().numpy(), [l.weight.detach().double().numpy() for l in nc.conv_layers()],
                        [l.bias.detach().double().numpy() for l in nc.conv_layers()], True)
    out = nc(c)
    assert rel_err(out.detach().double().numpy(), ref) < 1e-5
    out.sum().backward()
    assert c.grad is not None and nc.conv_layers()[0].weight.grad is not None


def test_maxpool4d_and_relocalize() -> None:
    k = 2
    c = rand(1, 1, 6, 4, 2, 8, seed=8)
    pooled, code = maxpool4d(c, k)
    ref_v, ref_arg = ref_maxpool4d(c.numpy(), k)
    assert rel_err(pooled.numpy(), ref_v) < 1e-12
    offs = torch.stack(unravel_offsets(code, k), dim=-1).numpy()
    coarse = np.stack(np.meshgrid(*[np.arange(s) for s in pooled.shape[2:]], indexing="ij"), axis=-1)
    assert np.array_equal(coarse[None, None] * k + offs, ref_arg)
    # relocalize_indices on a few pooled cells
    cells = torch.tensor([[0, 0, 0, 0], [2, 1, 0, 3], [1, 1, 0, 2]])
    fa, fb = relocalize_indices(cells[:, :2], cells[:, 2:], code[0, 0], k)
    want = ref_arg[0, 0][tuple(cells.T.numpy())]
    assert np.array_equal(torch.cat([fa, fb], 1).numpy(), want)
    # fused correlation + pooling equals pooling the full correlation
    fa_, fb_ = feature_l2norm(rand(1, 5, 6, 4, seed=9)), feature_l2norm(rand(1, 5, 2, 8, seed=10))
    full = correlation_4d(fa_, fb_)
    p1, c1 = maxpool4d(full, k)
    p2, c2 = correlation_4d_maxpool(fa_, fb_, k, max_chunk_bytes=1)
    assert torch.allclose(p1, p2) and torch.equal(c1, c2)


@pytest.mark.parametrize("k", [2, 3])
def test_maxpool4d_ties_and_k(k: int) -> None:
    """Quantised values (many ties): the first maximum in (di, dj, dk, dl) order, as the reference."""
    c = torch.round(rand(2, 1, 2 * k, k, 3 * k, 2 * k, seed=13) * 2) / 2
    pooled, code = maxpool4d(c, k)
    ref_v, ref_arg = ref_maxpool4d(c.numpy(), k)
    assert np.array_equal(pooled.numpy(), ref_v)
    offs = torch.stack(unravel_offsets(code, k), dim=-1).numpy()
    coarse = np.stack(np.meshgrid(*[np.arange(s) for s in pooled.shape[2:]], indexing="ij"), axis=-1)
    assert np.array_equal(coarse[None, None] * k + offs, ref_arg)


def test_extract_matches() -> None:
    c = rand(1, 1, *SIZES, seed=11)
    m = extract_matches(c, size_a=(30, 50), size_b=(40, 70))
    ref = ref_matches(c[0, 0].numpy())
    got = {tuple(int(v) for v in np.r_[a, b]): s for a, b, s in
           zip(m["indices0"].numpy(), m["indices1"].numpy(), m["scores"].numpy())}
    assert set(got) == set(ref)
    for key, s in ref.items():
        assert abs(got[key] - s) < 1e-9 * max(1.0, s)
    assert np.all(np.diff(m["scores"].numpy()) <= 0)  # sorted by score
    # pixels: (idx + 0.5) / size * image side; x = column
    ia, ib = m["indices0"].numpy(), m["indices1"].numpy()
    assert np.allclose(m["keypoints0"].numpy(), np.c_[(ia[:, 1] + 0.5) / 5 * 50, (ia[:, 0] + 0.5) / 3 * 30])
    assert np.allclose(m["keypoints1"].numpy(), np.c_[(ib[:, 1] + 0.5) / 7 * 70, (ib[:, 0] + 0.5) / 4 * 40])
    # swapping A and B swaps the matches
    mt = extract_matches(c.permute(0, 1, 4, 5, 2, 3), size_a=(40, 70), size_b=(30, 50))
    swapped = {tuple(int(v) for v in np.r_[b, a]) for a, b in zip(mt["indices0"].numpy(), mt["indices1"].numpy())}
    assert swapped == set(ref)


def test_extract_matches_relocalized() -> None:
    k = 2
    full = rand(1, 1, 6, 4, 2, 8, seed=12)
    pooled, code = maxpool4d(full, k)
    m = extract_matches(pooled, size_a=(60, 40), size_b=(20, 80), code=code, k=k)
    _, ref_arg = ref_maxpool4d(full.numpy(), k)
    coarse = ref_matches(pooled[0, 0].numpy())
    want = {tuple(int(v) for v in ref_arg[0, 0][key]) for key in coarse}
    got = {tuple(int(v) for v in np.r_[a, b]) for a, b in zip(m["indices0"].numpy(), m["indices1"].numpy())}
    assert got == want
    ia = m["indices0"].numpy()
    assert np.allclose(m["keypoints0"].numpy(), np.c_[(ia[:, 1] + 0.5) / 4 * 40, (ia[:, 0] + 0.5) / 6 * 60])
