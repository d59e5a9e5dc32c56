"""One thread budget for the whole process: torch, OpenCV, BLAS / OpenMP pools, FAISS and the native conv4d pool.

``apply_thread_budget(n)`` is called once, early (``python -m localize.run --threads N``, the benchmarks);
default n = the cores this process may run on (``os.sched_getaffinity``) less the cores other processes keep
busy when it starts (``busy_other_cores``: a core shared with a busy process makes every statically split
parallel loop wait for the thread that runs there at half speed). Applied to:

* torch intra-op threads = n (its OpenMP pool, its MKL / oneDNN kernels follow it); inter-op threads = 1:
  the pipeline has no inter-op parallelism, and each inter-op task would run its own n intra-op threads;
* OpenCV = n: the pipeline calls OpenCV only outside torch's parallel regions (DensePV, image resizing),
  never from inside one, so the two pools never run at the same time;
* BLAS / OpenMP libraries loaded by numpy, OpenCV and FAISS = n, through ``threadpoolctl``; FAISS's own
  OpenMP pool = n;
* the native conv4d pool (``matching.native``) reads ``num_threads()``;
* ``map_threads`` runs independent single-threaded calls that release the GIL (pycolmap's RANSAC) on up to
  n threads of this module's pool, never from inside another parallel region.

No pool is set larger than n, so work never nests n threads inside n threads.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import cv2
import faiss
import torch
from threadpoolctl import threadpool_info, threadpool_limits

logger = logging.getLogger(__name__)

_budget: int | None = None
_pool: ThreadPoolExecutor | None = None


def _forget_pool_in_child() -> None:
    """A forked child has none of the parent's threads: it builds its own pool when it needs one."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ThreadBudget:
    """What ``apply_thread_budget`` set: the budget and each pool's resulting size."""

    threads: int
    torch_intra: int
    torch_interop: int
    opencv: int
    blas: int
    faiss: int


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_ticks(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of these CPUs since boot (/proc/stat); niced processes' time counts as idle."""
    busy = total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
                continue
            v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            busy += v[0] + v[2] + v[5] + v[6]
            total += sum(v)
    return busy, total


def busy_other_cores(interval: float = 0.3) -> float:
    """Cores of this process's affinity kept busy by other (not niced) processes over ``interval`` s; 0 off Linux."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    try:
        b0, t0 = _cpu_ticks(cpus)
        own0 = sum(os.times()[:2])
        time.sleep(interval)
        b1, t1 = _cpu_ticks(cpus)
        own1 = sum(os.times()[:2])
    except (OSError, ValueError):
        return 0.0
    if t1 <= t0:
        return 0.0
    own = (own1 - own0) * os.sysconf("SC_CLK_TCK")  # this process's ticks in the interval
    return max(0.0, (b1 - b0 - own) / (t1 - t0) * len(cpus))


def default_threads() -> int:
    """The default budget: available cores less the cores other processes keep busy (rounded), at least 1."""
    return max(1, available_cores() - int(busy_other_cores() + 0.5))


def num_threads() -> int:
    """The thread budget set by ``apply_thread_budget``, else torch's intra-op thread count."""
    return _budget if _budget is not None else torch.get_num_threads()


def _set_interop(n: int) -> int:
    """torch inter-op threads (settable once per process, before any inter-op work); the resulting count."""
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError as e:  # already set, or inter-op work already started
            logger.debug("torch inter-op threads stay %d: %s", torch.get_num_interop_threads(), e)
    return torch.get_num_interop_threads()


def _set_blas(n: int) -> int:
    """BLAS / OpenMP pools of the loaded native libraries (threadpoolctl); the largest resulting pool size."""
    threadpool_limits(limits=n)
    sizes = [int(p["num_threads"]) for p in threadpool_info()]
    return max(sizes) if sizes else n


def apply_thread_budget(threads: int | None = None) -> ThreadBudget:
    """Size every thread pool of the process to ``threads`` (default: ``default_threads()``); see the module."""
    global _budget
    n = int(threads) if threads else default_threads()
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    _budget = n
    torch.set_num_threads(n)
    interop = _set_interop(1)
    cv2.setNumThreads(n)
    blas = _set_blas(n)
    faiss.omp_set_num_threads(n)
    out = ThreadBudget(n, torch.get_num_threads(), interop, cv2.getNumThreads(), blas, n)
    logger.info("thread budget %d: torch %d (+%d inter-op), OpenCV %d, BLAS %s, FAISS %s", n, out.torch_intra,
                out.torch_interop, out.opencv, blas, n)
    return out


def map_threads(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on up to ``num_threads()`` threads, results in input order; for independent
    single-threaded calls that release the GIL. An exception of any call is raised here, as in the loop."""
    global _pool
    items = list(items)
    n = min(num_threads(), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    if _pool is None or _pool._max_workers != num_threads():
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool = ThreadPoolExecutor(num_threads(), thread_name_prefix="ncloc")
    return list(_pool.map(fn, items))
