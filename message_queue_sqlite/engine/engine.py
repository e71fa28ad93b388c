"""One queue object's engine: sending, the worker pool, leases and outcome delivery.

Everything here is per object (no class attributes, no module state), so a process may
hold two queues, and tests do. Both public APIs are thin layers over this class.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from message_queue_sqlite.backends.base import Backend, NewTask, TaskRecord
from message_queue_sqlite.core import unique as uniq
from message_queue_sqlite.core.config import Config
from message_queue_sqlite.core.durations import check_timeout
from message_queue_sqlite.core.errors import MessageQueueError, QueueStorageError
from message_queue_sqlite.core.ids import format_task_id, parse_task_id
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.core.queues import DEFAULT_QUEUE, Lane, check_queue_name, plan_lanes
from message_queue_sqlite.core.registry import TaskDefinition, TaskRegistry
from message_queue_sqlite.core.retry import RetryPolicy
from message_queue_sqlite.engine import aio, cancellation
from message_queue_sqlite.engine.bell import Bell
from message_queue_sqlite.engine.dispatcher import Callback, OutcomeDispatcher
from message_queue_sqlite.engine.executors import Executor, InlineExecutor, ThreadExecutor
from message_queue_sqlite.engine.executors.event_loop import EventLoopExecutor
from message_queue_sqlite.engine.executors.processes import ProcessExecutor
from message_queue_sqlite.engine.executors.routing import RoutingExecutor
from message_queue_sqlite.engine.hooks import Hook, HookChain, default_hooks
from message_queue_sqlite.engine.leases import Housekeeper
from message_queue_sqlite.engine.partial_send import withdraw_partial_send
from message_queue_sqlite.engine.progress import ProgressWriter
from message_queue_sqlite.engine.running import TaskRunner
from message_queue_sqlite.engine.scheduler import Scheduler
from message_queue_sqlite.engine.sharding import ShardBalancer
from message_queue_sqlite.engine.worker import Worker
from message_queue_sqlite.serialization import dumps_args, dumps_call

log = logging.getLogger(__name__)

IDLE_RECHECK_S = 1.0  # an idle worker re-checks storage at least this often (missed-event guard)
BACKPRESSURE_WAIT_S = 30.0  # a send waits this long for pending callbacks to make room
CACHE_WORKER_GRACE_S = 2.0  # a cache-mode send with no worker started by then is warned about
INLINE_WAIT_S = 30.0  # immediate mode: how long a send waits for its task run by another thread
PRIORITY_RANGE = (-(2**63), 2**63 - 1)  # what both backends store (SQLite INTEGER, PostgreSQL BIGINT)
NODE_ID = re.compile(r"[0-9a-f]{16}")  # what uuid4().hex[:16] makes
_open_engines: weakref.WeakSet[Engine] = weakref.WeakSet()  # closed at exit, reset in a forked child


@dataclasses.dataclass(slots=True)
class SendRequest:
    """One task to send, as ``Engine.send_many`` takes them."""

    task_name: str
    args: dict[str, Any]
    callback: Callback | None = None
    priority: int = 0
    use_cache: bool = False
    retries: int | None = None
    retry: RetryPolicy | None = None
    delay: float = 0.0
    positional: tuple[Any, ...] = ()  # positional arguments, if any (``args`` holds the keywords)
    # unique tasks (core/unique.py): an explicit key, or None for the task's own (unique=...)
    # or none; how long it holds (seconds) and in which states, None: the task's own
    unique_key: str | None = None
    unique_for: float | None = None
    unique_states: tuple[str, ...] | None = None
    # set by the send: its key was held, so nothing was stored and its id is the holder's
    duplicate: bool = False
    queue: str | None = None  # the named queue; None: the task's own (@task(queue=)), else default
    timeout: float | None = None  # seconds a run may take; None: the task's own, else the worker's
    # string pairs stored with the task for the worker's hooks (a trace context, say); a
    # ``before_send`` hook may add to them
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


NO_DUPLICATES: frozenset[int] = frozenset()


class Engine:
    def __init__(self, config: Config, backend: Backend, registry: TaskRegistry,
                 clock: Callable[[], float] = time.time, hooks: Iterable[Hook] = ()):
        self.config = config
        self.backend = backend
        self.registry = registry
        self.clock = clock
        self.shards = backend.shards
        self.hooks = HookChain([*default_hooks(config.immediate), *hooks])
        self.cache: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}  # cache mode: key -> call
        self._declared_queues: set[tuple[int, str]] = set()  # (shard, queue) stored by this object
        self._closed = False
        self._fresh_process_state()
        _open_engines.add(self)

    def _fresh_process_state(self, node: str | None = None) -> None:
        """Everything that belongs to one process: the node id, locks, threads and the
        callbacks waiting here. Set at creation, and again in a child after ``fork()``,
        where the parent's threads do not exist and its locks may be held forever."""
        self.node = node or uuid.uuid4().hex[:16]
        self.bell = Bell()  # rung by everything that may make work claimable: idle workers wait on it
        # rung only when storage changed outside this object's sends and worker commits (another
        # process's commit, a cancel, a recovery): what waits for those alone (the cancel
        # watcher) is not woken by every local send, on the send's way to its worker
        self.storage_bell = Bell()
        self.dispatcher = OutcomeDispatcher(self.node, self.shards, self._watch_storage, self.hooks)
        self.balancer = ShardBalancer(self.shards, self.config.middleware_num)
        self.progress = ProgressWriter(self)
        self.runner = TaskRunner(self.registry, self.cache, self.hooks, lambda: self.node, self.clock,
                                 self.config.task_timeout, self.progress.note)
        self._cache_keys = itertools.count()
        self._lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._workers: list[Worker] = []  # one per lane (core/queues.py), while they run
        self._stopping_workers: list[Worker] = []
        self._inline: Worker | None = None  # immediate mode's
        self.scheduler: Scheduler | None = None  # runs while workers do, if tasks are periodic
        self._cancel_watcher: cancellation.CancelWatcher | None = None  # runs while workers do
        self.housekeeper = Housekeeper(self)
        self._watching = False
        self._next_shard_look = 0.0
        self._node_registered = False
        self._cache_check: threading.Timer | None = None  # armed by the first cache-mode send

    def after_fork_in_child(self) -> None:
        """In a child process made by ``fork()``: this object starts over as a new node
        (the parent's leases, workers, callbacks and cached arguments stay the parent's)."""
        self.cache.clear()
        self.backend.after_fork_in_child()
        self._fresh_process_state()

    def assume_node(self, node: str) -> None:
        """Take the node id ``node`` (the lease owner of everything this object claims), given
        by a supervisor that made this process, so that when the process dies the supervisor
        can expire its leases at once. Only before this object sent or ran anything."""
        if not NODE_ID.fullmatch(node):
            raise ValueError(f"node id {node!r} must be 16 lowercase hex digits")
        with self._lock:
            if self._node_registered or self._workers:
                raise MessageQueueError("a node id can only be given before the queue object is used")
        self._fresh_process_state(node)

    # -- sending ---------------------------------------------------------------------
    def send(self, request: SendRequest, connection: Any = None) -> str:
        if (connection is not None or not self.balancer.single or self.hooks.before_send
                or self.hooks.after_send):
            return self.send_many([request], connection)[0]
        self._check_open()  # the common case, without the batch bookkeeping
        if request.callback is not None:
            self.dispatcher.make_room(1, self.config.max_pending_callbacks, BACKPRESSURE_WAIT_S)
        cached: list[str] = []
        try:
            task = self._prepare(request, self.clock(), cached)
            if task.queue != DEFAULT_QUEUE:
                self._declare_queues(0, [task])
            if task.unique_key is None:
                row_id = self.shards[0].enqueue([task])[0]
            else:
                row_id, request.duplicate = self.shards[0].enqueue_unique([task])[0]
        except BaseException:
            for key in cached:
                self.cache.pop(key, None)
            raise
        task_id = format_task_id(0, row_id)
        if request.callback is not None and not request.duplicate:
            self.dispatcher.expect_one(task_id, request.callback)
        self.bell.ring()
        if self.config.immediate:
            self._run_inline((task_id,))
        return task_id

    def send_many(self, requests: Sequence[SendRequest], connection: Any = None) -> list[str]:
        """Store tasks durably (one transaction per shard touched); return their ids in order.
        With ``connection`` (the application's own open connection to the queue's database),
        in the application's transaction instead: see ``_store_in_transaction``.

        Callbacks are registered after the commit, when the ids exist; an outcome that a
        worker records before that is found in storage by the dispatcher, so none is lost."""
        by_shard, placed, cached = self._prepare_send(requests, connection is not None)
        kept_cache: set[str] = set()  # cached arguments of tasks a failed send could not take back
        try:
            if connection is not None:
                row_ids = {0: self._store_in_transaction(connection, by_shard[0])}
            else:
                row_ids = {}
                for shard, tasks in by_shard.items():
                    try:
                        row_ids[shard] = self._store(shard, tasks)
                    except Exception as exc:
                        if not row_ids:
                            raise
                        # shards commit one by one: take back what others stored (see partial_send)
                        partial, kept_cache = withdraw_partial_send(self.shards, by_shard, placed,
                                                                    row_ids, exc)
                        if partial is None:
                            if hasattr(exc, "add_note"):  # (Python 3.11+)
                                exc.add_note("the tasks of this send_many stored on other shards were "
                                             "taken back: nothing was sent")
                            raise
                        self._announce([requests[index] for index in partial.sent],
                                       list(partial.sent.values()))
                        raise partial from exc
        except BaseException:
            for key in cached:
                if key not in kept_cache:
                    self.cache.pop(key, None)
            raise
        return self._sent(requests, row_ids, placed)

    async def asend_in_transaction(self, requests: Sequence[SendRequest], connection: Any) -> list[str]:
        """``send_many`` with an application's async connection (psycopg's ``AsyncConnection``),
        awaited in its transaction."""
        by_shard, placed, cached = self._prepare_send(requests, True)
        try:
            tasks = by_shard[0]
            self._check_in_transaction(tasks)
            ids = await self.shards[0].aenqueue_in_transaction(connection, tasks)
        except BaseException:
            for key in cached:
                self.cache.pop(key, None)
            raise
        return self._sent(requests, {0: (ids, NO_DUPLICATES)}, placed)

    def _prepare_send(self, requests: Sequence[SendRequest], in_transaction: bool,
                      ) -> tuple[dict[int, list[NewTask]], list[tuple[int, int]], list[str]]:
        """The rows of a send, by shard (and, with several shards, where each request went),
        after the ``before_send`` hooks; the keys of arguments put in the cache."""
        self._check_open()
        if in_transaction and self.config.immediate:
            raise ValueError("connection= is not for immediate mode: its send runs the task at once, but a "
                             "task sent in the application's transaction exists only once that commits")
        with_callback = sum(1 for request in requests if request.callback is not None)
        if with_callback:
            self.dispatcher.make_room(with_callback, self.config.max_pending_callbacks, BACKPRESSURE_WAIT_S)
        hooks = self.hooks
        if hooks.before_send:
            for request in requests:
                hooks.fire(hooks.before_send, request)
        now = self.clock()
        placed: list[tuple[int, int]] = []  # (shard, position in that shard's batch)
        by_shard: dict[int, list[NewTask]] = {}
        cached: list[str] = []
        try:
            if self.balancer.single:
                by_shard[0] = [self._prepare(request, now, cached) for request in requests]
                return by_shard, placed, cached
            for request in requests:
                task = self._prepare(request, now, cached)
                # a key always goes to the shard its hash names: that shard's index enforces
                # it; so does a task with a concurrency limit (its shard counts its runs)
                key = task.unique_key
                if key is None and request.task_name in self._limited_names():
                    key = request.task_name
                shard = self.balancer.pick() if key is None else self.balancer.route(key)
                batch = by_shard.setdefault(shard, [])
                placed.append((shard, len(batch)))
                batch.append(task)
            return by_shard, placed, cached
        except BaseException:
            for key in cached:
                self.cache.pop(key, None)
            raise

    def _sent(self, requests: Sequence[SendRequest], row_ids: dict[int, tuple[list[int], Any]],
              placed: list[tuple[int, int]]) -> list[str]:
        """After the rows are stored: the ids in request order (duplicates marked on their
        requests), the tasks announced (``_announce``)."""
        if not placed:
            ids, duplicates = row_ids[0]
            task_ids = [format_task_id(0, row_id) for row_id in ids]
            for pos in duplicates:
                requests[pos].duplicate = True
        else:
            task_ids = [format_task_id(shard, row_ids[shard][0][pos]) for shard, pos in placed]
            for request, (shard, pos) in zip(requests, placed, strict=True):
                if pos in row_ids[shard][1]:
                    request.duplicate = True
        self._announce(requests, task_ids)
        return task_ids

    def _announce(self, requests: Sequence[SendRequest], task_ids: Sequence[str]) -> None:
        """Stored tasks made known: their callbacks registered, the workers rung, the
        ``after_send`` hooks fired, and in immediate mode the tasks run. For every send, and
        for the part of a failed multi-shard send that stays sent (``PartiallySentError``)."""
        callbacks = [(task_id, request.callback) for request, task_id in zip(requests, task_ids, strict=True)
                     if request.callback is not None and not request.duplicate]
        if callbacks:
            self.dispatcher.expect(callbacks)
        self.bell.ring()
        hooks = self.hooks
        if hooks.after_send:
            for request, task_id in zip(requests, task_ids, strict=True):
                hooks.fire(hooks.after_send, task_id, request)
        if self.config.immediate:
            self._run_inline(task_ids)

    def _store(self, shard: int, tasks: list[NewTask]) -> tuple[list[int], frozenset[int] | set[int]]:
        """One shard's part of a send: its row ids, and the positions in ``tasks`` that were
        duplicates (their key held: nothing stored, the id is the holder's). The plain insert
        unless a task carries a unique key."""
        self._declare_queues(shard, tasks)
        if all(task.unique_key is None for task in tasks):
            return self.shards[shard].enqueue(tasks), NO_DUPLICATES
        answers = self.shards[shard].enqueue_unique(tasks)
        return ([row_id for row_id, _ in answers],
                {pos for pos, (_, duplicate) in enumerate(answers) if duplicate})

    def _store_in_transaction(self, connection: Any,
                              tasks: list[NewTask]) -> tuple[list[int], frozenset[int]]:
        """A send in the application's own transaction (the outbox pattern): the rows go in
        through its connection and commit or roll back with its writes; its commit wakes the
        workers through the change feed. One shard (the application's database, or the
        PostgreSQL schema); plain tasks only."""
        self._check_in_transaction(tasks)
        # (nothing is written through this object's own connections meanwhile: on SQLite the
        # application's transaction holds the file's write lock; the queues are declared in it)
        return self.shards[0].enqueue_in_transaction(connection, tasks), NO_DUPLICATES

    def _check_in_transaction(self, tasks: Sequence[NewTask]) -> None:
        if not self.balancer.single:
            raise ValueError("connection= needs a queue of one shard: the application's database")
        for task in tasks:
            if task.unique_key is not None or task.cache_owner is not None:
                what = "a unique key" if task.unique_key is not None else "use_cache=True"
                raise ValueError(f"task {task.task_name!r} has {what}, which connection= does not support "
                                 "(the key's holder, or the cached arguments, live outside the "
                                 "application's transaction); send it without connection=")

    def _declare_queues(self, shard: int, tasks: Sequence[NewTask]) -> None:
        """Store the queues of ``tasks`` not stored yet by this object (the default one is
        stored by the migration): what serves or lists every queue finds them there."""
        new = {t.queue for t in tasks if t.queue != DEFAULT_QUEUE} - {q for s, q in self._declared_queues
                                                                       if s == shard}
        if new:
            self.shards[shard].declare_queues(sorted(new))
            self._declared_queues.update((shard, queue) for queue in new)
            for worker in self.active_workers():
                worker.queues_changed()

    def _limited_names(self) -> frozenset[str]:
        return frozenset(d.name for d in self.registry if d.options.concurrency is not None)

    def _run_inline(self, task_ids: Sequence[str]) -> None:
        """Immediate mode: run what was just sent (and what it sent, and its retries) in this
        thread, then let the callbacks run, before the send returns. Another thread's send may
        have claimed one of these tasks in its own run: the send waits for it to end there, so
        a send never returns before its task ended."""
        with self._lock:
            self._ensure_node_locked()
            if self._inline is None:
                self._inline = Worker(self, InlineExecutor(), self.runner, None)
                self._inline.start()
        self._inline.run_ready_now()
        for task_id in task_ids:
            if self.wait_outcome(task_id, INLINE_WAIT_S) is None:
                log.warning("immediate mode: task %s did not end within %.0f s of its send",
                            task_id, INLINE_WAIT_S)
        self.dispatcher.flush(timeout=INLINE_WAIT_S)

    def _prepare(self, request: SendRequest, now: float, cached_keys: list[str]) -> NewTask:
        """Validate one request and turn it into a row; cached arguments go to memory here."""
        name = request.task_name
        if type(name) is not str or not name:
            raise TypeError(f"task name must be a non-empty string, got {name!r}")
        definition = self.registry.get(name)
        if definition is None and len(self.registry):
            raise ValueError(f"unknown task {name!r}; known tasks: {self.registry.get_all_task_names()}")
        if request.callback is not None and not callable(request.callback):
            raise TypeError(f"callback of task {name!r} must be callable or None, got {request.callback!r}")
        priority = request.priority
        if type(priority) is not int and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise TypeError(f"priority of task {name!r} must be an int (higher runs first), got {priority!r}")
        if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
            raise ValueError(f"priority={priority!r} of task {name!r} is out of range; it must be "
                             f"an integer from -2**63 to 2**63-1 (higher runs first)")
        args = request.args
        if type(args) is not dict and not isinstance(args, dict):
            raise TypeError(f"arguments of task {name!r} must be a dict of keyword arguments, "
                            f"got {type(args).__name__}: {args!r}")
        delay = request.delay
        if delay and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                      or not math.isfinite(delay) or delay < 0):
            raise ValueError(f"delay={delay!r} of task {name!r} is invalid; it must be a finite "
                             "number of seconds >= 0")
        if self.config.immediate:
            delay = 0.0  # immediate mode runs it now
        positional = request.positional
        if definition is not None:
            definition.check_arguments(positional, args)
        cached = request.use_cache or (definition is not None and definition.options.use_cache)
        retry_json = None
        if request.retry is not None:
            max_retries = request.retry.max_retries
            retry_json = request.retry.to_json()
        elif request.retries is not None:
            max_retries = RetryPolicy(max_retries=request.retries).max_retries
        else:
            max_retries = definition.options.retry.max_retries if definition else 0
        if cached:
            self._ensure_node()
            if self._cache_check is None:
                self._arm_cache_check(name)
            payload = f"{self.node}:{next(self._cache_keys)}"  # the key of the arguments in memory
            self.cache[payload] = (tuple(positional), args)
            cached_keys.append(payload)
        else:
            payload = dumps_call(name, positional, args) if positional else dumps_args(name, args)
        if request.queue is not None:
            queue = check_queue_name(request.queue)
        else:
            queue = definition.options.queue if definition is not None else DEFAULT_QUEUE
        task = NewTask(name, payload, priority, self.node, request.callback is not None,
                       self.node if cached else None, max_retries, retry_json,
                       float(delay) if delay else 0.0, now, queue=queue,
                       timeout=check_timeout(request.timeout), headers=_headers_json(name, request.headers))
        if (request.unique_key is not None or request.unique_for is not None
                or request.unique_states is not None
                or (definition is not None and definition.options.unique)):
            self._make_unique(task, request, definition)
        return task

    @staticmethod
    def _make_unique(task: NewTask, request: SendRequest, definition: TaskDefinition | None) -> None:
        """The key, states and expiry of a unique send: the send's own, else its task's
        (``unique=``); an option without a key to apply to is an error, not ignored."""
        options = definition.options if definition is not None else None
        if request.unique_key is not None:
            key = uniq.check_key(request.unique_key)
        elif options is not None and options.unique:
            key = uniq.derive_key(task.task_name, definition.func if definition else None,
                                  options.unique, request.positional, request.args)
        else:
            given = "unique_for" if request.unique_for is not None else "unique_states"
            raise TypeError(f"{given}= of task {task.task_name!r} needs a unique key: pass "
                            "unique_key= too, or declare the task with unique=True or unique=('arg', ...)")
        task.unique_key = key
        task.unique_states = (uniq.states_mask(request.unique_states) if request.unique_states is not None
                              else options.unique_states if options is not None else uniq.DEFAULT_MASK)
        task.unique_for = (uniq.check_unique_for(request.unique_for) if request.unique_for is not None
                           else options.unique_for if options is not None else None)

    # -- running ---------------------------------------------------------------------
    def idle_wait_timeout(self) -> float:
        """How long an idle worker may wait for a ring: until the next scheduled task is due.
        (Idle is also when a worker looks for shard files another process added, at most
        once per ``IDLE_RECHECK_S``: a new file also rings through the change feed.)"""
        mono = time.monotonic()
        if mono >= self._next_shard_look:
            self._next_shard_look = mono + IDLE_RECHECK_S
            self.backend.adopt_new_shards()
        due = [t for t in (s.seconds_until_due() for s in self.shards) if t is not None]
        if not due:
            return IDLE_RECHECK_S
        return max(0.001, min(IDLE_RECHECK_S, min(due)))

    def start_workers(self, threads: int | None = None, queues: Any = None) -> list[Lane]:
        """Start a worker per lane of ``queues`` (core/queues.py: None serves every queue);
        returns the lanes."""
        self._check_open()
        lanes = plan_lanes(queues, threads or self.config.max_workers)
        if self.config.immediate:
            log.info("immediate mode: tasks run in the sending thread; no workers to start")
            return lanes
        with self._lock:
            if self._workers:
                raise MessageQueueError("workers are already running on this queue object")
            self._ensure_node_locked()
            self._watch_storage()
            self._declare_limits()
            rates = {d.name: d.options.rate for d in self.registry if d.options.rate is not None}
            workers = [Worker(self, self._executor(lane), self.runner, lane.queues, rates) for lane in lanes]
            self._workers = workers
            for worker in workers:
                worker.start()
            self._cancel_watcher = cancellation.CancelWatcher(self)
            self._cancel_watcher.start()
            self._start_scheduler()
        return lanes

    def _executor(self, lane: Lane) -> Executor:
        """A lane's executor: its threads for plain functions, and, made at the first claim that
        needs one, an event loop for ``async def`` tasks and child processes for
        ``executor="process"`` ones (engine/executors/)."""
        config = self.config
        return RoutingExecutor(ThreadExecutor(lane.threads), self.runner.kind_of, {
            "async": lambda: EventLoopExecutor(config.async_concurrency),
            "process": lambda: ProcessExecutor(config.processes or os.cpu_count() or 1)})

    def _declare_limits(self) -> None:
        """Store the concurrency limits this process's tasks declare (and forget those of its
        tasks that declare none), on every shard: each shard's claim statement enforces them."""
        limits = {d.name: d.options.concurrency for d in self.registry}
        if limits:
            for shard in self.shards:
                shard.declare_limits(limits)

    def _start_scheduler(self) -> None:
        """Every process that runs workers enqueues the periodic tasks its registry declares
        (see scheduler.py: no leader; a slot is enqueued once however many try)."""
        if not any(d.options.schedule is not None for d in self.registry):
            return
        scheduler = Scheduler(self.shards[0], list(self.registry),
                              lambda request: self._prepare(request, self.clock(), []),
                              lambda name, kwargs, priority: SendRequest(name, kwargs, priority=priority),
                              self.bell.ring)
        scheduler.start()
        self.scheduler = scheduler

    def hurry(self) -> None:
        """Make a stop in progress give its leases back now instead of draining."""
        for worker in self._workers or self._stopping_workers:
            worker.hurry()

    def stop_workers(self, drain_timeout: float | None = None) -> None:
        """Stop every lane's worker: all stop claiming at once, then each drains (within one
        ``drain_timeout`` in all) and gives back what is left."""
        with self._lock:
            workers, self._workers = self._workers, []
            self._stopping_workers = workers
            scheduler, self.scheduler = self.scheduler, None
            watcher, self._cancel_watcher = self._cancel_watcher, None
        if scheduler is not None:
            scheduler.stop()
        drain = self.config.drain_timeout if drain_timeout is None else drain_timeout
        deadline = time.monotonic() + drain
        try:
            for worker in workers:
                worker.stop_claiming()
            for worker in workers:
                worker.drain(deadline, drain)
        finally:
            with self._lock:
                if self._stopping_workers is workers:
                    self._stopping_workers = []
            if watcher is not None:  # (answered requests up to the end of the drain)
                watcher.stop()
        self.progress.flush()
        self.dispatcher.flush(timeout=30)

    @property
    def workers_running(self) -> bool:
        return bool(self._workers)

    @property
    def worker(self) -> Worker | None:
        """The first lane's running worker (its ledger and executor), or None."""
        return self._workers[0] if self._workers else None

    @property
    def workers(self) -> list[Worker]:
        """The running workers, one per lane."""
        return list(self._workers)

    def _arm_cache_check(self, task_name: str) -> None:
        """A cache-mode task runs only on this object's own workers (its arguments are in this
        process's memory; a CLI worker never can): warn, once, when none was started within a
        grace period of the first such send (senders often start their workers just after)."""
        def check() -> None:
            if not self._closed and not self.config.immediate and not self._workers:
                log.warning("task %r was sent in cache mode (use_cache=True), but this queue "
                            "object runs no workers: only its own workers can run cache-mode "
                            "tasks (their arguments live in this process's memory; a CLI worker "
                            "never can), so it waits until this object starts workers (start() "
                            "or start_server) and fails when it closes", task_name)

        timer = threading.Timer(CACHE_WORKER_GRACE_S, check)
        timer.daemon = True
        self._cache_check = timer
        timer.start()

    def active_workers(self) -> list[Worker]:
        """The running workers and those still stopping: whose ledgers the housekeeper renews."""
        return [*self._workers, *self._stopping_workers, *([self._inline] if self._inline else [])]

    # -- cancellation ----------------------------------------------------------------
    def cancel(self, task_ids: Sequence[str], wait: float = 5.0) -> dict[str, str]:
        """Cancel tasks by id (see cancellation.py): ``{task_id: "cancelled" | "stopping" |
        "ended"}``, after the workers holding running ones answered (up to ``wait`` s)."""
        self._check_open()
        return cancellation.cancel(self, task_ids, wait)

    def waiting_task_ids(self, task_name: str) -> list[str]:
        return [format_task_id(shard.index, row_id) for shard in self.shards
                for row_id in shard.waiting_ids(task_name)]

    # -- outcomes --------------------------------------------------------------------
    def shard_of(self, task_id: str) -> tuple[int, int]:
        """``(shard, row_id)`` of a task id; ValueError when it cannot be one of this queue's."""
        shard, row_id = parse_task_id(task_id)
        if shard >= len(self.shards):
            raise ValueError(f"task id {task_id!r} names shard {shard}, but this queue has "
                             f"{len(self.shards)} shard(s)")
        return shard, row_id

    def find(self, task_id: str) -> TaskRecord | None:
        shard, row_id = self.shard_of(task_id)
        found = self.shards[shard].get_tasks([row_id])
        return found[0] if found else None

    def outcome_epoch(self) -> int | None:
        """Taken before a send, given back to ``wait_outcome``: lets a wait skip the storage
        lookup when nothing could have ended since. None while storage is not watched (then
        another process's commits would go unnoticed)."""
        return self.dispatcher.epoch if self._watching else None

    def wait_outcome(self, task_id: str, timeout: float | None,
                     since: int | None = None) -> TaskOutcome | None:
        self.shard_of(task_id)
        return self.dispatcher.wait(task_id, timeout, lambda: self.find(task_id), since)

    @property
    def async_inline(self) -> bool:
        """Whether async callers run this object's storage calls in the event loop's thread:
        on SQLite files (tens of microseconds, less than a hand-off to a thread), not on
        PostgreSQL (a network round trip) nor in immediate mode (a send runs its task)."""
        return self.backend.inline_io and not self.config.immediate

    async def await_outcome(self, task_id: str, timeout: float | None,
                            since: int | None = None) -> TaskOutcome | None:
        """``wait_outcome`` for a coroutine: no thread waits; None on timeout. A cancelled
        caller's registration is removed (nothing is left waiting for the task)."""
        self.shard_of(task_id)
        waiter = aio.LoopWaiter(asyncio.get_running_loop())
        entry, outcome, look = self.dispatcher.add_waiter(task_id, waiter, since)
        if outcome is not None:
            return outcome
        try:
            if look:
                record = await aio.run_blocking(self.async_inline, self.find, task_id)
                outcome = self.dispatcher.found_in_storage(task_id, entry, record)
                if outcome is not None:
                    return outcome
            try:
                await asyncio.wait_for(waiter.future, timeout)
            except asyncio.TimeoutError:
                pass
            return entry.outcome
        finally:
            self.dispatcher.remove_waiter(task_id, entry, waiter)

    # -- liveness and change feed ----------------------------------------------------
    def _watch_storage(self) -> None:
        if not self._watching:
            with self._watch_lock:
                if not self._watching:
                    self.backend.watch(self.storage_changed)
                    self._watching = True

    def storage_changed(self) -> None:
        """Another process committed (the change feed), or this object made work ready or
        ended tasks outside the send and worker paths: wake idle workers, the cancel watcher and
        the outcome poller."""
        self.bell.ring()
        self.storage_bell.ring()
        self.dispatcher.storage_changed()

    def _ensure_node(self) -> None:
        if not self._node_registered:
            with self._lock:
                self._ensure_node_locked()

    def _ensure_node_locked(self) -> None:
        if self._node_registered:
            return
        for shard in self.shards:
            shard.register_node(self.node, os.getpid(), socket.gethostname(),
                                self.config.visibility_timeout)
        self._node_registered = True
        self.housekeeper.start()

    # -- closing ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise MessageQueueError("this queue object is closed")

    def close(self) -> None:
        """Stop workers and deliver their outcomes; then fail this object's cached tasks that
        can no longer run (their arguments die with it) and tell their callbacks so; release
        storage. Idempotent."""
        if self._closed:
            return
        self.stop_workers()
        self._closed = True
        self.progress.close()
        if self._cache_check is not None:
            self._cache_check.cancel()
        self.housekeeper.close()
        if self._node_registered:
            for shard in self.shards:
                try:
                    failed = shard.unregister_node(self.node)
                except QueueStorageError as exc:  # unreachable (a partition): one line, no traceback
                    log.warning("could not unregister from %s (%s); this process counts as gone "
                                "once its liveness expires", shard.name, exc)
                    continue
                except Exception:
                    log.exception("could not unregister from %s", shard.name)
                    continue
                if failed:
                    log.warning("%d cache-mode task(s) sent by this queue object never ran before "
                                "it closed; they are FAILED (%s)", failed, shard.name)
        self.dispatcher.close(final_poll=True)
        self.cache.clear()
        self.backend.close()
        _open_engines.discard(self)


@atexit.register
def _close_at_exit() -> None:
    """One handler for every queue object still open (registered once, not per object)."""
    for engine in list(_open_engines):
        try:
            engine.close()
        except Exception:
            log.exception("closing the queue at exit failed")


def _headers_json(task_name: str, headers: dict[str, str]) -> str | None:
    """A send's headers as stored: None for none; else a JSON object of strings."""
    if not headers:
        return None
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in headers.items()):
        raise TypeError(f"headers of task {task_name!r} must be a dict of str to str, got {headers!r}")
    return json.dumps(headers, sort_keys=True, separators=(",", ":"))


def _for_each_engine(action: Callable[[Engine], None], what: str) -> None:
    """Run ``action`` on every open queue object; a failure is logged, never raised (a fork
    must go on; a queue object that could not be prepared then fails with a clear error)."""
    for engine in list(_open_engines):
        try:
            action(engine)
        except Exception:  # noqa: BLE001
            log.exception("%s failed", what)


def _before_fork() -> None:
    _for_each_engine(lambda e: e.backend.before_fork(), "preparing a queue object for fork")


def _after_fork_in_parent() -> None:
    _for_each_engine(lambda e: e.backend.after_fork_in_parent(), "resuming a queue object after fork")


def _after_fork_in_child() -> None:
    _for_each_engine(Engine.after_fork_in_child, "resetting a queue object after fork")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
