"""Executors: where the pipeline's per-item work runs ('local' in this process; 'ray' on a cluster).

Protocol: ``executor.run(worker_cls, worker_args, tasks, desc)`` builds ``worker_cls(*worker_args)``
once per worker and yields ``(index, result_or_exception)`` for every task, in completion order.
The driver writes each result to the stage cache as soon as it arrives, so a killed run loses
at most the tasks in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from tqdm import tqdm

from localize.core.errors import PER_ITEM_ERRORS
from localize.pipeline.ray_executor import RayExecutor

logger = logging.getLogger(__name__)


class Executor(Protocol):
    """Where per-item work runs: yields (task index, result or the expected exception it raised)."""

    name: str

    def run(self, worker_cls: type, worker_args: tuple, tasks: Sequence[Any], desc: str = "",
            resources: dict | None = None) -> Iterator[tuple[int, Any]]: ...

    def shutdown(self) -> None: ...


class LocalExecutor:
    """Runs every task in this process, one after another (the default)."""

    name = "local"

    def __init__(self) -> None:
        self._workers: dict[tuple, Any] = {}

    def run(self, worker_cls: type, worker_args: tuple, tasks: Sequence[Any], desc: str = "",
            resources: dict | None = None) -> Iterator[tuple[int, Any]]:
        """Yield (task index, result or the per-item exception it raised); other exceptions propagate."""
        if not tasks:
            return
        key = (worker_cls, repr(worker_args))
        if key not in self._workers:
            self._workers[key] = worker_cls(*worker_args)
        worker = self._workers[key]
        for i, task in enumerate(tqdm(tasks, desc=desc, unit="item")):
            try:
                yield i, worker(task)
            except PER_ITEM_ERRORS as e:
                yield i, e

    def shutdown(self) -> None:
        """Release the workers."""
        self._workers.clear()


def make_executor(name: str = "local", **kwargs: Any) -> Executor:
    """'local' or 'ray' (optional extra, imported only when used; ``address`` joins an existing cluster)."""
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(**kwargs)
    raise ValueError(f"unknown executor {name!r}: use 'local' or 'ray'")
