"""hloc's file layouts (cvg/Hierarchical-Localization), written and read without hloc: names, pairs, h5 files.

* Names: hloc names InLoc images relative to the dataset root (``database/cutouts/DUC1/024/x.jpg``,
  ``query/iphone7/IMG_0731.JPG``); this project names database images relative to ``cutouts/`` and
  queries relative to the query folder (``DUC1/024/x.jpg``, ``IMG_0731.JPG``): name style ``inloc``.
* Pixels: hloc's keypoints put the centre of the top-left pixel at (0, 0); the project's (COLMAP's)
  at (0.5, 0.5): hloc = project - 0.5.
* ``features.h5``: one group per image name (``/`` makes nested groups) with ``keypoints`` (N x 2
  float32, hloc pixels; attribute ``uncertainty``) and ``image_size`` (int64 ``(width, height)``).
* ``matches.h5``: one group per pair named ``names_to_pair(q, r)`` = ``q/r`` with every ``/`` inside a
  name replaced by ``-`` (older files: ``q_r``), holding ``matches0`` (int16, one entry per keypoint
  of ``q``: index into ``r``'s keypoints or -1; int32 when ``r`` has more than 32767 keypoints) and
  ``matching_scores0`` (float16); hloc's dense matchers also store ``keypoints0`` / ``keypoints1``
  (hloc pixels) and ``scores`` per pair.
* ``global-feats.h5``: one group per image name with ``global_descriptor`` (D,) and ``image_size``.
* Pairs: ``q r`` lines (``localize.core.formats.read_pairs`` / ``write_pairs``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from localize.core.errors import PairsError
from localize.core.formats import atomic_path

logger = logging.getLogger(__name__)

NAME_STYLES = ("inloc", "hloc")
HLOC_DB_PREFIX = "database/cutouts/"
HLOC_QUERY_PREFIX = "query/iphone7/"
KEYPOINT_UNCERTAINTY_PX = 1.0  # written as features.h5 keypoints' 'uncertainty' attribute (hloc: detection noise)

Shortlists = dict[str, list[tuple[str, float]]]


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: both names with '/' replaced by '-', joined by ``separator``."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    """hloc's former pair key (joined by '_')."""
    return names_to_pair(name0, name1, separator="_")


def to_hloc_name(name: str, role: str, style: str = "hloc") -> str:
    """A project name ('db' or 'query') in ``style``: unchanged for 'inloc', prefixed by hloc's InLoc folders for 'hloc'."""
    if style not in NAME_STYLES:
        raise ValueError(f"unknown name style {style!r}; use one of {', '.join(NAME_STYLES)}")
    if style == "inloc":
        return name
    return (HLOC_DB_PREFIX if role == "db" else HLOC_QUERY_PREFIX) + name


def from_hloc_name(name: str, role: str, known: Collection[str], style: str = "hloc") -> str | None:
    """The project name of a ``style`` name ('db' or 'query') among ``known``, or None when it resolves to nothing."""
    if style not in NAME_STYLES:
        raise ValueError(f"unknown name style {style!r}; use one of {', '.join(NAME_STYLES)}")
    candidates = [name]
    if style == "hloc":
        prefixes = (HLOC_DB_PREFIX, "cutouts/") if role == "db" else (HLOC_QUERY_PREFIX, "query/")
        candidates = [name[len(p):] for p in prefixes if name.startswith(p)] + [name]
    return next((c for c in candidates if c in known), None)


def expected_form(role: str, style: str, example: str | None) -> str:
    """One phrase describing the expected names of a role in a style, with an example when one is known."""
    where = {("db", "inloc"): "relative to the database's image folder (InLoc: to cutouts/)",
             ("db", "hloc"): f"relative to the dataset root ('{HLOC_DB_PREFIX}<floor>/<scan>/<name>')",
             ("query", "inloc"): "relative to the query folder",
             ("query", "hloc"): f"relative to the dataset root ('{HLOC_QUERY_PREFIX}<name>')"}[(role, style)]
    return where + (f", e.g. {to_hloc_name(example, role, style)!r}" if example else "")


def resolve_pairs(pairs: Mapping[str, Sequence[tuple[str, float]]], query_names: Collection[str],
                  db_names: Collection[str], source: str | Path, name_style: str = "inloc") -> Shortlists:
    """Pairs in ``name_style`` -> {query: [(db, score)]} in project names; PairsError when nothing resolves.

    Queries of the file that are not among ``query_names`` are left out (another run's queries);
    unknown database images are left out with a warning naming the first; a file of which no query,
    or no database image, resolves raises PairsError naming the first unresolved name and the
    expected form.
    """
    qset, dset = set(query_names), set(db_names)
    out: Shortlists = {}
    first_bad_q = first_bad_db = None
    dropped = 0
    for q, lst in pairs.items():
        qn = from_hloc_name(q, "query", qset, name_style)
        if qn is None:
            first_bad_q = first_bad_q or q
            continue
        kept = []
        for d, s in lst:
            dn = from_hloc_name(d, "db", dset, name_style)
            if dn is None:
                first_bad_db = first_bad_db or d
                dropped += 1
                continue
            kept.append((dn, s))
        out[qn] = kept
    hint = "" if name_style == "hloc" else " (names like hloc's 'database/cutouts/...' need --name-style hloc)"
    if not out and first_bad_q is not None:
        raise PairsError(f"{source}: query {first_bad_q!r} is not a query of this run; expected query names "
                         f"{expected_form('query', name_style, min(qset, default=None))}{hint}")
    if out and not any(out.values()) and first_bad_db is not None:
        raise PairsError(f"{source}: database image {first_bad_db!r} is not in the database; expected database names "
                         f"{expected_form('db', name_style, min(dset, default=None))}{hint}")
    if not out:
        raise PairsError(f"{source}: no pairs")
    if dropped:
        logger.warning("%s: %d pairs name database images that are not in the database (first: %s), left out",
                       source, dropped, first_bad_db)
    return out


def to_hloc_pixels(uv: np.ndarray) -> np.ndarray:
    """Project (COLMAP) pixels -> hloc pixels (top-left pixel centre at (0, 0))."""
    return np.asarray(uv, dtype=np.float64) - 0.5


def from_hloc_pixels(uv: np.ndarray) -> np.ndarray:
    """hloc pixels -> project (COLMAP) pixels (top-left pixel centre at (0.5, 0.5))."""
    return np.asarray(uv, dtype=np.float64) + 0.5


@dataclass
class HlocMatches:
    """Per-image keypoints (hloc pixels) and per-pair ``matches0`` / ``matching_scores0``, ready to write."""

    keypoints: dict[str, np.ndarray]  # image name -> N x 2 float32, hloc pixels
    image_sizes: dict[str, tuple[int, int]]  # image name -> (width, height)
    matches0: dict[tuple[str, str], np.ndarray]  # (q, r) -> len(keypoints[q]) indices into keypoints[r], -1 = none
    scores0: dict[tuple[str, str], np.ndarray]  # (q, r) -> len(keypoints[q]) scores, 0 where unmatched
    dropped_border: int = 0  # matches with a keypoint within half a pixel of the image border
    dropped_duplicate: int = 0  # matches whose query keypoint already had a better match in the pair


def pair_matches_to_hloc(pairs: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]],
                         image_sizes: Mapping[str, tuple[int, int]]) -> HlocMatches:
    """Pairwise matches {(q, r): (kp_q, kp_r, scores)} in project pixels -> per-image keypoints + matches0.

    Each image's keypoints are the union of its exact matched positions over all pairs (duplicates
    merged); matches with a keypoint outside [0, W-1] x [0, H-1] in hloc pixels (within half a pixel of
    the border) are dropped, and a query keypoint matched twice in one pair keeps its best score.
    """
    per_image: dict[str, list[np.ndarray]] = {}
    kept: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    border = 0
    for (q, r), (kq, kr, sc) in pairs.items():
        kq, kr = to_hloc_pixels(kq).reshape(-1, 2), to_hloc_pixels(kr).reshape(-1, 2)
        sc = np.asarray(sc, dtype=np.float64).reshape(-1)
        ok = _inside(kq, image_sizes[q]) & _inside(kr, image_sizes[r])
        border += int((~ok).sum())
        kept[(q, r)] = (kq[ok].astype(np.float32), kr[ok].astype(np.float32), sc[ok])
        per_image.setdefault(q, []).append(kept[(q, r)][0])
        per_image.setdefault(r, []).append(kept[(q, r)][1])
    keypoints = {n: np.unique(np.concatenate(v), axis=0).astype(np.float32) if v else np.zeros((0, 2), np.float32)
                 for n, v in per_image.items()}
    out = HlocMatches(keypoints, {n: tuple(image_sizes[n]) for n in keypoints}, {}, {}, border)
    for (q, r), (kq, kr, sc) in kept.items():
        iq, ir = _index_of(keypoints[q], kq), _index_of(keypoints[r], kr)
        dtype = np.int16 if len(keypoints[r]) <= np.iinfo(np.int16).max else np.int32
        m0 = np.full(len(keypoints[q]), -1, dtype=dtype)
        s0 = np.zeros(len(keypoints[q]), dtype=np.float16)
        for j in np.argsort(-sc, kind="stable"):
            if m0[iq[j]] != -1:
                out.dropped_duplicate += 1
                continue
            m0[iq[j]], s0[iq[j]] = ir[j], sc[j]
        out.matches0[(q, r)], out.scores0[(q, r)] = m0, s0
    return out


def _inside(uv: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Mask of hloc pixels within [0, W-1] x [0, H-1] (pixel centres of a W x H image)."""
    w, h = size
    return np.isfinite(uv).all(1) & (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)


def _index_of(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Index of each row of ``rows`` in the sorted unique ``table`` (every row is present)."""
    view = np.dtype((np.void, table.dtype.itemsize * 2))
    t = np.ascontiguousarray(table).view(view).ravel()
    r = np.ascontiguousarray(rows).view(view).ravel()
    order = np.argsort(t)
    return order[np.searchsorted(t[order], r)]


def write_features(path: str | Path, matches: HlocMatches) -> None:
    """Write hloc's ``features.h5`` (keypoints, image_size per image) atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name in sorted(matches.keypoints):
            g = f.create_group(name)
            g.create_dataset("keypoints", data=matches.keypoints[name].astype(np.float32))
            g["keypoints"].attrs["uncertainty"] = np.float32(KEYPOINT_UNCERTAINTY_PX)
            g.create_dataset("image_size", data=np.asarray(matches.image_sizes[name], dtype=np.int64))


def write_matches(path: str | Path, matches: HlocMatches) -> None:
    """Write hloc's ``matches.h5`` (matches0, matching_scores0 per ``names_to_pair`` group) atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for (q, r) in matches.matches0:
            g = f.create_group(names_to_pair(q, r))
            g.create_dataset("matches0", data=matches.matches0[(q, r)])
            g.create_dataset("matching_scores0", data=matches.scores0[(q, r)])


def write_global_descriptors(path: str | Path, descriptors: Mapping[str, np.ndarray],
                             image_sizes: Mapping[str, tuple[int, int]] | None = None, as_half: bool = False) -> None:
    """Write hloc's ``global-feats.h5`` (``<name>/global_descriptor``, float32 or float16 with ``as_half``) atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name in sorted(descriptors):
            g = f.create_group(name)
            g.create_dataset("global_descriptor",
                             data=np.asarray(descriptors[name], dtype=np.float16 if as_half else np.float32))
            if image_sizes is not None and name in image_sizes:
                g.create_dataset("image_size", data=np.asarray(image_sizes[name], dtype=np.int64))


def _datasets_by_group(f: h5py.File, dataset: str) -> dict[str, h5py.Dataset]:
    """{group path without the leading '/': dataset} of every group holding ``dataset``."""
    out: dict[str, h5py.Dataset] = {}

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] == dataset:
            out[obj.parent.name.strip("/")] = obj

    f.visititems(visit)
    return out


def read_global_descriptors(path: str | Path) -> dict[str, np.ndarray]:
    """hloc's ``global-feats.h5`` -> {image name: descriptor float32 (D,)}."""
    with h5py.File(path, "r") as f:
        return {n: np.asarray(d[()], dtype=np.float32).reshape(-1)
                for n, d in _datasets_by_group(f, "global_descriptor").items()}


def read_keypoints(path: str | Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Keypoints of ``names`` from hloc's ``features.h5``, in project pixels; PairsError naming a missing image."""
    out = {}
    with h5py.File(path, "r") as f:
        for n in names:
            if n not in f or "keypoints" not in f[n]:
                raise PairsError(f"{path}: no keypoints for image {n!r} (expected the group '{n}/keypoints')")
            out[n] = from_hloc_pixels(f[n]["keypoints"][()]).reshape(-1, 2)
    return out


def _pair_group(f: h5py.File, q: str, r: str) -> tuple[h5py.Group, bool] | None:
    """The group of pair (q, r) in a matches file and whether it is stored reversed (as (r, q)), or None."""
    for key, rev in ((names_to_pair(q, r), False), (names_to_pair(r, q), True),
                     (names_to_pair_old(q, r), False), (names_to_pair_old(r, q), True)):
        if key in f and isinstance(f[key], h5py.Group):
            return f[key], rev
    return None


def read_matches(matches_path: str | Path, pairs: Iterable[tuple[str, str]],
                 features_path: str | Path | None = None) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """hloc matches of ``pairs`` (hloc names) -> {(q, r): (kp_q N x 2, kp_r N x 2, scores N)} in project pixels.

    A pair group with ``keypoints0`` / ``keypoints1`` (hloc's dense matchers) is read as is; one with
    only ``matches0`` needs ``features_path`` for the keypoints. A pair absent from the file raises
    PairsError naming it and the group name expected.
    """
    pairs = list(pairs)
    out = {}
    with h5py.File(matches_path, "r") as f:
        need_kp: set[str] = set()
        groups = {}
        for q, r in pairs:
            found = _pair_group(f, q, r)
            if found is None:
                raise PairsError(f"{matches_path}: no matches for pair ({q}, {r}); expected the group "
                                 f"'{names_to_pair(q, r)}' (hloc's names_to_pair)")
            groups[(q, r)] = found
            if "keypoints0" not in found[0]:
                if "matches0" not in found[0]:
                    raise PairsError(f"{matches_path}: group '{found[0].name}' has neither matches0 nor keypoints0")
                need_kp.update((q, r))
        if need_kp and features_path is None:
            raise PairsError(f"{matches_path}: matches0 without keypoints: give hloc's features.h5 too")
        kps = read_keypoints(features_path, sorted(need_kp)) if need_kp else {}
        for (q, r), (g, rev) in groups.items():
            a, b = (r, q) if rev else (q, r)
            if "keypoints0" in g:
                k0 = from_hloc_pixels(g["keypoints0"][()]).reshape(-1, 2)
                k1 = from_hloc_pixels(g["keypoints1"][()]).reshape(-1, 2)
                sc = np.asarray(g["scores"][()], np.float64).reshape(-1) if "scores" in g else np.ones(len(k0))
            else:
                m0 = np.asarray(g["matches0"][()]).astype(np.int64).reshape(-1)
                if len(m0) != len(kps[a]):
                    raise PairsError(f"{matches_path}: '{g.name}/matches0' has {len(m0)} entries, image {a!r} has "
                                     f"{len(kps[a])} keypoints in {features_path}")
                idx = np.flatnonzero(m0 >= 0)
                k0, k1 = kps[a][idx], kps[b][m0[idx]]
                sc = np.asarray(g["matching_scores0"][()], np.float64).reshape(-1)[idx] \
                    if "matching_scores0" in g else np.ones(len(idx))
            out[(q, r)] = (k1, k0, sc) if rev else (k0, k1, sc)
    return out
