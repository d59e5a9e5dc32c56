"""Crash-safe, configuration-keyed HDF5 cache for stage results (one group per image or pair).

A stage's results live in ``<export_dir>/<stage>-<hash>.h5`` where ``hash`` covers the stage
name, its configuration and the hashes of the stages it depends on: another configuration
(here or upstream) gives another file, so stale results are never reused silently.

Crash safety: each entry is first written as its own small HDF5 file in
``<stage>-<hash>.parts/`` (temporary name, then ``os.replace``), so a killed run leaves only
complete entries. ``finalize()`` merges the parts into the single ``.h5`` file (again via a
temporary file and rename) and removes them. Readers see both merged entries and parts.
Every file carries the attributes ``stage``, ``config_hash`` and ``config`` (JSON).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

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
        if k == "__key__":
            continue
        out[k] = _read_group(v) if isinstance(v, h5py.Group) else v[()]
    for k, v in g.attrs.items():
        if k != "__key__":
            out[k] = v.decode() if isinstance(v, bytes) else v
    return out


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
        self._merged_keys: set[str] | None = None

    # ---------------------------------------------------------------- internals
    def _attrs(self, f: h5py.File) -> None:
        f.attrs["stage"] = self.stage
        f.attrs["config_hash"] = self.hash
        f.attrs["config"] = json.dumps(self.conf, sort_keys=True)

    def _check(self, f: h5py.File, path: Path) -> None:
        if f.attrs.get("config_hash") != self.hash or f.attrs.get("stage") != self.stage:
            raise ValueError(f"{path} was made by stage {f.attrs.get('stage')!r} with configuration "
                             f"{f.attrs.get('config_hash')!r}, expected {self.stage!r}/{self.hash}")

    def _merged(self) -> set[str]:
        if self._merged_keys is None:
            keys: set[str] = set()
            if self.path.exists():
                with h5py.File(self.path, "r") as f:
                    self._check(f, self.path)
                    keys = set(json.loads(f.attrs.get("keys", "[]")))
            self._merged_keys = keys
        return self._merged_keys

    def _part(self, key: str) -> Path:
        return self.parts_dir / _key_file(key)

    # ---------------------------------------------------------------- API
    def has(self, key: str) -> bool:
        """True when a complete entry for ``key`` exists (merged or as a part)."""
        return key in self._merged() or self._part(key).exists()

    def keys(self) -> list[str]:
        """All complete entries, merged and parts."""
        keys = set(self._merged())
        if self.parts_dir.is_dir():
            for p in self.parts_dir.glob("*.h5"):
                try:
                    with h5py.File(p, "r") as f:
                        keys.add(f.attrs["__key__"])
                except OSError:
                    logger.warning("ignoring unreadable cache part %s", p)
        return sorted(keys)

    def get(self, key: str) -> dict[str, Any]:
        """The stored arrays/attributes of ``key``; KeyError if absent."""
        part = self._part(key)
        if part.exists():
            with h5py.File(part, "r") as f:
                self._check(f, part)
                return _read_group(f["entry"])
        if key in self._merged():
            with h5py.File(self.path, "r") as f:
                return _read_group(f[_group_name(key)])
        raise KeyError(f"{self.stage}: no cached entry {key!r}")

    def put(self, key: str, data: Mapping[str, Any]) -> None:
        """Store arrays (numpy-convertible), strings (attributes) and nested dicts under ``key``, atomically."""
        with atomic_path(self._part(key)) as tmp, h5py.File(tmp, "w") as f:
            self._attrs(f)
            f.attrs["__key__"] = key
            _write_group(f.create_group("entry"), data)

    def finalize(self) -> Path:
        """Merge all parts into ``<stage>-<hash>.h5`` (atomic) and delete them; returns the file path."""
        if not self.parts_dir.is_dir():
            return self.path
        parts = sorted(self.parts_dir.glob("*.h5"))
        if not parts and self.path.exists():
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return self.path
        keys = set(self._merged())
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as out:
            self._attrs(out)
            if self.path.exists():
                with h5py.File(self.path, "r") as old:
                    for k in keys:
                        old.copy(old[_group_name(k)], out, name=_group_name(k))
            for p in parts:
                with h5py.File(p, "r") as f:
                    k = f.attrs["__key__"]
                    if _group_name(k) in out:
                        del out[_group_name(k)]
                    f.copy(f["entry"], out, name=_group_name(k))
                    keys.add(k)
            out.attrs["keys"] = json.dumps(sorted(keys))
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        self._merged_keys = keys
        return self.path

    def __contains__(self, key: str) -> bool:
        return self.has(key)

    def __repr__(self) -> str:
        return f"StageCache({self.stage!r}, hash={self.hash}, path={self.path})"
