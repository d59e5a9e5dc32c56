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


def test_fit_pca_exact_whitening_and_randomized_projection():
    from retrieval.pca import fit_pca

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((400, 48)) * np.linspace(3.0, 0.1, 48)).astype(np.float32)
    pca = fit_pca(x, 8, whiten_eps=0.0)
    assert pca.proj.shape == (8, 48) and pca.mean.dtype == np.float32 and pca.dim == 8
    y = (x - pca.mean) @ pca.proj.T
    assert np.allclose(y.var(0, ddof=1), 1.0, atol=1e-3)  # whitened: unit variance per component
    plain = fit_pca(x, 8)
    assert np.allclose(np.linalg.norm(plain.proj, axis=1), 1.0, atol=1e-5)  # no whitening: orthonormal rows
    assert fit_pca(x[:3], 8).dim == 2  # at most N - 1 components
    with pytest.raises(ValueError):
        fit_pca(x[:1], 8)
    rnd = fit_pca(x, 8, randomized=True, max_rows=300, seed=0)
    assert rnd.proj.shape == (8, 48)
    # the same 8-D subspace as the exact PCA where 8 directions dominate
    x8 = (rng.standard_normal((400, 48)) * np.r_[np.linspace(10.0, 5.0, 8), np.full(40, 0.1)]).astype(np.float32)
    sv = np.linalg.svd(fit_pca(x8, 8, randomized=True, max_rows=300).proj @ fit_pca(x8, 8).proj.T, compute_uv=False)
    assert np.allclose(sv, 1.0, atol=1e-3)


@pytest.mark.skipif(index_mod.faiss is None, reason="faiss not installed")
def test_pca_transform_applies_the_fitted_pca():
    from retrieval.pca import fit_pca

    x, _ = _data(500, 32)
    pca = fit_pca(x, 8, randomized=True, seed=0)
    lt = index_mod.pca_transform(pca)
    assert np.allclose(lt.apply(x[:20]), (x[:20] - pca.mean) @ pca.proj.T, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path, backend):
    import os

    if backend == "faiss" and index_mod.faiss is None:
        pytest.skip("faiss not installed")
    db, q = _data(200, 16)
    idx = build_index(db, "flat", backend=backend)
    out = idx.save(tmp_path / "sub" / "index.bin")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["index.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would create it
    back = GlobalIndex.load(out)
    assert np.array_equal(back.search(q, 5)[1], idx.search(q, 5)[1])


def test_atomic_write_rejects_partial_modes(tmp_path):
    from localize.core.formats import atomic_path, atomic_write

    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "a"):
        pass
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "y") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []
