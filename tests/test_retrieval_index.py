"""FAISS flat index vs the exact fallback; IVF path; persistence."""

import numpy as np
import pytest

import retrieval.index as index_mod
from retrieval.index import GlobalIndex, build_index, exact_search


@pytest.fixture(autouse=True)
def one_thread():
    """faiss/OpenMP on the shared 2-core box is much faster single-threaded."""
    if index_mod.faiss is None:
        yield
        return
    n = index_mod.faiss.omp_get_max_threads()
    index_mod.faiss.omp_set_num_threads(1)
    yield
    index_mod.faiss.omp_set_num_threads(n)


def _data(n=3000, d=32, nq=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, d))
    db = centres[rng.integers(0, 30, n)] + 0.3 * rng.standard_normal((n, d))
    db = (db / np.linalg.norm(db, axis=1, keepdims=True)).astype(np.float32)
    q = db[rng.choice(n, nq, replace=False)] + 0.05 * rng.standard_normal((nq, d)).astype(np.float32)
    return db, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.skipif(index_mod.faiss is None, reason="faiss not installed")
def test_flat_and_fallback_same_neighbours(monkeypatch):
    db, q = _data()
    s1, i1 = build_index(db).search(q, 10)
    assert build_index(db).backend == "faiss"
    monkeypatch.setattr(index_mod, "faiss", None)  # as if faiss were not installed
    idx = build_index(db)
    assert idx.backend == "torch"
    s2, i2 = idx.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    _s3, i3 = exact_search(db, q, 10, chunk=700)  # chunked merge gives the same result
    np.testing.assert_array_equal(i1, i3)
    # IVF falls back to exact search without faiss
    _s4, i4 = build_index(db, "ivf").search(q, 10)
    np.testing.assert_array_equal(i1, i4)


def test_fallback_env_and_k_larger_than_db(monkeypatch):
    monkeypatch.setenv("RETRIEVAL_NO_FAISS", "1")
    db, q = _data(n=7, nq=3)
    s, i = build_index(db).search(q, 10)
    assert i.shape == (len(q), 7) and (np.diff(s, axis=1) <= 1e-6).all()


@pytest.mark.skipif(index_mod.faiss is None, reason="faiss not installed")
def test_ivf_path_runs_and_recalls(tmp_path):
    db, q = _data(n=4000)
    exact = build_index(db).search(q, 10)[1]
    ivf = build_index(db, "ivf", nlist=32, nprobe=8)
    assert ivf.kind == "ivf" and ivf.is_trained and ivf.ntotal == 4000
    _s, i = ivf.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, exact)])
    assert recall > 0.8
    path = ivf.save(tmp_path / "ivf.faiss")
    again = GlobalIndex.load(path, mmap=True, nprobe=8)
    assert again.kind == "ivf" and again.nlist == 32
    np.testing.assert_array_equal(again.search(q, 10)[1], i)
    pq = build_index(db, "ivfpq", nlist=16, nprobe=16, pq_m=8, pq_bits=6)
    assert pq.search(q, 5)[1].shape == (len(q), 5)


def test_gpu_only_when_faiss_sees_one():
    idx = GlobalIndex(8, use_gpu=True)
    assert idx.use_gpu == index_mod.gpu_available()


@pytest.mark.skipif(index_mod.faiss is None, reason="faiss not installed")
def test_ivfsq8_matches_numpy_exact_when_all_lists_probed(tmp_path):
    db, q = _data(n=2000, d=64)
    sim = q @ db.T
    ref = np.argsort(-sim, axis=1, kind="stable")[:, :10]
    sq = build_index(db, "ivfsq8", nlist=16, nprobe=16)
    assert sq.kind == "ivfsq8" and sq.ntotal == 2000
    s, i = sq.search(q, 10)
    assert np.mean(i[:, 0] == ref[:, 0]) == 1.0  # 8-bit codes keep the nearest neighbour
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ref)]) > 0.9
    assert np.abs(s - np.take_along_axis(sim, i, 1)).max() < 0.02  # scores within the 8-bit quantisation error
    again = GlobalIndex.load(sq.save(tmp_path / "sq.faiss"), nprobe=16)
    assert again.kind == "ivfsq8"
    np.testing.assert_array_equal(again.search(q, 10)[1], i)
