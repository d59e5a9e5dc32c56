"""Ray executor: a local Ray instance (2 CPUs) gives exactly the local executor's poses, survives a killed worker.

Skipped when Ray is not installed (optional extra ``[ray]``).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import copy_caches, tiny_pipeline_conf

from localize import run as runmod
from localize.core.formats import read_query_list, write_query_list
from localize.pipeline import workers
from localize.pipeline.executors import LocalExecutor, make_executor

ray = pytest.importorskip("ray", reason="optional extra [ray] not installed")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

NUM_QUERIES = 3


def small_conf() -> dict:
    """The 'fast' preset at test sizes (160 px: Ray start-up already costs time)."""
    return tiny_pipeline_conf(160)


@pytest.fixture(scope="module")
def tiny_subset(tiny_building, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(query dir, query list, database) of the tiny synthetic building, first NUM_QUERIES queries only."""
    data = tiny_building
    cams = read_query_list(data / "queries" / "queries_with_intrinsics.txt")
    names = sorted(cams)[:NUM_QUERIES]
    qdir = tmp_path_factory.mktemp("queries")
    for n in names:
        shutil.copy(data / "queries" / "images" / n, qdir / n)
    write_query_list(qdir.parent / (qdir.name + "_list.txt"), {n: cams[n] for n in names})
    return qdir, qdir.parent / (qdir.name + "_list.txt"), data / "db"


@pytest.fixture(scope="module")
def local_run(tiny_subset, tiny_run, tmp_path_factory) -> Path:
    qdir, qlist, db = tiny_subset
    out = copy_caches(tiny_run.out, tmp_path_factory.mktemp("local"))  # the session run's retrieval vocabulary
    s = runmod.main(small_conf(), qdir, db, out, "rgbd", qlist, executor=LocalExecutor())
    assert s.num_localized >= 1
    return out


class KillOneWorker:
    """Wraps a RayExecutor; SIGKILLs one matching actor's process as soon as the first result arrives."""

    def __init__(self, inner) -> None:
        self.inner, self.killed = inner, 0

    def run(self, worker_cls, worker_args, tasks, desc="", resources=None):
        for n, (i, res) in enumerate(self.inner.run(worker_cls, worker_args, tasks, desc, resources)):
            if desc == "matching" and n == 0 and not self.killed:
                os.kill(self.inner.actor_pids()[0], signal.SIGKILL)
                self.killed += 1
            yield i, res

    def shutdown(self) -> None:
        self.inner.shutdown()


def test_ray_matches_local_survives_killed_worker_and_sorts_errors(tiny_subset, local_run, tmp_path, monkeypatch):
    """One local Ray instance for both checks (its start-up is the expensive part): the pipeline, then per-item
    errors yielded with their item while programming errors are raised."""
    qdir, qlist, db = tiny_subset
    out = tmp_path / "ray"
    out.mkdir()
    # retrieval runs in the driver: reuse its cache (a run can be resumed by either executor)
    for pat in ("shortlist-*.h5", "global-descriptors-*.h5", "retrieval-vocabulary-*.h5"):
        for f in local_run.glob(pat):
            shutil.copy(f, out / f.name)
    ex = make_executor("ray", num_cpus=2, progress=False, num_workers=2)
    wrapped = KillOneWorker(ex)
    try:
        t0 = time.time()
        s = runmod.main(small_conf(), qdir, db, out, "rgbd", qlist, executor=wrapped)
        print(f"ray run: {time.time() - t0:.1f} s, {ex.restarted} actor(s) replaced")
        assert wrapped.killed == 1 and ex.restarted >= 1
        assert not s.failures, s.failures
        _check_item_errors_and_bugs(ex)
    finally:
        wrapped.shutdown()
    assert not ray.is_initialized()
    assert (out / "poses.txt").read_text() == (local_run / "poses.txt").read_text()

    # nothing lost: a rerun (here with the local executor) recomputes no match and gives the same poses
    def boom(*a, **k):
        raise AssertionError("matching recomputed although cached")

    monkeypatch.setattr(workers, "Matcher", boom)
    runmod.main(small_conf(), qdir, db, out, "rgbd", qlist, executor=LocalExecutor())
    assert (out / "poses.txt").read_text() == (local_run / "poses.txt").read_text()


def _check_item_errors_and_bugs(ex) -> None:
    """On a running Ray executor: input errors come back as results, bugs and unbuildable workers are raised."""

    class Flaky:  # local class: pickled by value, so the Ray workers need not import this test module
        def __init__(self, k: int) -> None:
            if k < 0:
                raise ValueError("negative k")
            self.k = k

        def __call__(self, t: int) -> dict:
            if t == 3:
                raise OSError("item 3 is unreadable")
            if t == 100:
                raise KeyError("a bug")
            return {"y": t * self.k}

    got = dict(ex.run(Flaky, (10,), list(range(6)), "flaky"))
    # a programming error in a worker stops the run in the driver, as with the local executor
    with pytest.raises(KeyError, match="a bug"):
        list(ex.run(Flaky, (10,), [0, 100, 1], "buggy"))
    # a worker that cannot be built is a configuration error: raised once, not retried forever
    with pytest.raises(RuntimeError, match="negative k"):
        list(ex.run(Flaky, (-1,), [0, 1], "broken"))
    assert sorted(got) == list(range(6))  # tasks 0..5 at indices 0..5
    assert isinstance(got[3], OSError) and "item 3" in str(got[3])
    assert all(got[i] == {"y": i * 10} for i in (0, 1, 2, 4, 5))
