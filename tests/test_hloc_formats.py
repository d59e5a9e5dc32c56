"""hloc's layouts without hloc: structure of the files we write, files in hloc's layout read back, names."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from datasets.colmap import read_depth_bin, write_depth_bin
from localize.core.errors import DatabaseError, PairsError
from localize.core.hloc import (
    from_hloc_name,
    names_to_pair,
    pair_matches_to_hloc,
    read_global_descriptors,
    read_matches,
    resolve_pairs,
    to_hloc_name,
    write_features,
    write_global_descriptors,
    write_matches,
)

Q = "query/iphone7/IMG_0731.JPG"
R1 = "database/cutouts/DUC1/024/DUC_cutout_024_0_0.jpg"
R2 = "database/cutouts/DUC2/101/DUC_cutout_101_30_0.jpg"
SIZES = {Q: (40, 30), R1: (16, 12), R2: (16, 12)}


def _structure(path) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """{object path: (dtype or 'group', ndim-only shape)} of an HDF5 file, plus keypoint attributes."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str, obj.ndim, tuple(sorted(obj.attrs)))
            else:
                out[name] = ("group", None, ())
        f.visititems(visit)
    return out


def _hloc_reference_files(tmp_path, kp, m0, s0):
    """Files written the way hloc's extract_features / match_features write them (float32 keypoints, as_half=False)."""
    with h5py.File(tmp_path / "ref-features.h5", "w") as fd:
        for name, k in kp.items():
            grp = fd.create_group(name)
            grp.create_dataset("keypoints", data=k.astype(np.float32))
            grp.create_dataset("image_size", data=np.array(SIZES[name]))  # numpy int64 (w, h) as hloc
            grp["keypoints"].attrs["uncertainty"] = np.float32(1.0)
    with h5py.File(tmp_path / "ref-matches.h5", "w") as fd:
        for (q, r), m in m0.items():
            grp = fd.create_group(names_to_pair(q, r))
            grp.create_dataset("matches0", data=m.astype(np.int16))  # torch .short()
            grp.create_dataset("matching_scores0", data=s0[(q, r)].astype(np.float16))  # torch .half()


def _case():
    rng = np.random.default_rng(0)
    kq = np.c_[rng.uniform(0.5, 39.5, 6), rng.uniform(0.5, 29.5, 6)]
    kr1 = np.c_[rng.uniform(0.5, 15.5, 6), rng.uniform(0.5, 11.5, 6)]
    kr2 = kr1[::-1].copy()
    kq2 = np.vstack([kq[:4], [[0.2, 5.0]]])  # last one within half a pixel of the border: dropped
    kr2b = np.vstack([kr2[:4], [[3.0, 3.0]]])
    return {(Q, R1): (kq, kr1, np.linspace(0.9, 0.4, 6)),
            (Q, R2): (kq2, kr2b, np.linspace(0.8, 0.3, 5))}


def test_export_has_hlocs_layout_and_reads_back(tmp_path):
    pairs = _case()
    hm = pair_matches_to_hloc(pairs, SIZES)
    assert hm.dropped_border == 1 and hm.dropped_duplicate == 0
    assert len(hm.keypoints[Q]) == 6  # the 4 query keypoints of pair 2 are those of pair 1: merged
    write_features(tmp_path / "features.h5", hm)
    write_matches(tmp_path / "matches.h5", hm)
    _hloc_reference_files(tmp_path, hm.keypoints, hm.matches0, hm.scores0)
    assert _structure(tmp_path / "features.h5") == _structure(tmp_path / "ref-features.h5")
    assert _structure(tmp_path / "matches.h5") == _structure(tmp_path / "ref-matches.h5")
    with h5py.File(tmp_path / "matches.h5", "r") as f:
        # names_to_pair: '/' inside names -> '-', the two names joined by '/' (nested groups)
        assert set(f) == {"query-iphone7-IMG_0731.JPG"}
        assert set(f["query-iphone7-IMG_0731.JPG"]) == {R1.replace("/", "-"), R2.replace("/", "-")}
        g = f[names_to_pair(Q, R1)]
        assert set(g) == {"matches0", "matching_scores0"}
        assert g["matches0"].dtype == np.int16 and g["matches0"].shape == (6,)  # padded to the query's keypoints
        assert g["matching_scores0"].dtype == np.float16
    with h5py.File(tmp_path / "features.h5", "r") as f:
        assert f[Q]["keypoints"].dtype == np.float32 and f[Q]["keypoints"].shape == (6, 2)
        assert f[Q]["image_size"][()].tolist() == [40, 30] and f[Q]["image_size"].dtype == np.int64
        # hloc's pixels: the top-left pixel centre is (0, 0) = the project's (0.5, 0.5)
        np.testing.assert_allclose(np.sort(f[Q]["keypoints"][()], axis=0),
                                   np.sort(pairs[(Q, R1)][0] - 0.5, axis=0).astype(np.float32))
    back = read_matches(tmp_path / "matches.h5", [(Q, R1), (Q, R2)], tmp_path / "features.h5")
    for pair, (kq, kr, sc) in pairs.items():
        n = len(kq) - (1 if pair == (Q, R2) else 0)  # the border match of pair 2 is left out
        bq, br, bs = back[pair]
        assert len(bq) == n
        order, ref = np.lexsort(bq.T[::-1]), np.lexsort(kq[:n].T[::-1])
        np.testing.assert_allclose(bq[order], kq[:n][ref], atol=1e-5)
        np.testing.assert_allclose(br[order], kr[:n][ref], atol=1e-5)
        np.testing.assert_allclose(bs[order], sc[:n][ref], atol=1e-3)


def test_reads_files_written_in_hlocs_layout(tmp_path):
    """matches0 + features (reversed pair storage too), and the dense matchers' keypoints0/1 groups."""
    kp = {Q: np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), R1: np.array([[7.0, 8.0], [9.0, 10.0]])}
    with h5py.File(tmp_path / "features.h5", "w") as fd:
        for name, k in kp.items():
            fd.create_group(name).create_dataset("keypoints", data=k.astype(np.float32))
    with h5py.File(tmp_path / "matches.h5", "w") as fd:
        g = fd.create_group(names_to_pair(R1, Q))  # stored as (r, q): read back swapped
        g.create_dataset("matches0", data=np.array([2, -1], np.int16))
        g.create_dataset("matching_scores0", data=np.array([0.7, 0.0], np.float16))
        d = fd.create_group(names_to_pair(Q, R2))  # hloc's match_dense: keypoints per pair
        d.create_dataset("keypoints0", data=np.array([[10.0, 11.0]], np.float32))
        d.create_dataset("keypoints1", data=np.array([[12.0, 13.0]], np.float32))
        d.create_dataset("scores", data=np.array([0.5], np.float32))
    m = read_matches(tmp_path / "matches.h5", [(Q, R1), (Q, R2)], tmp_path / "features.h5")
    np.testing.assert_allclose(m[(Q, R1)][0], [[5.5, 6.5]])  # query keypoint 2, +0.5 px
    np.testing.assert_allclose(m[(Q, R1)][1], [[7.5, 8.5]])
    np.testing.assert_allclose(m[(Q, R1)][2], [0.7], atol=1e-3)
    np.testing.assert_allclose(m[(Q, R2)][0], [[10.5, 11.5]])
    np.testing.assert_allclose(m[(Q, R2)][1], [[12.5, 13.5]])
    with pytest.raises(PairsError, match="features.h5"):
        read_matches(tmp_path / "matches.h5", [(Q, R1)])
    with pytest.raises(PairsError, match=names_to_pair(Q, "other.jpg")):
        read_matches(tmp_path / "matches.h5", [(Q, "other.jpg")], tmp_path / "features.h5")


def test_global_descriptors_roundtrip(tmp_path):
    desc = {Q: np.arange(4.0), R1: -np.arange(4.0)}
    write_global_descriptors(tmp_path / "g.h5", desc, SIZES)
    with h5py.File(tmp_path / "g.h5", "r") as f:
        assert f[Q]["global_descriptor"].dtype == np.float32 and f[Q]["global_descriptor"].shape == (4,)
    back = read_global_descriptors(tmp_path / "g.h5")
    assert set(back) == {Q, R1} and np.array_equal(back[R1], desc[R1])


def test_name_styles_and_unresolved_pairs():
    assert to_hloc_name("DUC1/024/x.jpg", "db") == "database/cutouts/DUC1/024/x.jpg"
    assert to_hloc_name("IMG_0731.JPG", "query") == Q
    assert to_hloc_name("IMG_0731.JPG", "query", "inloc") == "IMG_0731.JPG"
    assert from_hloc_name(Q, "query", {"IMG_0731.JPG"}) == "IMG_0731.JPG"
    assert from_hloc_name(Q, "query", {"iphone7/IMG_0731.JPG"}) == "iphone7/IMG_0731.JPG"
    assert from_hloc_name(R1, "db", {"DUC1/024/x.jpg"}) is None
    pairs = {Q: [(R1, float("nan")), (R2, float("nan"))], "query/iphone7/other.JPG": [(R1, float("nan"))]}
    dbs = {R1[len("database/cutouts/"):]}
    out = resolve_pairs(pairs, ["IMG_0731.JPG"], dbs, "p.txt", "hloc")
    assert list(out) == ["IMG_0731.JPG"] and [d for d, _ in out["IMG_0731.JPG"]] == ["DUC1/024/DUC_cutout_024_0_0.jpg"]
    with pytest.raises(PairsError, match=r"p.txt: query 'query/iphone7/IMG_0731.JPG'.*--name-style hloc"):
        resolve_pairs(pairs, ["IMG_0731.JPG"], dbs, "p.txt", "inloc")
    with pytest.raises(PairsError, match=r"database image 'database/cutouts/DUC2/.*'database/cutouts/<floor>"):
        resolve_pairs({Q: [(R2, 0.0)]}, ["IMG_0731.JPG"], dbs, "p.txt", "hloc")


def test_colmap_depth_map_layout(tmp_path):
    """COLMAP's read_array: header 'w&h&c&', then float32 reshaped (w, h, c) in Fortran order = x fastest."""
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    depth[1, 2] = 0
    (tmp_path / "d.bin").write_bytes(b"4&3&1&" + np.transpose(depth, (1, 0)).reshape(-1, order="F").tobytes())
    back = read_depth_bin(tmp_path / "d.bin")
    assert back.shape == (3, 4) and np.isnan(back[1, 2])
    np.testing.assert_array_equal(np.nan_to_num(back), depth)
    write_depth_bin(tmp_path / "e.bin", back)
    assert (tmp_path / "e.bin").read_bytes() == (tmp_path / "d.bin").read_bytes()
    (tmp_path / "bad.bin").write_bytes(b"4&3&1&" + b"\0" * 8)
    with pytest.raises(DatabaseError, match="bad.bin"):
        read_depth_bin(tmp_path / "bad.bin")
