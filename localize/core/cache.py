"""Crash-safe, configuration-keyed HDF5 cache for stage results (one group per image or pair).

A stage's results live in ``<export_dir>/<stage>-<hash>.h5`` where ``hash`` covers the stage
name, its configuration and the hashes of the stages it depends on: another configuration
(here or upstream) gives another file, so stale results are never reused silently.

Crash safety: each entry is first written as its own small HDF5 file in
``<stage>-<hash>.parts/`` (temporary name, then ``os.replace``), so a killed run leaves only
complete entries. ``finalize()`` merges the parts into the single ``.h5`` file (again via a
temporary file and rename) and removes them. Readers see both merged entries and parts.
Every file carries the attributes ``stage``, ``config_hash`` and ``config`` (JSON).

Content keys: ``put(key, data, fp)`` stores a fingerprint of the inputs the entry was computed from
(image contents, camera, database records); ``has(key, fp)`` is False when the stored one differs,
so a changed input recomputes exactly the entries that used it (logged once per entry). A cache
file or part that cannot be opened or lacks its attributes is moved aside (``*.corrupt-<time>``)
with a warning and its entries are recomputed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from localize.core.errors import OutputError
from localize.core.formats import atomic_path

logger = logging.getLogger(__name__)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


def config_hash(stage: str, conf: Mapping[str, Any], depends: Iterable[str] = ()) -> str:
    """12-hex-digit SHA-1 of the stage name, its configuration (JSON, sorted keys) and upstream hashes."""
    payload = json.dumps({"stage": stage, "conf": _jsonable(conf), "depends": sorted(depends)}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def _group_name(key: str) -> str:
    """HDF5 group name of a key: '/' escaped so pair and sub-folder names stay one flat group."""
    return key.replace("%", "%25").replace("/", "%2F")


def file_fingerprint(path: str | Path) -> str:
    """Cheap identity of a file: name, size and a hash of its first and last MiB."""
    p = Path(path)
    h = hashlib.sha1(f"{p.name}:{p.stat().st_size}".encode())
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if p.stat().st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


_CONTENT_MEMO: dict[tuple, str] = {}


def content_fingerprint(path: str | Path) -> str:
    """Identity of a file's content (not its name): SHA-1 of the whole file up to 2 MiB; larger files
    hash their size, first and last MiB, modification time and inode. Memoised per (path, size,
    mtime, inode); a missing or unreadable file gives ``"missing"``."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return "missing"
    memo_key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo_key in _CONTENT_MEMO:
        return _CONTENT_MEMO[memo_key]
    h = hashlib.sha1(str(st.st_size).encode())
    try:
        with open(p, "rb") as f:
            if st.st_size <= 2 << 20:
                h.update(f.read())
            else:
                h.update(f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read(1 << 20))
                h.update(f"{st.st_mtime_ns}:{st.st_ino}".encode())
    except OSError:
        return "missing"
    _CONTENT_MEMO[memo_key] = h.hexdigest()[:20]
    return _CONTENT_MEMO[memo_key]


def fingerprint(*parts: Any) -> str:
    """Hash of JSON-able parts (fingerprints, names, numbers): the ``fp`` of a cache entry."""
    return hashlib.sha1(json.dumps(_jsonable(list(parts)), sort_keys=True).encode()).hexdigest()[:20]


def _move_aside(path: Path, why: str) -> None:
    """Rename a damaged cache file/part out of the way (kept for inspection) with a warning."""
    dest = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, dest)
    except OSError:
        dest = path
    logger.warning("damaged cache file %s (%s): moved to %s, its entries are recomputed", path, why, dest.name)


def _key_file(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest() + ".h5"


def _write_group(g: h5py.Group, data: Mapping[str, Any]) -> None:
    for k, v in data.items():
        if isinstance(v, (str, bytes)):
            g.attrs[k] = v
        elif isinstance(v, Mapping):
            _write_group(g.create_group(k), v)
        else:
            g.create_dataset(k, data=np.asarray(v))


def _read_group(g: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in g.items():
        if k in ("__key__", "__fp__"):
            continue
        out[k] = _read_group(v) if isinstance(v, h5py.Group) else v[()]
    for k, v in g.attrs.items():
        if k not in ("__key__", "__fp__"):
            out[k] = v.decode() if isinstance(v, bytes) else v
    return out


LOCK_NAME = ".lock"


@contextmanager
def export_lock(export_dir: str | Path) -> Iterator[Path]:
    """Hold the export folder exclusively (``fcntl.flock`` on ``<export_dir>/.lock``) for the block.

    A second holder gets OutputError at once, naming the folder and the pid that holds it; the lock
    goes with the process, so a killed run never leaves a stale lock."""
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    path = export_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise OutputError(f"export folder {export_dir} is in use by another run (pid {holder}); "
                              f"wait for it or choose another --export-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


class StageCache:
    """Results of one stage for one configuration; entries keyed by image or pair name."""

    def __init__(self, export_dir: str | Path, stage: str, conf: Mapping[str, Any],
                 depends: Iterable[StageCache | str] = ()) -> None:
        self.stage = stage
        self.conf = _jsonable(dict(conf))
        deps = [d.hash if isinstance(d, StageCache) else str(d) for d in depends]
        self.hash = config_hash(stage, self.conf, deps)
        self.export_dir = Path(export_dir)
        self.path = self.export_dir / f"{stage}-{self.hash}.h5"
        self.parts_dir = self.export_dir / f"{stage}-{self.hash}.parts"
        self._merged_fps: dict[str, str] | None = None  # merged entries: key -> input fingerprint
        self._part_fps: dict[str, str] | None = None  # complete parts: key -> input fingerprint
        self._told: set[str] = set()

    # ---------------------------------------------------------------- internals
    def _attrs(self, f: h5py.File) -> None:
        f.attrs["stage"] = self.stage
        f.attrs["config_hash"] = self.hash
        f.attrs["config"] = json.dumps(self.conf, sort_keys=True)

    def _check(self, f: h5py.File, path: Path) -> None:
        if f.attrs.get("config_hash") != self.hash or f.attrs.get("stage") != self.stage:
            raise ValueError(f"{path} was made by stage {f.attrs.get('stage')!r} with configuration "
                             f"{f.attrs.get('config_hash')!r}, expected {self.stage!r}/{self.hash}")

    def _merged(self) -> dict[str, str]:
        """Entries of the merged file (opened with checks; a damaged file is moved aside)."""
        if self._merged_fps is None:
            fps: dict[str, str] = {}
            if self.path.exists():
                try:
                    with h5py.File(self.path, "r") as f:
                        self._check(f, self.path)
                        keys = json.loads(f.attrs["keys"])
                        stored = json.loads(f.attrs.get("fingerprints", "{}"))
                        missing = [k for k in keys if _group_name(k) not in f]
                        if missing:
                            raise ValueError(f"{len(missing)} listed entries absent, e.g. {missing[0]!r}")
                        fps = {k: stored.get(k, "") for k in keys}
                except (OSError, ValueError, KeyError) as e:
                    _move_aside(self.path, str(e).splitlines()[0] if str(e) else type(e).__name__)
                    fps = {}
            self._merged_fps = fps
        return self._merged_fps

    def _parts(self) -> dict[str, str]:
        """Complete parts (each opened once with checks; a damaged or foreign part is moved aside)."""
        if self._part_fps is None:
            fps: dict[str, str] = {}
            if self.parts_dir.is_dir():
                for p in sorted(self.parts_dir.glob("*.h5")):
                    try:
                        with h5py.File(p, "r") as f:
                            self._check(f, p)
                            key = f.attrs["__key__"]
                            if p.name != _key_file(key) or "entry" not in f:
                                raise ValueError("not the part of its key")
                            fps[key] = f["entry"].attrs.get("__fp__", "")
                    except (OSError, ValueError, KeyError) as e:
                        _move_aside(p, str(e).splitlines()[0] if str(e) else type(e).__name__)
            self._part_fps = fps
        return self._part_fps

    def _part(self, key: str) -> Path:
        return self.parts_dir / _key_file(key)

    # ---------------------------------------------------------------- API
    def has(self, key: str, fp: str | None = None) -> bool:
        """True when a complete entry for ``key`` exists (part or merged) and, with ``fp``, was computed
        from inputs with that fingerprint (a mismatch is logged once: the entry will be recomputed)."""
        parts = self._parts()
        stored = parts[key] if key in parts else self._merged().get(key)
        if stored is None:
            return False
        if fp is not None and stored != fp:
            if key not in self._told:
                self._told.add(key)
                logger.info("%s: inputs of %s changed since it was cached: recomputing it", self.stage, key)
            return False
        return True

    def keys(self) -> list[str]:
        """All complete entries, merged and parts."""
        return sorted(set(self._merged()) | set(self._parts()))

    def get(self, key: str) -> dict[str, Any]:
        """The stored arrays/attributes of ``key``; KeyError if absent."""
        if key in self._parts():
            part = self._part(key)
            with h5py.File(part, "r") as f:
                self._check(f, part)
                return _read_group(f["entry"])
        if key in self._merged():
            with h5py.File(self.path, "r") as f:
                return _read_group(f[_group_name(key)])
        raise KeyError(f"{self.stage}: no cached entry {key!r}")

    def put(self, key: str, data: Mapping[str, Any], fp: str = "") -> None:
        """Store arrays (numpy-convertible), strings (attributes) and nested dicts under ``key``, atomically,
        with ``fp`` the fingerprint of the inputs it was computed from (written to a temporary name, renamed).

        Not fsynced: a part torn by a power cut cannot be opened, so it is moved aside and recomputed like any
        corrupt part; ``finalize`` writes the merged file durably."""
        with atomic_path(self._part(key), durable=False) as tmp, h5py.File(tmp, "w") as f:
            self._attrs(f)
            f.attrs["__key__"] = key
            g = f.create_group("entry")
            _write_group(g, data)
            g.attrs["__fp__"] = fp
        self._parts()[key] = fp

    def finalize(self) -> Path:
        """Merge all parts into ``<stage>-<hash>.h5`` (atomic) and delete them; returns the file path."""
        if not self.parts_dir.is_dir():
            return self.path
        parts = self._parts()
        if not parts and self.path.exists():
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return self.path
        fps = dict(self._merged())
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as out:
            self._attrs(out)
            if self.path.exists():
                with h5py.File(self.path, "r") as old:
                    for k in fps:
                        if k not in parts:
                            old.copy(old[_group_name(k)], out, name=_group_name(k))
            for k in sorted(parts):
                with h5py.File(self._part(k), "r") as f:
                    f.copy(f["entry"], out, name=_group_name(k))
                    fps[k] = parts[k]
            out.attrs["keys"] = json.dumps(sorted(fps))
            out.attrs["fingerprints"] = json.dumps(fps, sort_keys=True)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        self._merged_fps, self._part_fps = fps, None
        return self.path

    def __contains__(self, key: str) -> bool:
        return self.has(key)

    def __repr__(self) -> str:
        return f"StageCache({self.stage!r}, hash={self.hash}, path={self.path})"
