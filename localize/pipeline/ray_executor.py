"""Ray executor: the pipeline's per-item work on Ray actors (optional extra ``pip install .[ray]``).

``RayExecutor(address=None)`` starts a small local Ray instance (this machine's CPUs, no dashboard,
no usage reporting, object store of a few hundred MB); ``RayExecutor(address="ray://head:10001")``
or ``address="auto"`` joins an existing cluster. For each stage, ``run`` creates one actor per worker
from ``worker_cls(*worker_args)`` (the arguments are plain configurations and paths, put once in the
object store; workers read database images lazily by path and never receive the whole database),
keeps a bounded number of tasks in flight per actor, and yields ``(task index, result or
exception)`` as results complete (``ray.wait``), exactly like ``LocalExecutor``: the driver writes
each result to the stage cache as it arrives.

Fault tolerance: when an actor dies (its process killed, its node lost, out of memory) its
in-flight tasks are resubmitted to a fresh actor, up to ``max_task_retries`` times per task; a task
that still fails is yielded as a ``WorkerLostError``. A per-item exception raised by the worker
(``localize.core.errors.PER_ITEM_ERRORS``) is yielded as that exception (not retried); any other is
raised in the driver, as with ``LocalExecutor``. Results already yielded are in the cache, so
rerunning the whole command after any crash recomputes nothing that finished, with either executor.

Resources: ``resources={"num_gpus": 1}`` (matching on CUDA) gives each actor one GPU (the number of
actors then defaults to the number of GPUs); ``num_cpus_per_worker`` CPUs otherwise, and torch in
each actor uses that many threads.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from localize.core.errors import PER_ITEM_ERRORS, WorkerLostError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the repository root (holds the packages)


def _import_ray():
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("--executor ray needs Ray: pip install 'ray[default]' (or the project's [ray] extra)") from e
    return ray


class _WorkerHost:
    """Actor body: builds the pipeline worker once, then runs tasks; worker exceptions are returned, not raised."""

    def __init__(self, worker_cls: type, worker_args: tuple, num_threads: int) -> None:
        try:
            import torch

            torch.set_num_threads(max(1, int(num_threads)))
        except ImportError:  # pragma: no cover
            pass
        self.error: str | None = None
        try:
            self.worker = worker_cls(*worker_args)
        except Exception as e:  # noqa: BLE001 - reported by ready(), so the driver raises it once
            self.error = f"{type(e).__name__}: {e}"

    def ready(self) -> str | None:
        """None when the worker was built, else why not."""
        return self.error

    def pid(self) -> int:
        return os.getpid()

    def call(self, task: Any) -> tuple[bool, Any]:
        try:
            return True, self.worker(task)
        except Exception as e:  # noqa: BLE001 - every worker error goes back to the driver as a value
            try:
                import pickle

                pickle.dumps(e)
                return False, e
            except Exception:  # noqa: BLE001 - unpicklable exception: keep its message
                return False, RuntimeError(f"{type(e).__name__}: {e}")


class RayExecutor:
    """Runs each stage's tasks on a pool of Ray actors; see the module docstring."""

    name = "ray"

    def __init__(self, address: str | None = None, num_workers: int | None = None, num_cpus_per_worker: float = 1,
                 max_in_flight_per_worker: int = 2, max_task_retries: int = 3, num_cpus: int | None = None,
                 object_store_memory: int | None = 256 * 1024 ** 2, runtime_env: dict | None = None,
                 progress: bool = True) -> None:
        ray = _import_ray()
        self.ray = ray
        self.num_workers = num_workers
        self.num_cpus_per_worker = num_cpus_per_worker
        self.max_in_flight = max(1, int(max_in_flight_per_worker))
        self.max_task_retries = int(max_task_retries)
        self.progress = progress
        self._owns_ray = False
        self._pool_key: tuple | None = None
        self._actors: list = []
        self._remote_cls = None
        self.restarted = 0  # actors replaced after dying (for tests and logs)
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            # workers import the project's packages: make sure they can, wherever the driver was started
            env = dict(runtime_env or {})
            if address is None:
                env_vars = dict(env.get("env_vars", {}))
                pp = os.environ.get("PYTHONPATH", "")
                if str(ROOT) not in pp.split(os.pathsep):
                    env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), pp) if p)
                env["env_vars"] = env_vars
                ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                         object_store_memory=object_store_memory, log_to_driver=False, logging_level=logging.WARNING,
                         runtime_env=env or None, _node_ip_address="127.0.0.1")
                logger.info("started a local Ray instance (%s CPUs)", ray.cluster_resources().get("CPU"))
            else:
                ray.init(address=address, runtime_env=env or None, logging_level=logging.WARNING)
                logger.info("joined Ray cluster %s: %s", address, ray.cluster_resources())
            self._owns_ray = True

    # ------------------------------------------------------------------ actors
    def _default_workers(self, opts: dict) -> int:
        res = self.ray.cluster_resources()
        if opts.get("num_gpus"):
            return max(1, int(res.get("GPU", 0) // opts["num_gpus"]))
        return max(1, int(res.get("CPU", 1) // max(opts.get("num_cpus", 1), 1e-6)))

    def _new_actor(self, opts: dict, args_ref):
        cls_ref, wargs_ref = args_ref
        return self._remote_cls.options(max_restarts=0, **opts).remote(cls_ref, wargs_ref,
                                                                       max(1, int(self.num_cpus_per_worker)))

    def _pool(self, worker_cls: type, worker_args: tuple, resources: dict | None) -> tuple[dict, tuple]:
        """Actor options and object-store references of the worker arguments; (re)creates the pool if needed."""
        ray = self.ray
        opts: dict[str, Any] = {"num_cpus": self.num_cpus_per_worker}
        if resources and resources.get("num_gpus"):
            opts["num_gpus"] = resources["num_gpus"]
            if not ray.cluster_resources().get("GPU"):
                raise RuntimeError("this stage needs GPUs (--device cuda) but the Ray cluster has none")
        if self._remote_cls is None:
            self._remote_cls = ray.remote(_WorkerHost)
        key = (worker_cls.__module__, worker_cls.__qualname__, repr(worker_args), repr(sorted(opts.items())))
        if key != self._pool_key:
            self._kill_actors()  # one stage's pool at a time: its actors hold the cluster's CPUs/GPUs
            self._args_ref = (worker_cls, ray.put(tuple(worker_args)))
            n = self.num_workers or self._default_workers(opts)
            self._actors = [self._new_actor(opts, self._args_ref) for _ in range(n)]
            try:
                errors = [e for e in ray.get([a.ready.remote() for a in self._actors]) if e]
            except ray.exceptions.RayActorError as e:
                errors = [str(e)]
            if errors:  # a configuration error (missing weights, unimportable module): no point retrying
                self._kill_actors()
                raise RuntimeError(f"cannot start {worker_cls.__name__} workers on Ray: {errors[0]}")
            self._pool_key, self._opts = key, opts
        return self._opts, self._args_ref

    def _kill_actors(self) -> None:
        for a in self._actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self._actors, self._pool_key = [], None

    def actor_pids(self) -> list[int]:
        """Process ids of the current pool's actors (for tests: kill one to simulate a lost worker)."""
        return self.ray.get([a.pid.remote() for a in self._actors])

    # ------------------------------------------------------------------ protocol
    def run(self, worker_cls: type, worker_args: tuple, tasks: Sequence[Any], desc: str = "",
            resources: dict | None = None) -> Iterator[tuple[int, Any]]:
        """Yield (task index, result or the exception it raised), in completion order."""
        if not len(tasks):
            return
        ray = self.ray
        opts, args_ref = self._pool(worker_cls, worker_args, resources)
        pending = deque(range(len(tasks)))
        attempts = [0] * len(tasks)
        in_flight: dict[Any, tuple[int, int, Any]] = {}  # object ref -> (task index, actor slot, actor)
        load = [0] * len(self._actors)
        bar = tqdm(total=len(tasks), desc=desc, unit="item", disable=not self.progress)

        def submit() -> None:
            while pending:
                slot = min(range(len(self._actors)), key=lambda s: load[s])
                if load[slot] >= self.max_in_flight:
                    return
                i = pending.popleft()
                attempts[i] += 1
                actor = self._actors[slot]
                ref = actor.call.remote(tasks[i])
                in_flight[ref] = (i, slot, actor)
                load[slot] += 1

        try:
            submit()
            while in_flight:
                done, _ = ray.wait(list(in_flight), num_returns=1)
                ref = done[0]
                i, slot, actor = in_flight.pop(ref)
                load[slot] -= 1
                try:
                    ok, value = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError) as e:
                    if self._actors[slot] is actor:  # not yet replaced (its other in-flight tasks fail too)
                        self._replace_actor(slot, opts, args_ref)
                    if attempts[i] <= self.max_task_retries:
                        logger.warning("%s: worker lost while running item %d (%s); resubmitting", desc, i,
                                       type(e).__name__)
                        pending.appendleft(i)
                        submit()
                        continue
                    ok, value = False, WorkerLostError(f"item {i}: worker lost {attempts[i]} times ({type(e).__name__})")
                except ray.exceptions.RayTaskError as e:  # e.g. an unpicklable result
                    ok, value = False, RuntimeError(str(e).splitlines()[0])
                submit()
                bar.update(1)
                if not ok and not isinstance(value, PER_ITEM_ERRORS):
                    raise value if isinstance(value, BaseException) else RuntimeError(str(value))
                yield i, value
        finally:
            bar.close()
            for ref in in_flight:  # generator closed early (driver interrupted): drop the rest
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001
                    pass

    def _replace_actor(self, slot: int, opts: dict, args_ref) -> None:
        """Start a fresh actor in ``slot`` (the old one died)."""
        try:  # make sure it is gone (it may only have lost its node connection)
            self.ray.kill(self._actors[slot])
        except Exception:  # noqa: BLE001
            pass
        self._actors[slot] = self._new_actor(opts, args_ref)
        self.restarted += 1
        logger.warning("Ray worker %d died; started a replacement", slot)

    def shutdown(self) -> None:
        """Kill the actors; stop the Ray instance if this executor started or joined it."""
        self._kill_actors()
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
