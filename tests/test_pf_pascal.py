"""PF-Pascal PCK evaluation (matching.eval_pf_pascal) on a tiny folder with known answers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import shared_path

from matching.eval_pf_pascal import cli, dense_matches_b_to_a, evaluate_pf_pascal, pair_pck, transfer_keypoints
from matching.pairs import detect_layout, read_pair_csv

HEADER = "source_image,target_image,class,XA,YA,XB,YB"


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """Multi-scale smoothed noise, RGB uint8."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for s in (2, 5, 11):
        img += cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), s) * s
    img -= img.min()
    return (255 * img / img.max()).astype(np.uint8)


def write_folder(root: Path, dx: int = 36, dy: int = 20) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two pairs: target = source shifted by (dx, dy) px; keypoints 1-based as the PF-Pascal files."""
    (root / "PF-dataset-PASCAL" / "JPEGImages").mkdir(parents=True)
    rows, truth = [], []
    for n in range(2):
        big = textured(260, 300, seed=n)
        src, tgt = big[:200, :240], big[dy:dy + 200, dx:dx + 240]
        a, b = f"PF-dataset-PASCAL/JPEGImages/s{n}.jpg", f"PF-dataset-PASCAL/JPEGImages/t{n}.jpg"
        cv2.imwrite(str(root / a), cv2.cvtColor(src, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
        cv2.imwrite(str(root / b), cv2.cvtColor(tgt, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
        rng = np.random.default_rng(10 + n)
        kb = np.stack([rng.uniform(20, 240 - dx - 20, 8), rng.uniform(20, 200 - dy - 20, 8)], 1)
        ka = kb + [dx, dy]
        f = lambda v: ";".join(f"{x:.6f}" for x in v)
        rows.append(f"{a},{b},{n + 1},{f(ka[:, 0])},{f(ka[:, 1])},{f(kb[:, 0])},{f(kb[:, 1])}")
        truth.append((ka, kb))
    (root / "test_pairs.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return truth


def test_layout_detected(tmp_path: Path) -> None:
    write_folder(tmp_path)
    assert detect_layout(tmp_path / "test_pairs.csv") == "pfpascal"


def test_layout_matches_shared_file(tmp_path: Path) -> None:
    ref = shared_path("pfpascal", "test_pairs.csv")
    write_folder(tmp_path)
    assert (tmp_path / "test_pairs.csv").read_text().splitlines()[0] == ref.read_text().splitlines()[0]


def test_transfer_identity_and_pck() -> None:
    h = w = 10
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    matches = torch.stack([ii, jj], -1)
    kp = np.array([[15.0, 25.0], [50.0, 50.0], [73.3, 12.1]])  # interior of a 100 x 100 image
    out = transfer_keypoints(matches, kp, (100, 100), (100, 100), (h, w))
    np.testing.assert_allclose(out, kp, atol=1e-9)
    # shifted by one cell (10 px) in x
    out = transfer_keypoints(torch.stack([ii, (jj + 1).clamp(max=w - 1)], -1), kp, (100, 100), (100, 100), (h, w))
    np.testing.assert_allclose(out[:, 0], kp[:, 0] + 10, atol=1e-9)
    pck, n = pair_pck(np.array([[0.0, 0.0], [100.0, 100.0], [-1, -1]]), np.array([[9.0, 0.0], [100.0, 111.0],
                                                                                    [0, 0]]), (100, 100))
    assert n == 2 and pck == 0.5  # 9 px * 2.24 = 20.2 <= 22.4; 11 px * 2.24 = 24.6 > 22.4


def test_dense_matches_argmax() -> None:
    corr = torch.zeros(2, 3, 2, 2)
    corr[1, 2, 0, 1] = 5.0
    m = dense_matches_b_to_a(corr)
    assert m[0, 1].tolist() == [1, 2]


def test_pck_known_warp_good_and_wrong_matcher(tmp_path: Path) -> None:
    from matching.model import build_ncnet

    write_folder(tmp_path)
    torch.manual_seed(0)
    model = build_ncnet(consensus=False)  # correlation + mutual NN: exact on a pure translation of texture
    good = evaluate_pf_pascal(model, tmp_path, image_size=160)
    assert good["n_pairs"] == 2 and good["mean_pck"] >= 0.9

    def wrong(ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:  # every B cell -> A's top-left cell
        c = torch.zeros(20, 20, 20, 20)
        c[0, 0] = 1.0
        return c

    bad = evaluate_pf_pascal(wrong, tmp_path, image_size=160)
    assert bad["mean_pck"] <= 0.2


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_folder(tmp_path)
    rc = cli(["--data", str(tmp_path), "--image-size", "160", "--no-consensus", "--out", str(tmp_path / "p.csv")])
    assert rc == 0
    assert "PCK@0.1" in capsys.readouterr().out
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3


def test_shared_test_pairs_parse() -> None:
    ref = shared_path("pfpascal", "test_pairs.csv")
    pairs = read_pair_csv(ref)
    assert len(pairs) == 299
    assert all(p.keypoints_a is not None and p.keypoints_a.shape == p.keypoints_b.shape for p in pairs)
