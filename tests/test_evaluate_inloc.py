"""InLoc evaluation: published figures on the real files, JSON layout, floor rule, poses-file ground truth."""

import json

import numpy as np
import pytest
import scipy.io

from localize import evaluate_inloc
from localize.core.formats import PoseEntry, read_poses, write_poses
from localize.core.geometry import Pose, look_at

PUBLISHED = {"DUC1": [40.9, 58.1, 70.2], "DUC2": [35.9, 54.2, 69.5]}


def test_published_inloc_figures(inloc_shared, tmp_path):
    gt, est = inloc_shared / "refposes.mat", inloc_shared / "densePV_top10_shortlist_cvpr18.mat"
    res = evaluate_inloc.main(gt, est, json_path=tmp_path / "r.json", plot_path=tmp_path / "c.png")
    for floor, ref in PUBLISHED.items():
        assert [round(v, 1) for v in res[floor].recall] == ref
    doc = json.loads((tmp_path / "r.json").read_text())
    assert set(doc) == {"thresholds", "recall", "median_position_m", "median_rotation_deg", "num_queries"}
    assert doc["thresholds"] == [[0.25, 10], [0.5, 10], [1.0, 10]]
    assert doc["num_queries"] == {"DUC1": 198, "DUC2": 131, "all": 329}
    assert (tmp_path / "c.png").stat().st_size > 1000
    # the same after conversion to an 8-column poses file + top-1 side file, and to the 9-column variant
    evaluate_inloc.cli(["--gt", str(gt), "--poses", str(est), "--write-poses", str(tmp_path / "p.txt"),
                        "--write-top1", str(tmp_path / "t.txt")])
    assert all(len(line.split()) == 8 for line in (tmp_path / "p.txt").read_text().splitlines())
    assert not any(e.top1 for e in read_poses(tmp_path / "p.txt").values())
    res2 = evaluate_inloc.main(gt, tmp_path / "p.txt", top1_path=tmp_path / "t.txt")
    write_poses(tmp_path / "p9.txt", evaluate_inloc.read_estimates(tmp_path / "p.txt", tmp_path / "t.txt"),
                with_top1=True)
    res3 = evaluate_inloc.main(gt, tmp_path / "p9.txt")
    for floor, ref in PUBLISHED.items():
        assert [round(v, 1) for v in res2[floor].recall] == ref
        assert [round(v, 1) for v in res3[floor].recall] == ref
    # without the top-1 images the floor rule cannot apply: wrong-floor queries count by their pose error
    res4 = evaluate_inloc.main(gt, tmp_path / "p.txt")
    assert res4["DUC1"].median_rotation_deg < res["DUC1"].median_rotation_deg


def _refposes(path, groups):
    mdict = {}
    for g, qs in groups.items():
        arr = np.empty(len(qs), dtype=[("queryname", object), ("P", object)])
        for i, (q, pose) in enumerate(qs.items()):
            arr[i] = (q, pose.P)
        mdict[f"{g}_RefList"] = arr
    scipy.io.savemat(path, mdict)


def test_floor_rule_missing_and_thresholds(tmp_path):
    p1, p2, p3 = look_at([0, 0, 0], [1, 0, 0]), look_at([5, 0, 0], [5, 1, 0]), look_at([9, 9, 0], [9, 9, 1])
    _refposes(tmp_path / "gt.mat", {"F1": {"a.jpg": p1, "b.jpg": p2}, "F2": {"c.jpg": p3}})
    moved = Pose.from_cam_to_world(p1.inverse().R, p1.center + [0.3, 0, 0])  # 0.3 m off
    write_poses(tmp_path / "est.txt", {
        "a.jpg": PoseEntry(moved, "F1/000/x.jpg"),
        "b.jpg": PoseEntry(p2, "F2/001/y.jpg"),   # exact, but retrieved on the wrong floor
        # c.jpg missing -> failed
    }, with_top1=True)
    res = evaluate_inloc.main(tmp_path / "gt.mat", tmp_path / "est.txt")
    assert res["F1"].recall == [0.0, 50.0, 50.0]
    assert res["F2"].recall == [0.0, 0.0, 0.0]
    assert res["all"].num_queries == 3 and res["all"].recall[1] == pytest.approx(100 / 3)
    res = evaluate_inloc.main(tmp_path / "gt.mat", tmp_path / "est.txt", thresholds=[(0.31, 1.0)])
    assert res["F1"].recall == [50.0]


def test_poses_ground_truth_has_only_all(tmp_path):
    gt = {f"q{i}.png": look_at([i, 0, 0], [i, 1, 0]) for i in range(4)}
    write_poses(tmp_path / "gt.txt", gt)
    write_poses(tmp_path / "est.txt", {k: v for k, v in gt.items() if k != "q3.png"})
    evaluate_inloc.cli(["--gt", str(tmp_path / "gt.txt"), "--gt-format", "poses", "--poses", str(tmp_path / "est.txt"),
                        "--json", str(tmp_path / "r.json")])
    doc = json.loads((tmp_path / "r.json").read_text())
    assert list(doc["recall"]) == ["all"] and doc["recall"]["all"] == [75.0, 75.0, 75.0]
    assert doc["median_position_m"]["all"] == pytest.approx(0.0, abs=1e-9)
