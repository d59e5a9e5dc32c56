"""The tiny building end to end with hloc's files: export, a 2-column pairs file (--pairs), a COLMAP-format database."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
from conftest import copy_caches, tiny_pipeline_conf

from datasets.database import detect_format
from datasets.rgbd_folder import depth_path, read_depth_png, read_depth_scale
from localize import run as runmod
from localize.core.formats import read_poses, read_query_list, read_top1, write_query_list
from localize.core.geometry import wxyz_to_xyzw
from localize.core.hloc import read_matches
from localize.evaluate_inloc import evaluate

pytestmark = pytest.mark.slow  # end-to-end runs of the pipeline


def _args(tiny: Path) -> tuple[Path, Path]:
    return tiny / "queries" / "images", tiny / "queries" / "queries_with_intrinsics.txt"


def _recall(tiny: Path, out: Path, names: tuple[str, ...] | None = None) -> list[float]:
    gt = {q: e.pose for q, e in read_poses(tiny / "queries" / "poses_gt.txt").items() if names is None or q in names}
    return evaluate({"all": gt}, {q: e for q, e in read_poses(out / "poses.txt").items() if q in gt})[0]["all"].recall


@pytest.fixture(scope="module")
def native(tiny_run):
    """The session's run on the tiny building with hloc names and an hloc export (read-only)."""
    return tiny_run.out


def test_outputs_are_8_columns_with_top1_side_file_and_hloc_export(tiny_building, native):
    lines = (native / "poses.txt").read_text().splitlines()
    assert lines and all(len(line.split()) == 8 for line in lines)
    logs = [json.loads(line) for line in (native / "log.jsonl").read_text().splitlines()]
    assert read_top1(native / "top1.txt") == {entry["query"]: entry["chosen_db"] for entry in logs
                                              if entry["status"] == "ok"}
    # hloc's parse_retrieval reads the exported pairs: `q, r = line.split()`
    pairs = []
    for line in (native / "hloc" / "pairs.txt").read_text().rstrip("\n").split("\n"):
        q, r = line.split()
        pairs.append((q, r))
    assert all(q.startswith("query/iphone7/") and r.startswith("database/cutouts/") for q, r in pairs)
    with h5py.File(native / "hloc" / "global-feats.h5", "r") as f:
        assert {q for q, _ in pairs} | {r for _, r in pairs} <= {g.name.strip("/") for g in _groups(f)}
    # the exported matches read back as the run's matches (less those within half a pixel of the border)
    matched = [(f"query/iphone7/{e['query']}", f"database/cutouts/{n}") for e in logs
               for n, _ in e["verified"][:tiny_pipeline_conf()["num_pairs"]]]
    back = read_matches(native / "hloc" / "matches.h5", matched, native / "hloc" / "features.h5")
    cache = next(native.glob("matches-*.h5"))
    with h5py.File(cache, "r") as f:
        key = f"{matched[0][0][len('query/iphone7/'):]}/{matched[0][1][len('database/cutouts/'):]}"
        g = f[key.replace("%", "%25").replace("/", "%2F")]
        k0, k1 = g["keypoints0"][()], g["keypoints1"][()]
    b0, b1, _ = back[matched[0]]
    assert len(b0) > 20 and len(b0) <= len(k0)
    run_matches, exported = np.hstack([k0, k1]), np.hstack([b0, b1])
    nearest = np.abs(exported[:, None, :] - run_matches[None, :, :]).max(-1).min(1)
    assert nearest.max() < 1e-3  # float32 in the file


def _groups(f: h5py.File) -> list[h5py.Group]:
    out = []
    f.visititems(lambda _, o: out.append(o) if isinstance(o, h5py.Group) and "global_descriptor" in o else None)
    return out


def test_two_column_pairs_file_drives_the_run(tiny_building, native, tmp_path, capsys):
    qdir, qlist = _args(tiny_building)
    logs = [json.loads(line) for line in (native / "log.jsonl").read_text().splitlines()]
    # hloc's pairs: retrieval order, names relative to the dataset root, two columns
    text = "".join(f"query/iphone7/{e['query']} database/cutouts/{n}\n" for e in logs for n, _ in e["shortlist"])
    (tmp_path / "pairs-hloc.txt").write_text(text)
    # the matches of the native run (same images, same matching configuration) are reused from its cache
    copy_caches(native, tmp_path / "out", ("matches-*.h5",))
    s = runmod.main(tiny_pipeline_conf(256), qdir, tiny_building / "db", tmp_path / "out", "rgbd", qlist,
                    pairs=tmp_path / "pairs-hloc.txt", name_style="hloc")
    assert s.num_queries == len(logs)
    assert not list((tmp_path / "out").glob("global-descriptors-*"))  # no retrieval ran
    assert _recall(tiny_building, tmp_path / "out") == _recall(tiny_building, native)
    # the same file with the project's names: an error naming the first name and the expected form, exit 2
    rc = runmod.cli(["--query-dir", str(qdir), "--db", str(tiny_building / "db"), "--queries-list", str(qlist),
                     "--export-dir", str(tmp_path / "bad"), "--pairs", str(tmp_path / "pairs-hloc.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and f"query/iphone7/{logs[0]['query']}" in err and "--name-style hloc" in err, err


def _write_colmap_copy(db: Path, root: Path) -> None:
    """The plain RGB-D database as a COLMAP workspace: pycolmap model, images, depth in COLMAP's .bin layout."""
    cams = read_query_list(db / "cameras.txt")
    poses = read_poses(db / "poses.txt")
    scale = read_depth_scale(db / "depth_scale.txt")
    rec = pycolmap.Reconstruction()
    for i, name in enumerate(sorted(poses), start=1):
        cam, pose = cams[name], poses[name].pose
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model=cam.model, width=cam.width, height=cam.height,
                                                        params=list(cam.params), camera_id=i))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=i, image_id=i),
                                         pycolmap.Rigid3d(pycolmap.Rotation3d(wxyz_to_xyzw(pose.qvec)), pose.t))
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(db / "images" / name, root / "images" / name)
        depth = np.nan_to_num(read_depth_png(depth_path(db, name), scale), nan=0.0).astype("<f4")
        out = root / "stereo" / "depth_maps" / (name + ".geometric.bin")
        out.parent.mkdir(parents=True, exist_ok=True)
        h, w = depth.shape  # COLMAP's write_array: header, then the (w, h) transpose in Fortran order
        out.write_bytes(f"{w}&{h}&1&".encode() + np.transpose(depth, (1, 0)).reshape(-1, order="F").tobytes())
    (root / "sparse").mkdir(parents=True)
    rec.write(str(root / "sparse"))


def test_colmap_copy_of_the_database_localizes_as_well(tiny_building, native, tmp_path):
    _write_colmap_copy(tiny_building / "db", tmp_path / "colmap")
    names = ("query_0000.jpg", "query_0005.jpg")  # two queries: the database is under test
    cams = read_query_list(tiny_building / "queries" / "queries_with_intrinsics.txt")
    (tmp_path / "q").mkdir()
    for n in names:
        shutil.copy(tiny_building / "queries" / "images" / n, tmp_path / "q" / n)
    write_query_list(tmp_path / "list.txt", {n: cams[n] for n in names})
    # same image names and contents: the retrieval vocabulary and database descriptors are the native run's
    copy_caches(native, tmp_path / "out")
    runmod.main(tiny_pipeline_conf(256), tmp_path / "q", tmp_path / "colmap", tmp_path / "out", "colmap",
                tmp_path / "list.txt")
    assert set(read_poses(tmp_path / "out" / "poses.txt")) == set(read_poses(native / "poses.txt")) & set(names)
    assert _recall(tiny_building, tmp_path / "out", names) == _recall(tiny_building, native, names)
    assert detect_format(tmp_path / "colmap") == "colmap"


def test_hloc_matches_drive_pose_estimation(tiny_building, native, tmp_path):
    """Our retrieval + matching exported in hloc's layout, read back by pose.estimate as hloc's matches would be."""
    from pose.estimate import main as estimate

    qdir, qlist = _args(tiny_building)
    hloc = native / "hloc"
    res = estimate({"candidates": tiny_pipeline_conf()["pose"]}, tiny_building / "db", hloc / "matches.h5", qlist,
                   tmp_path / "poses.txt", "rgbd", pairs=hloc / "pairs.txt", hloc_features=hloc / "features.h5",
                   name_style="hloc")
    assert set(res.poses) <= set(read_query_list(qlist)) and res.poses
    assert _recall(tiny_building, tmp_path)[0] >= _recall(tiny_building, native)[0] - 12.5  # at most one query less
    with pytest.raises(Exception, match="expected query names"):
        estimate(None, tiny_building / "db", hloc / "matches.h5", qlist, None, "rgbd", pairs=hloc / "pairs.txt",
                 hloc_features=hloc / "features.h5", name_style="inloc")
