"""Shared test fixtures: the read-only shared data, one tiny synthetic building and one pipeline run on it per
session (its caches seed other runs), small-thread torch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

from datasets.synthetic import ensure_dataset
from localize import run as runmod
from localize.pipeline.presets import preset

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("OMP_NUM_THREADS", "2")


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test (the reason names the path) when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


@pytest.fixture
def tum_root() -> Path:
    """../shared/data/tum_fr1_xyz (skips when absent)."""
    return shared_path("tum_fr1_xyz")


@pytest.fixture
def inloc_shared() -> Path:
    """../shared/data/inloc (skips when absent)."""
    return shared_path("inloc")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reads ../shared/data (its fixtures or ``shared_path``) as ``realdata``."""
    for item in items:
        uses_fixture = {"tum_root", "inloc_shared"} & set(getattr(item, "fixturenames", ()))
        source = getattr(getattr(item, "function", None), "__code__", None)
        calls_helper = source is not None and "shared_path" in source.co_names
        if uses_fixture or calls_helper:
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(scope="session")
def tiny_building(tmp_path_factory) -> Path:
    """The tiny synthetic building (seed 0), generated once per test session; read-only for tests."""
    return ensure_dataset(tmp_path_factory.mktemp("synthetic") / "tiny", seed=0, size="tiny")


def tiny_pipeline_conf(image_size: int = 256) -> dict:
    """The pipeline's 'fast' preset at the tiny synthetic building's sizes (shared by pipeline tests)."""
    conf = preset("fast")
    conf["retrieval"]["top_k"] = 5
    conf["num_pairs"] = 3
    conf["matching"]["image_size"] = image_size
    conf["pose"]["top_n"] = 3
    return conf


class TinyRun(NamedTuple):
    """A finished pipeline run: its export folder (read-only: copy it to change it) and its summary."""

    out: Path
    summary: runmod.RunSummary


@pytest.fixture(scope="session")
def tiny_run(tiny_building, tmp_path_factory) -> TinyRun:
    """One pipeline run on the whole tiny building (``tiny_pipeline_conf(256)``, hloc names, an hloc export in
    ``hloc/``), shared by the tests that read a run's outputs, its caches and its hloc files."""
    out = tmp_path_factory.mktemp("tiny_run")
    summary = runmod.main(tiny_pipeline_conf(256), tiny_building / "queries" / "images", tiny_building / "db", out,
                          "rgbd", tiny_building / "queries" / "queries_with_intrinsics.txt", name_style="hloc",
                          export_hloc=out / "hloc")
    return TinyRun(out, summary)


# the weight-free retrieval's vocabulary and global descriptors: keyed by configuration and image contents only
RETRIEVAL_CACHES = ("retrieval-vocabulary-*.h5", "global-descriptors-*.h5")


def copy_caches(run: Path, out: Path, patterns: tuple[str, ...] = RETRIEVAL_CACHES) -> Path:
    """Copy a finished run's cache files matching ``patterns`` into export folder ``out`` (created); returns ``out``.

    With the default patterns a later run on the tiny building's images skips fitting the retrieval vocabulary
    and describing the database (the tiny run computed them; retrieval tests compute them fresh)."""
    out.mkdir(parents=True, exist_ok=True)
    for pattern in patterns:
        for f in run.glob(pattern):
            shutil.copy(f, out / f.name)
    return out
