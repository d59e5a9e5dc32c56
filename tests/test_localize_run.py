"""End-to-end pipeline on the tiny synthetic building: accuracy, cache reuse, bad input, real kill + resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_caches, tiny_pipeline_conf

from localize import run as runmod
from localize.core.errors import ConfigError
from localize.core.formats import read_poses, read_query_list, read_top1, write_query_list
from localize.evaluate_inloc import evaluate
from localize.pipeline import workers

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # end-to-end runs of the pipeline


def tiny_conf() -> dict:
    """The 'fast' preset at test sizes (the tiny building's images are small)."""
    return tiny_pipeline_conf(256)


@pytest.fixture(scope="module")
def tiny(tiny_building) -> Path:
    return tiny_building


@pytest.fixture(scope="module")
def baseline(tiny_run):
    """The session's run on the tiny building: (export folder, read-only; summary)."""
    return tiny_run


def test_tiny_building_localizes(tiny, baseline):
    out, s = baseline
    gt = {q: e.pose for q, e in read_poses(tiny / "queries" / "poses_gt.txt").items()}
    res, _ = evaluate({"all": gt}, read_poses(out / "poses.txt"))
    assert s.num_queries == len(gt)
    # the tiny building is hard (8 queries, occluders, night lighting, 18 database images):
    # the built-in matcher localizes half of them (chance: 0); the demo benchmark measures 'small'
    assert res["all"].recall[0] >= 37.5, res["all"]  # within (0.25 m, 10 deg)
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert len(lines) == len(gt)
    ok = [l for l in lines if l["status"] == "ok"]
    assert ok and all(l["chosen_db"] and l["candidates"] and l["shortlist"] for l in ok)
    assert all(set(l["time_s"]) >= {"retrieval", "matching", "pose"} for l in ok)
    # 8-column poses file; the chosen database image is in the top-1 side file
    assert all(len(line.split()) == 8 for line in (out / "poses.txt").read_text().splitlines())
    assert read_top1(out / "top1.txt") == {l["query"]: l["chosen_db"] for l in ok}


def test_rerun_recomputes_nothing_and_conf_change_recomputes(tiny, baseline, monkeypatch, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(baseline.out, out)  # the shared run stays as it is
    before = (out / "poses.txt").read_text()

    def boom(*a, **k):
        raise AssertionError("matching recomputed although cached")

    monkeypatch.setattr(workers, "Matcher", boom)
    runmod.main(tiny_conf(), tiny / "queries" / "images", tiny / "db", out, "rgbd",
                tiny / "queries" / "queries_with_intrinsics.txt")
    assert (out / "poses.txt").read_text() == before
    # a changed pose configuration recomputes the pose stage only (matching still cached)
    conf = tiny_conf()
    conf["pose"]["pnp"]["max_error"] = 6.0
    runmod.main(conf, tiny / "queries" / "images", tiny / "db", out, "rgbd",
                tiny / "queries" / "queries_with_intrinsics.txt")
    assert len(list(out.glob("pose-*.h5"))) == 2
    # a changed matching configuration must recompute matching
    conf["matching"]["image_size"] = 128
    with pytest.raises(AssertionError, match="recomputed"):
        runmod.main(conf, tiny / "queries" / "images", tiny / "db", out, "rgbd",
                    tiny / "queries" / "queries_with_intrinsics.txt")


def test_stored_database_features_are_written_and_read_back(tiny, baseline, tmp_path):
    """matching.store_db_features: a run keeps the database images' features in its export folder (float16);
    rerun after its matches are deleted, it computes only the queries' features and gives the same poses."""
    out = tmp_path / "run"
    shutil.copytree(baseline.out, out)
    conf = tiny_conf()
    conf["matching"]["store_db_features"] = True
    args = (tiny / "queries" / "images", tiny / "db", out, "rgbd", tiny / "queries" / "queries_with_intrinsics.txt")
    runmod.main(conf, *args)
    parts = sorted(out.glob("db-features-*.parts/*.h5"))
    assert parts and len(list(out.glob("matches-*.h5"))) == 2  # another matching configuration, its own file
    first = (out / "poses.txt").read_text()
    for f in out.glob("matches-*"):
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    computed = []
    features = workers.Matcher.features
    try:
        workers.Matcher.features = lambda self, img: computed.append(img.shape) or features(self, img)
        runmod.main(conf, *args)
    finally:
        workers.Matcher.features = features
    assert (out / "poses.txt").read_text() == first
    queries = len(read_query_list(tiny / "queries" / "queries_with_intrinsics.txt"))
    assert 0 < len(computed) <= queries and sorted(out.glob("db-features-*.parts/*.h5")) == parts


# bad inputs of a run (truncated query, query without intrinsics, database images without depth): in
# test_failures.py::test_empty_files_and_bad_list_lines_are_skipped, one run with the empty files


def test_unknown_configuration_key_is_rejected_by_name(tiny, tmp_path):
    conf = tiny_conf()
    conf["matching"]["imagesize"] = 128  # misspelt
    with pytest.raises(ConfigError, match="matching.imagesize.*image_size"):
        runmod.main(conf, tiny / "queries" / "images", tiny / "db", tmp_path, "rgbd")
    conf = tiny_conf()
    conf["densepv"] = {"target_size": 64, "whole_scan": True, "colour": 1}
    with pytest.raises(ConfigError, match="densepv.colour"):
        runmod.main(conf, tiny / "queries" / "images", tiny / "db", tmp_path, "rgbd")
    assert not list(tmp_path.glob("*.h5"))  # rejected before any work


def test_unusable_database_exits_nonzero(tmp_path):
    (tmp_path / "q").mkdir()
    rc = runmod.cli(["--query-dir", str(tmp_path / "q"), "--db", str(tmp_path / "nope"), "--export-dir",
                     str(tmp_path / "o")])
    assert rc == 2


@pytest.mark.skipif(sys.platform != "linux", reason="uses SIGKILL")
def test_killed_run_resumes_to_identical_poses(tiny, tiny_run, tmp_path):
    # two queries (6 matched pairs); retrieval's vocabulary and database descriptors from the session's run
    names = ["query_0000.jpg", "query_0003.jpg"]
    qdir = tmp_path / "q"
    qdir.mkdir()
    for n in names:
        shutil.copy(tiny / "queries" / "images" / n, qdir / n)
    cams = read_query_list(tiny / "queries" / "queries_with_intrinsics.txt")
    write_query_list(tmp_path / "list.txt", {n: cams[n] for n in names})
    conf_file = tmp_path / "conf.json"
    conf_file.write_text(json.dumps(tiny_conf()))
    code = ("import json,sys,torch; torch.set_num_threads(1); from localize import run; "
            "c=json.load(open(sys.argv[1])); run.main(c, sys.argv[2], sys.argv[3], sys.argv[4], 'rgbd', sys.argv[5])")

    def command(out: Path) -> list[str]:
        return [sys.executable, "-c", code, str(conf_file), str(qdir), str(tiny / "db"), str(out),
                str(tmp_path / "list.txt")]

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    quiet = {"cwd": ROOT, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    # the uninterrupted reference runs beside the run to be killed (one thread each: the two cores overlap)
    reference = subprocess.Popen(command(copy_caches(tiny_run.out, tmp_path / "reference")), **quiet)
    try:
        out = copy_caches(tiny_run.out, tmp_path / "killed")
        p = subprocess.Popen(command(out), **quiet)
        # kill once some (not all) pair matches are on disk
        deadline = time.time() + 120
        while time.time() < deadline:
            if len(list(out.glob("matches-*.parts/*.h5"))) >= 2 or p.poll() is not None:
                break
            time.sleep(0.05)
        assert p.poll() is None, "the run finished before it could be killed"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert not (out / "poses.txt").exists()
        done = len(list(out.glob("matches-*.parts/*.h5")))
        assert done >= 1
        subprocess.run(command(out), check=True, **quiet)
        assert reference.wait(timeout=300) == 0
    finally:
        if reference.poll() is None:  # a failed check above: leave no process behind
            reference.kill()
            reference.wait()
    assert (out / "poses.txt").read_text() == (tmp_path / "reference" / "poses.txt").read_text()
