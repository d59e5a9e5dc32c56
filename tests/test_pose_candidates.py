"""Candidates (per DB image + pooled) and the ``python -m pose.estimate`` CLI on a ray-cast room."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from datasets.correspondences import dense_correspondences
from localize.core.records import DbImage
from datasets.rgbd_folder import write_image, write_rgbd_folder
from localize.core.formats import read_poses, write_query_list
from localize.core.geometry import depth_to_world, look_at, pose_error
from pose.candidates import POOLED_NAME, CandidatesConfig, PairMatches, estimate_candidates
from pose.estimate import main as estimate_main
from pose.estimate import read_matches
from pose.pnp import PnPConfig
from test_pose_scene import default_camera, make_textures, query_and_db_poses, render_room

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
                                CandidatesConfig(top_n=2, rerank_by="inliers", pooled=True, pnp=pnp))
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
    assert c.to_dict()["success"] is False


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
    rc = estimate_main(["--db", str(db_root), "--db-format", "rgbd", "--matches", str(tmp_path / "matches.h5"),
                        "--queries-list", str(tmp_path / "queries.txt"), "--query-dir", str(qdir),
                        "--out", str(out), "--max-error", "4", "--render-size", "160", "--save-renders", str(renders)])
    assert rc == 0
    poses = read_poses(out)
    assert sorted(poses) == ["q/query.png", "q2.png"]  # q3 has no matches -> absent
    for e in poses.values():
        dp, dr = pose_error(e.pose, q_pose)
        assert dp < 0.02 and dr < 0.5  # depth quantised to 1/5000 m in the folder
    assert poses["q2.png"].top1 == "db1.png"
    pngs = sorted(p.name for p in renders.glob("*.png"))
    assert len(pngs) == 3 and all(p.startswith(("q-query.png__", "q2.png__")) for p in pngs)
    # unusable arguments -> non-zero
    assert estimate_main(["--db", str(tmp_path / "nope"), "--matches", str(tmp_path / "matches.h5"),
                          "--queries-list", str(tmp_path / "queries.txt"), "--out", str(out)]) != 0
