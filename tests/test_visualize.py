"""Run pictures: the scene PLY (points + camera markers) reads back in open3d, match plots are written."""

import numpy as np
import pytest

from localize.core.geometry import look_at
from localize.pipeline.visualize import camera_marker, write_ply
from matching.plot import plot_matches


def test_ply_reads_back_in_open3d(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 3))
    cols = rng.integers(0, 256, size=(500, 3), dtype=np.uint8)
    marker = camera_marker(look_at([1, 2, 3], [0, 0, 0]))
    np.testing.assert_allclose(marker[0], [1, 2, 3])
    write_ply(tmp_path / "s.ply", np.concatenate([pts, marker]), np.concatenate([cols, np.zeros((len(marker), 3), np.uint8)]))
    try:
        import open3d as o3d
    except (ImportError, OSError) as e:  # open3d 0.20 needs libusb-1.0 (see README)
        pytest.skip(f"open3d unavailable: {e}")
    pc = o3d.io.read_point_cloud(str(tmp_path / "s.ply"))
    np.testing.assert_allclose(np.asarray(pc.points)[:500], pts, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pc.colors)[:500] * 255, cols, atol=0.5)


def test_plot_matches_writes_png(tmp_path):
    a = np.zeros((40, 60, 3), np.uint8)
    kp = np.array([[10.5, 10.5], [30.5, 20.5]])
    plot_matches(tmp_path / "m.png", a, a, kp, kp + 1, np.array([0.9, 0.1]))
    assert (tmp_path / "m.png").stat().st_size > 1000
