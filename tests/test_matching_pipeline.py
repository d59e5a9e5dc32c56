"""End-to-end matching on synthetic shifted images, refinement, CLI (HDF5 + plot), evaluation helpers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from localize.core.config import from_dict
from localize.core.errors import ConfigError
from localize.core.geometry import Camera, Pose
from localize.pipeline.presets import CONFS
from matching.evaluate import depth_ground_truth, match_accuracy
from matching.match import MatchConfig, Matcher, cli, main, match_images, read_matches_h5
from matching.model import build_ncnet
from matching.plot import plot_matches
from matching.preprocess import resized_shape
from matching.refine import RefineConfig, refine_matches, refine_with
from matching.sparse.match import match_images_sparse

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
    rc = cli([str(pa), str(pb), "--image-size", "128", "--no-consensus", "--out", str(out), "--plot", str(plot)])
    assert rc == 0
    n = int(capsys.readouterr().out.split()[0])
    d = read_matches_h5(out)
    assert d["keypoints0"].shape == (n, 2) and d["keypoints1"].shape == (n, 2) and d["scores"].shape == (n,)
    assert plot.stat().st_size > 1000
    assert cli([str(tmp_path / "missing.png"), str(pb)]) == 2
    (tmp_path / "cut.png").write_bytes(pa.read_bytes()[:-20])  # truncated PNG: refused by load_rgb
    assert cli([str(tmp_path / "cut.png"), str(pb)]) == 2


def test_cli_defaults_to_the_searched_learned_path(tmp_path: Path) -> None:
    """No --weights / --features: learned features, B's turn and scale searched, NCC refinement, 640 px; the
    other features keep their single-configuration path; a search that cannot apply is refused."""
    from matching.match import build_parser, conf_from_args

    def conf(*opts: str) -> MatchConfig:
        return conf_from_args(build_parser().parse_args(["a.png", "b.png", *opts]))

    c = conf()
    assert (c.features, c.search, c.refine, c.image_size) == ("learned", True, True, 640)
    assert c.refine_options == RefineConfig(local_affine=12, max_affine_residual=2.0)  # affine-warped patches
    assert c.directions == "mutual" and conf("--directions", "both").directions == "both"
    assert conf("--search", "off").directions == "mutual"  # the learned features' single configuration too
    assert conf("--features", "dense-rootsift").directions is None  # NCNet's both directions
    with pytest.raises(ValueError, match="directions"):
        MatchConfig(directions="one")
    with pytest.raises(ValueError, match="directions"):
        MatchConfig(directions="mutual", sparse=True)
    c = conf("--features", "dense-rootsift")
    assert (c.features, c.search, c.refine, c.image_size) == ("dense-rootsift", False, True, 400)
    assert c.refine_options == RefineConfig()
    assert conf("--max-affine-residual", "0").refine_options == RefineConfig(local_affine=12)
    assert conf("--local-affine", "0").refine_options == RefineConfig()
    assert conf("--features", "dense-rootsift", "--local-affine", "8").refine_options == RefineConfig(
        local_affine=8, max_affine_residual=2.0)
    assert conf("--weights", "ncnet.pth.tar").features is None and not conf("--weights", "ncnet.pth.tar").search
    assert not conf("--relocalize").search and not conf("--no-refine").refine
    with pytest.raises(ValueError, match="search needs dense matching"):
        conf("--search", "on", "--sparse")
    # the default path on files: a turned copy of a texture is matched at the right turn
    a, _ = textured_pair(256, 192)
    b = np.ascontiguousarray(np.rot90(a))  # B = A turned 90 degrees counter-clockwise
    pa, pb, out = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "m.h5"
    cv2.imwrite(str(pa), a[..., ::-1])
    cv2.imwrite(str(pb), b[..., ::-1])
    assert cli([str(pa), str(pb), "--image-size", "256", "--out", str(out)]) == 0
    d = read_matches_h5(out)
    assert d["transform"][0] == 270.0 and "ncc" in d  # B turned 270 degrees back upright
    ka, kb = d["keypoints0"], d["keypoints1"]
    truth = np.stack([ka[:, 1], a.shape[1] - ka[:, 0]], 1)  # (x, y) of A -> B for a 90-degree counter-clockwise turn
    assert np.median(np.linalg.norm(kb - truth, axis=1)) < 1.5


def test_main_library_entry(tmp_path: Path) -> None:
    """main(conf, paths) returns the matches of Matcher on the files and writes them (HDF5, attrs)."""
    a, b = textured_pair()
    pa, pb = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(pa), a[..., ::-1])
    cv2.imwrite(str(pb), b[..., ::-1])
    conf = MatchConfig(image_size=128, consensus=False, max_matches=50)
    m = main(conf, pa, pb, out=tmp_path / "o" / "m.h5", plot=tmp_path / "o" / "m.png")
    ref = Matcher(conf).match(a, b)
    d = read_matches_h5(tmp_path / "o" / "m.h5")
    for key in ("keypoints0", "keypoints1", "scores"):
        assert np.array_equal(m[key], ref[key]) and np.array_equal(d[key], ref[key])
    assert len(m["scores"]) == 50 and (tmp_path / "o" / "m.png").stat().st_size > 1000


def test_match_config_presets_and_unknown_key() -> None:
    """Every pipeline preset's 'matching' dict builds a MatchConfig with the same values; unknown keys are named."""
    for name, preset in CONFS.items():
        conf = from_dict(MatchConfig, preset["matching"])
        for key, value in preset["matching"].items():
            assert getattr(conf, key) == value, (name, key)
        assert conf.sparse == bool(preset["matching"].get("sparse", False))
        assert conf.refine_options == RefineConfig()
    conf = from_dict(MatchConfig, {"refine": True, "refine_options": {"radius": 3.0, "min_ncc": 0.2}})
    assert conf.refine_options == RefineConfig(radius=3.0, min_ncc=0.2)
    with pytest.raises(ConfigError, match="top_kk"):
        from_dict(MatchConfig, {"top_kk": 3})
    with pytest.raises(ConfigError, match="refine_options.radiuss"):
        from_dict(MatchConfig, {"refine_options": {"radiuss": 3.0}})
    with pytest.raises(ConfigError, match="reloc_mode"):
        from_dict(MatchConfig, {"reloc_mode": "soft"})


def test_matcher_dispatch_matches_direct_calls() -> None:
    """Matcher = match_images (dense) or match_images_sparse + refine_with given both images' matching cells
    (sparse), bit for bit, on images of different sizes; refine_options reach refine_matches."""
    a, b = textured_pair()
    b = b[:120, :176]
    model = build_ncnet(consensus=False, relocalization_k=2)
    dense = Matcher(MatchConfig(image_size=160, consensus=False, relocalize=True, refine=True, max_matches=300))
    ref = match_images(model, a, b, 160, refine=True, max_matches=300)
    got = dense.match(a, b)
    assert set(got) == set(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)
    sparse = Matcher(MatchConfig(image_size=160, consensus=False, relocalize=True, sparse=True, top_k=5,
                                 refine=True, max_matches=300))
    coarse = match_images_sparse(model, a, b, 160, top_k=5, relocalization="hard+soft", max_matches=300)
    stride = model.features.stride
    ref = refine_with(a, b, coarse, RefineConfig(), stride * max(a.shape[:2]) / 160, stride * max(b.shape[:2]) / 160)
    got = sparse.match(a, b)
    assert set(got) == set(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)
    opts = {"radius": 3.0, "patch": 11, "min_ncc": 0.3, "drop_border": True}
    conf = from_dict(MatchConfig, {"image_size": 160, "consensus": False, "sparse": True, "top_k": 5,
                                   "relocalize": True, "refine": True, "max_matches": 300, "refine_options": opts})
    ref = refine_matches(a, b, coarse, **opts)
    got = Matcher(conf).match(a, b)
    assert 0 < len(got["scores"]) < len(coarse["scores"])  # min_ncc / drop_border removed some
    assert all(np.array_equal(got[k], ref[k]) for k in ref)


def test_dense_mutual_directions_keep_a_subset_of_ncnets_matches() -> None:
    """directions='mutual' on the single-configuration dense path: only matches that are each cell's best both
    ways, a strict subset of NCNet's both-direction matches (same keypoints and scores)."""
    a, b = textured_pair()
    b = b[:120, :176]
    both = Matcher(MatchConfig(image_size=160, consensus=False)).match(a, b)
    mutual = Matcher(MatchConfig(image_size=160, consensus=False, directions="mutual")).match(a, b)
    key = lambda m: set(map(tuple, np.c_[m["keypoints0"], m["keypoints1"], m["scores"]].round(6).tolist()))
    assert 0 < len(mutual["scores"]) < len(both["scores"]) and key(mutual) <= key(both)
    kb = {tuple(k) for k in np.round(mutual["keypoints1"], 6).tolist()}
    assert len(kb) == len(mutual["scores"])  # one match per B cell (and per A cell) when mutual


def test_plot_matches_options(tmp_path: Path) -> None:
    """One PNG writer for both callers: with / without scores, highlight, custom title, nested output folder."""
    a, b = textured_pair()
    kp = np.array([[10.0, 10.0], [50.5, 60.5], [100.0, 20.0]])
    plot_matches(tmp_path / "x" / "m.png", a, b[:100], kp, kp + SHIFT, np.array([0.9, 0.1, 0.5]),
                 highlight=np.array([True, False, True]), title="t", max_lines=2)
    plot_matches(tmp_path / "n.png", a[..., 0], b, kp, kp, max_lines=0)
    assert (tmp_path / "x" / "m.png").stat().st_size > 1000 and (tmp_path / "n.png").stat().st_size > 1000


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
