"""The modern API: one object owns the settings, the tasks, sending and the workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from message_queue_sqlite.backends import open_backend
from message_queue_sqlite.backends.base import TaskRecord
from message_queue_sqlite.core.config import Config
from message_queue_sqlite.core.errors import TaskFailedError
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.core.registry import (
    MARK,
    TaskRegistry,
    discover_tasks,
    make_task_options,
)
from message_queue_sqlite.core.retry import RetryPolicy
from message_queue_sqlite.core.status import TaskStatus
from message_queue_sqlite.engine.dispatcher import Callback
from message_queue_sqlite.engine.engine import Engine, SendRequest

F = TypeVar("F", bound=Callable[..., Any])
TaskRef = str | Callable[..., Any]


class TaskHandle:
    """A sent task: its id, its live status, and its result when it ends."""

    __slots__ = ("task_id", "task_name", "_engine", "_since")

    def __init__(self, task_id: str, task_name: str, engine: Engine, since: int | None = None):
        self.task_id = task_id
        self.task_name = task_name
        self._engine = engine
        self._since = since  # the engine's outcome epoch before the send

    @property
    def status(self) -> TaskStatus:
        record = self._engine.find(self.task_id)
        if record is None:
            raise LookupError(f"task {self.task_id} is no longer stored (purged by retention?)")
        return TaskStatus(record.status)

    def outcome(self, timeout: float | None = None) -> TaskOutcome:
        """Wait for the task to end; TimeoutError if it has not after ``timeout`` seconds."""
        outcome = self._engine.wait_outcome(self.task_id, timeout, self._since)
        if outcome is None:
            raise TimeoutError(f"task {self.task_name!r} ({self.task_id}) did not end within {timeout} s")
        return outcome

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value; raises ``TaskFailedError`` if it failed, TimeoutError if it
        has not ended within ``timeout`` seconds (None waits forever)."""
        outcome = self.outcome(timeout)
        if not outcome.ok:
            raise TaskFailedError(self.task_id, self.task_name, outcome.error or "", outcome.traceback)
        return outcome.value

    def __repr__(self) -> str:
        return f"TaskHandle({self.task_name!r}, {self.task_id!r})"


class MessageQueue:
    """A durable task queue.

    >>> mq = MessageQueue("queue_dir", workers=4)
    >>> @mq.task(retries=3)
    ... def add(a, b): return a + b
    >>> with mq.running():
    ...     mq.send(add, {"a": 1, "b": 2}).result(timeout=5)
    3
    """

    def __init__(self, path: str | None = None, *, workers: int | None = None,
                 shards: int | None = None, config: Config | None = None,
                 registry: TaskRegistry | None = None, clock: Callable[[], float] = time.time,
                 **options: Any):
        if config is None:
            fields: dict[str, Any] = dict(options)
            if path is not None:
                fields["middleware_path"] = path
            if workers is not None:
                fields["max_workers"] = workers
            if shards is not None:
                fields["middleware_num"] = shards
            config = Config(**fields)
        elif path is not None or workers is not None or shards is not None or options:
            raise TypeError("pass either config=Config(...) or keyword settings, not both")
        self.config = config
        self.registry = registry if registry is not None else TaskRegistry()
        self._engine = Engine(config, open_backend(config), self.registry, clock)

    # -- tasks -----------------------------------------------------------------------
    def task(self, func: F | None = None, **options: Any) -> Any:
        """Register a function as a task: ``@mq.task`` or ``@mq.task(retries=3, use_cache=False)``."""
        task_options = make_task_options(**options)

        def register(f: F) -> F:
            setattr(f, MARK, task_options)
            self.registry.register(f, task_options)
            return f

        return register(func) if func is not None else register

    def discover(self, package: str) -> TaskRegistry:
        """Register every task marked with ``@task_function`` in a package's modules."""
        return discover_tasks(package, self.registry)

    # -- sending ---------------------------------------------------------------------
    def send(self, task: TaskRef, kwargs: dict[str, Any] | None = None, *, priority: int = 0,
             callback: Callback | None = None, use_cache: bool = False,
             retries: int | None = None, retry: RetryPolicy | None = None,
             delay: float = 0.0) -> TaskHandle:
        """Store a task durably (committed before this returns) and return its handle."""
        request = self._request(task, kwargs, priority, callback, use_cache, retries, retry, delay)
        since = self._engine.outcome_epoch()
        return TaskHandle(self._engine.send(request), request.task_name, self._engine, since)

    def send_many(self, tasks: Iterable[tuple[TaskRef, dict[str, Any]]], *, priority: int = 0,
                  callback: Callback | None = None, use_cache: bool = False) -> list[TaskHandle]:
        """Store many tasks in one transaction per shard (much faster than one send each)."""
        requests = [self._request(t, k, priority, callback, use_cache, None, None, 0.0)
                    for t, k in tasks]
        since = self._engine.outcome_epoch()
        sent = self._engine.send_many(requests)
        return [TaskHandle(task_id, r.task_name, self._engine, since)
                for task_id, r in zip(sent, requests, strict=True)]

    def _request(self, task: TaskRef, kwargs: dict[str, Any] | None, priority: int,
                 callback: Callback | None, use_cache: bool, retries: int | None,
                 retry: RetryPolicy | None, delay: float) -> SendRequest:
        return SendRequest(self._task_name(task), {} if kwargs is None else kwargs, callback,
                           priority, use_cache, retries, retry, delay)

    def _task_name(self, task: TaskRef) -> str:
        if isinstance(task, str):
            return task
        known = self.registry.name_of(task)
        if known is not None:
            return known
        name = getattr(task, "__name__", None)
        raise ValueError(f"function {name!r} is not a registered task of this queue; "
                         f"decorate it with @mq.task (known tasks: {self.registry.get_all_task_names()})")

    def get(self, task_id: str) -> TaskHandle:
        record = self._engine.find(task_id)
        if record is None:
            raise LookupError(f"no task with id {task_id!r} in this queue")
        return TaskHandle(record.task_id, record.task_name, self._engine)

    # -- workers ---------------------------------------------------------------------
    def start(self, workers: int | None = None) -> None:
        """Start worker threads in the background."""
        self._engine.start_workers(workers)

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop claiming, let running tasks finish (up to the drain timeout), give back the
        rest, and run the callbacks of what finished."""
        self._engine.stop_workers(drain_timeout)

    @contextmanager
    def running(self, workers: int | None = None) -> Iterator[MessageQueue]:
        self.start(workers)
        try:
            yield self
        finally:
            self.stop()

    # -- inspection and repair -------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts per status, in total and per shard."""
        totals = {status.name: 0 for status in TaskStatus}
        shards = []
        for shard in self._engine.shards:
            counts = {TaskStatus(k).name: v for k, v in shard.count_by_status().items()}
            for name, value in counts.items():
                totals[name] += value
            shards.append({"shard": shard.name, **{s.name: counts.get(s.name, 0) for s in TaskStatus}})
        return {"location": self._engine.backend.location, "totals": totals, "shards": shards}

    def timings(self, limit: int = 100_000) -> list[tuple[float, float | None, float]]:
        """(created, started, ended) times of the newest ended tasks, every shard."""
        found: list[tuple[float, float | None, float]] = []
        for shard in self._engine.shards:
            found.extend(shard.ended_timings(limit))
        return found

    def tasks(self, status: TaskStatus | int | None = None, task_name: str | None = None,
              limit: int = 100) -> list[TaskRecord]:
        """Newest tasks, filtered; ``status=TaskStatus.FAILED`` is the dead-letter view."""
        found: list[TaskRecord] = []
        for shard in self._engine.shards:
            found.extend(shard.list_tasks(None if status is None else int(status), task_name, limit))
        found.sort(key=lambda r: r.created_at, reverse=True)
        return found[:limit]

    def retry_failed(self, task_id: str | None = None, task_name: str | None = None) -> int:
        """Queue FAILED tasks again (one by id, all of a name, or all): how many."""
        if task_id is not None:
            shard, row_id = self._engine.shard_of(task_id)
            count = self._engine.shards[shard].requeue_failed(row_id, task_name)
        else:
            count = sum(s.requeue_failed(None, task_name) for s in self._engine.shards)
        if count:
            self._engine.bell.ring()
        return count

    def housekeeping(self) -> None:
        """Renew leases, recover expired ones, purge by retention: one round, now."""
        self._engine.housekeeper.run_once()

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> MessageQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
