"""Candidates (per DB image + pooled) and the ``python -m pose.estimate`` CLI on a ray-cast room."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from scene_render import default_camera, make_textures, query_and_db_poses, render_room

from datasets.correspondences import dense_correspondences
from datasets.rgbd_folder import write_image, write_rgbd_folder
from localize.core.errors import ConfigError
from localize.core.formats import read_poses, read_top1, write_query_list
from localize.core.geometry import Pose, depth_to_world, look_at, pose_error
from localize.core.records import DbImage
from pose.candidates import (
    POOLED_NAME,
    Candidate,
    CandidatesConfig,
    PairMatches,
    candidates_config,
    candidates_from_record,
    candidates_to_record,
    choose_pose,
    estimate_candidates,
)
from pose.estimate import EstimateConfig, read_matches
from pose.estimate import cli as estimate_cli
from pose.estimate import main as estimate_main
from pose.pnp import PnPConfig, PoseResult

CAM = default_camera()


@pytest.fixture(scope="module")
def scene():
    """Query (rgb, depth, pose) and 3 DB views (name -> rgb, depth, pose) of the room."""
    tex = make_textures(0)
    q_pose, db0 = query_and_db_poses()
    db_poses = {"a/db0.png": db0, "db1.png": look_at([0.6, -0.4, 1.3], [1.0, 2.0, 1.0]),
                "db2.png": look_at([0.0, 1.0, 1.5], [0.0, -2.0, 1.5])}  # db2 looks the other way
    q_rgb, q_depth = render_room(CAM, q_pose, tex)
    dbs = {n: (*render_room(CAM, p, tex), p) for n, p in db_poses.items()}
    return q_rgb, q_depth, q_pose, dbs


def gt_matches(scene, name: str, n: int = 300, outliers: float = 0.5, seed: int = 0) -> PairMatches:
    """GT query<->DB matches from depth + poses, subsampled, with random outliers (low scores)."""
    q_rgb, q_depth, q_pose, dbs = scene
    rng = np.random.default_rng(seed)
    rgb, depth, pose = dbs[name]
    uq, ud = dense_correspondences(depth_to_world(q_depth, CAM, q_pose), CAM, pose, depth, step=2)
    sel = rng.permutation(len(uq))[:n]
    uq, ud = uq[sel], ud[sel]
    k = int(outliers * len(uq))
    ud[:k] = rng.uniform([0, 0], [CAM.width, CAM.height], (k, 2))
    scores = np.r_[rng.uniform(0.0, 0.3, k), rng.uniform(0.5, 1.0, len(uq) - k)]
    return PairMatches(name, uq, ud, scores)


def records(scene) -> dict[str, DbImage]:
    dbs = scene[3]
    return {n: DbImage(n, Path(n), CAM, p, (lambda d=d, p=p: depth_to_world(d, CAM, p)))
            for n, (rgb, d, p) in dbs.items()}


def test_candidates_rerank_and_pooled(scene) -> None:
    q_pose = scene[2]
    m0 = gt_matches(scene, "a/db0.png", n=300)
    m1 = gt_matches(scene, "db1.png", n=150, seed=1)
    rng = np.random.default_rng(5)  # db2 sees nothing of the query: random matches
    m2 = PairMatches("db2.png", rng.uniform(0, 300, (400, 2)), rng.uniform(0, 200, (400, 2)))
    bad = PairMatches("missing.png", np.zeros((10, 2)), np.zeros((10, 2)))
    db = records(scene)
    pnp = PnPConfig(max_error=4.0, min_inliers=12)
    cands = estimate_candidates(CAM, [m2, bad, m1, m0], db, CandidatesConfig(top_n=3, pnp=pnp))
    # top-3 by lifted matches: db2 (400) , db0, db1; the unknown image is dropped by the re-ranking
    assert sorted(c.db_name for c in cands) == ["a/db0.png", "db1.png", "db2.png"]
    assert cands[0].db_name == "a/db0.png" and cands[0].success  # most inliers first
    for c in cands:
        if c.db_name != "db2.png":
            dp, dr = pose_error(c.result.pose, q_pose)
            assert dp < 0.01 and dr < 0.2, (c.db_name, dp, dr)
    assert cands[-1].db_name == "db2.png" and not cands[-1].success and cands[-1].result.reason
    # score threshold removes the outliers before lifting
    c = estimate_candidates(CAM, [m0], db, CandidatesConfig(min_match_score=0.4, pnp=pnp))[0]
    assert c.num_matches == 150 and c.num_inliers >= 145
    # rerank by inliers with top_n=1 keeps the best image; pooled adds one candidate over both good images
    cands = estimate_candidates(CAM, [m2, m1, m0, bad], db,
                                CandidatesConfig(top_n=2, order_by="inliers", pooled=True, pnp=pnp))
    names = [c.db_name for c in cands]
    assert POOLED_NAME in names and "db2.png" not in names and len(cands) == 3
    pooled = cands[names.index(POOLED_NAME)]
    assert sorted(pooled.db_names) == ["a/db0.png", "db1.png"] and pooled.success
    assert pooled.num_inliers > max(c.num_inliers for c in cands if c.db_name != POOLED_NAME)
    dp, dr = pose_error(pooled.result.pose, q_pose)
    assert dp < 0.01 and dr < 0.2
    # an unknown DB image alone: a failed candidate, not an exception
    (c,) = estimate_candidates(CAM, [bad], db)
    assert not c.success and "unknown DB image" in c.result.reason
    assert c.to_log()["success"] is False


def test_cli_end_to_end(scene, tmp_path: Path) -> None:
    q_rgb, q_depth, q_pose, dbs = scene
    db_root = tmp_path / "db"
    write_rgbd_folder(db_root, [(n, rgb, d, CAM, p) for n, (rgb, d, p) in dbs.items()], depth_scale=5000.0)
    qdir = tmp_path / "queries"
    write_image(qdir / "q" / "query.png", q_rgb)
    write_image(qdir / "q2.png", q_rgb)
    write_query_list(tmp_path / "queries.txt", {"q/query.png": CAM, "q2.png": CAM, "q3.png": CAM})
    m0, m1 = gt_matches(scene, "a/db0.png"), gt_matches(scene, "db1.png", seed=1)
    with h5py.File(tmp_path / "matches.h5", "w") as f:
        for m in (m0, m1):  # nested layout: <query>/<db> with '/' inside names
            g = f.create_group(f"q/query.png/{m.db_name}")
            g["keypoints0"], g["keypoints1"], g["scores"] = m.kpts_query, m.kpts_db, m.scores
        g = f.create_group("q2.png%2Fdb1.png")  # flat, escaped layout (localize.core.cache)
        g["keypoints0"], g["keypoints1"], g["scores"] = m1.kpts_query, m1.kpts_db, m1.scores
        g = f.create_group("unknown.png/db1.png")
        g["keypoints0"], g["keypoints1"] = m1.kpts_query, m1.kpts_db
    got = read_matches(tmp_path / "matches.h5", ["q/query.png", "q2.png", "q3.png"])
    assert sorted(got) == ["q/query.png", "q2.png"]
    assert [p.db_name for p in got["q/query.png"]] == ["a/db0.png", "db1.png"]
    out = tmp_path / "poses.txt"
    renders = tmp_path / "renders"
    rc = estimate_cli(["--db", str(db_root), "--db-format", "rgbd", "--matches", str(tmp_path / "matches.h5"),
                        "--queries-list", str(tmp_path / "queries.txt"), "--query-dir", str(qdir),
                        "--out", str(out), "--max-error", "4", "--render-size", "160", "--save-renders", str(renders),
                        "--top1", str(tmp_path / "top1.txt")])
    assert rc == 0
    poses = read_poses(out)
    assert sorted(poses) == ["q/query.png", "q2.png"]  # q3 has no matches -> absent
    for e in poses.values():
        dp, dr = pose_error(e.pose, q_pose)
        assert dp < 0.02 and dr < 0.5  # depth quantised to 1/5000 m in the folder
    top1 = read_top1(tmp_path / "top1.txt")
    assert poses["q2.png"].top1 is None and top1["q2.png"] == "db1.png"  # 8 columns + side file
    pngs = sorted(p.name for p in renders.glob("*.png"))
    assert len(pngs) == 3 and all(p.startswith(("q-query.png__", "q2.png__")) for p in pngs)
    # unusable arguments -> non-zero
    assert estimate_cli(["--db", str(tmp_path / "nope"), "--matches", str(tmp_path / "matches.h5"),
                          "--queries-list", str(tmp_path / "queries.txt"), "--out", str(out)]) != 0

    # library use: the same poses, and per-query log records
    res = estimate_main({"candidates": {"pnp": {"max_error": 4.0}}, "densepv": {"target_size": 160}}, db_root,
                        tmp_path / "matches.h5", tmp_path / "queries.txt", db_format="rgbd", query_dir=qdir)
    assert sorted(res.poses) == ["q/query.png", "q2.png"] and res.failures == {"q3.png": "no matches"}
    for name, e in res.poses.items():
        assert np.allclose(e.pose.matrix, poses[name].pose.matrix, atol=1e-8) and e.top1 == top1[name]
        assert res.logs[name]["chosen_db"] == e.top1
        assert any(c["densepv"] is not None for c in res.logs[name]["candidates"])


def _cand(name: str, inliers: int, success: bool = True, db_names: list[str] | None = None,
          score: float | None = None) -> Candidate:
    res = PoseResult(success, "" if success else f"{name} failed", Pose.identity() if success else None,
                     num_points=100, num_inliers=inliers if success else 0)
    return Candidate(name, res, 120, 100, [name] if db_names is None else db_names, densepv_score=score)


def test_choose_pose_is_the_pipeline_rule() -> None:
    a, b, c = _cand("a", 50), _cand("b", 80), _cand("c", 20)
    failed = _cand("f", 0, success=False)
    # no DensePV: most inliers; the first one on ties
    assert choose_pose([a, b, c, failed])[0] is b
    assert choose_pose([a, _cand("a2", 50)], None)[0] is a
    # DensePV scores (NaN = not scored) decide, then inliers; they are stored in the candidates
    best, why = choose_pose([a, b, c, failed], np.array([0.5, np.nan, 0.9, np.nan]))
    assert best is c and why == "" and b.densepv_score is None and a.densepv_score == 0.5
    best, _ = choose_pose([a, b, c], [0.7, 0.7, None])
    assert best is b  # equal scores: more inliers
    # DensePV off, or no successful candidate scored: most inliers
    assert choose_pose([a, b, c], [0.1, 0.2, 0.9], use_densepv=False)[0] is b
    assert choose_pose([a, b, failed], [np.nan, None, 3.0])[0] is b
    # nothing usable: None and the sorted, unique failure reasons
    best, why = choose_pose([_cand("y", 0, False), _cand("x", 0, False), _cand("x", 0, False)])
    assert best is None and why == "no candidate pose (x failed; y failed)"
    assert choose_pose([]) == (None, "no candidate pose (no candidates)")
    # top-1 database image: a pooled candidate reports its first kept image
    pooled = _cand(POOLED_NAME, 200, db_names=["d1", "d2"])
    assert choose_pose([a, pooled])[0].top1_db == "d1"
    assert _cand(POOLED_NAME, 200, db_names=["d1"]).top1_db == "d1"
    assert _cand(POOLED_NAME, 200, db_names=[]).top1_db == POOLED_NAME and a.top1_db == "a"


def test_candidate_record_layout_and_round_trip() -> None:
    a = _cand("a", 3)
    a.points2d = np.arange(10.0).reshape(5, 2)
    a.result.inlier_mask = np.array([True, False, True, True, False])
    pooled = _cand(POOLED_NAME, 7, db_names=["a", "b"])
    failed = _cand("f", 0, success=False)
    rec = candidates_to_record([a, pooled, failed], time_s=1.25)
    assert sorted(rec) == ["c000", "c001", "c002", "num", "time_s"]
    assert rec["num"] == 3 and rec["num"].dtype == np.int64 and rec["time_s"].dtype == np.float64
    # the layout the pipeline's pose cache holds (localize.workers.PoseWorker), key order included
    assert rec["c000"]["info"] == json.dumps({"db": "a", "db_names": ["a"], "matches": 120, "lifted": 100,
                                              "inliers": 3, "success": True, "reason": ""})
    assert np.array_equal(rec["c000"]["P"], np.eye(4)) and np.array_equal(rec["c000"]["inlier_points2d"],
                                                                       [[0, 1], [4, 5], [6, 7]])
    assert np.isnan(rec["c002"]["P"]).all() and rec["c002"]["inlier_points2d"].shape == (0, 2)
    assert rec["c001"]["inlier_points2d"].shape == (0, 2)  # no pixels kept
    back = candidates_from_record(rec)
    assert [c.db_name for c in back] == ["a", POOLED_NAME, "f"] and back[1].db_names == ["a", "b"]
    assert [c.num_inliers for c in back] == [3, 7, 0] and [c.success for c in back] == [True, True, False]
    assert back[2].result.reason == "f failed" and back[2].result.pose is None
    assert np.array_equal(back[0].points2d, rec["c000"]["inlier_points2d"])
    assert [c.to_log() for c in back] == [c.to_log() for c in (a, pooled, failed)]
    assert a.to_log() == {"db": "a", "matches": 120, "lifted": 100, "inliers": 3, "success": True, "reason": "",
                          "densepv": None}


def test_configs_from_dicts_reject_unknown_keys() -> None:
    c = candidates_config({"top_n": 3, "pnp": {"max_error": 4.0, "backend": "opencv"}})
    assert c.top_n == 3 and c.pnp.max_error == 4.0 and c.pnp.backend == "opencv"
    with pytest.raises(ConfigError, match="pose.pnp.max_eror"):
        candidates_config({"pnp": {"max_eror": 4.0}})
    with pytest.raises(ConfigError, match="pose.topn"):
        candidates_config({"topn": 3})
    with pytest.raises(ConfigError, match="order_by"):
        candidates_config({"order_by": "score"})
    assert EstimateConfig().densepv is None  # DensePV off unless configured
    with pytest.raises(ConfigError, match="estimate.densepv.whole_scn"):
        estimate_main({"densepv": {"whole_scn": True}}, "db", "m.h5", "q.txt", query_dir=".")
