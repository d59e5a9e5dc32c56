"""Weakly supervised NCNet training (matching.train) and pair-file readers (matching.pairs)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import shared_path

from matching.pairs import detect_layout, load_pairs, positive_pairs, read_pair_csv
from matching.train import (
    TrainConfig,
    arrange_batch,
    make_batches,
    matching_score,
    parse_config,
    place_key,
    roll_negatives,
    train,
    weak_loss,
)


def plain_score(corr: np.ndarray) -> np.ndarray:
    """Per-pair score with explicit loops (float64)."""
    b, _, ha, wa, hb, wb = corr.shape
    out = np.zeros(b)
    for n in range(b):
        c = corr[n, 0].reshape(ha * wa, hb * wb)
        sb = [np.exp(c[:, j]).max() / np.exp(c[:, j]).sum() for j in range(hb * wb)]
        sa = [np.exp(c[i]).max() / np.exp(c[i]).sum() for i in range(ha * wa)]
        out[n] = 0.5 * (np.mean(sa) + np.mean(sb))
    return out


def test_matching_score_vs_plain() -> None:
    g = torch.Generator().manual_seed(0)
    corr = torch.rand(3, 1, 3, 4, 2, 5, generator=g, dtype=torch.float64) * 4
    np.testing.assert_allclose(matching_score(corr).numpy(), plain_score(corr.numpy()), rtol=1e-12)


def test_roll_negatives_by_one() -> None:
    x = torch.arange(4).view(4, 1, 1, 1).float()
    assert roll_negatives(x).flatten().tolist() == [1, 2, 3, 0]  # pair i gets source i + 1 (np.roll(-1))


class _Identity(torch.nn.Module):
    def filter_correlation(self, c: torch.Tensor) -> torch.Tensor:
        return c * 3.0


def test_weak_loss_vs_plain() -> None:
    g = torch.Generator().manual_seed(1)
    fa = torch.nn.functional.normalize(torch.rand(3, 8, 2, 3, generator=g, dtype=torch.float64), dim=1)
    fb = torch.nn.functional.normalize(torch.rand(3, 8, 3, 2, generator=g, dtype=torch.float64), dim=1)
    loss, pos, neg = weak_loss(_Identity(), fa, fb)
    A, B = fa.numpy(), fb.numpy()
    corr_pos = 3 * np.einsum("bcij,bckl->bijkl", A, B)[:, None]
    corr_neg = 3 * np.einsum("bcij,bckl->bijkl", A[[1, 2, 0]], B)[:, None]
    sp, sn = plain_score(corr_pos).mean(), plain_score(corr_neg).mean()
    assert abs(pos.item() - sp) < 1e-12 and abs(neg.item() - sn) < 1e-12
    assert abs(loss.item() - (sn - sp)) < 1e-12
    with pytest.raises(ValueError):
        weak_loss(_Identity(), fa[:1], fb[:1])


def test_batches_deterministic_and_places_apart() -> None:
    keys = ["p0", "p0", "p0", "p1", "p1", "p2", "p2", "p3"]
    b1 = make_batches(8, 4, keys, seed=3, epoch=1)
    assert b1 == make_batches(8, 4, keys, seed=3, epoch=1)
    assert b1 != make_batches(8, 4, keys, seed=3, epoch=2) or b1 != make_batches(8, 4, keys, seed=4, epoch=1)
    assert sorted(i for b in b1 for i in b) == list(range(8))
    order = arrange_batch([0, 1, 3, 4, 5, 7], keys, np.random.default_rng(0))
    assert all(keys[order[j]] != keys[order[(j + 1) % len(order)]] for j in range(len(order)))
    assert make_batches(5, 4, keys, 0, 1)[-1].__len__() == 5  # a last batch of 1 joins the previous one


def _write_dataset(root: Path, n_anchor: int = 3) -> None:
    """Synthetic-layout folder: anchors of 2 views (shifted crops of one texture) + a negative row."""
    img_dir = root / "train" / "images"
    img_dir.mkdir(parents=True)
    rows = {"train": [], "val": []}
    for a in range(n_anchor + 1):
        rng = np.random.default_rng(a)
        big = cv2.GaussianBlur(rng.random((80, 100, 3)).astype(np.float32), (0, 0), 2)
        big = (255 * (big - big.min()) / (big.max() - big.min())).astype(np.uint8)
        for v, (dy, dx) in enumerate([(0, 0), (6, 10)]):
            cv2.imwrite(str(img_dir / f"a{a:03d}_v{v}.jpg"), big[dy:dy + 60, dx:dx + 80])
        split = "val" if a == n_anchor else "train"
        rows[split].append(f"train/images/a{a:03d}_v0.jpg,train/images/a{a:03d}_v1.jpg,1,0")
    rows["train"].append("train/images/a000_v0.jpg,train/images/a001_v1.jpg,0,0")
    rows["val"].append(f"train/images/a{n_anchor:03d}_v0.jpg,train/images/a000_v1.jpg,1,0")
    (root / "pairs").mkdir()
    for split, r in rows.items():
        (root / "pairs" / f"{split}_pairs.csv").write_text("source_image,target_image,class,flip\n" + "\n".join(r)
                                                           + "\n")


def test_two_step_training_checkpoint_and_resume(tmp_path: Path) -> None:
    from matching.checkpoint import load_checkpoint_file
    from matching.model import build_ncnet

    data = tmp_path / "data"
    _write_dataset(data)
    out = tmp_path / "run" / "ck.pth.tar"
    base = ["--data", str(data), "--image-size", "48", "32", "--batch-size", "2", "--steps-per-epoch", "2",
            "--lr", "1e-2", "--seed", "5", "--out", str(out)]
    s = train(parse_config(base + ["--epochs", "1"]))
    assert s["train_pairs"] == 3 and s["val_pairs"] == 2 and out.exists()
    ck = load_checkpoint_file(out)
    assert ck["epoch"] == 1 and list(ck["args"].ncons_kernel_sizes) == [3, 3]
    assert list(ck["args"].ncons_channels) == [16, 1] and ck["args"].seed == 5
    assert ck["optimizer"]["state"] and len(ck["train_loss"]) == 1
    assert any(k.startswith("NeighConsensus.conv.0.weight") for k in ck["state_dict"])
    assert ck["state_dict"]["NeighConsensus.conv.0.weight"].shape == (3, 16, 1, 3, 3, 3)  # official (k,out,in,...)
    model = build_ncnet(weights=out)
    init = build_ncnet(weights=None, features="dense-rootsift")
    w_loaded = model.neigh_consensus.conv[0].weight
    assert not torch.equal(w_loaded, init.neigh_consensus.conv[0].weight)
    # same seed, same command -> identical weights
    out2 = tmp_path / "run2" / "ck.pth.tar"
    train(parse_config(base[:-1] + [str(out2), "--epochs", "1"]))
    assert torch.equal(build_ncnet(weights=out2).neigh_consensus.conv[0].weight, w_loaded)
    # resume continues at epoch 2 from the saved state
    s2 = train(parse_config(base + ["--epochs", "2", "--resume", str(out)]))
    assert [e["epoch"] for e in s2["epochs"]] == [2]
    ck2 = load_checkpoint_file(out)
    assert ck2["epoch"] == 2 and len(ck2["train_loss"]) == 2 and ck2["train_loss"][0] == ck["train_loss"][0]
    assert (out.parent / "best_ck.pth.tar").exists()


def test_synthetic_layout_reader(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    rows = read_pair_csv(tmp_path / "pairs" / "train_pairs.csv")
    assert len(rows) == 4 and rows[-1].cls == 0
    pairs, layout, path = load_pairs(tmp_path, "train")
    assert layout == "synthetic" and len(pairs) == 3 and all(p.cls == 1 for p in pairs)
    assert place_key(pairs[0], "synthetic") == "train/images/a000"


def test_shared_pfpascal_and_ivd_readers() -> None:
    pf, ivd = shared_path("pfpascal"), shared_path("ivd", "val_pairs_head200.csv")
    test = read_pair_csv(pf / "test_pairs.csv")
    assert detect_layout(pf / "test_pairs.csv") == "pfpascal" and len(test) == 299
    assert test[0].keypoints_a.shape[1] == 2 and test[0].source.startswith("PF-dataset-PASCAL/")
    trn = read_pair_csv(pf / "train_pairs.csv")
    assert detect_layout(pf / "train_pairs.csv") == "pfpascal"
    assert len(positive_pairs(trn, "pfpascal")) == len(trn) and any(p.flip for p in trn)
    rows = read_pair_csv(ivd)
    assert len(rows) == 199 and detect_layout(ivd) == "ivd"
    assert len(positive_pairs(rows, "ivd")) == 199
    assert place_key(rows[0], "ivd") == str(Path(rows[0].source).parent)


def test_cli_errors(tmp_path: Path) -> None:
    from matching.train import cli

    with pytest.raises(SystemExit):
        cli(["--batch-size", "1"])
    assert cli(["--data", str(tmp_path), "--out", str(tmp_path / "x.pth.tar")]) == 2  # no pairs there


def test_train_config_presets() -> None:
    """--preset fills image size / batch / epochs / lr unless given; the paper preset is the default."""
    assert parse_config([]) == TrainConfig() == TrainConfig.from_preset("paper")
    cpu = parse_config(["--preset", "cpu", "--epochs", "7"])
    assert (cpu.image_size, cpu.batch_size, cpu.epochs, cpu.lr) == ((120, 90), 8, 7, 5e-3)
    assert TrainConfig(ncons_kernel_sizes=[5, 5], ncons_channels=[8, 1]).ncons_kernel_sizes == (5, 5)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="same length"):
        TrainConfig(ncons_kernel_sizes=(3, 3, 3))
    with pytest.raises(SystemExit):
        parse_config(["--image-size", "1", "2", "3"])
