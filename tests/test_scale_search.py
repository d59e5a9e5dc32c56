"""Scale search for hard queries: queries with weak verification are matched across scales, the others not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import copy_caches, tiny_pipeline_conf

from localize import run as runmod
from localize.core.errors import ConfigError
from localize.pipeline import workers
from localize.pipeline.presets import build_config
from matching import match as match_mod

pytestmark = pytest.mark.slow  # end-to-end runs of the pipeline


def _two_queries(tiny: Path, tmp: Path) -> Path:
    lines = (tiny / "queries" / "queries_with_intrinsics.txt").read_text().splitlines()[:2]
    path = tmp / "queries.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(tiny: Path, out: Path, qlist: Path, below: int, monkeypatch) -> tuple[list[tuple[int, int]], int]:
    """Run the pipeline with scale search below ``below`` inliers: image heights of each pyramid call, pose tasks."""
    calls: list[tuple[int, int]] = []
    poses: list[int] = []
    real, real_pose = match_mod.match_pyramid, workers.estimate_candidates

    def counting_pose(*a, **k):
        poses.append(1)
        return real_pose(*a, **k)

    monkeypatch.setattr(workers, "estimate_candidates", counting_pose)

    def counting(model, img_a, img_b, *a, **k):
        calls.append((img_a.shape[0], img_b.shape[0]))
        return real(model, img_a, img_b, *a, **k)

    monkeypatch.setattr(match_mod, "match_pyramid", counting)
    conf = tiny_pipeline_conf(160)  # small: each searched pair is matched three times
    conf["scale_search"] = {"scales": [0.7071, 1.0, 1.4142], "below_inliers": below}
    runmod.main(conf, tiny / "queries" / "images", tiny / "db", out, "rgbd", qlist)
    return calls, len(poses)


def test_weak_queries_are_matched_across_scales(tiny_building, tiny_run, tmp_path, monkeypatch):
    qlist = _two_queries(tiny_building, tmp_path)
    out = copy_caches(tiny_run.out, tmp_path / "run")  # the session run's retrieval vocabulary and descriptors
    calls, _ = _run(tiny_building, out, qlist, 10**6, monkeypatch)  # every verified query is 'weak'
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    searched = [entry for entry in logs if entry["verified"]]
    assert searched and len(calls) == 3 * len(searched)  # num_pairs = 3 per query
    assert (out / "poses.txt").read_text().strip()
    # a threshold no query falls below: the same export folder rematches single-scale and redoes their poses
    calls, pose_tasks = _run(tiny_building, out, qlist, 1, monkeypatch)
    assert calls == [] and pose_tasks == len(searched)
    assert (out / "poses.txt").read_text().strip()
    # the same again: everything cached
    assert _run(tiny_building, out, qlist, 1, monkeypatch) == ([], 0)


def test_scale_search_config_is_checked():
    conf = tiny_pipeline_conf(256)
    conf["scale_search"] = {"scales": [1.0], "below_inliers": 60}
    with pytest.raises(ConfigError, match="scale_search.scales"):
        build_config(conf)
    conf["scale_search"] = {"scales": [0.7, 1.0], "below": 60}
    with pytest.raises(ConfigError, match="below"):
        build_config(conf)
    assert build_config("default").scale_search is not None
