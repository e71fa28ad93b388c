"""The storage interface every backend implements, and the records that cross it.

The engine speaks only this interface; all SQL lives in the backends. A backend is a set
of shards (one SQLite file each, or one PostgreSQL schema) plus a change feed that tells
idle workers and waiting senders that another process wrote something.

Time: the engine passes durations (a lease's length, a delay, a retention), never clock
readings. Every expiry and every comparison with one is made by the backend, from one clock
that all the queue's processes share (the PostgreSQL server's; on SQLite, the host's boot
clock for leases and node liveness, its wall clock for scheduled times), each at the moment
the statement runs, after any lock it waited for. A client whose clock is wrong, or steps,
can then neither take a live lease nor shorten its own.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from message_queue_sqlite.core.errors import QueueStorageError
from message_queue_sqlite.core.ids import format_task_id
from message_queue_sqlite.core.queues import DEFAULT_QUEUE
from message_queue_sqlite.core.rates import Rate
from message_queue_sqlite.core.status import TaskStatus


@dataclass(slots=True)
class NewTask:
    task_name: str
    args: str | None  # JSON text; for a cached task, the key of its arguments in the sender's memory
    priority: int
    sender: str  # node id of the sending queue object
    notify: bool  # the sender waits for the outcome (a callback is registered)
    cache_owner: str | None  # node whose memory holds the arguments, if cached
    max_retries: int
    retry: str | None  # per-send retry policy (JSON), None: the task's own
    delay: float  # seconds from now (by the backend's clock) until it may run; 0: ready at once
    created_at: float  # the sender's clock: for display (PostgreSQL also finds an unconfirmed batch by it)
    # A unique task (core/unique.py): its key (None: not unique), the states in which it holds
    # the key (a bitmask, bit s: state s, an ended task's state being its outcome), and how long
    # it holds it at most, in seconds from the insert by the backend's clock (None: no limit).
    unique_key: str | None = None
    unique_states: int = 0
    unique_for: float | None = None
    queue: str = DEFAULT_QUEUE  # the named queue it waits in (core/queues.py)
    timeout: float | None = None  # the send's own limit on a run, seconds (None: the task's, if any)
    headers: str | None = None  # JSON object of strings the sender's hooks attached (None: none)


@dataclass(slots=True, eq=False)  # compared and hashed by identity: the worker keeps sets of them
class ClaimedTask:
    shard: int
    row_id: int
    task_name: str
    args: str | None
    priority: int
    attempt: int  # claims of this task so far, this one included: the lease's fencing token (only grows)
    max_retries: int
    retry: str | None
    sender: str
    notify: bool
    cache_owner: str | None
    created_at: float
    started_at: float
    retries: int  # retries used so far (completions that scheduled one), against max_retries
    slot: float | None = None  # a periodic task's slot (epoch seconds), else None
    timeout: float | None = None  # the send's own timeout, seconds (None: the task's, if any)
    rate_slot: float | None = None  # the rate window it was deferred to (its place there is held)
    headers: str | None = None  # JSON object of strings its sender's hooks attached (None: none)
    task_id: str = ""  # derived from shard and row; computed once, it is read on every hop
    # Set by the engine at claim time: the sender's callback waits in this very process, so
    # the outcome is handed over in memory and need not be looked up in storage.
    callback_here: bool = False
    queue: str = DEFAULT_QUEUE  # the queue it was claimed from
    cancel_requested: bool = False  # set by the worker when storage asks it to stop this run

    def header_values(self) -> dict[str, str]:
        """The headers its sender's hooks attached (``SendRequest.headers``), as a dict."""
        return json.loads(self.headers) if self.headers else {}

    def __post_init__(self) -> None:
        self.task_id = format_task_id(self.shard, self.row_id)


@dataclass(slots=True)
class Completion:
    """The end of one attempt. ``status`` is FINISHED, FAILED, or SCHEDULED for a retry."""

    row_id: int
    attempt: int
    status: int
    result: str | None  # JSON of the return value, or the error message
    traceback: str | None
    started_at: float  # the worker's clock, for display (as ended_at)
    ended_at: float
    retry_in: float = 0.0  # SCHEDULED: seconds until the retry may run (by the backend's clock)
    handed_over: bool = False  # the sender got the outcome in memory: clear the row's notify flag


@dataclass(slots=True)
class TaskRecord:
    shard: int
    row_id: int
    task_name: str
    status: int
    outcome: int | None
    result: str | None
    traceback: str | None
    priority: int
    attempts: int
    max_retries: int
    sender: str | None
    notify: bool
    cache_owner: str | None
    lease_owner: str | None
    lease_expires: float | None
    run_after: float
    created_at: float
    started_at: float | None
    ended_at: float | None
    queue: str = DEFAULT_QUEUE
    args: str | None = None  # read only by the pages (``page_tasks``, ``get_task_detail``)
    progress: str | None = None  # JSON as the task last reported it; read only by ``get_task_detail``

    @property
    def task_id(self) -> str:
        return format_task_id(self.shard, self.row_id)


@dataclass(slots=True)
class NodeRecord:
    """A live queue object (a process's MessageQueue that sent with a callback, or runs
    workers): what the dashboard's nodes page shows."""

    node_id: str
    host: str
    pid: int
    started_at: float  # wall clock
    lease_left: float  # seconds until its liveness lease runs out (refreshed well before)
    running: int  # tasks leased to it now, on this shard


@dataclass(slots=True)
class RecoveryReport:
    requeued: int = 0  # leases expired, task ready again
    failed: int = 0  # could not run again: crash limit reached, or cached arguments gone
    cancelled: int = 0  # a cancel was pending when its worker died: CANCELLED

    def __iadd__(self, other: RecoveryReport) -> RecoveryReport:
        self.requeued += other.requeued
        self.failed += other.failed
        self.cancelled += other.cancelled
        return self


@dataclass(slots=True)
class ScheduleRecord:
    """A periodic task's stored schedule: what ``mqs schedules`` shows, and the one value
    every scheduler compares and sets to enqueue a slot exactly once (``last_slot``)."""

    name: str  # the task's name
    expression: str  # as Schedule.expression shows it: "every 30s", "cron */5 * * * * (UTC)"
    last_slot: float  # the newest slot decided (enqueued or skipped), epoch seconds
    next_slot: float | None  # the next slot, as the last scheduler to decide computed it
    last_task: int | None  # row id of the task of the newest slot enqueued (its shard: the first)
    last_status: int | None  # that task's stored status (None: no run yet, or purged)
    last_outcome: int | None
    seen_at: float  # when a live scheduler last declared this schedule (backend wall clock)
    created_at: float


OUTCOME_NAMES = ("queued", "scheduled", "running", "finished", "failed", "cancelled", "callback_ran")
_OUTCOME_OF = {TaskStatus.NOT_STARTED: "queued", TaskStatus.SCHEDULED: "scheduled",
               TaskStatus.RUNNING: "running", TaskStatus.FINISHED: "finished",
               TaskStatus.FAILED: "failed",
               TaskStatus.CANCELLED: "cancelled"}  # a CALLBACKED row counts by its outcome


class Producer(ABC):
    """Storing new tasks."""

    @abstractmethod
    def enqueue(self, tasks: Sequence[NewTask]) -> list[int]:
        """Store tasks durably; returns their row ids (monotonic, never reused) after the commit.
        For tasks without a unique key (the engine sends keyed batches to ``enqueue_unique``)."""

    @abstractmethod
    def enqueue_unique(self, tasks: Sequence[NewTask]) -> list[tuple[int, bool]]:
        """As ``enqueue``, for a batch in which some tasks carry a unique key; one transaction:
        first free the keys of this batch whose holder's ``unique_for`` ran out (by the backend's
        clock), then store each task unless its key is held, by a stored task or by an earlier
        task of this batch (the partial unique index decides, in this transaction, also against
        a concurrent sender: no lock is taken beforehand). Returns ``(row id, duplicate)`` per
        task in order; a duplicate stored nothing and its row id is the holder's. Kept counts
        move only for what was stored."""

    def enqueue_in_transaction(self, connection: Any, tasks: Sequence[NewTask]) -> list[int]:
        """Store tasks through the application's own open ``connection`` (a driver connection
        to this queue's database), inside its transaction: they exist, and workers are told,
        only when the application commits; a rollback leaves nothing. Their queues are declared
        in that transaction too: nothing may be written through the shard's own connections
        meanwhile (on SQLite the application holds the file's write lock). Returns their row
        ids. Plain tasks only (no unique key, no cached arguments)."""
        raise QueueStorageError(f"{type(self).__name__} cannot send in an application's transaction")

    async def aenqueue_in_transaction(self, connection: Any, tasks: Sequence[NewTask]) -> list[int]:
        """``enqueue_in_transaction`` through an application's async connection."""
        raise TypeError(f"connection={connection!r}: {type(self).__name__} takes no async connection; pass "
                        "the application's sync connection (sqlite3.Connection), from this thread")

    @abstractmethod
    def declare_queues(self, names: Sequence[str]) -> None:
        """Store these queue names (those already stored stay as they are), so that what serves
        or lists every queue finds them; called once per queue and process, before the first
        task sent to it."""


class Consumer(ABC):
    """Leasing tasks to workers and recording how they ended; every statement that ends a
    lease is fenced by owner and attempt."""

    @abstractmethod
    def complete_and_claim(self, completions: Sequence[Completion], owner: str, limit: int,
                           lease_seconds: float, callbacked: Sequence[int] = (),
                           queue: str = DEFAULT_QUEUE) -> tuple[list[int], list[ClaimedTask]]:
        """Record completions of ``owner``'s leases (fenced by owner and attempt), mark the
        ``callbacked`` rows as in ``mark_callbacked``, and lease up to ``limit`` ready tasks of
        ``queue`` for ``lease_seconds`` (from when the backend takes them), in one transaction. With nothing
        to write, an empty queue must be detected without taking a write lock. Returns the row
        ids whose completion was rejected as stale, and the claims. A completion that this
        very call already applied (its first try committed, the reply was lost) is applied,
        not stale."""

    @abstractmethod
    def release(self, claims: Sequence[ClaimedTask], owner: str) -> int:
        """Give ``owner``'s leases of these claims back at once (graceful stop): the tasks are
        ready again. Fenced by owner and attempt; neither a retry nor a crash is counted (the
        attempt stays counted: it is the fencing token). Returns how many were given back."""

    @abstractmethod
    def renew_leases(self, owner: str, leases: Sequence[tuple[int, int]], lease_seconds: float) -> list[int]:
        """Extend exactly these ``(row_id, attempt)`` leases to ``lease_seconds`` from now, where
        ``owner`` still holds them (RUNNING, same owner and attempt). Returns the row ids of
        those it no longer holds (ended, given back, or recovered and maybe claimed again)."""

    @abstractmethod
    def declare_limits(self, limits: dict[str, int | None]) -> None:
        """Concurrency limits by task name (None: no limit any more), in one transaction: the
        claim statement leases no more of a name than its limit less its RUNNING rows."""

    @abstractmethod
    def list_limits(self) -> dict[str, int]:
        ...

    @abstractmethod
    def take_rate(self, claim: ClaimedTask, owner: str, rate: Rate) -> float | None:
        """Admit one run of a rate-limited task, in one transaction (by the backend's clock,
        under a lock on the task's window row): None, it runs now (a place in the current
        window taken, or its reserved one); else the start of the window it was deferred to
        (it is SCHEDULED until then, its place there held; no retry or crash counted)."""

    @abstractmethod
    def record_progress(self, owner: str, items: Sequence[tuple[int, int, str]]) -> None:
        """Store ``(row_id, attempt, progress JSON)`` of running tasks ``owner`` holds, in one
        transaction; a report of a run that ended or whose lease was lost is ignored."""

    @abstractmethod
    def seconds_until_due(self) -> float | None:
        """Seconds until the earliest scheduled (delayed or backing-off) task becomes ready, by
        the backend's clock (<= 0: due now); None when nothing is scheduled."""


class Outcomes(ABC):
    """Handing ended tasks' outcomes to the process that sent them (callbacks)."""

    @abstractmethod
    def outcome_row_ids(self, sender: str, limit: int) -> list[int]:
        """Row ids of ended tasks whose sender ``sender`` registered a callback not yet run."""

    @abstractmethod
    def mark_callbacked(self, row_ids: Sequence[int]) -> None:
        """Record that the sender's callback ran for these tasks."""

    @abstractmethod
    def get_tasks(self, row_ids: Sequence[int]) -> list[TaskRecord]:
        ...

    @abstractmethod
    def get_progress(self, row_id: int) -> str | None:
        """A task's last reported progress (JSON), None if it reported none (or is not stored)."""


class Admin(ABC):
    """What people and dashboards read and repair: listings and counts that stay cheap at
    millions of rows, and requeues by primary key."""

    @abstractmethod
    def list_tasks(self, status: int | None, task_name: str | None, limit: int,
                   queue: str | None = None) -> list[TaskRecord]:
        """Tasks of ``status`` (None: any), of a name and of a queue if given: ready ones in
        the order they will be claimed (per queue), scheduled ones soonest first, others
        newest first."""

    @abstractmethod
    def list_queues(self) -> list[str]:
        """Every queue a task was ever sent to (``declare_queues``), sorted."""

    @abstractmethod
    def count_by_queue(self) -> dict[str, dict[str, int]]:
        """Waiting and running tasks per queue: ``{queue: {"queued": n, "scheduled": n,
        "running": n}}`` for every stored queue, counted on the indexes of those states."""

    @abstractmethod
    def count_tasks(self) -> dict[tuple[int, int], int]:
        """Tasks per (stored status, outcome: 3 or 4 once ended, else 0), from counts kept up to
        date by the statements that change them (never a scan of the table): a dashboard may
        poll it every second at millions of rows."""

    @abstractmethod
    def ended_timings(self, limit: int) -> list[tuple[float, float | None, float]]:
        """(created, started, ended) of the newest ended tasks: for latency summaries."""

    @abstractmethod
    def page_tasks(self, status: int | None, after: tuple[float, int], limit: int) -> list[TaskRecord]:
        """One keyset page of tasks of ``status`` (None: any; 3 and 4 include those whose
        callback ran), with their arguments, reading at most ``limit`` rows on that state's
        index or a range of the primary key, so a page costs the same at any depth and size.
        Order and cursor: ready (1) in claim order after ``after`` = (priority, row id);
        scheduled (6) by due time after (run_after, row id); the others newest first, row ids
        below ``after[1]`` (``after[0]`` unused)."""

    @abstractmethod
    def get_task_detail(self, row_id: int) -> TaskRecord | None:
        """One task by primary key with its arguments (``get_tasks`` leaves them out: the
        engine reads outcomes on a hot path)."""

    @abstractmethod
    def recent_ends(self, since: float, limit: int) -> list[tuple[float, float | None, float, int]]:
        """(created, started, ended, outcome) of up to ``limit`` of the newest tasks that ended
        at or after ``since`` (wall clock): the dashboard's throughput and latency. Bounded
        work: SQLite looks among a window of the newest rows (no end-time index is kept)."""

    @abstractmethod
    def oldest_ready(self) -> tuple[int, str, float] | None:
        """(row id, name, created_at) of the ready task sent first, whatever its priority:
        a seek on the ready index per priority level, never a walk of the backlog."""

    @abstractmethod
    def list_nodes(self) -> list[NodeRecord]:
        """The queue objects whose liveness lease has not run out (``register_node``)."""

    @abstractmethod
    def remove_waiting(self, row_id: int | None, task_name: str | None) -> int:
        """Delete waiting (ready or scheduled) tasks: one by row id (primary key), all of a
        name, or all; how many. The newest row stays as a tombstone that is no task, so row
        ids are never reused."""

    @abstractmethod
    def requeue_failed(self, row_id: int | None, task_name: str | None) -> int:
        """Put FAILED tasks back in the queue with a fresh retry budget (retries and crashes
        counted from zero again; the attempt count, the fencing token, is kept)."""


class Control(ABC):
    """Cancellation. A waiting task is cancelled in place; a RUNNING one (leased: running, or
    still in its worker's buffer) gets a request its worker answers: an unstarted claim ends
    CANCELLED, a running one is asked to stop and the request is marked seen."""

    @abstractmethod
    def cancel(self, row_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """One transaction: the waiting ones (ready or scheduled) end CANCELLED now and never
        start (first list); the running ones get a cancel request (second list; one already
        asked is listed again). Others (ended, unknown) are left alone."""

    @abstractmethod
    def cancel_pending(self, row_ids: Sequence[int]) -> list[int]:
        """Of these, the RUNNING ones whose worker has not yet seen their cancel request."""

    @abstractmethod
    def waiting_ids(self, task_name: str) -> list[int]:
        """Row ids of the waiting (ready or scheduled) tasks of a name."""

    @abstractmethod
    def cancel_requests(self, owner: str) -> list[int]:
        """Row ids of ``owner``'s leased tasks with a cancel request not seen yet."""

    @abstractmethod
    def cancel_seen(self, owner: str, claims: Sequence[ClaimedTask]) -> None:
        """``owner`` answered these claims' cancel requests (fenced by owner and attempt)."""


class Maintenance(ABC):
    """Liveness of queue objects, crash recovery, retention, upkeep, and fork safety."""

    @abstractmethod
    def register_node(self, node: str, pid: int, host: str, lease_seconds: float) -> None:
        """Announce a live queue object, or refresh it, for ``lease_seconds`` from now (its
        cached arguments depend on it): called again before that runs out."""

    @abstractmethod
    def unregister_node(self, node: str) -> int:
        """Forget a node that stops; fail its cached tasks that can no longer run."""

    @abstractmethod
    def recover_expired(self, crash_limit: int) -> RecoveryReport:
        """Requeue tasks whose lease expired; fail those that cannot run again."""

    @abstractmethod
    def expire_leases_of(self, owner: str) -> int:
        """The queue object ``owner`` is known dead (a supervisor saw its process end): its
        leases expire now, so ``recover_expired`` runs them again at once (a crash counted)
        instead of after the visibility timeout. Returns how many."""

    @abstractmethod
    def purge_ended(self, retention_seconds: float, limit: int) -> bool:
        """Delete some tasks that ended more than ``retention_seconds`` ago (up to ``limit``
        rows' worth of work, one short transaction), never the newest row (so row ids are
        never reused). True while more may be left: the caller calls again, within its time
        budget."""

    @abstractmethod
    def maintain(self) -> None:
        """Backend upkeep between bursts (e.g. WAL checkpoint)."""

    @abstractmethod
    def before_fork(self) -> None:
        """The process is about to ``fork()``: let no storage call be in progress at that
        moment (the child would inherit it half done)."""

    @abstractmethod
    def after_fork_in_parent(self) -> None:
        """Undo ``before_fork`` in the parent."""

    @abstractmethod
    def after_fork_in_child(self) -> None:
        """In a child made by ``fork()``: fresh locks (a parent's thread may have held one at
        the fork, forever in the child); the parent's connections are never used or closed
        here: the child opens its own on first use."""

    @abstractmethod
    def close(self) -> None:
        ...


class Schedules(ABC):
    """Periodic tasks' schedules, kept on the queue's first shard. Every process that runs
    workers also runs a scheduler; there is no leader: each may try to enqueue a due slot,
    and the compare-and-set on ``last_slot``, in the transaction that inserts the slot's
    task (under a unique index on (schedule, slot)), lets exactly one of them do it."""

    @abstractmethod
    def wall_now(self) -> float:
        """The backend's wall clock now (epoch seconds): every scheduler's slot arithmetic
        uses it, so processes whose own clocks differ agree on when a slot is due."""

    @abstractmethod
    def declare_schedules(self, schedules: Sequence[tuple[str, str, float, float]]) -> None:
        """``(name, expression, first_last_slot, next_slot)`` of the schedules this process's
        code declares: store the ones not stored yet with ``first_last_slot`` (the slot just
        before the first to run), update the expression of the others, and mark all as seen
        now. One short transaction."""

    @abstractmethod
    def enqueue_slots(self, name: str, expected_last: float, decided: float, next_slot: float,
                      runs: Sequence[tuple[float, NewTask]], skip_if_running: bool) -> list[int] | None:
        """If schedule ``name``'s ``last_slot`` is still ``expected_last``, set it to
        ``decided`` and store the tasks of ``runs`` (slot, task), in one transaction; a slot
        already stored is not stored again. With ``skip_if_running``, nothing is stored while
        the schedule's previous task is still waiting or running (the slots count as decided).
        Returns the row ids stored, or None when another process decided first."""

    @abstractmethod
    def list_schedules(self) -> list[ScheduleRecord]:
        ...

    @abstractmethod
    def remove_schedules(self, names: Sequence[str]) -> int:
        """Forget these schedules (their stored tasks stay); how many there were."""


class Shard(Producer, Consumer, Outcomes, Admin, Control, Maintenance, Schedules):
    """One unit of storage: the seven protocols above. Every method is one short transaction
    (or none). The counts people read are derived here from ``count_tasks``, once."""

    index: int
    name: str

    def count_by_status(self) -> dict[int, int]:
        """Tasks per stored status (CALLBACKED as stored: the original's values)."""
        counts: dict[int, int] = {}
        for (status, _outcome), n in self.count_tasks().items():
            counts[status] = counts.get(status, 0) + n
        return {status: n for status, n in counts.items() if n}

    def count_by_outcome(self) -> dict[str, int]:
        """What people ask: queued, scheduled, running, finished, failed (an ended task counts by
        how it ended, whether or not its callback ran), and callback_ran apart."""
        counts = dict.fromkeys(OUTCOME_NAMES, 0)
        for (status, outcome), n in self.count_tasks().items():
            counts[_OUTCOME_OF.get(status) or _OUTCOME_OF[outcome]] += n
            if status == TaskStatus.CALLBACKED:
                counts["callback_ran"] += n
        return counts

    def count_waiting(self) -> int:
        """Tasks waiting to run (ready or scheduled); used to balance sends over shards."""
        waiting = (TaskStatus.NOT_STARTED, TaskStatus.SCHEDULED)
        return sum(n for (status, _), n in self.count_tasks().items() if status in waiting)


class Backend(ABC):
    """The shards of one queue and the feed of changes made by other processes."""

    shards: Sequence[Shard]
    location: str
    # Its statements take microseconds (local files, no network): async callers run them in
    # the event loop's thread instead of handing each to a thread (see engine/aio.py).
    inline_io: bool = False

    def adopt_new_shards(self) -> bool:
        """Open shards that other processes created since this backend opened (a worker
        serves every shard of its queue); True if any were added. Default: none can appear."""
        return False

    def before_fork(self) -> None:
        for shard in self.shards:
            shard.before_fork()

    def after_fork_in_parent(self) -> None:
        for shard in self.shards:
            shard.after_fork_in_parent()

    def after_fork_in_child(self) -> None:
        """In a child made by ``fork()``: forget the parent's change-feed thread (it does not
        exist here) and reset every shard's locks and connections."""
        for shard in self.shards:
            shard.after_fork_in_child()

    @abstractmethod
    def watch(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` (from a backend thread) whenever another process may have
        written to any shard. Idempotent; stops at ``close``."""

    @abstractmethod
    def close(self) -> None:
        ...
