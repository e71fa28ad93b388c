"""One queue object's engine: sending, the worker pool, leases and outcome delivery.

Everything here is per object (no class attributes, no module state), so a process may
hold two queues, and tests do. Both public APIs are thin layers over this class.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from message_queue_sqlite.backends.base import Backend, ClaimedTask, Completion, NewTask, TaskRecord
from message_queue_sqlite.core.config import Config
from message_queue_sqlite.core.errors import MessageQueueError
from message_queue_sqlite.core.ids import format_task_id, parse_task_id
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.core.registry import TaskRegistry
from message_queue_sqlite.core.retry import NO_RETRY, RetryPolicy
from message_queue_sqlite.engine.bell import Bell
from message_queue_sqlite.engine.dispatcher import Callback, OutcomeDispatcher
from message_queue_sqlite.engine.leases import Housekeeper
from message_queue_sqlite.engine.sharding import ShardBalancer
from message_queue_sqlite.engine.worker import WorkerPool, build_completion, decode_args, execute
from message_queue_sqlite.serialization import dumps_args

log = logging.getLogger(__name__)

IDLE_RECHECK_S = 1.0  # an idle worker re-checks storage at least this often (missed-event guard)


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


class Engine:
    def __init__(self, config: Config, backend: Backend, registry: TaskRegistry,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.backend = backend
        self.registry = registry
        self.clock = clock
        self.shards = backend.shards
        self.node = uuid.uuid4().hex[:16]
        self.bell = Bell()
        self.cache: dict[str, dict[str, Any]] = {}
        self.dispatcher = OutcomeDispatcher(self.node, self.shards, self._watch_storage,
                                            lambda: self._pool is not None)
        self.balancer = ShardBalancer(self.shards, config.middleware_num)
        self._cache_keys = itertools.count()
        self._lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._pool: WorkerPool | None = None
        self._stopping_pool: WorkerPool | None = None
        self.housekeeper = Housekeeper(self)
        self._watching = False
        self._next_shard_look = 0.0
        self._node_registered = False
        self._closed = False

    # -- sending ---------------------------------------------------------------------
    def send(self, request: SendRequest) -> str:
        if not self.balancer.single:
            return self.send_many([request])[0]
        self._check_open()  # the common case, without the batch bookkeeping
        cached: list[str] = []
        try:
            row_id = self.shards[0].enqueue([self._prepare(request, self.clock(), cached)])[0]
        except BaseException:
            for key in cached:
                self.cache.pop(key, None)
            raise
        task_id = format_task_id(0, row_id)
        if request.callback is not None:
            self.dispatcher.expect(((task_id, request.callback),))
        self.bell.ring()
        return task_id

    def send_many(self, requests: Sequence[SendRequest]) -> list[str]:
        """Store tasks durably (one transaction per shard touched); return their ids in order.

        Callbacks are registered after the commit, when the ids exist; an outcome that a
        worker records before that is found in storage by the dispatcher, so none is lost."""
        self._check_open()
        now = self.clock()
        placed: list[tuple[int, int]] = []  # (shard, position in that shard's batch)
        by_shard: dict[int, list[NewTask]] = {}
        cached: list[str] = []
        single = self.balancer.single
        try:
            if single:
                tasks = [self._prepare(request, now, cached) for request in requests]
                by_shard[0] = tasks
            else:
                for request in requests:
                    shard = self.balancer.pick()
                    batch = by_shard.setdefault(shard, [])
                    placed.append((shard, len(batch)))
                    batch.append(self._prepare(request, now, cached))
            row_ids = {shard: self.shards[shard].enqueue(tasks) for shard, tasks in by_shard.items()}
        except BaseException:
            for key in cached:
                self.cache.pop(key, None)
            raise
        if single:
            task_ids = [format_task_id(0, row_id) for row_id in row_ids[0]]
        else:
            task_ids = [format_task_id(shard, row_ids[shard][pos]) for shard, pos in placed]
        callbacks = [(task_id, request.callback) for request, task_id in zip(requests, task_ids, strict=True)
                     if request.callback is not None]
        if callbacks:
            self.dispatcher.expect(callbacks)
        self.bell.ring()
        return task_ids

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
        args = request.args
        if type(args) is not dict and not isinstance(args, dict):
            raise TypeError(f"arguments of task {name!r} must be a dict of keyword arguments, "
                            f"got {type(args).__name__}: {args!r}")
        delay = request.delay
        if delay and (not isinstance(delay, (int, float)) or delay < 0):
            raise ValueError(f"delay of task {name!r} must be a number of seconds >= 0, got {delay!r}")
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
            payload = f"{self.node}:{next(self._cache_keys)}"  # the key of the arguments in memory
            self.cache[payload] = args
            cached_keys.append(payload)
        else:
            payload = dumps_args(name, args)
        return NewTask(name, payload, priority, self.node, request.callback is not None,
                       self.node if cached else None, max_retries, retry_json,
                       float(delay) if delay else 0.0, now)

    # -- running ---------------------------------------------------------------------
    def run_claim(self, claim: ClaimedTask) -> tuple[Completion, TaskOutcome | None]:
        """Run one claimed task to a completion record (never raises)."""
        started = self.clock()
        definition = self.registry.get(claim.task_name)
        if definition is None:
            ok, value, tb = False, LookupError(
                f"no task named {claim.task_name!r} is registered in this worker; known tasks: "
                f"{self.registry.get_all_task_names()}"), None
        else:
            try:
                args = decode_args(claim, self.cache)
            except Exception as exc:
                ok, value, tb = False, exc, None
            else:
                ok, value, tb = execute(definition.func, args)
        policy = NO_RETRY if ok or definition is None else self._policy(claim, definition.options.retry)
        return build_completion(claim, policy, ok, value, tb, started, self.clock(),
                                claim.sender == self.node)

    @staticmethod
    def _policy(claim: ClaimedTask, default: RetryPolicy) -> RetryPolicy:
        policy = RetryPolicy.from_json(claim.retry) if claim.retry else default
        if policy.max_retries != claim.max_retries:
            policy = dataclasses.replace(policy, max_retries=claim.max_retries)
        return policy

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

    def start_workers(self, threads: int | None = None) -> None:
        self._check_open()
        with self._lock:
            if self._pool is not None:
                raise MessageQueueError("workers are already running on this queue object")
            self._ensure_node_locked()
            self._watch_storage()
            self._pool = WorkerPool(self, threads or self.config.max_workers)
            self._pool.start()

    def hurry(self) -> None:
        """Make a stop in progress give its leases back now instead of draining."""
        pool = self._pool or self._stopping_pool
        if pool is not None:
            pool.hurry()

    def stop_workers(self, drain_timeout: float | None = None) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._stopping_pool = pool
        if pool is not None:
            pool.stop(self.config.drain_timeout if drain_timeout is None else drain_timeout)
        self.dispatcher.flush(timeout=30)

    @property
    def workers_running(self) -> bool:
        return self._pool is not None

    def held_leases(self) -> dict[int, list[tuple[int, int]]]:
        """The ``(row_id, attempt)`` leases this object's workers hold, by shard: what the
        housekeeper renews (only those: a lease they lost track of must be left to expire)."""
        held: dict[int, list[tuple[int, int]]] = {}
        for pool in (self._pool, self._stopping_pool):
            if pool is not None:
                pool.held_leases(held)
        return held

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

    # -- liveness and change feed ----------------------------------------------------
    def _watch_storage(self) -> None:
        if not self._watching:
            with self._watch_lock:
                if not self._watching:
                    self.backend.watch(self.storage_changed)
                    self._watching = True

    def storage_changed(self) -> None:
        """Another process committed (the change feed), or this object made work ready or
        ended tasks outside the send and worker paths: wake idle workers and the outcome poller."""
        self.bell.ring()
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
        atexit.register(_close_at_exit, weakref.ref(self))

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
        self.housekeeper.close()
        if self._node_registered:
            for shard in self.shards:
                try:
                    failed = shard.unregister_node(self.node)
                except Exception:
                    log.exception("could not unregister from %s", shard.name)
                    continue
                if failed:
                    log.warning("%d cache-mode task(s) sent by this queue object never ran before "
                                "it closed; they are FAILED (%s)", failed, shard.name)
        self.dispatcher.close(final_poll=True)
        self.cache.clear()
        self.backend.close()


def _close_at_exit(ref: weakref.ref[Engine]) -> None:
    engine = ref()
    if engine is not None:
        try:
            engine.close()
        except Exception:
            log.exception("closing the queue at exit failed")
