"""Text file formats: poses file, query list with intrinsics, retrieval pairs; atomic writes.

* Poses file (visuallocalization.net): ``name qw qx qy qz tx ty tz`` per line (8 columns, written by
  default), WORLD-TO-CAMERA, quaternion (w, x, y, z); the project's variant adds a 9th column, the
  top-1 database image, which readers accept. Queries without a pose are omitted.
* Top-1 side file: ``query_name db_name`` per line (the database image of each chosen pose).
* Query list (hloc): ``name MODEL WIDTH HEIGHT params...`` per line (COLMAP camera models).
* Pairs: ``query_name db_name`` per line (hloc, written by default) or ``query_name db_name score``
  (``with_scores``), best first per query; readers accept both.
Lines starting with ``#`` and blank lines are ignored everywhere. A name holding whitespace or a
quote is written shell-quoted (``'my query.jpg'``) and read back by ``split_fields``.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from localize.core.geometry import Camera, Pose


def _create_temp_next_to(path: Path) -> Path:
    """Create an empty, new temporary file beside ``path``, permissions from the umask like ``open(path, "w")``."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Temporary path beside ``path`` for name-based writers (faiss, torch): renamed over it only if the block succeeds.

    ``durable``: the file and the rename are flushed to disk (fsync) as well, so they survive a power cut; a
    killed process never leaves a partial file either way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp_next_to(path)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator:
    """Temporary file beside ``path`` opened with ``mode`` ("w" / "wb"): renamed over it only if the block succeeds."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write writes a whole new file: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()


_NEEDS_QUOTES = re.compile(r"[\s'\"]")


def quote_name(name: str) -> str:
    """A name as one field of a text file: shell-quoted when it holds whitespace or a quote."""
    return shlex.quote(name) if _NEEDS_QUOTES.search(name) else name


def split_fields(line: str) -> list[str]:
    """Fields of one line: whitespace-separated, with shell quoting ('a b' / "a b") where the line has
    quotes; a line whose quotes do not pair up is split on whitespace only."""
    if "'" in line or '"' in line:
        try:
            return shlex.split(line, comments=False, posix=True)
        except ValueError:
            pass
    return line.split()


def _lines(path: str | Path) -> Iterator[list[str]]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield split_fields(line)


@dataclass(frozen=True)
class PoseEntry:
    """One line of a poses file: WORLD-TO-CAMERA pose and optional top-1 database image."""

    pose: Pose
    top1: str | None = None


def read_poses(path: str | Path) -> dict[str, PoseEntry]:
    """Read a poses file -> {query name: PoseEntry} (world-to-camera)."""
    out: dict[str, PoseEntry] = {}
    for i, tok in enumerate(_lines(path)):
        if len(tok) not in (8, 9):
            raise ValueError(f"{path}: line {i + 1}: expected 'name qw qx qy qz tx ty tz [top1]', got {len(tok)} fields")
        q = [float(v) for v in tok[1:5]]
        t = [float(v) for v in tok[5:8]]
        out[tok[0]] = PoseEntry(Pose.from_qvec_tvec(q, t), tok[8] if len(tok) == 9 else None)
    return out


def write_poses(path: str | Path, poses: Mapping[str, Pose | PoseEntry], with_top1: bool = False) -> None:
    """Write a poses file atomically (sorted by name): 8 columns, or a 9th (top-1 image) where known with ``with_top1``."""
    with atomic_write(path) as f:
        for name in sorted(poses):
            e = poses[name]
            entry = e if isinstance(e, PoseEntry) else PoseEntry(e)
            if not entry.pose.is_finite():
                continue
            q, t = entry.pose.qvec, entry.pose.t
            fields = [quote_name(name)] + [f"{v:.10g}" for v in (*q, *t)]
            if with_top1 and entry.top1:
                fields.append(quote_name(entry.top1))
            f.write(" ".join(fields) + "\n")


def read_query_list(path: str | Path) -> dict[str, Camera]:
    """Read 'name MODEL W H params...' lines -> {name: Camera}."""
    out: dict[str, Camera] = {}
    for i, tok in enumerate(_lines(path)):
        try:
            out[tok[0]] = Camera.from_tokens(tok[1:])
        except (ValueError, IndexError) as e:
            raise ValueError(f"{path}: line {i + 1}: bad camera line: {e}") from e
    return out


def write_query_list(path: str | Path, cameras: Mapping[str, Camera]) -> None:
    """Write 'name MODEL W H params...' lines atomically, sorted by name."""
    with atomic_write(path) as f:
        for name in sorted(cameras):
            f.write(f"{quote_name(name)} {cameras[name].to_line()}\n")


def read_pairs(path: str | Path) -> dict[str, list[tuple[str, float]]]:
    """Read pairs 'query db' or 'query db score' -> {query: [(db, score or NaN), ...]} in file order."""
    out: dict[str, list[tuple[str, float]]] = {}
    for i, tok in enumerate(_lines(path)):
        if len(tok) not in (2, 3):
            raise ValueError(f"{path}: line {i + 1}: expected 'query_name db_name [score]', got {len(tok)} fields")
        try:
            score = float(tok[2]) if len(tok) == 3 else float("nan")
        except ValueError:
            raise ValueError(f"{path}: line {i + 1}: score {tok[2]!r} is not a number") from None
        out.setdefault(tok[0], []).append((tok[1], score))
    return out


def write_pairs(path: str | Path, pairs: Mapping[str, Iterable[tuple[str, float]]], with_scores: bool = False) -> None:
    """Write 'query db' lines (hloc) atomically, in the given order per query; 'query db score' with ``with_scores``."""
    with atomic_write(path) as f:
        for q, lst in pairs.items():
            for db, s in lst:
                f.write(f"{quote_name(q)} {quote_name(db)} {s:.6f}\n" if with_scores else f"{quote_name(q)} {quote_name(db)}\n")


def write_top1(path: str | Path, poses: Mapping[str, PoseEntry]) -> None:
    """Write the top-1 side file 'query db' atomically (sorted by query; entries without a top-1 omitted)."""
    with atomic_write(path) as f:
        for name in sorted(poses):
            if poses[name].top1:
                f.write(f"{quote_name(name)} {quote_name(poses[name].top1)}\n")


def read_top1(path: str | Path) -> dict[str, str]:
    """Read a top-1 side file 'query db' (a pairs file: the first database image per query) -> {query: db}."""
    return {q: lst[0][0] for q, lst in read_pairs(path).items()}
