"""Learned dense features: network, InfoNCE training, resume, weight files, packaged weights."""

from __future__ import annotations

import math
from dataclasses import asdict

import cv2
import numpy as np
import pytest
import torch

from localize.core.errors import CheckpointError
from localize.core.torchfile import load_torch_file
from matching.features import FEATURE_NAMES, build_features
from matching.learned_features import (
    LEARNED_FORMAT,
    PACKAGED_LEARNED_WEIGHTS,
    LearnedConfig,
    LearnedFeatures,
    load_learned_features,
    refine_with_descriptors,
    save_learned_weights,
    unrotate_points,
)
from matching.train_features import (
    TrainFeaturesConfig,
    _apply_h,
    _rot_scale,
    _trans,
    info_nce,
    main,
)

TINY = LearnedConfig(channels=32, stride=8, widths=(8, 16, 16, 32))


def texture(seed: int, size: int = 256) -> np.ndarray:
    """Grey uint8 image of random shapes (blob-, edge- and corner-rich)."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 128, np.uint8)
    for _ in range(120):
        c = tuple(int(v) for v in rng.integers(0, size, 2))
        col = int(rng.integers(0, 256))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(img, c, int(rng.integers(3, 25)), col, -1)
        elif kind == 1:
            d = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.line(img, c, d, col, int(rng.integers(1, 4)))
        else:
            s = rng.integers(4, 30, 2)
            cv2.rectangle(img, c, (c[0] + int(s[0]), c[1] + int(s[1])), col, -1)
    return cv2.GaussianBlur(img, (0, 0), 0.8)


def rotated_pair(seed: int, size: int = 128, angle: float = 15.0, scale: float = 1.1):
    """(A, B, points A, points B): B = A rotated / scaled about the centre; GT points inside both."""
    a = texture(seed, size)
    H = _trans(size / 2, size / 2) @ _rot_scale(math.radians(angle), scale) @ _trans(-size / 2, -size / 2)
    b = cv2.warpPerspective(a, H, (size, size), borderMode=cv2.BORDER_REFLECT)
    g = (np.stack(np.meshgrid(np.arange(4, size, 6), np.arange(4, size, 6)), -1).reshape(-1, 2) + 0.5).astype(float)
    pb = _apply_h(H, g - 0.5) + 0.5  # warpPerspective maps OpenCV pixel coordinates
    ok = (pb > 8).all(1) & (pb < size - 8).all(1)
    return a, b, torch.tensor(g[ok], dtype=torch.float32)[None], torch.tensor(pb[ok], dtype=torch.float32)[None]


def as_batch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img)[None, None].float() / 255.0


def test_shapes_stride_normalisation():
    torch.manual_seed(0)
    net = LearnedFeatures(TINY).eval()
    x = torch.rand(2, 3, 64, 96)
    f = net(x)
    assert (net.name, net.stride, net.channels) == ("learned", 8, 32)
    assert f.shape == (2, 32, 8, 12)
    assert torch.allclose(f.norm(dim=1), torch.ones(2, 8, 12), atol=1e-4)
    net4 = LearnedFeatures(LearnedConfig(channels=16, stride=4, widths=(8, 8, 8, 8))).eval()
    assert net4(x[:, :1]).shape == (2, 16, 16, 24)  # grey input accepted as well
    assert "learned" in FEATURE_NAMES
    with pytest.raises(ValueError):
        LearnedConfig(stride=16)


def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    net = LearnedFeatures(TINY)
    a, b, pa, pb = rotated_pair(1)
    ia, ib = as_batch(a), as_batch(b)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        f = net(torch.cat([ia, ib]))
        loss, _ = info_nce(f[:1], f[1:], pa, pb, (128, 128), 8, 0.1, 0.75)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def _photo_folder(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        d = tmp_path / "photos" / split
        d.mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(d / f"{i:04d}.jpg"), texture(10 * i + len(split), 160))
    return tmp_path / "photos"


def _conf(tmp_path, photos, name: str, **kw) -> TrainFeaturesConfig:
    base = dict(out=str(tmp_path / name / "ckpt.pth"), photos=str(photos), crop=64, batch=2, points=32, iterations=4,
                warmup=2, val_pairs=0, log_every=1, checkpoint_every=100, threads=1, seed=3,
                feature=TINY.to_dict())
    base.update(kw)
    return TrainFeaturesConfig(**base)


def test_resume_matches_uninterrupted_run(tmp_path):
    photos = _photo_folder(tmp_path)
    full = main(_conf(tmp_path, photos, "full"))
    assert full["iteration"] == 4 and full["stop"] == "iterations"
    first = main(_conf(tmp_path, photos, "chunks", stop_after=2))
    assert first["iteration"] == 2 and first["stop"] == "chunk"
    second = main(_conf(tmp_path, photos, "chunks", resume=True))
    assert second["iteration"] == 4
    sa, sb = load_torch_file(full["checkpoint"]), load_torch_file(second["checkpoint"])
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    assert sa["optimizer"]["state"][0]["step"] == sb["optimizer"]["state"][0]["step"]
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(sa["optimizer"]["state"][0][k], sb["optimizer"]["state"][0][k])
    # a different seed gives a different model
    other = main(_conf(tmp_path, photos, "other", seed=4))
    so = load_torch_file(other["checkpoint"])
    assert not torch.equal(so["model"]["head.weight"], sa["model"]["head.weight"])


def test_init_starts_from_packaged_weights(tmp_path):
    """--init: the run's first step starts from the given weight file's (dequantised) weights, fresh optimizer;
    a file of other features is refused."""
    photos = _photo_folder(tmp_path)
    first = main(_conf(tmp_path, photos, "first", export=str(tmp_path / "first.pth")))
    start = load_learned_features(first["export"])
    zero = main(_conf(tmp_path, photos, "tuned", init=first["export"], iterations=0, warmup=0))
    tuned0 = load_torch_file(zero["checkpoint"])["model"]
    for k, v in start.state_dict().items():
        assert torch.equal(tuned0[k], v), k
    tuned = main(_conf(tmp_path, photos, "tuned2", init=first["export"], iterations=2, warmup=1))
    assert not torch.equal(load_torch_file(tuned["checkpoint"])["model"]["head.weight"], start.state_dict()["head.weight"])
    with pytest.raises(ValueError, match="differ"):
        main(_conf(tmp_path, photos, "bad", init=first["export"], feature={**TINY.to_dict(), "channels": 8}))


def test_weight_file_roundtrip_through_safe_loader(tmp_path):
    torch.manual_seed(0)
    net = LearnedFeatures(TINY).eval()
    path = save_learned_weights(net, tmp_path / "w.pth", {"iteration": 7})
    raw = load_torch_file(path)
    assert raw["format"] == LEARNED_FORMAT and raw["meta"]["iteration"] == 7
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values() if v.is_floating_point())
    back = load_learned_features(path)
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(back(x), net(x), atol=2e-2)
    torch.save({"format": LEARNED_FORMAT, "config": TINY, "state_dict": {}}, tmp_path / "bad.pth")  # a class
    with pytest.raises(CheckpointError):
        load_learned_features(tmp_path / "bad.pth")


def test_unrotate_points_inverts_rot90():
    img = np.arange(35).reshape(5, 7)
    for k in range(4):
        r = np.rot90(img, k)
        for row in range(r.shape[0]):
            for col in range(r.shape[1]):
                p = unrotate_points(torch.tensor([[col + 0.5, row + 0.5]]), k, img.shape)[0]
                assert img[int(p[1]), int(p[0])] == r[row, col]


def test_descriptor_refinement_recovers_shift():
    torch.manual_seed(0)
    fine = torch.nn.functional.normalize(torch.randn(16, 8, 8), dim=0)
    fa = torch.nn.functional.interpolate(fine[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    fb = torch.roll(fa, shifts=1, dims=2)  # B = A moved right by one cell = 8 px at stride 8
    ka = torch.tensor([[40.0, 60.0], [72.0, 36.0]])
    kb_coarse = ka + torch.tensor([3.0, -2.0])  # off by a few px from the truth (ka + (8, 0))
    kb, sim = refine_with_descriptors(fa, fb, ka, kb_coarse, (128, 128), (128, 128), radius=8.0)
    assert torch.allclose(kb, ka + torch.tensor([8.0, 0.0]), atol=0.6), kb
    assert (sim > 0.99).all()


def test_packaged_weights_build_and_match():
    """The packaged file builds via build_features('learned') and matches a rotated, scaled unseen texture far
    better than the same architecture at random initialisation."""
    assert PACKAGED_LEARNED_WEIGHTS.is_file()
    fe = build_features("learned")
    assert isinstance(fe, LearnedFeatures) and not fe.training
    assert 1_000_000 < sum(p.numel() for p in fe.parameters()) < 10_000_000
    assert PACKAGED_LEARNED_WEIGHTS.stat().st_size < 8_000_000
    a, b, pa, pb = rotated_pair(123, 192, angle=25.0, scale=1.3)

    def nn_acc(net):
        with torch.no_grad():
            fa, fb = net(as_batch(a)), net(as_batch(b))
            _, acc = info_nce(fa, fb, pa, pb, (192, 192), 8, 0.05, 0.75)
        return float(acc)

    torch.manual_seed(0)
    rand = LearnedFeatures(LearnedConfig(**{**asdict(fe.config), "widths": fe.config.widths})).eval()
    trained, untrained = nn_acc(fe), nn_acc(rand)
    assert trained > 0.5 and trained > untrained + 0.2, (trained, untrained)
