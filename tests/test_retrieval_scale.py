"""Retrieval at scale: chunked IVF-PQ from the descriptor cache, memory-mapped loading, sharded search."""

from __future__ import annotations

import numpy as np

from localize.core.cache import StageCache
from retrieval import scale
from retrieval.index import exact_search

DIM, N = 128, 2000


def _rows(n=N, stream=1):
    gen = scale.SyntheticDescriptors(dim=DIM, latent=32, components=200, seed=1, block=512)
    return np.concatenate(list(gen.chunks(n, stream)))


def conf(train_size: int = 1500, pq_bits: int = 5) -> scale.ScaleConfig:
    return scale.ScaleConfig(pca_dim=64, nlist=16, pq_m=32, pq_bits=pq_bits, nprobe=16, train_size=train_size)


def test_synthetic_descriptors_are_deterministic_and_normalised():
    gen = scale.SyntheticDescriptors(dim=DIM, latent=32, components=200, seed=1, block=512)
    a = gen.block_rows(3)
    b = scale.SyntheticDescriptors(dim=DIM, latent=32, components=200, seed=1, block=512).block_rows(3)
    assert np.array_equal(a, b) and a.shape == (512, DIM)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(gen.block_rows(3, stream=2), a)


def test_chunked_build_from_cache_mmap_and_recall(tmp_path):
    n = 1000  # rows through the cache (one part file each: the slow part); 16-centroid PQ codes fit that many
    x = _rows(n)
    cache = StageCache(tmp_path, "global-descriptors", {"method": "test"})
    names = [f"img_{i:05d}.jpg" for i in range(n)]
    for i, name in enumerate(names[:700]):
        cache.put(f"db/{name}", {"descriptor": x[i], "path": name})
    cache.put("query/q0.jpg", {"descriptor": x[0], "path": "q0"})  # another role: not indexed
    cache.finalize()
    for i, name in enumerate(names[700:], 700):  # some entries still as parts (an unfinalized run)
        cache.put(f"db/{name}", {"descriptor": x[i], "path": name})

    got = [(ns, c) for ns, c in scale.iter_cached_descriptors(cache, "db", chunk_size=300)]
    assert [len(ns) for ns, _ in got] == [300] * 3 + [100]
    assert [n for ns, _ in got for n in ns] == names
    assert np.array_equal(np.concatenate([c for _, c in got]), x)

    idx_path, names_path = scale.build_from_cache(cache, tmp_path / "db.ivfpq", conf(train_size=n, pq_bits=4), chunk_size=300)
    assert scale.read_names(names_path) == names
    index = scale.load_index(idx_path, mmap=True, nprobe=16)
    assert index.ntotal == n and scale.ivf_of(index).nlist == 16
    q = _rows(64, stream=2)
    _s, ids = scale.search(index, q, 10)
    _, ids_exact = exact_search(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ids_exact)])
    assert recall > 0.5, recall  # PCA 128->64 and 16-byte PQ codes on overlapping clusters
    # a database row finds itself among its 10 nearest
    _, self_ids = scale.search(index, x[:50], 10)
    assert np.mean([i in row for i, row in enumerate(self_ids)]) > 0.9
    # memory-mapped and in-memory loading answer identically
    assert np.array_equal(scale.search(scale.load_index(idx_path, mmap=False, nprobe=16), q, 10)[1], ids)


def test_shards_merge_to_the_single_index_result(tmp_path):
    x = _rows()
    trained = scale.train_index(x[:1500], conf(), len(x))
    single = scale.empty_copy(trained)
    scale.add_chunks(single, [x[:700], x[700:]])
    scale.set_nprobe(single, 16)
    chunks = [x[i:i + 450] for i in range(0, N, 450)]
    paths = scale.build_shards(trained, chunks, rows_per_shard=800, out_dir=tmp_path / "shards")
    assert len(paths) == 3
    assert [scale.load_index(p).ntotal for p in paths] == [800, 800, 400]
    q = _rows(32, stream=2)
    s1, i1 = scale.search(single, q, 10)
    s2, i2 = scale.search_shards(paths, q, 10, nprobe=16)
    assert np.array_equal(i1, i2)
    assert np.allclose(s1, s2, atol=1e-5)


def test_merge_topk_handles_missing_hits():
    a = (np.array([[0.9, 0.5, -np.inf]], np.float32), np.array([[3, 1, -1]]))
    b = (np.array([[0.7, 0.6, 0.1]], np.float32), np.array([[10, 11, 12]]))
    s, i = scale.merge_topk([a, b], 4)
    assert i.tolist() == [[3, 10, 11, 1]]
    assert np.allclose(s, [[0.9, 0.7, 0.6, 0.5]])


def test_float16_memmap_rows_stream_and_exact_search_match_numpy(tmp_path):
    x = _rows(1000)
    db = scale.write_rows(tmp_path / "db.f16", [x[:300], x[300:]])
    assert isinstance(db, np.memmap) and db.shape == x.shape and db.dtype == np.float16
    x16 = x.astype(np.float16).astype(np.float32)  # what the file holds
    chunks = list(scale.iter_row_chunks(db, chunk=128))
    assert [s for s, _ in chunks] == list(range(0, 1000, 128))
    assert all(c.dtype == np.float32 for _, c in chunks)
    assert np.array_equal(np.concatenate([c for _, c in chunks]), x16)
    assert np.array_equal(np.concatenate([c for _, c in scale.iter_row_chunks(db[100:], 300)]), x16[100:])  # a view

    q = _rows(20, stream=2)
    s, ids = scale.exact_search_chunked(db, q, 10, chunk=128)
    sim = q @ x16.T
    ref = np.argsort(-sim, axis=1, kind="stable")[:, :10]
    assert np.array_equal(ids, ref)
    assert np.allclose(s, np.take_along_axis(sim, ref, 1), atol=1e-5)
