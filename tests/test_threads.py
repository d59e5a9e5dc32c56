"""One thread budget (localize.core.threads): applied to torch, OpenCV and the native pool; --threads on the CLI."""

from __future__ import annotations

import os
import time

import cv2
import faiss
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from localize.core import threads
from localize.run import build_parser
from matching import native


@pytest.fixture
def restore_threads():
    """Put torch's and OpenCV's thread counts and the budget back after the test."""
    t, c, b = torch.get_num_threads(), cv2.getNumThreads(), threads._budget
    yield
    torch.set_num_threads(t)
    cv2.setNumThreads(c)
    threads._budget = b


def test_available_cores_is_the_affinity():
    assert threads.available_cores() == len(os.sched_getaffinity(0))


def test_budget_applies_to_every_pool(restore_threads):
    out = threads.apply_thread_budget(1)
    assert out.threads == 1 and torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    assert threads.num_threads() == 1
    assert native.num_threads() == 1  # the native conv4d pool reads the same budget
    np.dot(np.ones((64, 64)), np.ones((64, 64)))  # numpy's BLAS is loaded
    assert out.blas == 1 and all(p["num_threads"] == 1 for p in threadpool_info())
    assert faiss.omp_get_max_threads() == 1
    assert torch.get_num_interop_threads() == out.torch_interop
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(threads, "busy_other_cores", lambda interval=0.3: 0.2)  # default: the available cores ...
        out = threads.apply_thread_budget(None)
        assert out.threads == threads.available_cores() == torch.get_num_threads() == cv2.getNumThreads()
        mp.setattr(threads, "busy_other_cores", lambda interval=0.3: 1.1)  # ... less the ones kept busy by others
        assert threads.apply_thread_budget(None).threads == max(1, threads.available_cores() - 1)
        mp.setattr(threads, "busy_other_cores", lambda interval=0.3: 64.0)
        assert threads.apply_thread_budget(None).threads == 1
    with pytest.raises(ValueError):
        threads.apply_thread_budget(-2)


def test_cli_has_threads_option():
    p = build_parser()
    assert p.parse_args(["--demo", "--threads", "3"]).threads == 3
    assert p.parse_args(["--demo"]).threads is None
    with pytest.raises(SystemExit):
        p.parse_args(["--demo", "--threads", "0"])


def test_map_threads_keeps_order_uses_the_budget_and_raises(restore_threads):
    import threading
    import time

    threads._budget = 2
    seen: set[str] = set()

    def work(x: int) -> int:
        seen.add(threading.current_thread().name)
        time.sleep(0.01)  # releases the GIL, like pycolmap's RANSAC
        return x * x

    assert threads.map_threads(work, range(8)) == [x * x for x in range(8)]
    assert len(seen) == 2 and all(n.startswith("ncloc") for n in seen)
    threads._budget = 1
    seen.clear()
    assert threads.map_threads(work, [3, 4]) == [9, 16]
    assert seen == {threading.current_thread().name}  # a budget of one runs in the caller
    threads._budget = 2

    def bad(x: int) -> int:
        if x == 2:
            raise ZeroDivisionError("item 2")
        return x

    with pytest.raises(ZeroDivisionError, match="item 2"):
        threads.map_threads(bad, range(4))


def _spin(core: int, niceness: int) -> None:
    os.sched_setaffinity(0, {core})
    os.nice(niceness)
    while True:
        pass


@pytest.mark.parametrize("niceness", [0, 19])
def test_busy_other_cores_sees_a_busy_process_but_not_a_niced_one(niceness):
    import multiprocessing as mp

    before = threads.busy_other_cores(0.5)
    core = max(os.sched_getaffinity(0))
    proc = mp.get_context("fork").Process(target=_spin, args=(core, niceness), daemon=True)
    proc.start()
    try:
        time.sleep(0.2)
        busy = threads.busy_other_cores(0.5)
    finally:
        proc.kill()
        proc.join()
    if niceness == 0:
        assert busy >= before + 0.6  # the spinning process holds one core
    else:
        assert busy < before + 0.4  # a niced one yields to us: not counted


def _square_in_threads(q) -> None:
    q.put(threads.map_threads(lambda x: x * x, range(4)))


def test_map_threads_in_a_forked_child(restore_threads):
    """A child forked after the pool exists must not wait on the parent's (absent) threads."""
    import multiprocessing as mp

    threads._budget = 2
    assert threads.map_threads(lambda x: x + 1, range(4)) == [1, 2, 3, 4]  # the parent's pool now exists
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_square_in_threads, args=(q,))
    p.start()
    p.join(20)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive and q.get(timeout=5) == [0, 1, 4, 9]
