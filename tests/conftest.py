"""Shared test fixtures: the read-only shared data, one tiny synthetic building per session, small-thread torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datasets.synthetic import ensure_dataset
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
