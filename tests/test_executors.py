"""The local executor: per-item input errors are yielded with their item, programming errors propagate."""

from __future__ import annotations

import pytest

from localize.core.errors import DatabaseError
from localize.pipeline.executors import LocalExecutor


class Worker:
    """Doubles its task; 3 is an unreadable item, 4 a bad record, 100 a bug."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, t: int) -> int:
        if t == 3:
            raise OSError("item 3 is unreadable")
        if t == 4:
            raise DatabaseError("item 4: depth map missing")
        if t == 100:
            raise KeyError("a bug")
        return t * self.k


def test_local_executor_yields_input_errors_and_raises_bugs():
    got = dict(LocalExecutor().run(Worker, (2,), [0, 3, 4, 5]))  # {task index: result or error}
    assert got[0] == 0 and got[3] == 10
    assert isinstance(got[1], OSError) and isinstance(got[2], DatabaseError)
    with pytest.raises(KeyError, match="a bug"):
        list(LocalExecutor().run(Worker, (2,), [0, 100, 1]))
