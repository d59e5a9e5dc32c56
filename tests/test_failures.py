"""Fault injection, one test per class of issue #20: a fault injected, the expected message, the rest intact.

Only the public entry points that existed before the fixes are used (command lines, ``localize.run.main``,
the formats), so every test here runs, and fails, on the code before them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import copy_caches
from PIL import Image

from datasets.database import load_database
from datasets.synthetic.__main__ import cli as synthetic_cli
from localize import evaluate_inloc
from localize import run as runmod
from localize.core.errors import DatabaseError
from localize.core.formats import read_poses, read_query_list, write_poses, write_query_list
from localize.core.geometry import Camera, Pose, pose_error
from pose import verify_shortlist

pytestmark = pytest.mark.slow  # most run the pipeline on a few queries of the tiny building

GOOD = ("query_0000.jpg", "query_0003.jpg")  # queries the fast preset localizes within a few cm


def _queries(tiny: Path, tmp: Path, names=GOOD) -> tuple[Path, Path, dict[str, Camera]]:
    """A query folder and list holding copies of ``names`` (the tiny building itself stays read-only)."""
    qdir = tmp / "q"
    qdir.mkdir()
    cams = read_query_list(tiny / "queries" / "queries_with_intrinsics.txt")
    for n in names:
        shutil.copy(tiny / "queries" / "images" / n, qdir / n)
    write_query_list(tmp / "list.txt", {n: cams[n] for n in names})
    return qdir, tmp / "list.txt", cams


@pytest.fixture
def cli(tiny_run) -> Callable[..., int]:
    """``localize.run`` on the command line with the fast preset, top-3; a new export folder starts with the
    session run's retrieval vocabulary (the faults under test are elsewhere; it is refitted when the database
    images differ)."""

    def run(qdir: Path, db: Path, qlist: Path, out: Path, *extra: str) -> int:
        if not out.exists():
            copy_caches(tiny_run.out, out)
        return runmod.cli(["--query-dir", str(qdir), "--db", str(db), "--queries-list", str(qlist), "--export-dir",
                           str(out), "--conf", "fast", "--top-k", "3", *extra])

    return run


def _logs(out: Path) -> dict[str, dict]:
    return {d["query"]: d for d in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "query" in d}


def _errors(out: Path, name: str) -> str:
    return " ".join(_logs(out)[name]["errors"])


# 1. data loss -------------------------------------------------------------------------------------------
def test_outputs_never_overwrite_inputs(cli, tiny_building, tmp_path, capsys):
    user = tmp_path / "mine"
    (user / "db").mkdir(parents=True)
    (user / "db" / "thesis.txt").write_text("precious")
    assert synthetic_cli(["--out", str(user)]) == 2
    assert (user / "db" / "thesis.txt").read_text() == "precious"
    assert "no manifest" in capsys.readouterr().err
    db = tmp_path / "db"
    shutil.copytree(tiny_building / "db", db)
    before = (db / "poses.txt").read_bytes()
    qdir, qlist, _ = _queries(tiny_building, tmp_path, GOOD[:1])
    assert cli(qdir, db, qlist, db) == 2
    assert "input folder" in capsys.readouterr().err
    assert (db / "poses.txt").read_bytes() == before


# 2. stale cache -----------------------------------------------------------------------------------------
def test_changed_database_poses_recompute(cli, tiny_building, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(tiny_building / "db", db)
    qdir, qlist, _ = _queries(tiny_building, tmp_path, GOOD[:1])
    out = tmp_path / "out"
    assert cli(qdir, db, qlist, out) == 0
    first = read_poses(out / "poses.txt")[GOOD[0]].pose
    # the whole database moved by d in the world: the query's camera centre moves by d too
    d = np.array([1.0, -0.5, 0.25])
    moved = {n: Pose(e.pose.R, e.pose.t - e.pose.R @ d) for n, e in read_poses(db / "poses.txt").items()}
    write_poses(db / "poses.txt", moved)
    assert cli(qdir, db, qlist, out) == 0
    second = read_poses(out / "poses.txt")[GOOD[0]].pose
    assert np.linalg.norm(second.center - first.center - d) < 0.05, (first.center, second.center)


# 3. concurrent runs -------------------------------------------------------------------------------------
def test_second_run_into_a_busy_export_folder_exits_2(cli, tiny_building, tiny_run, tmp_path, capsys):
    qdir, qlist, _ = _queries(tiny_building, tmp_path, GOOD[:1])
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)  # another run holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc = cli(qdir, tiny_building / "db", qlist, out)
    finally:
        os.close(fd)
    assert rc == 2
    assert "in use by another run" in capsys.readouterr().err
    assert not (out / "poses.txt").exists() and not list(out.glob("*.h5"))
    copy_caches(tiny_run.out, out)
    assert cli(qdir, tiny_building / "db", qlist, out) == 0  # released: the next run goes


# 4. inconsistent inputs ---------------------------------------------------------------------------------
def test_inconsistent_inputs_are_refused_or_corrected(cli, tiny_building, tmp_path):
    qdir, qlist, cams = _queries(tiny_building, tmp_path, ("query_0001.jpg", "query_0002.jpg", "query_0004.jpg"))
    # a phone photo: stored rotated with EXIF orientation 6, its camera given for the stored image
    rgb = cv2.cvtColor(cv2.imread(str(tiny_building / "queries" / "images" / GOOD[0])), cv2.COLOR_BGR2RGB)
    stored = np.ascontiguousarray(np.rot90(rgb, 1))  # displayed = stored rotated 90 deg clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(qdir / "phone.jpg", quality=95, exif=exif.tobytes())
    c = cams[GOOD[0]]
    f, cx, cy = c.params
    lines = (qlist.read_text()
             + f"phone.jpg SIMPLE_PINHOLE {c.height} {c.width} {f} {cy} {c.width - cx}\n"
             + "query_0001.jpg SIMPLE_PINHOLE 256 192 200 128 96\n")  # listed twice (line 1 and 5)
    text = lines.replace("query_0002.jpg SIMPLE_PINHOLE 256 192 262.4388917221499",
                         "query_0002.jpg SIMPLE_PINHOLE 256 192 -262.4388917221499")  # negative focal
    text = text.replace("query_0004.jpg SIMPLE_PINHOLE 256 192", "query_0004.jpg SIMPLE_PINHOLE 256 256")
    qlist.write_text(text)
    out = tmp_path / "out"
    assert cli(qdir, tiny_building / "db", qlist, out) == 0
    assert "listed twice (lines 1 and 5)" in _errors(out, "query_0001.jpg")
    assert "focal length must be > 0" in _errors(out, "query_0002.jpg")
    assert "aspect ratio" in _errors(out, "query_0004.jpg")
    poses = read_poses(out / "poses.txt")
    assert set(poses) == {"phone.jpg"}
    gt = read_poses(tiny_building / "queries" / "poses_gt.txt")[GOOD[0]].pose
    dpos, _ = pose_error(poses["phone.jpg"].pose, gt)
    assert dpos < 0.1  # the same camera centre as the unrotated photo
    # the database: a name listed twice in poses.txt names both lines
    db = tmp_path / "db"
    shutil.copytree(tiny_building / "db", db)
    first = (db / "poses.txt").read_text().splitlines()[0]
    with open(db / "poses.txt", "a") as fh:
        fh.write(first + "\n")
    with pytest.raises(DatabaseError, match="listed twice"):
        load_database(db, "rgbd")


# 5. one empty file (and the other bad inputs of a run: a truncated image, a query without intrinsics, database
#    images without depth; one run for all) ----------------------------------------------------------------
def test_empty_files_and_bad_list_lines_are_skipped(cli, tiny_building, tmp_path):
    qdir, qlist, cams = _queries(tiny_building, tmp_path, GOOD)
    (qdir / "empty.jpg").write_bytes(b"")
    shutil.copy(qdir / GOOD[0], qdir / "badline.jpg")
    truncated, unlisted = "query_0001.jpg", "query_0002.jpg"
    data = (tiny_building / "queries" / "images" / truncated).read_bytes()
    (qdir / truncated).write_bytes(data[: len(data) // 10])
    shutil.copy(tiny_building / "queries" / "images" / unlisted, qdir / unlisted)  # not in the intrinsics list
    qlist.write_text(qlist.read_text() + f"empty.jpg {cams[GOOD[0]].to_line()}\nbadline.jpg PINHOLE 256\n"
                     + f"{truncated} {cams[truncated].to_line()}\n")
    db = tmp_path / "db"
    shutil.copytree(tiny_building / "db", db)
    victim = sorted((db / "images").rglob("*.*"))[0]
    victim.write_bytes(b"")
    # two other database images: one depth map missing, one all zero (no valid depth)
    depth_files = [d for d in sorted((db / "depth").rglob("*.png")) if d.stem != victim.stem]
    depth_files[0].unlink()
    cv2.imwrite(str(depth_files[1]), np.zeros((8, 8), np.uint16))
    out = tmp_path / "out"
    assert cli(qdir, db, qlist, out) == 0
    assert "empty" in _errors(out, "empty.jpg")
    assert "line 4" in _errors(out, "badline.jpg")
    logs = _logs(out)
    assert logs[truncated]["status"] == "failed" and truncated in _errors(out, truncated)
    assert logs[unlisted]["status"] == "failed" and "intrinsics" in _errors(out, unlisted)
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    skipped = [x for x in lines if x.get("status") == "skipped"]
    reasons = sorted(x["errors"][0].rsplit(": ", 1)[-1] for x in skipped)  # the path names "empty" too
    assert len(reasons) == 3 and reasons[2].startswith("image ") and reasons[2].endswith("is an empty file"), reasons
    assert reasons[0].startswith("depth file ") and reasons[0].endswith("is missing"), reasons
    assert reasons[1].startswith("depth map "), reasons  # all zero: written 8 x 8, not the image's size
    assert set(read_poses(out / "poses.txt")) == set(GOOD)  # the others still localize


# 6. damaged cache files ---------------------------------------------------------------------------------
def test_damaged_cache_files_are_moved_aside_and_recomputed(cli, tiny_building, tmp_path):
    qdir, qlist, _ = _queries(tiny_building, tmp_path, GOOD[:1])
    out = tmp_path / "out"
    assert cli(qdir, tiny_building / "db", qlist, out) == 0
    reference = (out / "poses.txt").read_text()
    matches = next(out.glob("matches-*.h5"))
    matches.write_bytes(matches.read_bytes()[:1000])  # truncated
    pose_file = next(out.glob("pose-*.h5"))
    parts = pose_file.with_suffix(".parts")
    parts.mkdir()
    (parts / ("0" * 40 + ".h5")).write_bytes(b"")  # a zero-byte part (power cut before flush)
    pose_file.unlink()
    assert cli(qdir, tiny_building / "db", qlist, out) == 0
    assert (out / "poses.txt").read_text() == reference
    assert list(out.glob("matches-*.h5.corrupt-*"))


# 7. names the poses file must quote ---------------------------------------------------------------------
def test_query_name_with_spaces_round_trips_to_the_evaluator(cli, tiny_building, tmp_path, capsys):
    qdir, qlist, cams = _queries(tiny_building, tmp_path, ())
    shutil.copy(tiny_building / "queries" / "images" / GOOD[0], qdir / "my query.jpg")
    qlist.write_text(f"'my query.jpg' {cams[GOOD[0]].to_line()}\n")
    gt = tmp_path / "gt.txt"
    gt.write_text((tiny_building / "queries" / "poses_gt.txt").read_text().replace(GOOD[0], "'my query.jpg'"))
    out = tmp_path / "out"
    assert cli(qdir, tiny_building / "db", qlist, out) == 0
    assert evaluate_inloc.cli(["--gt", str(gt), "--gt-format", "poses", "--poses", str(out / "poses.txt"),
                               "--json", str(tmp_path / "r.json")]) == 0
    assert "my query.jpg" in read_poses(out / "poses.txt")
    assert json.loads((tmp_path / "r.json").read_text())["recall"]["all"][-1] > 0


# 8. resources and arguments -----------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_resource_limits_and_argument_checks(cli, tiny_building, tmp_path, capsys, monkeypatch):
    qdir, qlist, cams = _queries(tiny_building, tmp_path, GOOD[:1])
    big = np.zeros((600, 800, 3), np.uint8)  # 0.48 Mpx, over a 0.2 Mpx limit
    cv2.imwrite(str(qdir / "big.png"), big)
    qlist.write_text(qlist.read_text() + f"big.png {cams[GOOD[0]].scaled(800, 600).to_line()}\n")
    monkeypatch.setenv("NCLOC_MAX_MEGAPIXELS", "0.2")
    out = tmp_path / "out"
    assert cli(qdir, tiny_building / "db", qlist, out) == 0
    assert "over the limit" in _errors(out, "big.png")
    assert GOOD[0] in read_poses(out / "poses.txt")
    capsys.readouterr()
    # numeric options are range-checked by argparse with one line
    with pytest.raises(SystemExit) as e:
        verify_shortlist.cli(["--pairs", "p", "--db", "d", "--query-dir", "q", "--out", "o", "--image-size", "0"])
    assert e.value.code == 2 and "must be > 0" in capsys.readouterr().err
    # the evaluator warns when no name matches the ground truth
    other = tmp_path / "other.txt"
    other.write_text((out / "poses.txt").read_text().replace(GOOD[0], "renamed.jpg"))
    evaluate_inloc.cli(["--gt", str(tiny_building / "queries" / "poses_gt.txt"), "--gt-format", "poses",
                        "--poses", str(other)])
    assert "warning: none of the" in capsys.readouterr().err
    # a refused checkpoint: one line naming the file and the class, exit 2, never executed
    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": _Evil()}, evil)
    assert cli(qdir, tiny_building / "db", qlist, tmp_path / "out2", "--ncnet-weights", str(evil)) == 2
    cap = capsys.readouterr()
    err = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and str(evil) in err[0] and "disallowed class" in err[0]
    assert "executed" not in cap.out
