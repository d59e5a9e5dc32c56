"""Tests of the synthetic building generator (datasets/synthetic/) on the `tiny` size, and its CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets import synthetic as S
from datasets.correspondences import visible_projection
from datasets.inloc import read_inloc_db, read_xyzcut
from datasets.rgbd_folder import read_depth_png, read_rgbd_folder
from datasets.synthetic.__main__ import main as synthetic_main
from localize.core.formats import read_poses, read_query_list
from localize.core.geometry import Camera, depth_to_world, look_at, project_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny dataset generated once for the module."""
    out = tmp_path_factory.mktemp("syn") / "tiny0"
    S.generate(out, seed=0, size="tiny")
    return out


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_counts(tiny: Path) -> None:
    m = json.loads((tiny / "manifest.json").read_text())
    cfg = S.SIZES["tiny"]
    assert m["counts"]["db_images"] == m["counts"]["scans"] * len(cfg.yaws) * len(cfg.pitches)
    assert len(read_rgbd_folder(tiny / "db")) == m["counts"]["db_images"]
    assert len(read_inloc_db(tiny / "inloc")) == m["counts"]["db_images"]
    qs = read_query_list(tiny / "queries" / "queries_with_intrinsics.txt")
    gt = read_poses(tiny / "queries" / "poses_gt.txt")
    assert len(qs) == cfg.n_queries and set(qs) == set(gt)
    for name in qs:
        assert (tiny / "queries" / "images" / name).exists()
        assert qs[name].width == cfg.query_size[0]
    for split in ("train", "val"):
        lines = (tiny / "pairs" / f"{split}_pairs.csv").read_text().splitlines()
        assert lines[0] == "source_image,target_image,class,flip"
        for line in lines[1:]:
            a, b, c, f = line.split(",")
            assert (tiny / a).exists() and (tiny / b).exists() and c in ("0", "1") and f == "0"
    assert S.is_complete(tiny, 0, "tiny")


def test_depth_backprojection_matches_xyz() -> None:
    scene = S.build_scene(3, "tiny")
    cam = S.cutout_camera(160, 120)
    for k, s in enumerate(scene.scans):
        pose = S.camera_pose(s.center, 37.0 * k + 10, pitch_deg=-20 + 15 * k, roll_deg=5)
        img, depth, xyz = S.render(scene, cam, pose)
        assert img.shape == (120, 160, 3) and img.dtype == np.uint8
        assert np.isfinite(depth).mean() > 0.99  # closed building: every ray hits something
        back = depth_to_world(depth, cam, pose)
        ok = np.isfinite(depth)
        np.testing.assert_allclose(back[ok], xyz[ok], atol=1e-6)
        # and the XYZ reprojects onto its own pixel centres
        uv, z, _ = project_world(xyz[ok], cam, pose)
        np.testing.assert_allclose(uv, cam.pixel_grid()[ok], atol=1e-6)
        np.testing.assert_allclose(z, depth[ok], atol=1e-9)


def test_render_deterministic_and_changes_with_illumination() -> None:
    scene = S.build_scene(1, "tiny")
    cam = S.cutout_camera(96, 72)
    pose = S.camera_pose(scene.scans[0].center, 45)
    a = S.render(scene, cam, pose)
    b = S.render(S.build_scene(1, "tiny"), cam, pose)
    assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b, strict=True))
    app = S.Appearance("night", S.Illumination((0, 0, 1), (0, 0, 0), (0.1, 0.1, 0.12), (0.9, 0.7, 0.5)))
    c = S.render(scene, cam, pose, appearance=app)
    assert np.array_equal(a[1], c[1], equal_nan=True) and not np.array_equal(a[0], c[0])


def test_correspondences_reprojection_and_occlusion() -> None:
    """GT matches reproject exactly; a point hidden behind an occluder in view B is not returned."""
    scene = S.build_scene(2, "tiny")
    cam = S.cutout_camera(160, 120)
    s = scene.scans[0]
    pose_a = S.camera_pose(s.center, 20)
    pose_b = S.camera_pose(s.center + np.array([0.3, -0.2, 0.05]), 32, 5)
    _, depth_a, xyz_a = S.render(scene, cam, pose_a)
    _, depth_b, xyz_b = S.render(scene, cam, pose_b)
    va = S.View("a", cam, pose_a, depth_a, xyz_a)
    vb = S.View("b", cam, pose_b, depth_b, xyz_b)
    uv_a, uv_b = S.gt_correspondences(va, vb)
    assert len(uv_a) > 0.3 * cam.width * cam.height
    # reprojection: the world point of A's pixel projects to uv_b, and B sees the same point there
    ia, ja = (uv_a[:, 1] - 0.5).astype(int), (uv_a[:, 0] - 0.5).astype(int)
    X = xyz_a[ia, ja]
    uv_proj, _, _ = project_world(X, cam, pose_b)
    np.testing.assert_allclose(uv_proj, uv_b, atol=1e-6)
    ib, jb = np.floor(uv_b[:, 1]).astype(int), np.floor(uv_b[:, 0]).astype(int)
    dist = np.linalg.norm(xyz_b[ib, jb] - X, axis=1)
    assert np.median(dist) < 0.02
    # occlusion: put a box in front of camera B; the points it hides must disappear
    fwd = pose_b.R[2]
    c = pose_b.center + 0.8 * fwd
    occ = S.Box(c - [0.15, 0.15, 0.15], c + [0.15, 0.15, 0.15], (S.Surface(0, (1.0, 1.0)),), "occluder")
    cs_occ = scene.compile(list(scene.boxes) + [occ])
    _, depth_b2, xyz_b2 = S.render(cs_occ, cam, pose_b)
    hidden = np.isfinite(depth_b2) & (depth_b2 < depth_b - 0.05)
    assert hidden.sum() > 100
    vb2 = S.View("b2", cam, pose_b, depth_b2, xyz_b2)
    uv_a2, uv_b2 = S.gt_correspondences(va, vb2)
    assert 0 < len(uv_a2) < len(uv_a)
    hb = hidden[np.floor(uv_b2[:, 1]).astype(int), np.floor(uv_b2[:, 0]).astype(int)]
    assert not hb.any()
    # the matches lost are exactly those that land on the occluder in B
    lost = set(map(tuple, uv_a)) - set(map(tuple, uv_a2))
    assert len(lost) > 50


def test_correspondences_between_written_records(tiny: Path) -> None:
    db = {d.name: d for d in read_rgbd_folder(tiny / "db")}
    qs = {d.name: d for d in read_rgbd_folder(tiny / "queries")}
    meta = json.loads((tiny / "queries" / "queries_meta.json").read_text())
    for qn, m in list(meta.items())[:3]:
        q, d = qs[qn], db[m["best_db"]]
        uv_q, uv_d = S.gt_correspondences(q, d, step=4)
        assert len(uv_q) > 0
        Xq, okq = q.lift(uv_q)
        Xd, okd = d.lift(uv_d)
        ok = okq & okd
        assert ok.mean() > 0.9
        assert np.median(np.linalg.norm(Xq[ok] - Xd[ok], axis=1)) < 0.01


def test_inloc_layout_matches_plain_folder(tiny: Path) -> None:
    plain = {d.name: d for d in read_rgbd_folder(tiny / "db")}
    inloc = {d.name: d for d in read_inloc_db(tiny / "inloc")}
    assert set(plain) == set(inloc)
    for name in sorted(plain)[::5]:
        a, b = plain[name].world_xyz(), inloc[name].world_xyz()
        assert a.shape == b.shape
        ok = np.isfinite(a).all(-1)
        assert ok.mean() > 0.99 and np.array_equal(ok, np.isfinite(b).all(-1))
        # plain folder stores depth in mm: world points agree up to depth quantisation (<= 0.5 mm along the ray)
        err = np.linalg.norm(a[ok] - b[ok], axis=1)
        depth = read_depth_png(tiny / "db" / "depth" / (name[:-4] + ".png"), 1000.0)
        ray = np.linalg.norm(a - plain[name].pose.center, axis=-1) / depth  # metres of ray per metre of depth
        assert (err <= 0.0005 * ray[ok] + 1e-6).all()


def test_inloc_scan_frame_is_not_world(tiny: Path) -> None:
    d = read_inloc_db(tiny / "inloc")[0]
    xyz_scan = read_xyzcut(Path(str(d.image_path) + ".mat"))
    xyz_world = d.world_xyz()
    assert np.nanmax(np.abs(xyz_scan - xyz_world)) > 0.5


def test_queries_localizable(tiny: Path) -> None:
    meta = json.loads((tiny / "queries" / "queries_meta.json").read_text())
    db = {d.name: d for d in read_rgbd_folder(tiny / "db")}
    qs = {d.name: d for d in read_rgbd_folder(tiny / "queries")}
    for qn, m in meta.items():
        assert m["best_covisibility"] >= S.SIZES["tiny"].min_query_covis
        assert S.view_covisibility(qs[qn], db[m["best_db"]]) >= S.SIZES["tiny"].min_query_covis - 0.05


def test_same_seed_identical_files_and_skip(tiny: Path, tmp_path: Path) -> None:
    other = tmp_path / "again"
    S.generate(other, seed=0, size="tiny")
    assert _hashes(tiny) == _hashes(other)
    # a complete manifest with the same parameters: nothing is regenerated
    mtime = (other / "manifest.json").stat().st_mtime_ns
    assert S.ensure_dataset(other, seed=0, size="tiny") == other
    assert (other / "manifest.json").stat().st_mtime_ns == mtime


def test_different_seed_differs(tiny: Path) -> None:
    a = S.build_scene(0, "tiny")
    b = S.build_scene(1, "tiny")
    assert json.dumps(a.to_json()) != json.dumps(b.to_json())
    cam = S.cutout_camera(64, 48)
    ia = S.render(a, cam, S.camera_pose(a.scans[0].center, 0))[0]
    ib = S.render(b, cam, S.camera_pose(b.scans[0].center, 0))[0]
    assert not np.array_equal(ia, ib)


def test_public_names_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The package re-exports its public names; ``python -m datasets.synthetic`` keeps its options."""
    for name in S.__all__:
        assert getattr(S, name) is not None, name
    with pytest.raises(SystemExit) as exc:
        synthetic_main(["--help"])
    assert exc.value.code == 0
    usage = capsys.readouterr().out
    for opt in ("--out", "--seed", "--size", "--preview", "--layouts", "--force"):
        assert opt in usage
    with pytest.raises(SystemExit):
        synthetic_main(["--out", str(tmp_path), "--layouts", "rgbd,nope"])
    r = subprocess.run([sys.executable, "-m", "datasets.synthetic", "--help"], cwd=ROOT, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0 and "--layouts" in r.stdout and "inloc-size" in r.stdout


def test_visible_projection_tolerance_and_nearest_pixel() -> None:
    """Depth agreement within max(rel_tol * z, abs_tol) at the pixel containing the projection (floor)."""
    cam = Camera.pinhole(4, 4, 4.0)  # principal point (2, 2)
    pose = look_at([0, 0, 0], [0, 1, 0])
    uv = np.array([[2.9, 1.1], [0.5, 3.5], [2.9, 1.1], [2.9, 1.1], [9.0, 1.0]])
    z = np.array([2.0, 3.0, 2.0, 2.0, 2.0])
    pts = pose.inverse().transform(cam.backproject(uv, z))
    pts = np.vstack([pts, [np.nan, 1, 0]])
    depth_b = np.full((4, 4), np.nan)
    depth_b[1, 2] = 2.03  # pixel (row 1, col 2) holds (2.9, 1.1): within 2 % of 2.0
    depth_b[3, 0] = 3.2   # 0.2 m off at 3 m: hidden
    uv_b, z_b, vis = visible_projection(pts, cam, pose, depth_b, rel_tol=0.02, abs_tol=0.01)
    np.testing.assert_allclose(uv_b[:5][[0, 1, 2, 3]], uv[[0, 1, 2, 3]], atol=1e-9)
    np.testing.assert_allclose(z_b[:4], z[:4], atol=1e-9)
    assert vis.tolist() == [True, False, True, True, False, False]
    assert np.isnan(uv_b[5]).all() and np.isnan(z_b[5])
    # a stricter relative tolerance rejects the 1.5 % disagreement unless the absolute floor allows it
    assert not visible_projection(pts, cam, pose, depth_b, rel_tol=0.01, abs_tol=0.0)[2][0]
    assert visible_projection(pts, cam, pose, depth_b, rel_tol=0.01, abs_tol=0.05)[2][0]
    # without a depth map only the image bounds and finiteness count
    assert visible_projection(pts, cam, pose, None)[2].tolist() == [True, True, True, True, False, False]
