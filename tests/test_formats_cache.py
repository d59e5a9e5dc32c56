"""File formats round trips and the crash-safe, configuration-keyed stage cache."""

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from localize.core.cache import StageCache
from localize.core.formats import (
    PoseEntry,
    atomic_write,
    read_pairs,
    read_poses,
    read_query_list,
    read_top1,
    write_pairs,
    write_poses,
    write_query_list,
    write_top1,
)
from localize.core.geometry import Camera, Pose, look_at


def test_poses_file_roundtrip(tmp_path):
    poses = {"q1.jpg": look_at([1, 2, 3], [0, 0, 0]), "sub/q2.jpg": PoseEntry(look_at([0, 1, 0], [1, 1, 1]), "FL1/000/a.jpg"),
             "bad.jpg": Pose(np.full((3, 3), np.nan), np.zeros(3))}
    write_poses(tmp_path / "p.txt", poses)
    text = (tmp_path / "p.txt").read_text().splitlines()
    assert len(text) == 2  # the NaN pose is omitted
    assert all(len(line.split()) == 8 for line in text)  # visuallocalization.net: 8 columns by default
    back = read_poses(tmp_path / "p.txt")
    np.testing.assert_allclose(back["q1.jpg"].pose.matrix, poses["q1.jpg"].matrix, atol=1e-9)
    assert back["sub/q2.jpg"].top1 is None
    write_poses(tmp_path / "p9.txt", poses, with_top1=True)  # the project's 9-column variant reads back
    back = read_poses(tmp_path / "p9.txt")
    assert back["sub/q2.jpg"].top1 == "FL1/000/a.jpg" and back["q1.jpg"].top1 is None
    write_top1(tmp_path / "t.txt", back)
    assert read_top1(tmp_path / "t.txt") == {"sub/q2.jpg": "FL1/000/a.jpg"}
    assert (tmp_path / "t.txt").read_text() == "sub/q2.jpg FL1/000/a.jpg\n"
    # the file says world-to-camera quaternion (w,x,y,z) then t
    tok = [l for l in text if l.startswith("q1.jpg")][0].split()
    np.testing.assert_allclose([float(v) for v in tok[1:5]], poses["q1.jpg"].qvec, atol=1e-9)
    np.testing.assert_allclose([float(v) for v in tok[5:8]], poses["q1.jpg"].t, atol=1e-9)


def test_query_list_and_pairs_roundtrip(tmp_path):
    cams = {"a.jpg": Camera("SIMPLE_RADIAL", 640, 480, (500, 320, 240, 0.01)),
            "b.jpg": Camera("OPENCV", 10, 20, (1, 2, 3, 4, 5, 6, 7, 8))}
    write_query_list(tmp_path / "q.txt", cams)
    assert read_query_list(tmp_path / "q.txt") == cams
    pairs = {"a.jpg": [("d1", 0.9), ("d2", 0.5)], "b.jpg": [("d3", 0.1)]}
    write_pairs(tmp_path / "pairs.txt", pairs, with_scores=True)
    back = read_pairs(tmp_path / "pairs.txt")
    assert [d for d, _ in back["a.jpg"]] == ["d1", "d2"] and back["b.jpg"][0][1] == pytest.approx(0.1)
    # by default hloc's two columns: its parse_retrieval (`q, r = line.split()`) reads them
    write_pairs(tmp_path / "hloc.txt", pairs)
    parsed = [tuple(line.split()) for line in (tmp_path / "hloc.txt").read_text().rstrip("\n").split("\n")]
    assert [(q, r) for q, r in parsed] == [("a.jpg", "d1"), ("a.jpg", "d2"), ("b.jpg", "d3")]
    two = read_pairs(tmp_path / "hloc.txt")
    assert [d for d, _ in two["a.jpg"]] == ["d1", "d2"] and np.isnan(two["b.jpg"][0][1])
    (tmp_path / "bad.txt").write_text("a.jpg d1 0.5 extra\n")
    with pytest.raises(ValueError, match="line 1"):
        read_pairs(tmp_path / "bad.txt")


def test_atomic_write_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "x.txt") as f:
        f.write("partial")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_cache_roundtrip_and_merge(tmp_path):
    c = StageCache(tmp_path, "matches", {"size": 400})
    c.put("q.jpg/FL1/000/d.jpg", {"keypoints0": np.arange(6.0).reshape(3, 2), "note": "x", "sub": {"a": [1, 2]}})
    c.put("q2.jpg/d.jpg", {"keypoints0": np.zeros((0, 2))})
    assert c.has("q.jpg/FL1/000/d.jpg") and not c.has("q.jpg")
    c.finalize()
    assert c.path.exists() and not c.parts_dir.exists()
    c2 = StageCache(tmp_path, "matches", {"size": 400})
    assert c2.keys() == ["q.jpg/FL1/000/d.jpg", "q2.jpg/d.jpg"]
    e = c2.get("q.jpg/FL1/000/d.jpg")
    np.testing.assert_array_equal(e["keypoints0"], np.arange(6.0).reshape(3, 2))
    assert e["note"] == "x" and list(e["sub"]["a"]) == [1, 2]
    c2.put("q3.jpg/d.jpg", {"v": np.ones(2)})
    c2.finalize()
    assert len(StageCache(tmp_path, "matches", {"size": 400}).keys()) == 3


def test_cache_invalidation_on_config_change(tmp_path):
    up_a = StageCache(tmp_path, "retrieval", {"k": 10})
    up_b = StageCache(tmp_path, "retrieval", {"k": 20})
    a = StageCache(tmp_path, "matches", {"size": 400}, depends=[up_a])
    a.put("q", {"x": np.ones(1)})
    a.finalize()
    assert StageCache(tmp_path, "matches", {"size": 400}, depends=[up_a]).has("q")
    assert not StageCache(tmp_path, "matches", {"size": 512}, depends=[up_a]).has("q")
    assert not StageCache(tmp_path, "matches", {"size": 400}, depends=[up_b]).has("q")
    # a file renamed to the wrong hash is refused, never silently reused: moved aside, recomputed
    other = StageCache(tmp_path, "matches", {"size": 512}, depends=[up_a])
    os.replace(a.path, other.path)
    assert not other.has("q")
    assert not other.path.exists() and list(tmp_path.glob(other.path.name + ".corrupt-*"))


def _slow_writer(path, started):
    import h5py  # noqa: F401

    c = StageCache(path, "s", {"v": 1})
    c.put("done", {"x": np.ones(3)})
    started.set()
    c.put("huge", {"x": np.ones((4000, 4000))})  # killed while writing this one


def test_killed_write_leaves_no_visible_entry(tmp_path):
    ctx = mp.get_context("fork")
    started = ctx.Event()
    p = ctx.Process(target=_slow_writer, args=(tmp_path, started))
    p.start()
    assert started.wait(30)
    time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    c = StageCache(tmp_path, "s", {"v": 1})
    # whatever the moment of the kill, "huge" is either complete or invisible, never corrupt
    assert c.has("done")
    if c.has("huge"):
        assert c.get("huge")["x"].shape == (4000, 4000)
    assert all(k in ("done", "huge") for k in c.keys())  # noqa: SIM118 - StageCache.keys() is the API under test
    c.finalize()
    assert StageCache(tmp_path, "s", {"v": 1}).get("done")["x"].sum() == 3


def test_part_torn_by_a_power_cut_is_moved_aside_and_recomputed(tmp_path):
    """Parts are not fsynced: one left empty or cut short must read as missing, never as data."""
    c = StageCache(tmp_path, "matches", {"size": 400})
    c.put("q1/d1", {"x": np.arange(3.0)})
    c.put("q1/d2", {"x": np.arange(4.0)})
    c.put("q1/d3", {"x": np.arange(5.0)})
    empty, cut = c._part("q1/d2"), c._part("q1/d3")
    empty.write_bytes(b"")
    cut.write_bytes(cut.read_bytes()[:200])
    again = StageCache(tmp_path, "matches", {"size": 400})
    assert again.has("q1/d1") and not again.has("q1/d2") and not again.has("q1/d3")
    assert len(list(c.parts_dir.glob("*.corrupt-*"))) == 2
    again.put("q1/d2", {"x": np.arange(4.0)})
    again.finalize()
    np.testing.assert_array_equal(StageCache(tmp_path, "matches", {"size": 400}).get("q1/d2")["x"], np.arange(4.0))
