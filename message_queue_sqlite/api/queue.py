"""The modern API: one object owns the settings, the tasks, sending and the workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from message_queue_sqlite.api import browse
from message_queue_sqlite.backends import open_backend
from message_queue_sqlite.backends.base import OUTCOME_NAMES, RecoveryReport, ScheduleRecord, TaskRecord
from message_queue_sqlite.core.config import Config
from message_queue_sqlite.core.errors import PartiallySentError, TaskCancelled, TaskFailedError
from message_queue_sqlite.core.ids import format_task_id
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.core.progress import TaskProgress
from message_queue_sqlite.core.queues import DEFAULT_QUEUE, Lane
from message_queue_sqlite.core.registry import (
    MARK,
    TaskRegistry,
    discover_tasks,
    make_task_options,
)
from message_queue_sqlite.core.retry import RetryPolicy
from message_queue_sqlite.core.status import TaskStatus
from message_queue_sqlite.engine import aio
from message_queue_sqlite.engine.dispatcher import Callback
from message_queue_sqlite.engine.engine import Engine, SendRequest
from message_queue_sqlite.engine.hooks import Hook, require_hook
from message_queue_sqlite.engine.scheduler import ORPHANED_AFTER_S
from message_queue_sqlite.serialization import loads_result

F = TypeVar("F", bound=Callable[..., Any])
ENDED_STATES = (TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.CANCELLED)
TaskRef = str | Callable[..., Any]


def shown_status(record: TaskRecord) -> TaskStatus:
    """The status a person reads: FINISHED, FAILED or CANCELLED once a task ended, whether or
    not its callback ran (stored CALLBACKED keeps the outcome in its own column)."""
    if record.status == TaskStatus.CALLBACKED and record.outcome in ENDED_STATES:
        return TaskStatus(record.outcome)
    return TaskStatus(record.status)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One stored task as ``mq.tasks()`` lists it: what a person (or a dashboard) reads."""

    task_id: str
    task_name: str
    status: TaskStatus  # FINISHED or FAILED once ended; never CALLBACKED
    callback_ran: bool
    result: Any  # the decoded return value of a FINISHED task, else None
    error: str | None  # the error of a FAILED task (or of the last failed attempt before a retry)
    traceback: str | None
    priority: int
    attempts: int
    created_at: float
    started_at: float | None
    ended_at: float | None
    run_after: float
    queue: str = DEFAULT_QUEUE
    # Filled where the storage read them (the dashboard's pages, ``task_info``); a listing by
    # ``tasks()`` leaves the arguments out (None), as they can be large.
    arguments: str | None = None  # the stored JSON; None for a cached task (kept in its sender's memory)
    sender: str | None = None  # node id of the queue object that sent it
    max_retries: int = 0
    cached: bool = False  # sent with use_cache=True: only its sender's workers can run it
    lease_owner: str | None = None  # node id of the worker running it (RUNNING)
    progress: TaskProgress | None = None  # as it last reported it (``task_info`` only)

    @classmethod
    def from_record(cls, record: TaskRecord) -> TaskInfo:
        status = shown_status(record)
        finished = status == TaskStatus.FINISHED
        cached = record.cache_owner is not None
        return cls(record.task_id, record.task_name, status, record.status == TaskStatus.CALLBACKED,
                   loads_result(record.result) if finished else None,
                   None if finished else record.result, record.traceback, record.priority,
                   record.attempts, record.created_at, record.started_at, record.ended_at,
                   record.run_after, record.queue, None if cached else record.args, record.sender,
                   record.max_retries, cached, record.lease_owner, TaskProgress.from_json(record.progress))


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """One stored schedule, as ``mq.schedules()`` and ``mqs schedules`` show it."""

    name: str
    expression: str
    next_run: float | None  # epoch seconds of the next slot
    last_slot: float  # the newest slot decided (run, or skipped by the missed policy)
    last_task_id: str | None  # the task of the newest slot that was enqueued
    last_status: TaskStatus | None  # its status (FINISHED/FAILED once ended), None if purged or none yet
    seen_at: float  # a live worker last declared it then
    orphaned: bool  # no worker declared it for a while though others declared theirs

    @classmethod
    def from_record(cls, record: ScheduleRecord, newest_seen: float) -> ScheduleInfo:
        status = None
        if record.last_status is not None:
            status = TaskStatus(record.last_outcome if record.last_status == TaskStatus.CALLBACKED
                                and record.last_outcome else record.last_status)
        task_id = format_task_id(0, record.last_task) if record.last_task is not None else None
        return cls(record.name, record.expression, record.next_slot, record.last_slot, task_id,
                   status, record.seen_at, newest_seen - record.seen_at > ORPHANED_AFTER_S)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.expression, "next_run": _iso(self.next_run),
                "last_slot": _iso(self.last_slot), "last_task_id": self.last_task_id,
                "last_status": self.last_status.name if self.last_status is not None else None,
                "seen_at": _iso(self.seen_at), "orphaned": self.orphaned}


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, timezone.utc).isoformat()


class TaskHandle:
    """A sent task: its id, its live status, and its result when it ends."""

    __slots__ = ("task_id", "task_name", "duplicate", "_engine", "_since")

    def __init__(self, task_id: str, task_name: str, engine: Engine, since: int | None = None,
                 duplicate: bool = False):
        self.task_id = task_id
        self.task_name = task_name
        # True: the send found its unique key held, stored nothing, and this is the holder's handle
        self.duplicate = duplicate
        self._engine = engine
        self._since = since  # the engine's outcome epoch before the send

    def _record(self) -> TaskRecord:
        record = self._engine.find(self.task_id)
        if record is None:
            raise LookupError(f"task {self.task_id} is no longer stored "
                              "(removed by purge(), or by the retention purge)")
        return record

    @property
    def status(self) -> TaskStatus:
        """NOT_STARTED, SCHEDULED, RUNNING, then FINISHED or FAILED (whether or not its
        callback ran: see ``callback_ran``)."""
        return shown_status(self._record())

    @property
    def callback_ran(self) -> bool:
        """True once the sender's callback ran for this task (stored status CALLBACKED)."""
        return self._record().status == TaskStatus.CALLBACKED

    def outcome(self, timeout: float | None = None) -> TaskOutcome:
        """Wait for the task to end; TimeoutError if it has not after ``timeout`` seconds."""
        outcome = self._engine.wait_outcome(self.task_id, timeout, self._since)
        if outcome is None:
            raise TimeoutError(f"task {self.task_name!r} ({self.task_id}) did not end within {timeout} s")
        return outcome

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value; raises ``TaskFailedError`` if it failed, TimeoutError if it
        has not ended within ``timeout`` seconds (None waits forever)."""
        return self._value(self.outcome(timeout))

    def _value(self, outcome: TaskOutcome) -> Any:
        if outcome.status == TaskStatus.CANCELLED:
            raise TaskCancelled(self.task_id, self.task_name, outcome.error or "cancelled")
        if not outcome.ok:
            raise TaskFailedError(self.task_id, self.task_name, outcome.error or "", outcome.traceback)
        return outcome.value

    # -- the same from asyncio code (README, "Async client") -------------------------
    async def aoutcome(self, timeout: float | None = None) -> TaskOutcome:
        """``outcome`` for a coroutine: awaits the end without blocking the event loop and
        without a thread per wait (the dispatcher resolves a future in this loop);
        TimeoutError after ``timeout`` seconds. Cancelling the awaiting coroutine forgets
        its wait (the task itself is not cancelled: see ``acancel``)."""
        outcome = await self._engine.await_outcome(self.task_id, timeout, self._since)
        if outcome is None:
            raise TimeoutError(f"task {self.task_name!r} ({self.task_id}) did not end within {timeout} s")
        return outcome

    async def aresult(self, timeout: float | None = None) -> Any:
        """``result`` for a coroutine: the return value; ``TaskFailedError`` if it failed,
        ``TaskCancelled`` if it was cancelled, TimeoutError if it has not ended in ``timeout`` s."""
        return self._value(await self.aoutcome(timeout))

    async def astatus(self) -> TaskStatus:
        """``status`` for a coroutine (one read: in the loop's thread on SQLite, on a thread
        on PostgreSQL)."""
        record = await aio.run_blocking(self._engine.async_inline, self._record)
        return shown_status(record)

    async def acancel(self, wait: float = 5.0) -> str:
        """``cancel`` for a coroutine; on a thread, as it may wait up to ``wait`` s for the
        worker running the task to answer."""
        return await asyncio.to_thread(self.cancel, wait)

    @property
    def progress(self) -> TaskProgress | None:
        """How far the task said it got (``current_task.progress``), as last stored (a few
        times a second at most while it runs); None if it reported nothing."""
        shard, row_id = self._engine.shard_of(self.task_id)
        return TaskProgress.from_json(self._engine.shards[shard].get_progress(row_id))

    def cancel(self, wait: float = 5.0) -> str:
        """Cancel this task: ``"cancelled"`` (it had not started and never will),
        ``"stopping"`` (it was running: asked to stop, see ``current_task.cancelled``) or
        ``"ended"`` (it had ended: nothing done). Stored: it holds across restarts."""
        return self._engine.cancel([self.task_id], wait)[self.task_id]

    def __repr__(self) -> str:
        if self.duplicate:
            return f"TaskHandle({self.task_name!r}, {self.task_id!r}, duplicate=True)"
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
                 hooks: Iterable[Hook] = (), **options: Any):
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
        hooks = [require_hook(hook) for hook in hooks]  # refused before any storage is opened
        self._engine = Engine(config, open_backend(config), self.registry, clock, hooks)

    # -- tasks -----------------------------------------------------------------------
    def task(self, func: F | None = None, **options: Any) -> Any:
        """Register a function as a task: ``@mq.task`` or ``@mq.task(retries=3, use_cache=False)``."""
        task_options = make_task_options(**options)

        def register(f: F) -> F:
            setattr(f, MARK, task_options)
            self.registry.register(f, task_options)

            def send(*args: Any, **kwargs: Any) -> TaskHandle:
                """Send this task with its own arguments (as Celery's ``.delay``); options such
                as priority or delay go through ``mq.send``."""
                return self.send(f, kwargs, args=args)

            async def asend(*args: Any, **kwargs: Any) -> TaskHandle:
                """``send`` for a coroutine (see ``MessageQueue.asend``)."""
                return await self.asend(f, kwargs, args=args)

            f.send = send  # type: ignore[attr-defined]
            f.asend = asend  # type: ignore[attr-defined]
            return f

        return register(func) if func is not None else register

    def periodic(self, func: F | None = None, **options: Any) -> Any:
        """Register a periodic task: ``@mq.periodic(every=30)`` (seconds, or a timedelta) or
        ``@mq.periodic(cron="*/5 * * * *", tz="Europe/Paris")`` (the ``cron`` extra).

        Every process running workers of this queue enqueues its due slots, and each slot is
        enqueued exactly once however many do (then runs at least once, like any task).
        ``missed=`` says what happens to slots that came due while no worker ran: ``"skip"``
        them, run the ``"latest"`` one (default; not if older than ``max_delay`` seconds), or
        ``"all"`` of those within ``backfill`` seconds (default a day), oldest first.
        ``skip_if_running=True`` skips a slot while the previous run is still waiting or
        running; ``slot_arg="scheduled_at"`` passes the slot's time (ISO 8601, in ``tz``) as
        that keyword argument; ``kwargs=`` are fixed keyword arguments; ``priority=``, and
        every option of ``task`` (retries, name, ...) apply as well."""
        if "every" not in options and "cron" not in options:
            raise TypeError("@mq.periodic needs every=SECONDS (or a timedelta) or cron='M H DoM Mon DoW', "
                            "e.g. @mq.periodic(every=30) or @mq.periodic(cron='*/5 * * * *')")
        return self.task(func, **options)

    def schedules(self) -> list[ScheduleInfo]:
        """The stored schedules of periodic tasks with their next and last runs; a schedule
        no live worker declared for a while is ``orphaned`` (removed from the code, or no
        worker of the app runs): see ``prune_schedules``."""
        records = self._engine.shards[0].list_schedules()
        newest_seen = max((r.seen_at for r in records), default=0.0)
        return [ScheduleInfo.from_record(r, newest_seen) for r in records]

    def prune_schedules(self, names: Sequence[str] | None = None) -> list[str]:
        """Forget schedules (their tasks stay): the named ones, or by default every orphaned
        one; returns the names forgotten. A schedule still declared by a running worker
        comes back at its next declaration (at most a minute), with its slots from then."""
        if names is None:
            names = [info.name for info in self.schedules() if info.orphaned]
        elif isinstance(names, str):
            names = [names]
        names = list(names)
        known = {info.name for info in self.schedules()}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise LookupError(f"no schedule named {', '.join(map(repr, unknown))}; stored schedules: "
                              f"{sorted(known)}")
        self._engine.shards[0].remove_schedules(names)
        return names

    def discover(self, package: str) -> TaskRegistry:
        """Register every task marked with ``@task_function`` in a package's modules."""
        return discover_tasks(package, self.registry)

    # -- sending ---------------------------------------------------------------------
    def send(self, task: TaskRef, kwargs: dict[str, Any] | None = None, *, args: Sequence[Any] = (),
             priority: int = 0, callback: Callback | None = None, use_cache: bool = False,
             retries: int | None = None, retry: RetryPolicy | None = None,
             delay: float | timedelta = 0.0, eta: datetime | None = None,
             unique_key: str | None = None, unique_for: float | timedelta | None = None,
             unique_states: tuple[str, ...] | None = None, queue: str | None = None,
             timeout: float | timedelta | None = None, connection: Any = None) -> TaskHandle:
        """Store a task durably (committed before this returns) and return its handle.

        ``kwargs`` are the task's keyword arguments, ``args`` its positional ones; both are
        checked against the function's signature here. ``delay`` (seconds or a timedelta) or
        ``eta`` (a timezone-aware datetime) defer it. ``queue`` sends it to that named queue
        instead of its task's (``@mq.task(queue=)``, else ``"default"``); ``timeout`` (seconds
        or a timedelta) limits its runs instead of its task's ``timeout``. ``unique_key`` (or the task's
        ``unique=``): when a stored task holds the key, nothing is stored and the handle is the
        holder's, with ``duplicate`` True (and ``callback`` is not registered: the task is the
        first send's); ``unique_for`` seconds and ``unique_states`` override the task's.
        ``connection``: the application's own open connection to the queue's database (an
        ``sqlite3.Connection`` with ``MessageQueue(database=...)``, a psycopg connection on
        PostgreSQL): the task is stored in the application's transaction, and exists only once
        that commits (README, "Sending in your own transaction")."""
        return self._send_one(self._single(task, kwargs, args, priority, callback, use_cache, retries, retry,
                                           delay, eta, unique_key, unique_for, unique_states, queue, timeout),
                              connection)

    def _single(self, task: TaskRef, kwargs: dict[str, Any] | None, args: Sequence[Any], priority: int,
                callback: Callback | None, use_cache: bool, retries: int | None, retry: RetryPolicy | None,
                delay: float | timedelta, eta: datetime | None, unique_key: str | None,
                unique_for: float | timedelta | None, unique_states: tuple[str, ...] | None,
                queue: str | None, timeout: float | timedelta | None) -> SendRequest:
        """One send's request, checked (``send`` and ``asend`` alike)."""
        request = self._request(task, kwargs, args, priority, callback, use_cache, retries, retry,
                                _delay_of(delay, eta))
        request.queue, request.timeout = queue, timeout
        if unique_key is not None or unique_for is not None or unique_states is not None:
            request.unique_key, request.unique_for = unique_key, unique_for
            request.unique_states = unique_states
        return request

    def _send_one(self, request: SendRequest, connection: Any = None) -> TaskHandle:
        since = self._engine.outcome_epoch()
        task_id = self._engine.send(request, connection)
        if request.duplicate:
            return self._duplicate_handle(task_id, request.task_name, since)
        return TaskHandle(task_id, request.task_name, self._engine, since)

    async def asend(self, task: TaskRef, kwargs: dict[str, Any] | None = None, *, args: Sequence[Any] = (),
                    priority: int = 0, callback: Callback | None = None, use_cache: bool = False,
                    retries: int | None = None, retry: RetryPolicy | None = None,
                    delay: float | timedelta = 0.0, eta: datetime | None = None,
                    unique_key: str | None = None, unique_for: float | timedelta | None = None,
                    unique_states: tuple[str, ...] | None = None, queue: str | None = None,
                    timeout: float | timedelta | None = None, connection: Any = None) -> TaskHandle:
        """``send`` for a coroutine, with the same arguments and checks; the task is committed
        when it returns (with ``connection``: stored in the application's transaction, as for
        ``send``; psycopg's ``AsyncConnection`` is awaited). On SQLite the write runs in the
        loop's thread (tens of microseconds: less than the hand-off to a thread would cost);
        on PostgreSQL, and in immediate mode (the send runs the task), on a thread, so the loop
        goes on meanwhile. Measured in the README, "Async client". Await its result with
        ``await handle.aresult(timeout=)``."""
        request = self._single(task, kwargs, args, priority, callback, use_cache, retries, retry,
                               delay, eta, unique_key, unique_for, unique_states, queue, timeout)
        if connection is not None and aio.is_async_connection(connection):
            since = self._engine.outcome_epoch()
            (task_id,) = await self._engine.asend_in_transaction([request], connection)
            return TaskHandle(task_id, request.task_name, self._engine, since)
        return await aio.run_blocking(self._engine.async_inline, self._send_one, request, connection)

    def send_many(self, tasks: Iterable[tuple[Any, ...]], *, priority: int = 0,
                  callback: Callback | None = None, use_cache: bool = False,
                  retries: int | None = None, retry: RetryPolicy | None = None,
                  delay: float | timedelta = 0.0, eta: datetime | None = None,
                  unique_key: str | None = None, unique_for: float | timedelta | None = None,
                  unique_states: tuple[str, ...] | None = None,
                  queue: str | None = None, timeout: float | timedelta | None = None,
                  connection: Any = None) -> list[TaskHandle]:
        """Store many tasks in one transaction per shard (much faster than one send each).
        Each item is ``(task, kwargs)`` or ``(task, args, kwargs)``; the options apply to all
        (one ``unique_key`` for all stores at most one of them; tasks declared ``unique=`` each
        derive their own). A task whose key is held, by a stored task or by an earlier item of
        this batch, stores nothing: its handle is the holder's, with ``duplicate`` True.
        ``connection``: as for ``send``, all in the application's transaction."""
        seconds = _delay_of(delay, eta)
        requests = []
        for item in tasks:
            if not isinstance(item, tuple) or len(item) not in (2, 3):
                raise TypeError("send_many takes (task, kwargs) or (task, args, kwargs) tuples, "
                                f"got {item!r}")
            task, positional, kwargs = (item[0], (), item[1]) if len(item) == 2 else item
            request = self._request(task, kwargs, positional, priority, callback, use_cache,
                                    retries, retry, seconds)
            request.unique_key, request.unique_for = unique_key, unique_for
            request.unique_states, request.queue, request.timeout = unique_states, queue, timeout
            requests.append(request)
        since = self._engine.outcome_epoch()
        try:
            sent = self._engine.send_many(requests, connection)
        except PartiallySentError as error:  # the part that stays sent gets its handles too
            error.handles = {index: TaskHandle(task_id, requests[index].task_name, self._engine, since)
                             for index, task_id in error.sent.items()}
            raise
        return [self._duplicate_handle(task_id, r.task_name, since) if r.duplicate
                else TaskHandle(task_id, r.task_name, self._engine, since)
                for task_id, r in zip(sent, requests, strict=True)]

    def _duplicate_handle(self, task_id: str, sent_name: str, since: int | None) -> TaskHandle:
        """The holder's handle for a send whose key was held: named as the holder is (an
        explicit key may be held by a task of another name), read by its id."""
        record = self._engine.find(task_id)
        name = record.task_name if record is not None else sent_name  # purged meanwhile
        return TaskHandle(task_id, name, self._engine, since, duplicate=True)

    def _request(self, task: TaskRef, kwargs: dict[str, Any] | None, args: Sequence[Any], priority: int,
                 callback: Callback | None, use_cache: bool, retries: int | None,
                 retry: RetryPolicy | None, delay: float) -> SendRequest:
        if isinstance(args, (str, bytes, dict)) or not isinstance(args, (tuple, list)):
            raise TypeError(f"args= must be a tuple or list of positional arguments, got {args!r}")
        return SendRequest(self._task_name(task), {} if kwargs is None else kwargs, callback,
                           priority, use_cache, retries, retry, delay, tuple(args))

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
    def start(self, workers: int | None = None, queues: Any = None) -> list[Lane]:
        """Start worker threads in the background. ``queues``: which named queues they serve
        (default: every queue, as ``"*"``): a list of names sharing the threads, or a dict of
        names to thread counts (a lane each); see ``message_queue_sqlite.core.queues``.
        Returns the lanes started."""
        return self._engine.start_workers(workers, queues)

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop claiming, let running tasks finish (up to the drain timeout), give back the
        rest, and run the callbacks of what finished."""
        self._engine.stop_workers(drain_timeout)

    @contextmanager
    def running(self, workers: int | None = None, queues: Any = None) -> Iterator[MessageQueue]:
        self.start(workers, queues)
        try:
            yield self
        finally:
            self.stop()

    # -- inspection and repair -------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts in total and per shard: ``totals`` per stored status (CALLBACKED as stored),
        and ``outcomes``, what people ask: queued, scheduled, running, finished and failed (an
        ended task by how it ended, whether or not its callback ran) and callback_ran apart.
        Read from counts the storage keeps, so it stays cheap at millions of tasks."""
        totals = {status.name: 0 for status in TaskStatus}
        outcomes = dict.fromkeys(OUTCOME_NAMES, 0)
        shards = []
        for shard in self._engine.shards:
            counts = {TaskStatus(k).name: v for k, v in shard.count_by_status().items()}
            split = shard.count_by_outcome()
            for name, value in counts.items():
                totals[name] += value
            for name, value in split.items():
                outcomes[name] += value
            shards.append({"shard": shard.name, **{s.name: counts.get(s.name, 0) for s in TaskStatus},
                           "outcomes": split})
        return {"location": self._engine.backend.location, "totals": totals, "outcomes": outcomes,
                "queues": self.queue_depths(), "shards": shards}

    def limits(self) -> dict[str, int]:
        """The concurrency limits stored (declared by the workers of tasks with ``concurrency=``):
        ``{task_name: most runs at once}``."""
        return self._engine.shards[0].list_limits()

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Per named queue, every shard together: ``{"emails": {"queued": 3, "scheduled": 0,
        "running": 1}, ...}`` for every queue a task was ever sent to."""
        depths: dict[str, dict[str, int]] = {}
        for shard in self._engine.shards:
            for queue, counts in shard.count_by_queue().items():
                into = depths.setdefault(queue, dict.fromkeys(counts, 0))
                for state, n in counts.items():
                    into[state] += n
        return dict(sorted(depths.items()))

    def timings(self, limit: int = 100_000) -> list[tuple[float, float | None, float]]:
        """(created, started, ended) times of the newest ended tasks, every shard."""
        found: list[tuple[float, float | None, float]] = []
        for shard in self._engine.shards:
            found.extend(shard.ended_timings(limit))
        return found

    def tasks(self, status: TaskStatus | int | None = None, task_name: str | None = None,
              limit: int = 100, queue: str | None = None) -> list[TaskInfo]:
        """Tasks, filtered, each shard's found on an index: waiting ones in the order they will
        run (NOT_STARTED: best priority, then oldest; SCHEDULED: soonest due), the others newest
        first. ``status=TaskStatus.FAILED`` is the dead-letter view (FINISHED and FAILED include
        the tasks whose callback ran). Results come decoded."""
        code = None if status is None else int(status)
        found: list[TaskRecord] = []
        for shard in self._engine.shards:
            found.extend(shard.list_tasks(code, task_name, limit, queue))
        if code == TaskStatus.NOT_STARTED:
            found.sort(key=lambda r: (-r.priority, r.created_at))
        elif code == TaskStatus.SCHEDULED:
            found.sort(key=lambda r: r.run_after)
        else:
            found.sort(key=lambda r: r.created_at, reverse=True)
        return [TaskInfo.from_record(record) for record in found[:limit]]

    def task_page(self, status: TaskStatus | int | None = None, task_name: str | None = None,
                  text: str | None = None, after: str | None = None,
                  limit: int = 50, queue: str | None = None) -> tuple[list[TaskInfo], str | None, int]:
        """One keyset page of tasks, with their arguments: ``(tasks, next_cursor, examined)``.
        Ready tasks in claim order, scheduled ones by due time, the others newest first; pass
        ``next_cursor`` back as ``after`` for the next page (None: no more). Each page reads a
        bounded number of rows on an index whatever the table's size; with ``task_name`` or
        ``text`` (any case, in the arguments, result or error) or ``queue`` a page may hold
        fewer than ``limit`` tasks and still have a next one (see ``api/browse.py``)."""
        page = browse.page_tasks(self._engine.shards, None if status is None else int(status),
                                 task_name, text, after, limit, queue=queue)
        return [TaskInfo.from_record(r) for r in page.records], page.next_cursor, page.examined

    def task_info(self, task_id: str) -> TaskInfo | None:
        """Everything stored about one task, arguments included; None if it is not stored."""
        shard, row_id = self._engine.shard_of(task_id)
        record = self._engine.shards[shard].get_task_detail(row_id)
        return None if record is None else TaskInfo.from_record(record)

    def recent_ends(self, since: float, limit: int = 10_000) -> list[browse.Ended]:
        """``(created, started, ended, outcome)`` of up to ``limit`` per shard of the newest tasks
        that ended at or after ``since`` (epoch seconds; outcome 3 finished, 4 failed): for
        throughput, failure rate and latency. On SQLite only the newest 10 x ``limit`` rows
        are looked at (no index on end times is kept: it would cost every task)."""
        return browse.recent_ends(self._engine.shards, since, limit)

    def oldest_waiting(self) -> tuple[str, str, float] | None:
        """``(task_id, task_name, created_at)`` of the ready task sent first (any priority)."""
        return browse.oldest_ready(self._engine.shards)

    def nodes(self) -> list[browse.NodeInfo]:
        """The live queue objects (each process's MessageQueue that runs workers or waits for
        callbacks): host, pid, start, running tasks; read from the storage's liveness rows."""
        return browse.live_nodes(self._engine.shards)

    def dashboard(self, read_only: bool = False, token: str | None = None) -> Any:
        """The web dashboard of this queue: a Starlette (ASGI) app, to serve with uvicorn or
        mount (``app.mount("/queue", mq.dashboard())``). Needs the ``dashboard`` extra; imported
        here so that the queue itself stays standard-library only. ``read_only``: no actions;
        ``token``: every page and action asks for it (see the README, "Dashboard")."""
        from message_queue_sqlite.contrib.dashboard import create_app

        return create_app(self, read_only=read_only, token=token)

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

    def purge(self, task_id: str | None = None, task_name: str | None = None) -> int:
        """Remove waiting tasks (ready or scheduled) for good: one by id, all of a name, or all
        (as Celery's purge, RQ's empty, huey's flush); how many. A running task is left alone
        (cancelling one is another matter); an ended one stays until the retention purge."""
        if task_id is not None:
            shard, row_id = self._engine.shard_of(task_id)
            return self._engine.shards[shard].remove_waiting(row_id, task_name)
        return sum(s.remove_waiting(None, task_name) for s in self._engine.shards)

    def cancel(self, *task_ids: str, task_name: str | None = None, wait: float = 5.0) -> dict[str, str]:
        """Cancel tasks by id, or every waiting task of ``task_name``: ``{task_id: state}`` with
        the states of ``TaskHandle.cancel``. A waiting task never starts, in any process (even
        one a worker had prefetched: its worker answers before this returns, up to ``wait``
        seconds); a running one is asked to stop; an ended one is left alone."""
        ids = list(task_ids)
        if task_name is not None:
            ids += self._engine.waiting_task_ids(task_name)
        if not ids:
            return {}
        return self._engine.cancel(ids, wait)

    def add_hook(self, hook: Hook) -> None:
        """Append a lifecycle hook (see ``message_queue_sqlite.Hook``) to this queue's chain."""
        self._engine.hooks.add(hook)

    def housekeeping(self) -> RecoveryReport:
        """Renew leases, recover expired ones, purge by retention: one round, now; returns
        how many tasks recovery requeued and failed."""
        return self._engine.housekeeper.run_once()

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> MessageQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _delay_of(delay: float | timedelta, eta: datetime | None) -> float:
    """Seconds from now, from ``delay`` (seconds or a timedelta) or ``eta`` (an aware datetime;
    one in the past means now)."""
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if eta is None:
        return delay
    if delay:
        raise TypeError(f"pass delay= or eta=, not both (got delay={delay!r}, eta={eta!r})")
    if not isinstance(eta, datetime):
        raise TypeError(f"eta={eta!r} must be a datetime, e.g. "
                        "datetime.now(timezone.utc) + timedelta(minutes=5)")
    if eta.tzinfo is None or eta.utcoffset() is None:
        raise ValueError(f"eta={eta!r} has no time zone; pass an aware datetime, e.g. "
                         "datetime(2027, 1, 1, 9, 0, tzinfo=timezone.utc) or "
                         "datetime.now(timezone.utc) + timedelta(hours=1)")
    return max(0.0, (eta - datetime.now(timezone.utc)).total_seconds())
