"""Each image's features once: features + head = the pairwise path bit for bit, the worker's reuse, the
blocked correlation + 4D max-pool, backbone precision / memory format, and the match-agreement measure."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from localize.pipeline.workers import MatchWorker
from matching.correlation import correlation_4d, correlation_4d_maxpool
from matching.features import FeatureLRU, ImageFeatures, ResNet101Features, resolve_precision
from matching.match import MatchConfig, Matcher, match_agreement, match_images
from matching.model import build_ncnet
from matching.relocalize import maxpool4d
from matching.sparse.match import match_images_sparse


def textures(n: int, w: int = 176, h: int = 128) -> list[np.ndarray]:
    """n overlapping crops (shifted by a few px each) of one blurred random texture, RGB uint8."""
    rng = np.random.default_rng(3)
    big = cv2.GaussianBlur(rng.random((h + 60, w + 60)).astype(np.float32), (0, 0), 4.0)
    big = ((big - big.mean()) / big.std() * 50 + 128).clip(0, 255).astype(np.uint8)
    crops = [big[5 * i:5 * i + h - 8 * (i % 2), 7 * i:7 * i + w] for i in range(n)]
    return [np.repeat(c[..., None], 3, 2) for c in crops]


def assert_same(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert set(got) == set(ref) and len(ref["scores"]) > 0
    for k in ref:
        assert torch.equal(torch.as_tensor(got[k]), torch.as_tensor(ref[k])), k


CONFIGS = [
    {"relocalize": False, "refine": False},
    {"relocalize": True, "refine": True},
    {"sparse": True, "top_k": 5, "relocalize": False, "refine": True, "consensus": False},
    {"sparse": True, "top_k": 5, "relocalize": True, "refine": False, "consensus": False},
]


@pytest.mark.parametrize("options", CONFIGS)
def test_features_once_equal_pairwise(options: dict) -> None:
    """One query's features against two database images (and one database image's against two queries)
    give exactly the pairwise results, which equal the direct match_images / match_images_sparse calls."""
    q1, q2, d1, d2 = textures(4)
    matcher = Matcher(MatchConfig(image_size=160, max_matches=300, **options))
    fq1, fd1, fd2, fq2 = (matcher.features(x) for x in (q1, d1, d2, q2))
    for (fa, a), (fb, b) in [((fq1, q1), (fd1, d1)), ((fq1, q1), (fd2, d2)), ((fq2, q2), (fd1, d1))]:
        pairwise = matcher.match(a, b)
        assert_same(matcher.match_features(fa, fb, a, b), pairwise)
    if not options["refine"]:
        model = matcher.model
        if options.get("sparse"):
            ref = match_images_sparse(model, q1, d1, 160, top_k=5, max_matches=300,
                                      relocalization="hard+soft" if options["relocalize"] else "none")
        else:
            ref = match_images(model, q1, d1, 160, max_matches=300)
        assert_same(matcher.match_features(fq1, fd1), ref)
    else:
        with pytest.raises(ValueError, match="refine needs both images"):
            matcher.match_features(fq1, fd1)


def test_match_worker_reuses_features(tmp_path) -> None:
    """Tasks grouped per query: one backbone pass per query and per database image (LRU across queries,
    with refinement: the database image is still read); the results are the pairwise ones; a zero-MiB
    cache recomputes database features."""
    imgs = textures(4)
    paths = []
    for i, img in enumerate(imgs):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], img[..., ::-1])
    tasks = [(paths[0], paths[2]), (paths[0], paths[3]), (paths[1], paths[2]), (paths[1], paths[3])]
    for cache_mb, want_calls, refine in [(16, 4, True), (0, 6, False)]:
        conf = MatchConfig(image_size=160, relocalize=True, feature_cache_mb=cache_mb, refine=refine)
        worker = MatchWorker(conf)
        calls = []
        worker(tasks[0])
        features = worker._matcher.features
        worker._matcher.features = lambda img, f=features, c=calls: c.append(1) or f(img)
        worker._query = None
        worker.db_features = FeatureLRU(cache_mb * 2**20)
        results = [worker(t) for t in tasks]
        assert len(calls) == want_calls
        for (qa, db), res in zip(tasks, results):
            ref = worker._matcher.match(cv2.imread(qa)[..., ::-1].copy(), cv2.imread(db)[..., ::-1].copy())
            assert np.array_equal(res["keypoints0"], ref["keypoints0"].astype(np.float32))
            assert np.array_equal(res["keypoints1"], ref["keypoints1"].astype(np.float32))
            assert np.array_equal(res["scores"], ref["scores"].astype(np.float32))


def test_float16_feature_store_is_read_back_by_later_workers(tmp_path) -> None:
    """store_db_features: the first worker computes and stores database features (float16), a fresh worker
    (another run) reads them instead of computing them, with the same matches; they agree with float32 ones."""
    imgs = textures(3)
    paths = []
    for i, img in enumerate(imgs):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], img[..., ::-1])
    tasks = [(paths[0], paths[1]), (paths[0], paths[2])]
    conf = MatchConfig(image_size=160, relocalize=True, store_db_features=True)
    runs = []
    for _ in range(2):
        worker = MatchWorker(conf, store_dir=str(tmp_path / "export"))
        worker(tasks[0])  # builds the matcher and the store
        calls = []
        features = worker._matcher.features
        worker._matcher.features = lambda img, f=features, c=calls: c.append(1) or f(img)
        worker._query, worker.db_features = None, FeatureLRU(0)
        runs.append(([worker(t) for t in tasks], len(calls), worker._store))
    (first, calls_first, store_first), (second, calls_second, store_second) = runs
    # first run: the warm-up task stored database image 1, so the query and image 2 are computed; second: the query
    assert calls_first == 2 and calls_second == 1
    assert store_first.misses == 2 and store_first.hits == 1
    assert store_second.hits == 3 and store_second.misses == 0
    assert len(list((tmp_path / "export").glob("db-features-*.parts/*.h5"))) == 2
    for a, b in zip(first, second):
        for k in ("keypoints0", "keypoints1", "scores"):
            assert np.array_equal(a[k], b[k]), k
    plain = MatchWorker(MatchConfig(image_size=160, relocalize=True))
    for t, stored in zip(tasks, second):
        assert match_agreement(stored, plain(t)) >= 0.9
    other = MatchWorker(MatchConfig(image_size=128, relocalize=True, store_db_features=True),
                        store_dir=str(tmp_path / "export"))
    other(tasks[0])
    assert other._store.misses == 1  # another input size: another store, nothing reused


def test_feature_lru_bounded_in_bytes() -> None:
    def item(n: int) -> ImageFeatures:
        return ImageFeatures(torch.zeros(1, 1, 1, n), (1, n), (1, n))  # 4n bytes

    lru = FeatureLRU(100)
    lru.put("a", item(10))
    lru.put("b", item(10))
    assert lru.get("a") is not None  # a is now the most recent
    lru.put("c", item(10))  # 120 bytes > 100: b (least recent) goes
    assert lru.get("b") is None and lru.get("a") is not None and lru.get("c") is not None
    assert lru.nbytes == 80 and len(lru) == 2
    lru.put("big", item(30))  # larger than the bound: not kept, nothing dropped
    assert lru.get("big") is None and len(lru) == 2
    lru.put("a", item(20))  # replaced: 80 + 40 = 120 -> c dropped
    assert lru.get("c") is None and lru.nbytes == 80


@pytest.mark.parametrize("k", [2, 3])
def test_blocked_correlation_maxpool_equals_pooled_full(k: int) -> None:
    """Blocked correlation + max-pool (several blocks, batch 2, many ties) = maxpool4d of the full correlation."""
    g = torch.Generator().manual_seed(k)
    fa = torch.round(torch.rand(2, 4, 2 * k, 3 * k, generator=g, dtype=torch.float64) * 2) / 2
    fb = torch.round(torch.rand(2, 4, 3 * k, k, generator=g, dtype=torch.float64) * 2) / 2
    ref_v, ref_c = maxpool4d(correlation_4d(fa, fb), k)
    cell = 2 * k ** 4 * 3 * 8  # bytes of one pooled cell of A against all of B
    for block_bytes in (1, cell * 2, 2**30):
        v, c = correlation_4d_maxpool(fa, fb, k, block_bytes=block_bytes)
        assert torch.equal(v, ref_v) and torch.equal(c, ref_c)
    v, c = correlation_4d_maxpool(fa, fb, k, method="slab", max_chunk_bytes=1)
    assert torch.equal(v, ref_v) and torch.equal(c, ref_c)
    with pytest.raises(ValueError, match="method"):
        correlation_4d_maxpool(fa, fb, k, method="fused")


@pytest.fixture(scope="module")
def resnet_model() -> torch.nn.Module:
    """NCNet with a random ResNet-101 backbone, correlation + mutual NN only."""
    return build_ncnet(features="resnet101", allow_random_backbone=True, consensus=False)


def test_backbone_precision_and_channels_last(resnet_model: torch.nn.Module) -> None:
    """bfloat16 / channels-last backbone: float32 NCHW output close to the float32 one; precision names."""
    fe = resnet_model.features
    assert isinstance(fe, ResNet101Features)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = fe(x)
        fe.set_compute(torch.float32, channels_last=True)
        cl = fe(x)
        fe.set_compute(torch.bfloat16, channels_last=False)
        bf = fe(x)
    fe.set_compute(torch.float32)
    assert cl.dtype == bf.dtype == torch.float32 and cl.is_contiguous() and bf.shape == ref.shape
    assert torch.allclose(cl, ref, atol=1e-4)
    assert float((bf * ref).sum(1).min()) > 0.95  # cosine per cell (unit vectors)
    assert resolve_precision("float32") == torch.float32 and resolve_precision("bfloat16") == torch.bfloat16
    assert resolve_precision("auto", "cuda") == torch.float32
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8")


def test_match_agreement_counts_common_matches() -> None:
    """Same matches -> 1; a result missing a quarter, or with a quarter moved by one cell -> 0.75; empty -> 1."""
    rng = np.random.default_rng(0)
    kp0 = (rng.integers(0, 50, (40, 2)) * 8 + 4).astype(np.float64)
    kp1 = (rng.integers(0, 50, (40, 2)) * 8 + 4).astype(np.float64)
    ref = {"keypoints0": kp0, "keypoints1": kp1, "scores": np.ones(40)}
    assert match_agreement(ref, ref) == 1.0
    fewer = {k: v[:30] for k, v in ref.items()}
    assert match_agreement(ref, fewer) == 0.75 and match_agreement(fewer, ref) == 0.75
    moved = {**ref, "keypoints1": kp1 + np.where(np.arange(40) < 10, 8.0, 0.0)[:, None]}
    assert match_agreement(ref, moved) == 0.75
    empty = {k: v[:0] for k, v in ref.items()}
    assert match_agreement(empty, empty) == 1.0 and match_agreement(ref, empty) == 0.0


def test_bfloat16_backbone_agreement_small(resnet_model: torch.nn.Module) -> None:
    """The agreement machinery on small images: bfloat16 backbone vs float32 (random backbone weights)."""
    a, b = textures(2, 192, 128)
    ref = match_images(resnet_model, a, b, 192)
    resnet_model.features.set_compute(torch.bfloat16)
    try:
        got = match_images(resnet_model, a, b, 192)
    finally:
        resnet_model.features.set_compute(torch.float32)
    assert len(ref["scores"]) > 20
    assert 0.8 <= match_agreement(ref, got) <= 1.0  # bfloat16 may move a few matches, not most
