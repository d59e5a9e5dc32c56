"""Line-numbered rows of whitespace-separated text files (poses, cameras, TUM lists); '#' lines are comments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from localize.core.errors import DatabaseError
from localize.core.formats import split_fields


def numbered_rows(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-blank, non-comment line; DatabaseError if the file is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DatabaseError(f"{path}: file missing")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatabaseError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from e
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield lineno, split_fields(line)


def parse_floats(path: str | Path, lineno: int, fields: list[str], what: str) -> list[float]:
    """``fields`` as floats; DatabaseError naming the file, the line and ``what`` they are if one is not a number."""
    try:
        return [float(v) for v in fields]
    except ValueError:
        raise DatabaseError(f"{path}: line {lineno}: {what} must be numbers, got {' '.join(fields)!r}") from None
