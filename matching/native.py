"""The compiled CPU kernels of ``matching/csrc`` (direct 4D convolution), built on first use and called via ctypes.

The C++ source has no Python or torch headers, so it compiles in about two seconds with the system C++
compiler (``$CXX``, else ``c++``/``g++``/``clang++``) into a shared library cached under
``$NCLOC_NATIVE_CACHE`` (default ``~/.cache/ncloc/native``), keyed by a hash of the source, the compiler
and the flags. ``-march=native`` is tried first (AVX-512 where the CPU has it), then portable flags;
``NCLOC_NATIVE_FLAGS`` (e.g. ``"-O3 -march=x86-64-v3"``) replaces them.
Everything degrades gracefully: without a compiler, or with ``NCLOC_NATIVE=0``, ``available()`` is
False and the torch implementations in ``matching.conv4d`` are used instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch
from torch import Tensor

from localize.core.formats import atomic_path
from localize.core.threads import num_threads

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "conv4d_direct.cpp"
ABI_VERSION = 2
SUPPORTED_KERNELS = (3, 5)
FLAG_SETS = (["-O3", "-march=native"], ["-O3"])
BASE_FLAGS = ["-std=c++17", "-shared", "-fPIC", "-pthread"]
ERRORS = {-1: "invalid arguments", -2: "unsupported kernel size", -3: "out of memory"}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_error: str | None = None


def cache_dir() -> Path:
    """Where compiled libraries are kept: $NCLOC_NATIVE_CACHE or ~/.cache/ncloc/native."""
    return Path(os.environ.get("NCLOC_NATIVE_CACHE", "~/.cache/ncloc/native")).expanduser()


def _compiler() -> str | None:
    """The C++ compiler to use, or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_tag() -> str:
    """Identifies the CPU features -march=native compiles for (the flags line of /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(cxx: str) -> Path:
    """Compile the library (or reuse the cached build); raises RuntimeError when no flag set compiles."""
    src = SOURCE.read_bytes()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[:1]
    errors = []
    override = os.environ.get("NCLOC_NATIVE_FLAGS")
    for flags in ([override.split()] if override else FLAG_SETS):
        key = hashlib.sha256(src + repr((cxx, version, flags, BASE_FLAGS, _cpu_tag(), ABI_VERSION)).encode())
        out = cache_dir() / f"ncdirect-{key.hexdigest()[:16]}.so"
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        log.info("compiling the native 4D convolution (%s %s) into %s", Path(cxx).name, " ".join(flags), out)
        try:  # atomic: a concurrent or interrupted build never leaves a half-written library
            with atomic_path(out) as tmp:
                subprocess.run([cxx, *flags, *BASE_FLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True,
                               text=True, check=True)
            return out
        except subprocess.CalledProcessError as e:
            errors.append(f"{' '.join(flags)}: {e.stderr.strip()[-500:]}")
    raise RuntimeError("could not compile " + str(SOURCE) + ": " + " | ".join(errors))


def load() -> ctypes.CDLL | None:
    """The loaded library, building it on first call; None (with the reason in ``error()``) if unavailable."""
    global _lib, _tried, _error
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("NCLOC_NATIVE", "1") == "0":
            _error = "disabled by NCLOC_NATIVE=0"
            return None
        cxx = _compiler()
        if cxx is None:
            _error = "no C++ compiler found (set CXX)"
            log.warning("native 4D convolution unavailable: %s; using the torch implementation", _error)
            return None
        try:
            lib = ctypes.CDLL(str(_build(cxx)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _error = str(exc)
            log.warning("native 4D convolution unavailable: %s; using the torch implementation", _error[:300])
            return None
        if lib.ncdirect_abi_version() != ABI_VERSION:
            _error = "stale library (ABI version mismatch)"
            return None
        c_int, c_void_p = ctypes.c_int, ctypes.c_void_p
        lib.ncdirect_conv4d_rows_valid.restype = c_int
        lib.ncdirect_conv4d_rows_valid.argtypes = [c_void_p] * 4 + [c_int] * 11
        lib.ncdirect_release_workspace.restype = ctypes.c_longlong
        lib.ncdirect_conv4d_stack.restype = c_int
        lib.ncdirect_conv4d_stack.argtypes = ([c_void_p] + [c_int] * 9 + [ctypes.POINTER(c_int)] * 2
                                              + [ctypes.POINTER(c_void_p)] * 2 + [c_int, c_void_p, c_int])
        _lib = lib
        return _lib


def available() -> bool:
    """True when the compiled kernels can be used (built or buildable here)."""
    return load() is not None


def error() -> str | None:
    """Why the kernels are unavailable (None when they are available or were never requested)."""
    return _error


def usable(x: Tensor, *weights: Tensor | None) -> bool:
    """True when the native path applies: CPU float32 tensors, no autograd needed, library available."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    ws = [w for w in weights if w is not None]
    if any(w.device.type != "cpu" or w.dtype != torch.float32 for w in ws):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in ws)):
        return False
    return available()


def release_workspace() -> int:
    """Free the scratch buffers the kernels keep between calls (at most 256 MB); returns the bytes freed."""
    return int(_lib.ncdirect_release_workspace()) if _lib is not None else 0


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} failed: {ERRORS.get(rc, rc)}")


def conv4d_rows_valid(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int = 1, relu: bool = False) -> Tensor:
    """Row-layout 4D conv (see ``matching.conv4d.conv4d_rows_valid``) with the compiled direct kernel.

    x [B, R + k - 1, Cin, wA, hB, wB] float32 CPU -> [B, R, Cout, wA, hB, wB]; optional fused ReLU.
    """
    lib = load()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {_error}")
    x, w = x.detach().contiguous(), weight.detach().contiguous()
    b = None if bias is None else bias.detach().contiguous()
    B, rp, cin, wa, hb, wb = x.shape
    cout, k = w.shape[0], w.shape[2]
    r = rp - (k - 1)
    out = x.new_empty((B, max(r, 0), cout, wa, hb, wb))
    if r <= 0 or out.numel() == 0:
        return out
    rc = lib.ncdirect_conv4d_rows_valid(x.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(),
                                        out.data_ptr(), B, r, cin, wa, hb, wb, cout, k, groups, int(relu),
                                        num_threads())  # the process's thread budget (localize.core.threads)
    _check(rc, "native conv4d")
    return out


def conv4d_stack(x: Tensor, layers: list[tuple[Tensor, Tensor | None, int]], row_start: int, row_stop: int,
                 sum_groups: bool = False) -> Tensor:
    """A stack of 4D conv + ReLU layers (same odd kernel size) on input rows [row_start, row_stop).

    x [hA, C0, wA, hB, wB] is the whole input in row layout; rows outside [0, hA) count as zero padding,
    and so do intermediate rows outside it. ``layers`` = [(weight [O, C/groups, k, k, k, k], bias, groups)].
    Returns output rows [row_start + L*p, row_stop - L*p) as [R, O_last, wA, hB, wB]; with ``sum_groups``
    the last layer's groups (one output channel each) are summed after their ReLU: [R, 1, wA, hB, wB].
    """
    lib = load()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {_error}")
    x = x.detach().contiguous()
    ha, c0, wa, hb, wb = x.shape
    k = layers[0][0].shape[2]
    n = len(layers)
    ws = [w.detach().contiguous() for w, _, _ in layers]
    bs = [None if b is None else b.detach().contiguous() for _, b, _ in layers]
    rows_out = row_stop - row_start - n * (k - 1)
    olast = 1 if sum_groups else ws[-1].shape[0]
    out = x.new_empty((max(rows_out, 0), olast, wa, hb, wb))
    if rows_out <= 0:
        return out
    int_arr = ctypes.c_int * n
    ptr_arr = ctypes.c_void_p * n
    rc = lib.ncdirect_conv4d_stack(
        x.data_ptr(), ha, c0, wa, hb, wb, row_start, row_stop, n, k,
        int_arr(*[w.shape[0] for w in ws]), int_arr(*[g for _, _, g in layers]),
        ptr_arr(*[w.data_ptr() for w in ws]), ptr_arr(*[None if b is None else b.data_ptr() for b in bs]),
        int(sum_groups), out.data_ptr(), num_threads())
    _check(rc, "native consensus")
    return out


__all__ = [
    "SUPPORTED_KERNELS",
    "available",
    "cache_dir",
    "conv4d_rows_valid",
    "conv4d_stack",
    "error",
    "load",
    "release_workspace",
    "usable",
]
