"""Shortlist spatial verification (pose.verify_shortlist): mutual NN, cell centres, re-sorting, CLI (retrieval.rerank)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from localize.core.errors import ConfigError
from pose.verify_shortlist import (
    ShortlistVerifier,
    VerifyConfig,
    cell_centers,
    mutual_nn,
    verify_config,
    verify_shortlist,
)
from pose.verify_shortlist import cli as verify_cli

ROOT = Path(__file__).resolve().parents[1]


def test_mutual_nn_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 37, generator=g), dim=0)
    b = torch.nn.functional.normalize(torch.randn(16, 29, generator=g), dim=0)
    ia, ib = mutual_nn(a, b)
    s = (a.T @ b).numpy()
    expect = [(i, int(np.argmax(s[i]))) for i in range(37) if int(np.argmax(s[:, int(np.argmax(s[i]))])) == i]
    assert sorted(zip(ia.tolist(), ib.tolist())) == sorted(expect)
    assert len(expect) > 0


def test_cell_centers_cover_the_image_in_colmap_convention():
    # a 2 x 4 grid on a 40 x 80 image: cells are 20 x 20 px, centres at 10, 30, ...
    xy = cell_centers(np.arange(8), (2, 4), (40, 80))
    assert np.allclose(xy[0], [10, 10]) and np.allclose(xy[3], [70, 10]) and np.allclose(xy[4], [10, 30])


def test_verify_shortlist_sorts_by_inliers_and_keeps_retrieval_order_on_ties():
    short = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]
    out = verify_shortlist(short, {"a": 5, "b": 40, "c": 5, "d": 0})
    assert out == [("b", 40), ("a", 5), ("c", 5), ("d", 0)]


def test_verify_config_from_dict_rejects_unknown_keys():
    assert verify_config({"image_size": 240, "max_error_cells": 1.5}) == VerifyConfig(image_size=240)
    with pytest.raises(ConfigError, match="verify.imagesize"):
        verify_config({"imagesize": 240})


@pytest.fixture(scope="module")
def tiny(tiny_building) -> Path:
    return tiny_building


def _far_views(tiny: Path, query: str, n: int) -> list[str]:
    """Database images that do not see any of what the query sees (co-visibility < 2 %)."""
    from datasets.rgbd_folder import read_rgbd_folder
    from datasets.synthetic import view_covisibility

    q = {r.name: r for r in read_rgbd_folder(tiny / "queries")}[query]
    far = [d.name for d in read_rgbd_folder(tiny / "db") if view_covisibility(q, d) < 0.02]
    return far[:: max(1, len(far) // n)][:n]


def test_verifier_ranks_the_overlapping_view_first(tiny):
    from datasets.database import load_database
    from localize.core.formats import read_query_list
    from localize.core.records import load_rgb

    db = load_database(tiny / "db", "rgbd")
    cams = read_query_list(tiny / "queries" / "queries_with_intrinsics.txt")
    meta = json.loads((tiny / "queries" / "queries_meta.json").read_text())
    # the queries with most overlap with their best database view
    queries = sorted(meta, key=lambda q: -meta[q]["best_covisibility"])[:3]
    ver = ShortlistVerifier(VerifyConfig(image_size=256), db)
    firsts, margins = 0, []
    for q in queries:
        best = meta[q]["best_db"]
        short = [(n, 1.0) for n in _far_views(tiny, q, 4)] + [(best, 0.5)]
        inl = ver.inliers(load_rgb(tiny / "queries" / "images" / q), cams[q], [n for n, _ in short])
        firsts += verify_shortlist(short, inl)[0][0] == best
        margins.append(inl[best] - max(v for n, v in inl.items() if n != best))
    # at 256 px (32 x 24 cells) non-overlapping views still reach ~15-25 chance inliers; the overlapping
    # view is moved from last to first for most of the queries
    assert firsts >= 2, margins
    assert sum(margins) > 0, margins


def test_cli_writes_reranked_pairs(tiny, tmp_path):
    from localize.core.formats import read_pairs, write_pairs

    meta = json.loads((tiny / "queries" / "queries_meta.json").read_text())
    q = max(meta, key=lambda k: meta[k]["best_covisibility"])
    pairs = {q: [(n, 1.0) for n in _far_views(tiny, q, 3)] + [(meta[q]["best_db"], 0.1)]}
    write_pairs(tmp_path / "short.txt", pairs)
    r = subprocess.run([sys.executable, "-m", "retrieval.rerank", "--pairs", str(tmp_path / "short.txt"),
                        "--db", str(tiny / "db"), "--query-dir", str(tiny / "queries" / "images"),
                        "--queries-list", str(tiny / "queries" / "queries_with_intrinsics.txt"),
                        "--image-size", "256", "--out", str(tmp_path / "reranked.txt"), "--with-scores"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(len(line.split()) == 3 for line in (tmp_path / "reranked.txt").read_text().splitlines())
    out = read_pairs(tmp_path / "reranked.txt")
    assert list(out) == [q] and len(out[q]) == 4
    assert [s for _, s in out[q]] == sorted((s for _, s in out[q]), reverse=True)


def test_cli_pairs_that_resolve_to_nothing_fail_naming_the_name(tiny, tmp_path, caplog):
    (tmp_path / "hloc.txt").write_text("query/iphone7/nope.png database/cutouts/x.png\n")
    rc = verify_cli(["--pairs", str(tmp_path / "hloc.txt"), "--db", str(tiny / "db"), "--query-dir",
                     str(tiny / "queries" / "images"), "--queries-list", str(tiny / "queries" / "queries_with_intrinsics.txt"),
                     "--out", str(tmp_path / "reranked.txt")])  # in-process: -m retrieval.rerank runs above
    err = caplog.text  # the error line is logged
    assert rc == 2 and "query/iphone7/nope.png" in err and "--name-style hloc" in err, err
    assert not (tmp_path / "reranked.txt").exists()


def test_verifier_reads_each_point_map_once_and_repeats_itself(tiny):
    import dataclasses
    from collections import Counter

    from datasets.database import load_database
    from localize.core.formats import read_query_list
    from localize.core.records import load_rgb

    calls: Counter = Counter()

    def counted(rec):
        def loader():
            calls[rec.name] += 1
            return rec.xyz_loader()
        return dataclasses.replace(rec, xyz_loader=loader)

    db = {n: counted(r) for n, r in load_database(tiny / "db", "rgbd").items()}
    cams = read_query_list(tiny / "queries" / "queries_with_intrinsics.txt")
    names, queries = sorted(db)[:3], sorted(cams)[:2]
    ver = ShortlistVerifier(VerifyConfig(image_size=128), db)
    first = [ver.inliers(load_rgb(tiny / "queries" / "images" / q), cams[q], names) for q in queries]
    again = ShortlistVerifier(VerifyConfig(image_size=128), db).inliers(
        load_rgb(tiny / "queries" / "images" / queries[0]), cams[queries[0]], names)
    assert again == first[0] and any(v > 0 for r in first for v in r.values())
    assert calls == Counter({n: 2 for n in names})  # once per verifier, whatever the number of queries
