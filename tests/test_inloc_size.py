"""Real InLoc conditions, reduced: the tiny building's queries upsampled to 4032 x 3024 (camera scaled with
them) against its small cutouts, with the ``default`` preset as shipped, localize as the small queries do."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from conftest import TinyRun, copy_caches

from localize import run as runmod
from localize.core.formats import read_poses, read_query_list, write_query_list
from localize.core.geometry import pose_error
from localize.pipeline.presets import preset

pytestmark = pytest.mark.slow  # an end-to-end run of the pipeline

QUERIES = ("query_0000.jpg", "query_0005.jpg")  # localized by the small-size run
PHONE = (4032, 3024)  # InLoc's iPhone 7 photos


def test_default_preset_localizes_phone_size_queries(tiny_building: Path, tiny_run: TinyRun, tmp_path: Path) -> None:
    cams = read_query_list(tiny_building / "queries" / "queries_with_intrinsics.txt")
    qdir = tmp_path / "queries"
    qdir.mkdir()
    for name in QUERIES:
        img = cv2.imread(str(tiny_building / "queries" / "images" / name))
        cv2.imwrite(str(qdir / name), cv2.resize(img, PHONE, interpolation=cv2.INTER_CUBIC),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    write_query_list(tmp_path / "list.txt", {n: cams[n].scaled(*PHONE) for n in QUERIES})
    conf = preset("default")  # as shipped, only less work: 3 matched images, 3 PnP candidates
    conf["num_pairs"], conf["pose"]["top_n"] = 3, 3
    copy_caches(tiny_run.out, tmp_path / "out")  # the same retrieval vocabulary (fitted on the database only)
    runmod.main(conf, qdir, tiny_building / "db", tmp_path / "out", "rgbd", tmp_path / "list.txt")
    gt = read_poses(tiny_building / "queries" / "poses_gt.txt")
    est = read_poses(tmp_path / "out" / "poses.txt")
    errors = {n: pose_error(est[n].pose, gt[n].pose) if n in est else None for n in QUERIES}
    assert all(e is not None and e[0] <= 0.25 and e[1] <= 10.0 for e in errors.values()), errors
