"""Database readers on files written in the real layouts: plain RGB-D folder, InLoc, TUM; their errors."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from datasets.database import load_database
from datasets.inloc import (
    estimate_cutout_pose,
    inloc_query_camera,
    read_inloc_db,
    read_p_after,
    write_inloc_alignment,
    write_inloc_cutout,
)
from datasets.queries import list_query_images
from datasets.rgbd_folder import read_rgbd_folder, write_rgbd_folder
from datasets.tum import export_rgbd_folder, read_tum, read_tum_frames
from localize.core.errors import DatabaseError, QueryError
from localize.core.geometry import Camera, Pose, depth_to_world, look_at, project_world
from localize.core.records import lift_pixels


def _plane_depth(cam: Camera, pose: Pose) -> np.ndarray:
    """z-depth of the plane y = 3 (world) seen by a camera, NaN where not hit."""
    rays = cam.backproject(cam.pixel_grid().reshape(-1, 2))  # z = 1
    Rw = pose.inverse().R
    dirs = rays @ Rw.T
    C = pose.center
    s = (3.0 - C[1]) / dirs[:, 1]
    d = np.where(s > 0, s, np.nan)
    return d.reshape(cam.height, cam.width)


def test_lift_pixels_bilinear_nearest_invalid():
    xyz = np.zeros((3, 4, 3))
    xyz[..., 0] = np.arange(4)[None, :]
    xyz[..., 1] = np.arange(3)[:, None]
    xyz[0, 3] = np.nan
    pts, ok = lift_pixels(xyz, np.array([[1.25, 1.5], [3.0, 1.0], [3.6, 0.6], [4.5, 0.5], [-0.1, 0.5]]))
    np.testing.assert_allclose(pts[0], [0.75, 1.0, 0])            # bilinear between centres
    np.testing.assert_allclose(pts[1], [2.0, 0.0, 0])             # neighbour (0,3) NaN -> nearest (0,2)
    assert not ok[2]                                              # nearest is the NaN pixel
    assert not ok[3] and not ok[4]                                # outside the image
    assert ok[:2].all()


def test_rgbd_folder_roundtrip(tmp_path):
    cam = Camera.pinhole(40, 30, 35.0)
    items = []
    for i in range(3):
        pose = look_at([i * 0.2, 0, 1], [i * 0.2 + 0.3, 3, 1])
        depth = _plane_depth(cam, pose)
        depth[0, :5] = np.nan
        rgb = np.full((30, 40, 3), 40 * i, np.uint8)
        items.append((f"sub/img{i}.png", rgb, depth, cam, pose))
    write_rgbd_folder(tmp_path / "db", items, depth_scale=1000)
    recs = read_rgbd_folder(tmp_path / "db")
    assert [r.name for r in recs] == ["sub/img0.png", "sub/img1.png", "sub/img2.png"]
    for (_, _, _, cam_, pose), r in zip(items, recs, strict=True):
        assert r.camera == cam_
        np.testing.assert_allclose(r.pose.matrix, pose.matrix, atol=1e-8)
        xyz = r.world_xyz()
        assert np.isnan(xyz[0, :5]).all()
        ok = np.isfinite(xyz).all(-1)
        np.testing.assert_allclose(xyz[ok][:, 1], 3.0, atol=2e-3)  # on the plane, up to mm quantisation
    # a missing depth map gives an error naming the file
    (tmp_path / "db" / "depth" / "sub" / "img1.png").unlink()
    with pytest.raises(DatabaseError, match=r"depth/sub/img1\.png: depth map missing"):
        read_rgbd_folder(tmp_path / "db")[1].world_xyz()


def test_inloc_layout_reader(tmp_path):
    root = tmp_path / "database"
    cam = Camera.pinhole(48, 36, 48 / (2 * np.tan(np.radians(30))))
    pose_scan = look_at([0, 0, 0], [1, 2, 0.3])  # cutout camera in the scan frame
    depth = _plane_depth(cam, pose_scan)
    xyz_scan = depth_to_world(depth, cam, pose_scan)
    P_after = np.eye(4)
    P_after[:3, :3] = Rotation.from_euler("z", 33, degrees=True).as_matrix()
    P_after[:3, 3] = [10, -4, 1.5]
    rgb = np.zeros((36, 48, 3), np.uint8)
    write_inloc_cutout(root, "DUC1", "024", "DUC_cutout_024_30_0.jpg", rgb, xyz_scan)
    write_inloc_alignment(root, "DUC1", "DUC", "024", P_after)
    np.testing.assert_allclose(read_p_after(root / "alignments/DUC1/transformations/DUC_trans_024.txt"), P_after)
    lines = (root / "alignments/DUC1/transformations/DUC_trans_024.txt").read_text().splitlines()
    np.testing.assert_allclose(np.array([line.split() for line in lines[7:11]], float), P_after)
    recs = read_inloc_db(tmp_path)  # dataset root containing database/
    assert len(recs) == 1 and recs[0].name == "DUC1/024/DUC_cutout_024_30_0.jpg" and recs[0].floor == "DUC1"
    world = recs[0].world_xyz()
    expect = xyz_scan.reshape(-1, 3) @ P_after[:3, :3].T + P_after[:3, 3]
    np.testing.assert_allclose(world.reshape(-1, 3), expect, atol=1e-9)
    # the cutout pose fitted to its points is the scan pose moved by P_after
    est = estimate_cutout_pose(recs[0])
    truth = pose_scan * Pose.from_matrix(P_after).inverse()
    np.testing.assert_allclose(est.matrix, truth.matrix, atol=1e-5)
    uv, _, _ = project_world(world[10:12, 10:12].reshape(-1, 3), recs[0].camera, truth)
    pts, _ = recs[0].lift(uv)
    np.testing.assert_allclose(pts, world[10:12, 10:12].reshape(-1, 3), atol=1e-6)


def test_inloc_dataset_root_as_query_dir_lists_only_the_phone_queries(tmp_path):
    """--query-dir at the real download's root (database/cutouts/... next to query/iphone7/...): the queries are
    query/iphone7's images, named as in InLoc's files; a database folder without queries is refused."""
    xyz = np.zeros((6, 8, 3))
    write_inloc_cutout(tmp_path / "database", "DUC1", "024", "DUC_cutout_024_0_0.jpg", np.zeros((6, 8, 3), np.uint8),
                       xyz)
    (tmp_path / "query" / "iphone7").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "query" / "iphone7" / "IMG_0731.JPG"), np.zeros((12, 16, 3), np.uint8))
    for given in (tmp_path, tmp_path / "query", tmp_path / "query" / "iphone7"):
        qs = list_query_images(given, db_format="inloc")
        assert [(q.name, q.error) for q in qs] == [("IMG_0731.JPG", "")], given
        assert qs[0].path == tmp_path / "query" / "iphone7" / "IMG_0731.JPG"
        assert qs[0].camera.focal[0] == pytest.approx(3136 * 16 / 4032)
    with pytest.raises(QueryError, match="query/iphone7"):
        list_query_images(tmp_path / "database", db_format="inloc")
    assert len(list_query_images(tmp_path, db_format="rgbd")) == 2  # other formats: every image of the folder


def test_inloc_query_camera():
    cam = inloc_query_camera(1008, 756)
    assert cam.focal == (784.0, 784.0) and cam.principal_point == (504.0, 378.0)
    assert inloc_query_camera().focal[0] == pytest.approx(3136.0)


def test_tum_original_layout_association(tmp_path):
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    rgb_ts = [1.00, 1.10, 1.20]
    depth_ts = [1.005, 1.13, 1.198]
    for t in rgb_ts:
        cv2.imwrite(str(tmp_path / f"rgb/{t:.6f}.png"), np.zeros((480, 640, 3), np.uint8))
    for t in depth_ts:
        cv2.imwrite(str(tmp_path / f"depth/{t:.6f}.png"), np.full((480, 640), 5000, np.uint16))
    (tmp_path / "rgb.txt").write_text("# rgb\n" + "".join(f"{t:.6f} rgb/{t:.6f}.png\n" for t in rgb_ts))
    (tmp_path / "depth.txt").write_text("".join(f"{t:.6f} depth/{t:.6f}.png\n" for t in depth_ts))
    # camera moves 1 m/0.3 s along x and turns 20 deg/0.3 s about z, mocap at 20 Hz
    gt = ""
    for k in range(7):
        t = 0.95 + 0.05 * k
        a = (t - 0.95) / 0.30
        gt += f"{t:.2f} {a} 0 0 {' '.join(map(str, Rotation.from_euler('z', 20 * a, degrees=True).as_quat()))}\n"
    (tmp_path / "groundtruth.txt").write_text(gt)
    frames = read_tum_frames(tmp_path)
    assert [f.rgb_ts for f in frames] == [1.00, 1.20]  # 1.10 has no depth within 20 ms
    f1 = frames[1]
    a = (1.20 - 0.95) / 0.30
    np.testing.assert_allclose(f1.pose.center, [a, 0, 0], atol=1e-9)
    np.testing.assert_allclose(f1.pose.R.T, Rotation.from_euler("z", 20 * a, degrees=True).as_matrix(), atol=1e-9)
    recs = read_tum(tmp_path)
    np.testing.assert_allclose(recs[0].world_xyz()[240, 320], recs[0].pose.inverse().transform(
        recs[0].camera.backproject(np.array([[320.5, 240.5]]), 1.0))[0])


def test_tum_shared_depth_warp_consistency(tum_root, tmp_path):
    recs = read_tum(tum_root)
    assert len(recs) == 99
    fractions = []
    for i in range(0, 98, 7):
        a, b = recs[i], recs[i + 1]
        xyz = a.world_xyz()[::4, ::4].reshape(-1, 3)
        xyz = xyz[np.isfinite(xyz).all(1)]
        uv, z, inside = project_world(xyz, b.camera, b.pose)
        bx = b.world_xyz()
        zb = b.pose.transform(bx.reshape(-1, 3))[:, 2].reshape(bx.shape[:2])
        uv, z = uv[inside], z[inside]
        zz = zb[uv[:, 1].astype(int), uv[:, 0].astype(int)]
        ok = np.isfinite(zz)
        fractions.append(np.mean(np.abs(zz[ok] - z[ok]) < 0.02 * z[ok]))
    # SOURCE.md: 83-96 % of points within 2 % on nearby pairs
    assert np.median(fractions) > 0.83 and max(fractions) > 0.95, fractions
    out = export_rgbd_folder(tum_root, tmp_path / "db", read_tum_frames(tum_root)[:3])
    back = read_rgbd_folder(out)
    assert len(back) == 3
    np.testing.assert_allclose(back[1].world_xyz(), recs[1].world_xyz(), equal_nan=True, atol=1e-9)


# ----------------------------------------------------------------------------- bad databases: DatabaseError


def _one_line_error(exc: pytest.ExceptionInfo, path: Path, *parts: str) -> str:
    """The error message, checked to be one line naming ``path`` and containing every ``part``."""
    msg = str(exc.value)
    assert exc.type is DatabaseError
    assert "\n" not in msg and str(path) in msg, msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


def _rgbd_db(root: Path, n: int = 2) -> Path:
    """A small valid plain RGB-D folder of ``n`` images 'img<i>.png'."""
    cam = Camera.pinhole(20, 15, 18.0)
    items = []
    for i in range(n):
        pose = look_at([0.1 * i, 0, 1], [0.1 * i, 3, 1])
        items.append((f"img{i}.png", np.zeros((15, 20, 3), np.uint8), _plane_depth(cam, pose), cam, pose))
    write_rgbd_folder(root, items, depth_scale=1000)
    return root


@pytest.mark.parametrize("missing", ["poses.txt", "cameras.txt", "depth_scale.txt"])
def test_rgbd_missing_file(tmp_path, missing):
    db = _rgbd_db(tmp_path / "db")
    (db / missing).unlink()
    with pytest.raises(DatabaseError) as exc:
        read_rgbd_folder(db)
    _one_line_error(exc, db / missing, "missing")
    with pytest.raises(DatabaseError) as exc:  # through the one loader, whichever format is asked for
        load_database(db, "rgbd")
    _one_line_error(exc, db / missing)


def test_rgbd_malformed_lines_name_their_line(tmp_path):
    db = _rgbd_db(tmp_path / "db", 3)
    poses = (db / "poses.txt").read_text().splitlines()
    # a comment and a blank line first: the line number is the file's, not the count of data lines
    bad = ["# name qw qx qy qz tx ty tz", "", poses[0], poses[1].replace(poses[1].split()[3], "oops", 1), poses[2]]
    (db / "poses.txt").write_text("\n".join(bad) + "\n")
    with pytest.raises(DatabaseError) as exc:
        read_rgbd_folder(db)
    _one_line_error(exc, db / "poses.txt", "line 4", "oops")
    (db / "poses.txt").write_text("\n".join(poses[:2] + [" ".join(poses[2].split()[:5])]) + "\n")
    with pytest.raises(DatabaseError) as exc:
        read_rgbd_folder(db)
    _one_line_error(exc, db / "poses.txt", "line 3", "5 fields")
    (db / "poses.txt").write_text("\n".join(poses) + "\n")
    cams = (db / "cameras.txt").read_text().splitlines()
    (db / "cameras.txt").write_text("\n".join([cams[0], "img1.png NOSUCHMODEL 20 15 18", cams[2]]) + "\n")
    with pytest.raises(DatabaseError) as exc:
        read_rgbd_folder(db)
    _one_line_error(exc, db / "cameras.txt", "line 2")
    (db / "cameras.txt").write_text("\n".join([cams[0], cams[2]]) + "\n")
    with pytest.raises(DatabaseError) as exc:
        read_rgbd_folder(db)
    _one_line_error(exc, db / "cameras.txt", "img1.png")
    (db / "cameras.txt").write_text("\n".join(cams) + "\n")
    (db / "depth_scale.txt").write_text("mm\n")
    with pytest.raises(DatabaseError) as exc:
        read_rgbd_folder(db)
    _one_line_error(exc, db / "depth_scale.txt", "line 1", "mm")


def test_rgbd_bad_depth_maps_name_the_file(tmp_path):
    db = _rgbd_db(tmp_path / "db", 3)
    (db / "depth" / "img0.png").unlink()
    (db / "depth" / "img1.png").write_bytes(b"not a png")
    cv2.imwrite(str(db / "depth" / "img2.png"), np.zeros((7, 9), np.uint16))
    recs = read_rgbd_folder(db)  # depth maps are read on use
    for rec, reason in zip(recs, ["depth map missing", "cannot read depth map", "9x7"], strict=True):
        with pytest.raises(DatabaseError) as exc:
            rec.world_xyz()
        _one_line_error(exc, db / "depth" / rec.name, reason)


def test_inloc_bad_database(tmp_path):
    root = tmp_path / "database"
    with pytest.raises(DatabaseError) as exc:
        read_inloc_db(root)
    _one_line_error(exc, root, "cutouts")
    cam = Camera.pinhole(8, 6, 7.0)
    xyz = depth_to_world(np.full((6, 8), 2.0), cam, look_at([0, 0, 0], [0, 1, 0]))
    write_inloc_cutout(root, "DUC1", "024", "DUC_cutout_024_0_0.jpg", np.zeros((6, 8, 3), np.uint8), xyz)
    align = root / "alignments/DUC1/transformations/DUC_trans_024.txt"
    with pytest.raises(DatabaseError) as exc:  # alignment file missing: found when the database is read
        read_inloc_db(root)
    _one_line_error(exc, align, "alignment file missing", "DUC1/024/DUC_cutout_024_0_0.jpg")
    write_inloc_alignment(root, "DUC1", "DUC", "024", np.eye(4))
    lines = align.read_text().splitlines()
    lines[8] = "0 1 zero 0"
    align.write_text("\n".join(lines) + "\n")
    rec = read_inloc_db(root)[0]
    with pytest.raises(DatabaseError) as exc:
        rec.world_xyz()
    _one_line_error(exc, align, "line 9", "zero")
    align.write_text("\n".join(lines[:9]) + "\n")
    with pytest.raises(DatabaseError) as exc:
        read_p_after(align)
    _one_line_error(exc, align, "9 lines")
    write_inloc_alignment(root, "DUC1", "DUC", "024", np.eye(4))
    mat = root / "cutouts/DUC1/024/DUC_cutout_024_0_0.jpg.mat"
    mat.unlink()
    rec = read_inloc_db(root)[0]
    with pytest.raises(DatabaseError) as exc:
        rec.world_xyz()
    _one_line_error(exc, mat, "missing")


def test_tum_bad_lists_name_their_line(tmp_path):
    with pytest.raises(DatabaseError) as exc:
        read_tum_frames(tmp_path)
    _one_line_error(exc, tmp_path / "rgb.txt", "missing")
    frames = tmp_path / "frames.txt"
    good = "1.0 rgb/1.png 1.0 depth/1.png 0 0 0 0 0 0 1"
    frames.write_text(f"# frames\n{good}\n1.1 rgb/2.png 1.1 depth/2.png 0 0 0 0 0 1\n")
    with pytest.raises(DatabaseError) as exc:
        read_tum_frames(tmp_path)
    _one_line_error(exc, frames, "line 3", "got 10")
    frames.write_text(f"{good}\n{good.replace('0 0 0 0 0 0 1', '0 0 x 0 0 0 1')}\n")
    with pytest.raises(DatabaseError) as exc:
        load_database(tmp_path, "tum")
    _one_line_error(exc, frames, "line 2", "x")
    frames.write_text(good + "\n")
    rec = read_tum(tmp_path)[0]  # depth/1.png does not exist
    with pytest.raises(DatabaseError) as exc:
        rec.world_xyz()
    _one_line_error(exc, tmp_path / "depth/1.png", "depth map missing")
    frames.unlink()
    (tmp_path / "rgb.txt").write_text("1.0 rgb/1.png\n")
    (tmp_path / "depth.txt").write_text("1.0 depth/1.png\n")
    (tmp_path / "groundtruth.txt").write_text("0.9 0 0 0 0 0 0 1\n1.1 0 0 0 0 0 1\n")
    with pytest.raises(DatabaseError) as exc:
        read_tum_frames(tmp_path)
    _one_line_error(exc, tmp_path / "groundtruth.txt", "line 2", "got 7 fields")


def test_png_exif_orientation_read_without_decoding(tmp_path):
    """PNG orientation comes from the eXIf chunk, before or after the pixel data (the PNG spec allows both)."""
    import struct
    import zlib

    from PIL import Image

    from localize.core.records import image_header, load_rgb

    stored = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "before.png", exif=exif.tobytes())
    Image.fromarray(stored).save(tmp_path / "plain.png")
    data = (tmp_path / "plain.png").read_bytes()
    payload = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    iend = data.rindex(b"IEND") - 4
    (tmp_path / "after.png").write_bytes(data[:iend] + chunk + data[iend:])
    assert image_header(tmp_path / "plain.png").orientation == 1
    for name in ("before.png", "after.png"):
        h = image_header(tmp_path / name)
        assert (h.orientation, h.size) == (6, (6, 4)), name
        np.testing.assert_array_equal(load_rgb(tmp_path / name), np.rot90(stored, -1))
