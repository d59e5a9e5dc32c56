"""The compiled direct 4D convolution (matching/csrc, matching.native) against the float64 references."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_matching import ref_consensus, ref_conv4d

from matching import native
from matching.consensus import NeighConsensus
from matching.conv4d import conv4d, conv4d_rows_valid, resolve_method

ROOT = Path(__file__).resolve().parents[1]
needs_native = pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.error()}")
# float32 against float64: the error grows with the number of summed terms (Cin * k^4)
TOL = {3: 5e-6, 5: 3e-5}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random float64 tensor."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def ref_grouped(x: np.ndarray, w: np.ndarray, b: np.ndarray, groups: int) -> np.ndarray:
    """Grouped 4D conv from the plain reference, one group at a time."""
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    return np.concatenate([ref_conv4d(x[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], b[g * og:(g + 1) * og])
                           for g in range(groups)], axis=1)


@needs_native
@pytest.mark.parametrize("cin,cout,k,groups", [
    (1, 3, 3, 1),     # bcast kernel, one vector of output channels, single-channel input (block size 1)
    (1, 32, 3, 1),    # bcast, two vectors (NCNet's fused symmetric first layer)
    (3, 17, 3, 1),    # bcast, partially filled second vector, input channels padded to a block of 16
    (32, 2, 3, 2),    # hsum kernel, two groups (fused symmetric 16 -> 1 layer)
    (16, 1, 3, 1),    # hsum, one group
    (20, 1, 3, 1),    # 20 input channels: not a multiple of 16 -> bcast with padded channels
    (2, 3, 5, 1),     # k = 5
    (32, 32, 5, 2),   # PF-Pascal's fused 16 -> 16 layer
    (32, 2, 5, 2),    # PF-Pascal's fused 16 -> 1 layer
])
def test_direct_conv4d_matches_reference(cin: int, cout: int, k: int, groups: int) -> None:
    sizes = (3, 5, 4, 7) if k == 3 else (3, 4, 5, 3)  # odd, unequal hA, wA, hB, wB
    x = rand(2, cin, *sizes, seed=1)
    w, b = rand(cout, cin // groups, k, k, k, k, seed=2), rand(cout, seed=3)
    ref = ref_grouped(x.numpy(), w.numpy(), b.numpy(), groups)
    with torch.no_grad():
        out = conv4d(x.float(), w.float(), b.float(), groups=groups, method="direct")
    assert out.dtype == torch.float32
    assert rel_err(out.double().numpy(), ref) < TOL[k]
    # row layout entry point with the fused ReLU
    xl = torch.nn.functional.pad(x.float().transpose(1, 2), (0, 0, 0, 0, 0, 0, 0, 0, k // 2, k // 2))
    r = native.conv4d_rows_valid(xl.contiguous(), w.float(), b.float(), groups, relu=True)
    assert rel_err(r.transpose(1, 2).double().numpy(), np.maximum(ref, 0)) < TOL[k]


@needs_native
@pytest.mark.parametrize("kernels,channels", [([3, 3], [16, 1]), ([5, 5, 5], [16, 16, 1]), ([3, 3], [8, 1]),
                                              ([3, 3, 3], [4, 16, 1])])
@pytest.mark.parametrize("symmetric", [True, False])
def test_native_consensus_matches_reference(kernels: list[int], channels: list[int], symmetric: bool) -> None:
    torch.manual_seed(0)
    nc = NeighConsensus(kernels, channels, symmetric=symmetric)
    sizes = (5, 3, 4, 7) if kernels[0] == 3 else (3, 4, 5, 3)
    c = rand(2, 1, *sizes, seed=7).abs()
    ws = [l.weight.detach().double().numpy() for l in nc.conv_layers()]
    bs = [l.bias.detach().double().numpy() for l in nc.conv_layers()]
    ref = np.stack([ref_consensus(c[i:i + 1].numpy(), ws, bs, symmetric)[0] for i in range(2)])
    with torch.no_grad():
        assert nc._native_ok(c.float(), nc.fused_layers(torch.float32))
        out = nc(c.float())
        assert rel_err(out.double().numpy(), ref) < TOL[kernels[0]]
        if symmetric:  # swapping A and B transposes the output
            outt = nc(c.float().permute(0, 1, 4, 5, 2, 3).contiguous())
            assert rel_err(outt.numpy(), out.permute(0, 1, 4, 5, 2, 3).numpy()) < 1e-5
        nc.method = "stack3d"  # the torch path gives the same values
        assert rel_err(nc(c.float()).numpy(), out.numpy()) < TOL[kernels[0]]


@needs_native
def test_native_stack_row_ranges() -> None:
    """A slab of rows (halo rows outside the tensor are zero) equals the same rows of the full result."""
    torch.manual_seed(1)
    nc = NeighConsensus([3, 3], [16, 1])
    layers = nc.fused_layers(torch.float32)
    x = torch.rand(9, 1, 4, 6, 5)
    with torch.no_grad():
        full = native.conv4d_stack(x, layers, -2, 11, sum_groups=True)
        assert full.shape == (9, 1, 4, 6, 5)
        part = native.conv4d_stack(x, layers, 1, 9, sum_groups=True)  # output rows 3..6
        assert torch.allclose(part, full[3:7], atol=1e-6)
        both = native.conv4d_stack(x, layers, -2, 11)  # groups kept apart: [9, 2, ...], sum = full
        assert both.shape == (9, 2, 4, 6, 5)
        assert torch.allclose(both.sum(1, keepdim=True), full, atol=1e-6)


@needs_native
def test_autograd_and_other_dtypes_use_torch() -> None:
    torch.manual_seed(2)
    nc = NeighConsensus([3, 3], [16, 1])
    c = torch.rand(1, 1, 4, 5, 3, 4)
    out = nc(c)  # grad enabled and parameters require grad: the torch path, differentiable
    assert out.grad_fn is not None
    out.sum().backward()
    assert nc.conv_layers()[0].weight.grad is not None
    with torch.no_grad():
        assert torch.allclose(nc(c), out.detach(), atol=1e-5)
        assert not nc._native_ok(c.double(), nc.fused_layers(torch.float64))
    w = torch.rand(2, 1, 3, 3, 3, 3)
    assert resolve_method("auto", torch.device("cpu"), 1, 2, 3) == "direct"
    assert resolve_method("direct", torch.device("cpu"), 1, 2, 7) != "direct"  # unsupported k: torch rule
    assert resolve_method("auto", torch.device("cpu"), 1, 2, 3, native_ok=False) != "direct"
    x = torch.rand(1, 1, 3, 4, 5, 3)
    with torch.no_grad():
        assert torch.allclose(conv4d(x, w, None, method="direct"), conv4d(x, w, None, method="stack3d"), atol=1e-5)


@needs_native
def test_native_errors() -> None:
    x = torch.rand(1, 7, 1, 4, 4, 4)
    with pytest.raises(RuntimeError, match="unsupported kernel size"):
        native.conv4d_rows_valid(x, torch.rand(2, 1, 7, 7, 7, 7), None)
    with pytest.raises(RuntimeError, match="invalid arguments"):
        native.conv4d_rows_valid(x, torch.rand(3, 1, 3, 3, 3, 3), None, groups=2)
    # explicit 'direct' with k = 7 falls back to torch and still computes
    with torch.no_grad():
        out = conv4d_rows_valid(x, torch.rand(2, 1, 7, 7, 7, 7), None, 1, "direct")
    assert out.shape == (1, 1, 2, 4, 4, 4)


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, **env}, timeout=300)


def test_disabled_native_falls_back_to_torch() -> None:
    code = ("import torch; from matching import native; from matching.consensus import NeighConsensus\n"
            "assert not native.available() and 'NCLOC_NATIVE=0' in native.error()\n"
            "nc = NeighConsensus([3, 3], [16, 1]).eval(); c = torch.rand(1, 1, 4, 5, 3, 4)\n"
            "with torch.no_grad(): print(float(nc(c).abs().sum()))\n")
    res = _python(code, NCLOC_NATIVE="0")
    assert res.returncode == 0, res.stderr
    assert float(res.stdout.strip()) > 0


@needs_native
def test_fresh_build_is_atomic_keyed_and_matches_torch(tmp_path: Path) -> None:
    """One fresh build (one compile: the expensive part), on x86-64 with the 8-float / 16-register blocking that a
    CPU without AVX-512 gets: it gives the torch path's results, lands in the cache as one keyed file (no .tmp left)
    and a second process reuses it."""
    code = ("import torch, pathlib; from matching import native; from matching.consensus import NeighConsensus\n"
            "assert native.available(), native.error()\n"
            "torch.manual_seed(0)\n"
            "for ks, ch in (([3, 3], [16, 1]), ([5, 5, 5], [16, 16, 1]), ([3, 3, 3], [4, 16, 1])):\n"
            "    for sym in (True, False):\n"
            "        nc = NeighConsensus(ks, ch, symmetric=sym).eval(); c = torch.rand(2, 1, 5, 4, 6, 7)\n"
            "        with torch.no_grad():\n"
            "            a = nc(c); nc.method = 'stack3d'; b = nc(c)\n"
            "        err = float((a - b).abs().max() / b.abs().max())\n"
            "        assert err < 3e-5, (ks, sym, err)\n"
            "print(sorted(p.name for p in native.cache_dir().iterdir()))\n")
    env = {"NCLOC_NATIVE_CACHE": str(tmp_path)}
    if platform.machine() in ("x86_64", "AMD64"):
        env["NCLOC_NATIVE_FLAGS"] = "-O3 -march=x86-64-v3"
    first = _python(code, **env)
    assert first.returncode == 0, first.stderr[-2000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("ncdirect-") and files[0].endswith(".so")  # no .tmp left
    assert first.stdout.strip() == str(files)  # the process loaded its build from the cache folder it was given
    second = _python(code, **env)  # reuses the cached build
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == files and second.stdout.strip() == str(files)


@needs_native
def test_workspace_reuse_and_release() -> None:
    """Scratch buffers are reused between calls (same results) and can be released."""
    torch.manual_seed(3)
    nc = NeighConsensus([3, 3], [16, 1]).eval()
    c = torch.rand(1, 1, 6, 5, 7, 4)
    with torch.no_grad():
        first = nc(c)
        assert native.release_workspace() > 0  # the ring buffers of that call were kept
        assert native.release_workspace() == 0
        again = nc(c)  # fresh buffers
        assert torch.equal(again, first)
        c2 = torch.rand(1, 1, 6, 5, 7, 4)
        nc(c2)
        assert torch.equal(nc(c), first)  # reused (dirty) buffers are cleared before use
