"""DensePV: z-buffer rendering, true pose scores clearly above 0.5 m / 10 deg perturbations, debug PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scene_render import default_camera, make_textures, perturb, query_and_db_poses, render_room

import datasets.synthetic
from localize.core.errors import ConfigError
from localize.core.geometry import Camera, Pose, depth_to_world
from localize.core.records import DbImage
from pose.candidates import Candidate
from pose.densepv import (
    DensePVConfig,
    densepv_config,
    densepv_score,
    order_by_densepv,
    point_source,
    render_points,
    render_size,
    save_render_debug,
    scan_point_source,
)
from pose.pnp import PoseResult

CAM = default_camera()
PERTURBATIONS = {
    "+0.5 m x": dict(dpos=[0.5, 0, 0]), "+0.5 m y": dict(dpos=[0, 0.5, 0]), "+0.5 m z": dict(dpos=[0, 0, 0.5]),
    "10 deg yaw": dict(rot_deg=10, axis=[0, 1, 0]), "10 deg pitch": dict(rot_deg=10, axis=[1, 0, 0]),
    "10 deg roll": dict(rot_deg=10, axis=[0, 0, 1]),
}


@pytest.fixture(scope="module")
def room():
    """(query rgb, query pose, DB points, DB colours) of the ray-cast room."""
    tex = make_textures(0)
    q_pose, db_pose = query_and_db_poses()
    q_rgb, _ = render_room(CAM, q_pose, tex)
    d_rgb, d_depth = render_room(CAM, db_pose, tex)
    return q_rgb, q_pose, depth_to_world(d_depth, CAM, db_pose).reshape(-1, 3), d_rgb.reshape(-1, 3)


def test_zbuffer_nearest_wins() -> None:
    cam = Camera.pinhole(8, 6, 10.0)
    pose = Pose.identity()
    # three points on the ray of pixel (col 4, row 3) at depths 3, 1, 2, plus one behind the camera
    pts = np.array([[0.05, 0.05, 3.0], [0.05 / 3, 0.05 / 3, 1.0], [0.1 / 3, 0.1 / 3, 2.0], [0.0, 0.0, -1.0]])
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    rgb, mask, depth = render_points(pts, cols, cam, pose)
    assert mask.sum() == 1 and mask[3, 4]
    assert tuple(rgb[3, 4]) == (0, 255, 0) and depth[3, 4] == pytest.approx(1.0)
    # order independence
    rgb2, _, _ = render_points(pts[::-1], cols[::-1], cam, pose)
    assert np.array_equal(rgb, rgb2)


def test_render_size() -> None:
    assert render_size(Camera.pinhole(4032, 3024, 3136.0), DensePVConfig(scale=1 / 8)) == (504, 378)
    assert render_size(Camera.pinhole(4032, 3024, 3136.0), DensePVConfig()) == (512, 384)
    assert render_size(CAM, DensePVConfig()) == (320, 240)  # never upsampled


def test_true_pose_scores_clearly_higher(room, tmp_path: Path) -> None:
    q_rgb, q_pose, P, C = room
    conf = DensePVConfig(target_size=256)
    s_true, dbg = densepv_score(q_rgb, CAM, q_pose, P, C, conf=conf, return_debug=True)
    assert dbg["num_grid_points"] > 1000
    for name, kw in PERTURBATIONS.items():
        s = densepv_score(q_rgb, CAM, perturb(q_pose, **kw), P, C, conf=conf)
        assert s_true > 2.0 * s, (name, s_true, s)
    # debug picture (what --save-renders writes)
    out = tmp_path / "dbg.png"
    save_render_debug(out, dbg, title="true pose")
    assert out.stat().st_size > 10_000
    # a pose looking away renders nothing -> score 0; no points -> 0
    away = perturb(q_pose, rot_deg=180, axis=[0, 1, 0])
    assert densepv_score(q_rgb, CAM, away, P[:1000], C[:1000]) == 0.0
    assert densepv_score(q_rgb, CAM, q_pose, np.zeros((0, 3)), np.zeros((0, 3), np.uint8)) == 0.0


def test_order_by_densepv_picks_true_pose(room, tmp_path: Path) -> None:
    q_rgb, q_pose, P, C = room
    poses = {"far": perturb(q_pose, dpos=[0.5, 0, 0]), "true": q_pose, "rot": perturb(q_pose, rot_deg=10)}
    cands = [Candidate(n, PoseResult(True, pose=p, num_points=100, num_inliers=100 - i), db_names=[n])
             for i, (n, p) in enumerate(poses.items())]
    cands.append(Candidate("failed", PoseResult(False, "RANSAC failed"), db_names=["failed"]))
    cands.append(Candidate("broken", PoseResult(True, pose=q_pose, num_inliers=1), db_names=["broken"]))

    def source(names):
        if names == ["broken"]:
            raise OSError("depth map missing")
        return P, C

    ranked = order_by_densepv(q_rgb, CAM, cands, source, DensePVConfig(target_size=256), save_dir=tmp_path / "r", query_name="q/1.png")
    assert ranked[0].db_name == "true" and ranked[0].densepv_score > 2 * ranked[1].densepv_score
    assert {c.db_name for c in ranked[-2:]} == {"failed", "broken"}
    assert all(c.densepv_score is None for c in ranked[-2:])
    assert len(list((tmp_path / "r").glob("q-1.png__*.png"))) == 3
    # DB records as the point source
    db_pose = query_and_db_poses()[1]
    rgb_path = tmp_path / "db.png"
    from datasets.rgbd_folder import write_image

    write_image(rgb_path, C.reshape(CAM.height, CAM.width, 3))
    xyz = P.reshape(CAM.height, CAM.width, 3)
    rec = DbImage("true", rgb_path, CAM, db_pose, lambda: xyz)
    ranked2 = order_by_densepv(q_rgb, CAM, [Candidate("true", PoseResult(True, pose=q_pose), db_names=["true"])],
                                {"true": rec}, DensePVConfig(target_size=256))
    assert ranked2[0].densepv_score == pytest.approx(ranked[0].densepv_score, rel=1e-6)


def test_batched_scores_equal_single_candidate_scores(room) -> None:
    """order_by_densepv (renderings on threads, descriptors in batches) gives each candidate densepv_score's number."""
    q_rgb, q_pose, P, C = room
    poses = [q_pose] + [perturb(q_pose, dpos=[0.03 * k, 0, 0], rot_deg=k) for k in range(1, 7)]
    conf = DensePVConfig(target_size=200)
    cands = [Candidate(f"c{k}", PoseResult(True, pose=p, num_inliers=50), db_names=[f"c{k}"])
             for k, p in enumerate(poses)]
    order_by_densepv(q_rgb, CAM, cands, lambda names: (P, C), conf)  # 7 candidates: two batches
    for c, p in zip(cands, poses):
        assert c.densepv_score == densepv_score(q_rgb, CAM, p, P, C, conf=conf)
    assert len({c.densepv_score for c in cands}) == len(cands)


def test_synthetic_building_true_pose_wins(tmp_path: Path) -> None:
    """On the project's synthetic building (query with another illumination), true >> perturbed."""
    S = datasets.synthetic
    scene = S.build_scene(0, "tiny")
    cam = S.cutout_camera(320, 240)
    scan = scene.scans[1]
    db_pose = S.camera_pose(scan.center, scan.theta_deg + 60)
    q_pose = S.camera_pose(scan.center + np.array([0.3, -0.2, 0.05]), scan.theta_deg + 68, 3)
    d_rgb, _, d_xyz = S.render(scene, cam, db_pose)
    q_rgb, _, _ = S.render(scene, cam, q_pose, appearance=S.random_appearance(np.random.default_rng(60)),
                           rng=np.random.default_rng(1))
    P, C = d_xyz.reshape(-1, 3), d_rgb.reshape(-1, 3)
    conf = DensePVConfig(target_size=256)
    s_true, dbg = densepv_score(q_rgb, cam, q_pose, P, C, conf=conf, return_debug=True)
    save_render_debug(tmp_path / "synthetic.png", dbg)
    for name, kw in PERTURBATIONS.items():
        s = densepv_score(q_rgb, cam, perturb(q_pose, **kw), P, C, conf=conf)
        assert s_true > 1.5 * s, (name, s_true, s)  # clearly higher (1.7x+ measured)


def test_scan_point_source_groups_cutouts(tmp_path: Path) -> None:
    rgb = np.full((4, 6, 3), 7, np.uint8)
    from datasets.rgbd_folder import write_image

    write_image(tmp_path / "c.png", rgb)
    cam = Camera.pinhole(6, 4, 5.0)

    def rec(name: str, z: float) -> DbImage:
        return DbImage(name, tmp_path / "c.png", cam, Pose.identity(), lambda: np.full((4, 6, 3), z))

    db = {n: rec(n, z) for n, z in [("F/001/a.jpg", 1.0), ("F/001/b.jpg", 2.0), ("F/002/c.jpg", 3.0)]}
    P, C = scan_point_source(db, stride=1)(["F/001/b.jpg"])
    assert len(P) == 48 and set(P[:, 2]) == {1.0, 2.0} and (C == 7).all()
    P, _ = scan_point_source(db, stride=2)(["F/002/c.jpg"])
    assert len(P) == 6 and set(P[:, 2]) == {3.0}

    # the configuration chooses the source: whole_scan=True is the scan source with scan_stride
    P, _ = point_source(db, DensePVConfig(whole_scan=True, scan_stride=1))(["F/001/b.jpg"])
    assert len(P) == 48 and set(P[:, 2]) == {1.0, 2.0}
    P, _ = point_source(db, DensePVConfig())(["F/001/b.jpg"])
    assert len(P) == 24 and set(P[:, 2]) == {2.0}


def test_point_clouds_kept_within_the_byte_bound(tmp_path: Path) -> None:
    """Each cloud is read once while the clouds fit in cache_mb; beyond it the least recently used is read again."""
    from datasets.rgbd_folder import write_image

    write_image(tmp_path / "c.png", np.full((256, 256, 3), 7, np.uint8))
    cam = Camera.pinhole(256, 256, 200.0)  # one cloud: 65,536 points = 1.75 MiB (float64 xyz + uint8 rgb)
    reads: list[str] = []

    def rec(name: str) -> DbImage:
        return DbImage(name, tmp_path / "c.png", cam, Pose.identity(),
                       lambda: reads.append(name) or np.ones((256, 256, 3)))

    db = {n: rec(n) for n in "abc"}
    roomy = point_source(db, DensePVConfig(cache_mb=16))
    for n in "abcabc":
        P, C = roomy([n])
        assert len(P) == 65536 and not P.flags.writeable and not C.flags.writeable
    assert reads == ["a", "b", "c"]
    reads.clear()
    tight = point_source(db, DensePVConfig(cache_mb=4))  # two clouds fit
    for n in "abcab":
        tight([n])
    assert reads == ["a", "b", "c", "a", "b"]  # c pushed a out, a pushed b out
    reads.clear()
    tiny = point_source(db, DensePVConfig(cache_mb=1))  # none fits: only the newest stays
    for n in "aaba":
        assert len(tiny([n])[0]) == 65536
    assert reads == ["a", "b", "a"]


def test_whole_scan_renders_the_other_cutouts_of_the_scan(room, tmp_path: Path) -> None:
    """A candidate whose own cutout has almost no points is scored from its whole scan only with whole_scan=True."""
    q_rgb, q_pose, P, C = room
    from datasets.rgbd_folder import write_image

    write_image(tmp_path / "db.png", C.reshape(CAM.height, CAM.width, 3))
    xyz = P.reshape(CAM.height, CAM.width, 3)
    sparse = np.full_like(xyz, np.nan)
    sparse[:2] = xyz[:2]  # the candidate's own cutout: two rows of points
    db_pose = query_and_db_poses()[1]
    db = {"S/001/own.png": DbImage("S/001/own.png", tmp_path / "db.png", CAM, db_pose, lambda: sparse),
          "S/001/other.png": DbImage("S/001/other.png", tmp_path / "db.png", CAM, db_pose, lambda: xyz),
          "S/002/far.png": DbImage("S/002/far.png", tmp_path / "db.png", CAM, db_pose, lambda: xyz + 100.0)}

    def score(conf: DensePVConfig) -> float | None:
        cand = Candidate("S/001/own.png", PoseResult(True, pose=q_pose, num_inliers=50), db_names=["S/001/own.png"])
        (out,) = order_by_densepv(q_rgb, CAM, [cand], db, conf)
        return out.densepv_score

    s_full = densepv_score(q_rgb, CAM, q_pose, P, C, conf=DensePVConfig(target_size=256))
    s_scan = score(DensePVConfig(target_size=256, whole_scan=True, scan_stride=1))
    s_own = score(DensePVConfig(target_size=256))
    assert s_full > 0 and s_scan == pytest.approx(s_full, rel=1e-6)
    assert s_own < 0.5 * s_scan  # the flag is not ignored: own points alone render almost nothing


def test_densepv_config_from_dict() -> None:
    conf = densepv_config({"target_size": 160, "whole_scan": True})
    assert conf.whole_scan and conf.target_size == 160 and conf.scan_stride == 4
    with pytest.raises(ConfigError, match="densepv.wholescan"):
        densepv_config({"wholescan": True})
