"""End-to-end matching on synthetic shifted images, refinement, CLI (HDF5 + plot), evaluation helpers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from localize.core.geometry import Camera, Pose
from matching.evaluate import depth_ground_truth, match_accuracy
from matching.match import main, match_images, read_matches_h5, resized_shape
from matching.model import build_ncnet

SHIFT = np.array([13.0, 7.0])  # B(x) = A(x - SHIFT): a point x of A is at x + SHIFT in B


def textured_pair(w: int = 192, h: int = 144) -> tuple[np.ndarray, np.ndarray]:
    """Random blurred texture A and B = A translated by SHIFT (pixels), RGB uint8."""
    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur(rng.random((h + 40, w + 40)).astype(np.float32), (0, 0), 5.0)
    big = ((big - big.mean()) / big.std() * 50 + 128).clip(0, 255).astype(np.uint8)
    a = big[20:20 + h, 20:20 + w]
    b = big[20 - 7:20 - 7 + h, 20 - 13:20 - 13 + w]
    return np.repeat(a[..., None], 3, 2), np.repeat(b[..., None], 3, 2)


@pytest.fixture(scope="module")
def mutual_model() -> torch.nn.Module:
    """Dense RootSIFT + correlation + mutual NN (no learned weights)."""
    return build_ncnet(consensus=False)


def test_resized_shape() -> None:
    assert resized_shape(480, 640, 400, 16) == (288, 400)
    assert resized_shape(600, 800, 400, 32) == (288, 384)
    assert resized_shape(2400, 3200, 3200, 32) == (2400, 3200)


def test_match_images_shift_and_refine(mutual_model: torch.nn.Module) -> None:
    a, b = textured_pair()
    m = match_images(mutual_model, a, b, image_size=192, max_matches=200)
    assert set(m) >= {"keypoints0", "keypoints1", "scores"} and len(m["scores"]) == 200
    err = np.linalg.norm(m["keypoints1"] - m["keypoints0"] - SHIFT, axis=1)
    assert np.mean(err <= 8) > 0.8  # within one 8 px cell
    r = match_images(mutual_model, a, b, image_size=192, max_matches=200, refine=True)
    assert np.allclose(r["keypoints0"], m["keypoints0"])  # A keypoints are kept
    err_r = np.linalg.norm(r["keypoints1"] - r["keypoints0"] - SHIFT, axis=1)
    assert np.mean(err_r <= 0.5) > 0.8 and np.median(err_r) < np.median(err)


def test_match_images_untrained_consensus_and_relocalize() -> None:
    a, b = textured_pair()
    model = build_ncnet(relocalization_k=2)
    m = match_images(model, a, b, image_size=192)
    assert len(m["scores"]) > 0 and np.all(np.diff(m["scores"]) <= 0)
    for kp, img in ((m["keypoints0"], a), (m["keypoints1"], b)):
        assert kp.min() >= 0 and np.all(kp.max(0) <= [img.shape[1], img.shape[0]])


def test_cli_writes_h5_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = textured_pair()
    pa, pb = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(pa), a[..., ::-1])
    cv2.imwrite(str(pb), b[..., ::-1])
    out, plot = tmp_path / "m.h5", tmp_path / "m.png"
    rc = main([str(pa), str(pb), "--image-size", "128", "--no-consensus", "--out", str(out), "--plot", str(plot)])
    assert rc == 0
    n = int(capsys.readouterr().out.split()[0])
    d = read_matches_h5(out)
    assert d["keypoints0"].shape == (n, 2) and d["keypoints1"].shape == (n, 2) and d["scores"].shape == (n,)
    assert plot.stat().st_size > 1000
    assert main([str(tmp_path / "missing.png"), str(pb)]) == 2


def test_match_accuracy() -> None:
    kp0 = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]])
    kp1 = kp0 + SHIFT + np.array([[0.5, 0.0], [3.0, 0.0], [7.0, 0.0], [0.0, 0.0]])

    def gt(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return uv + SHIFT, np.array([True, True, True, False])

    r = match_accuracy(kp0, kp1, gt)
    assert r["n_valid"] == 3
    assert r["within_2px"] == pytest.approx(1 / 3) and r["within_4px"] == pytest.approx(2 / 3)
    assert r["within_8px"] == pytest.approx(1.0) and r["median_error"] == pytest.approx(3.0)


def test_depth_ground_truth_plane() -> None:
    cam = Camera.pinhole(64, 48, 50.0)
    depth = np.full((48, 64), 2.0)
    pose_a = Pose.identity()
    pose_b = Pose(np.eye(3), np.array([-0.1, 0.0, 0.0]))  # camera B moved +0.1 m along x
    gt = depth_ground_truth(depth, depth, cam, pose_a, cam, pose_b)
    uv = np.array([[32.0, 24.0], [10.5, 5.5]])
    proj, valid = gt(uv)
    assert valid.all()
    assert np.allclose(proj, uv - [50.0 * 0.1 / 2.0, 0.0])  # disparity f * b / z = 2.5 px
