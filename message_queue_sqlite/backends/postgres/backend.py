"""The PostgreSQL backend: one schema shared by any number of processes and machines.

``middleware_num``: on PostgreSQL a queue is always ONE shard (one ``mqs_tasks`` table in
the URL's schema), whatever ``middleware_num`` says; a value above 1 is logged and
ignored. Shards exist on SQLite to spread its single-writer file lock; PostgreSQL has
row locks, and claims use ``FOR UPDATE SKIP LOCKED`` on a partial index of ready rows,
so any number of claimers proceed side by side on one table without waiting for each
other and without ever leasing a row twice. Separate queues use separate schemas
(``?schema=NAME``).

Round trips: the hot paths are ONE statement each, so one implicit transaction: an
enqueue of any batch (rows travel as one JSON array), and a worker's exchange, which
records a batch of completions (fenced by owner and attempt), promotes due scheduled
tasks and claims the next batch (data-modifying CTEs on disjoint rows). An exchange that
finds nothing writes nothing (no row lock, no transaction id): idle workers cost the
server a cheap index probe.

Time: every expiry and every comparison with one is the server's (see queries.sql), so
workers on hosts whose clocks disagree, or step, share one notion of when a lease runs
out. Clients send durations; their own clock only stamps display times (created_at,
started_at, ended_at) and identifies a batch or a claim whose commit went unconfirmed.

Change feed: every statement or transaction that makes work ready or ends a task
(enqueue, completions, release, requeue of failed tasks, lease recovery, cache-mode tasks
failed because their node left) calls ``pg_notify`` once, delivered at commit, on a
channel of the schema; claims, lease renewals and callback bookkeeping notify nobody.
One dedicated connection per backend LISTENs (see ``notify.py``) and skips what this
queue object's own session wrote, unless it scheduled a retry.

Connections: like ``SQLiteShard``, a writer session for every write (worker threads of a
process already take turns to exchange) and a reader session for lookups and counts,
each under its own lock, in autocommit mode, plus the listening connection: three per
queue object (the reader and listener open on first use), none per call. The queue sessions steer the
planner to index-driven plans (see ``connection.py``): the table's statistics are always
stale. Deadlocks and serialization failures (rolled back) are retried with back-off; a
broken connection is reopened and the call retried, as every write is idempotent or
fenced on retry: a batch of tasks whose commit went unconfirmed is looked up (by sender
and send time) before it is sent again, a claim whose commit went unconfirmed gives
back what it may have leased before anything else runs, and completions whose commit went
unconfirmed are looked up (ended under their attempt, their owner still on the row) and
count as applied, so their outcome is delivered once, not discarded as stale. A forked child never touches
its parent's connections: it opens its own.

Durability mirrors SQLite's: ``normal`` (no flush per commit, survives any crash of the
queue's processes) sets ``synchronous_commit = off`` for the queue's own sessions, so a
crash of the PostgreSQL server itself may lose the last moments (at most 3 x
wal_writer_delay) of commits, never consistency; ``full`` sets it ``on``: every commit is
flushed before it returns. A claiming exchange always commits durably (see queries.sql):
the attempt number it hands out is the fencing token and must never be handed out twice.

Network (issue 17, finding 6): every call is bounded (``_run``; the per-connection bounds
are in connection.py): a send fails within ``CALL_BOUND_S`` (32 s) when the server cannot
be reached, any other call within ``WORK_RETRY_S`` plus one attempt, and during an outage
they stop retrying one by one, so a worker that is stopping exits within its drain timeout.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from message_queue_sqlite.backends.backoff import Backoff
from message_queue_sqlite.backends.base import (
    Backend,
    ClaimedTask,
    Completion,
    NewTask,
    NodeRecord,
    RecoveryReport,
    ScheduleRecord,
    Shard,
    TaskRecord,
)
from message_queue_sqlite.backends.postgres.connection import (
    IO_TIMEOUT_S,
    STATEMENT_TIMEOUT_S,
    QueueConnection,
    Target,
    connect,
    open_schema,
)
from message_queue_sqlite.backends.postgres.notify import ChangeListener
from message_queue_sqlite.backends.sql_files import listing_query, load_queries, page_query
from message_queue_sqlite.core.config import Config
from message_queue_sqlite.core.errors import QueueStorageError
from message_queue_sqlite.core.queues import DEFAULT_QUEUE
from message_queue_sqlite.core.rates import Rate, admit
from message_queue_sqlite.core.status import TaskStatus

log = logging.getLogger(__name__)

QUERIES = load_queries(__package__)
RETRY_DEADLINE_S = 30.0  # a call keeps retrying a lost server or a deadlock this long
WORK_RETRY_S = 5.0  # any other call this long (its caller retries it: a worker's loop, the housekeeper)
BREAKER_S = 1.0  # during an outage, a call that is not a send fails at once this soon after a failed attempt
MIN_ATTEMPT_S = 2.0  # the shortest attempt (libpq's connect_timeout cannot be below 2 s)
CALL_BOUND_S = RETRY_DEADLINE_S + MIN_ATTEMPT_S  # the longest any call (a send) can take: README
LIMITS_FRESH_S = 1.0  # whether concurrency limits exist is read again this often
# Large arguments (issue 17, finding 7). A claim returns its rows as one json_agg, and
# PostgreSQL caps any value at 1 GiB: twelve 100 MiB arguments made every claim fail ("out of
# memory ... Cannot enlarge string buffer") and the tasks waited forever. A claim takes
# arguments of at most CLAIM_MAX_BYTES in all (always at least one task), and a send refuses
# a task whose arguments exceed MAX_ARGS_BYTES: escaped as a JSON string inside the claim's
# reply it may double (quotes, backslashes), and alone it must still fit under 1 GiB.
# The limit is also what the network timeouts allow (connection.py): a claim's reply must
# arrive within its 10 s statement timeout, and one 64 MiB argument (128 MiB escaped, at
# worst) takes about 1 s on loopback, about 11 s at 100 Mbit/s: the largest arguments want
# a fast link to the server. A send's own timeouts grow with its size (SEND_BYTES_PER_S).
CLAIM_MAX_BYTES = 32 * 1024 * 1024
MAX_ARGS_BYTES = 64 * 1024 * 1024
ENQUEUE_CHUNK_BYTES = 64 * 1024 * 1024  # a batch's JSON parameter is also one value: chunked past this
BIG_SEND_BYTES = 1024 * 1024  # a send above this gets timeouts for its size (one more round trip)
SEND_BYTES_PER_S = 2 * 1024 * 1024  # the slowest a big send is allowed to be stored (measured: ~7 MiB/s
# on loopback on a loaded 2-core machine, JSON encoding, transfer, parsing and TOAST included)
UNIQUE_ROUNDS = 100  # a unique send retries this often when its key's holder ended meanwhile
_inherited: list[psycopg.Connection] = []  # connections a fork() child must never close or use

T = TypeVar("T")
# batches travel as one JSON array of positional rows (see queries.sql); NaN/inf never occur
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def match_stored(tasks: Sequence[NewTask],
                 stored: Sequence[Sequence]) -> tuple[list[tuple[int, bool] | None], set[str]]:
    """Which tasks of a batch an ``enqueue_unique`` stored: ``stored`` is its ``[id, key]`` rows
    in id order, which is batch order. A task without a key was stored; of the tasks with one
    key, the first was stored or none was (a later one conflicts with the first, or with the
    holder the first conflicted with). Returns ``(row id, duplicate)`` per task, None where the
    holder is to be looked up, and the keys to look up."""
    answers: list[tuple[int, bool] | None] = []
    first: dict[str, int | None] = {}  # key -> the row id this batch stored for it (None: none)
    taken: set[str] = set()
    position = 0
    for task in tasks:
        key = task.unique_key
        if key is not None and key in first:
            row_id = first[key]
            answers.append(None if row_id is None else (row_id, True))
            continue
        if key is None or (position < len(stored) and stored[position][1] == key):
            row_id = stored[position][0]
            position += 1
            answers.append((row_id, False))
        else:
            row_id = None
            taken.add(key)
            answers.append(None)
        if key is not None:
            first[key] = row_id
    return answers, taken


def _record(shard: int, row: tuple) -> TaskRecord:
    return TaskRecord(shard, *row)


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL (SQLite can): keep it visible as an escape."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\\x00")


def _json(rows: list) -> str:
    return _encode(rows)


def _args_bytes(tasks: Sequence[NewTask]) -> list[int]:
    """The stored size (UTF-8 bytes) of each task's arguments; raises ValueError, naming the size
    and the limit, for arguments no claim could ever return (see MAX_ARGS_BYTES)."""
    sizes = []
    for task in tasks:
        args = task.args or ""
        size = len(args) if len(args) * 4 <= MAX_ARGS_BYTES else len(args.encode("utf-8", "surrogatepass"))
        if size > MAX_ARGS_BYTES:
            raise ValueError(
                f"the arguments of task {task.task_name!r} are {size:,} bytes as JSON, above the PostgreSQL "
                f"backend's limit of {MAX_ARGS_BYTES:,} bytes per task (a claim returns them inside one "
                "value, which PostgreSQL caps at 1 GiB); pass a reference (a path, a key, a URL) instead")
        sizes.append(size)
    return sizes


def _allow(conn: QueueConnection, seconds: float) -> None:
    """Inside a transaction: its statements (a big send) may take ``seconds`` more than usual,
    on the server's statement timeout and the client's wait for a reply alike."""
    conn.execute(f"SET LOCAL statement_timeout = {int((STATEMENT_TIMEOUT_S + seconds) * 1000)}")
    conn.io_timeout = IO_TIMEOUT_S + seconds


def _chunks(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """[start, end) ranges of a batch, each with at most ``limit`` bytes of arguments (one task
    at least): the batch's JSON parameter is one value too."""
    ranges, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > limit:
            ranges.append((start, i))
            start, total = i, 0
        total += size
    ranges.append((start, len(sizes)))
    return ranges


def _int_array(values: Sequence[int]) -> str:
    """An array literal: far cheaper than adapting a long list element by element."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


class _Session:
    """One connection of a shard and the lock its users take turns on."""

    def __init__(self, target: Target, durability: str, role: str,
                 conn: QueueConnection | None = None):
        self.target = target
        self.durability = durability
        self.role = role
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.conn = conn

    def connection(self, timeout: float | None = None) -> QueueConnection:
        if self.pid != os.getpid():  # forked: the parent's connection is not ours to use
            if self.conn is not None:
                _inherited.append(self.conn)
            self.conn = None
            self.pid = os.getpid()
        if self.conn is None:  # opened on first use, reopened after a break
            self.conn = connect(self.target, self.durability, timeout)
        return self.conn

    @property
    def backend_pid(self) -> int | None:
        conn = self.conn
        return conn.info.backend_pid if conn is not None and self.pid == os.getpid() else None

    @property
    def broken(self) -> bool:
        conn = self.conn
        return conn is None or conn.closed or conn.broken

    def discard(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and self.pid == os.getpid():
            try:
                conn.close()
            except psycopg.Error:
                pass


class PostgresShard(Shard):
    """A writer session for every write and a reader session for lookups and counts, so
    a sender's lookup or an idle worker's probe never queues behind a worker's exchange."""

    def __init__(self, target: Target, index: int = 0, durability: str = "normal"):
        self.index = index
        self.name = f"{target.schema}.mqs_tasks"
        self._target = target
        self._q = {name: target.sql(sql) for name, sql in QUERIES.items()}
        self._channel = {"channel": target.channel}
        self._closed = False
        self._unsettled: set[tuple[str, float]] = set()  # claims (owner, stamp) whose commit is unknown
        self._down_since: float | None = None  # monotonic start of an outage (None: reachable)
        self._failed_at = 0.0  # monotonic time of the last failed attempt
        self._gave_up_broken = False  # a write gave up on a broken connection: its commit is unknown
        self._limited = False  # concurrency limits exist (see _claims_are_limited)
        self._limits_read_at = -LIMITS_FRESH_S
        self._last_stamp = 0.0
        self._id_floor = 0  # the largest row id an enqueue of this object got back
        self._identity: tuple | None = None  # (database, server, port): see _check_same_database
        self._writer = _Session(target, durability, "writer", open_schema(target, durability))
        self._reader = _Session(target, durability, "reader")

    def before_fork(self) -> None:
        """Nothing to hold: a child never uses the parent's connections (a socket each, with no
        lock state in the process) and opens its own."""

    def after_fork_in_parent(self) -> None:
        """Nothing was held."""

    def after_fork_in_child(self) -> None:
        for session in (self._writer, self._reader):
            session.lock = threading.Lock()  # the connection itself is replaced on first use
        self._unsettled = set()

    @property
    def session(self) -> int | None:
        """The server process id of the writer session (notifications name their writer)."""
        return self._writer.backend_pid

    def _run(self, what: str, body: Callable[[psycopg.Connection, bool], T],
             on_break: Callable[[], None] | None = None, read: bool = False, send: bool = False) -> T:
        """Run ``body(conn, broke)`` on the writer (or reader) session, under its lock. A
        rolled-back transaction (deadlock, serialization failure) is retried; so is a broken
        connection, on a new one, with ``broke`` True (the last try may have committed)
        after ``on_break`` ran. ``broke`` is also True on the first try after a call that
        gave up on a broken connection: what that call left unconfirmed is looked up first.

        Bounded (issue 17, finding 6): a send gives up ``RETRY_DEADLINE_S`` after it began,
        any other call (a worker's exchange, a renewal, a lookup: their callers retry them
        anyway) after ``WORK_RETRY_S``; while the server has been unreachable since an
        earlier call, the window is counted from the start of the outage instead, so during
        a long outage a send makes one attempt and fails, and another call fails at once
        when an attempt failed within ``BREAKER_S`` (a stopping worker gives its leases back,
        or gives up on them, within its drain timeout, not after a window per call). Each
        attempt's connect and every wait for a reply are capped by what is left of the
        window (at least ``MIN_ATTEMPT_S``), so a send ends within ``CALL_BOUND_S``."""
        session = self._reader if read else self._writer
        backoff = Backoff(first=0.005, cap=1.0, deadline_s=RETRY_DEADLINE_S)
        window = RETRY_DEADLINE_S if send else WORK_RETRY_S
        with session.lock:
            broke = self._gave_up_broken and not read
            began = time.monotonic()
            down = self._down_since
            deadline = (began if down is None else min(began, down)) + window
            if not send and down is not None and began - self._failed_at < BREAKER_S and began >= deadline:
                raise QueueStorageError(
                    f"{what} on {self.name}: PostgreSQL at {self._target.location} unreachable for "
                    f"{began - down:.1f} s (the last attempt, {began - self._failed_at:.1f} s ago, failed); "
                    "not tried again yet")
            while True:
                if self._closed:
                    raise QueueStorageError(f"shard {self.name} is closed")
                attempt_s = max(MIN_ATTEMPT_S, deadline - time.monotonic())
                try:
                    conn = session.connection(attempt_s)
                    conn.io_timeout = min(IO_TIMEOUT_S, attempt_s)
                    if self._unsettled and not read:
                        self._settle(conn)
                    result = body(conn, broke)
                    if not read:
                        self._gave_up_broken = False
                    if self._down_since is not None:
                        log.warning("%s: PostgreSQL at %s reachable again", self.name, self._target.location)
                        self._down_since = None
                    return result
                except psycopg.errors.TransactionRollback as exc:  # class 40: deadlock, serialization
                    problem: psycopg.Error = exc
                    log.debug("%s on %s rolled back (%s); retrying", what, self.name, exc)
                except psycopg.OperationalError as exc:
                    if not session.broken:
                        raise QueueStorageError(f"{what} on {self.name} failed: {exc}") from exc
                    session.discard()
                    broke = True
                    if on_break is not None:
                        on_break()
                    problem = exc
                    self._failed_at = time.monotonic()
                    if self._down_since is None:
                        self._down_since = began
                    log.warning("%s on %s: connection to %s lost (%s); reconnecting",
                                what, self.name, self._target.location, str(exc).strip())
                except psycopg.Error as exc:
                    raise QueueStorageError(f"{what} on {self.name} failed: {exc}") from exc
                except BaseException:
                    # Interrupted mid-command (KeyboardInterrupt lands in psycopg's Python wait
                    # loop): the connection may still expect a result, so it is never reused.
                    session.discard()
                    if on_break is not None:
                        on_break()
                    raise
                if backoff.expired or time.monotonic() + backoff.delay >= deadline:
                    spent = time.monotonic() - began
                    if broke and not read:
                        self._gave_up_broken = True
                    state = "unreachable" if broke else "still failing"
                    raise QueueStorageError(
                        f"{what} on {self.name}: PostgreSQL at {self._target.location} {state}; gave up "
                        f"after {spent:.1f} s (a {'send' if send else 'call'} retries for at most "
                        f"{window:g} s from the start of an outage; last error: "
                        f"{str(problem).strip()})") from problem
                backoff.wait()

    def _settle(self, conn: psycopg.Connection) -> None:
        """Give back the leases of claims whose commit went unconfirmed (connection lost):
        the caller never received them. A claim is known by its owner and stamp."""
        for owner, stamp in sorted(self._unsettled):
            count = conn.execute(self._q["unclaim_ambiguous"], {"owner": owner, "stamp": stamp}).rowcount
            self._unsettled.discard((owner, stamp))
            if count:
                log.warning("%s: %d lease(s) of a claim whose commit was not confirmed given back",
                            self.name, count)

    def _fetch(self, what: str, query: str, params: dict | None = None) -> list[tuple]:
        return self._run(what, lambda conn, _broke: conn.execute(self._q[query], params).fetchall(),
                         read=True)

    def _notify(self, conn: psycopg.Connection) -> None:
        conn.execute(self._q["notify"], self._channel)

    # -- sending ---------------------------------------------------------------------
    def enqueue(self, tasks: Sequence[NewTask]) -> list[int]:
        if not tasks:
            return []
        sizes = _args_bytes(tasks)
        chunks = _chunks(sizes, ENQUEUE_CHUNK_BYTES)
        allowance = max(sum(sizes[start:end]) for start, end in chunks) / SEND_BYTES_PER_S
        now = tasks[0].created_at
        params = [self._enqueue_params(tasks[start:end]) for start, end in chunks]
        # every id returned before this call is below this batch's (the sequence only grows): a
        # committed batch is found above it, on the primary key
        batch = {"sender": tasks[0].sender, "created_at": float(tasks[0].created_at),
                 "floor": self._id_floor}
        same_batch = all(t.sender == batch["sender"] and t.created_at == now for t in tasks)

        def body(conn: psycopg.Connection, broke: bool) -> list[int]:
            if broke and same_batch:  # the last try may have committed: never store a batch twice
                found = [r[0] for r in conn.execute(self._q["find_batch"], batch)]
                if len(found) == len(tasks):
                    return found
            if len(params) == 1 and sum(sizes) <= BIG_SEND_BYTES:  # one statement, committed when it returns
                return list(conn.execute(self._q["enqueue"], params[0]).fetchone()[0])
            with conn.transaction():  # big: timeouts for its size; too big for one value: chunks
                _allow(conn, allowance)
                return [i for chunk in params for i in conn.execute(self._q["enqueue"], chunk).fetchone()[0]]

        ids = self._run("enqueue", body, send=True)
        self._id_floor = max(self._id_floor, ids[-1])
        return ids

    def enqueue_in_transaction(self, connection: Any, tasks: Sequence[NewTask]) -> list[int]:
        """The batch goes in through the application's psycopg connection, in its open
        transaction (psycopg opens one at the first statement unless in autocommit): it
        commits or rolls back with the application's writes, and the NOTIFY that wakes
        workers is sent by PostgreSQL only at that commit."""
        if not isinstance(connection, psycopg.Connection):
            raise TypeError(f"connection={connection!r} must be the application's psycopg.Connection "
                            "(an AsyncConnection goes to asend)")
        if not tasks:
            return []
        _args_bytes(tasks)  # arguments no claim could return are refused here too
        try:
            self._check_same_database(connection.execute(self._q["database_identity"]).fetchone())
            connection.execute(self._q["declare_queues"], {"names": sorted({t.queue for t in tasks})})
            return list(connection.execute(self._q["enqueue"], self._enqueue_params(tasks)).fetchone()[0])
        except psycopg.Error as exc:
            raise QueueStorageError(f"enqueue in the application's transaction on {self.name} failed: "
                                    f"{exc}") from exc

    async def aenqueue_in_transaction(self, connection: Any, tasks: Sequence[NewTask]) -> list[int]:
        """``enqueue_in_transaction`` through the application's ``psycopg.AsyncConnection``,
        awaited: the event loop goes on while PostgreSQL answers."""
        if not isinstance(connection, psycopg.AsyncConnection):
            raise TypeError(f"connection={connection!r} must be the application's psycopg.AsyncConnection "
                            "(a sync Connection goes to send, or asend runs it on a thread)")
        if not tasks:
            return []
        _args_bytes(tasks)  # arguments no claim could return are refused here too
        try:
            cursor = await connection.execute(self._q["database_identity"])
            self._check_same_database(await cursor.fetchone())
            await connection.execute(self._q["declare_queues"], {"names": sorted({t.queue for t in tasks})})
            cursor = await connection.execute(self._q["enqueue"], self._enqueue_params(tasks))
            return list((await cursor.fetchone())[0])
        except psycopg.Error as exc:
            raise QueueStorageError(f"enqueue in the application's transaction on {self.name} failed: "
                                    f"{exc}") from exc

    def _check_same_database(self, theirs: Any) -> None:
        """An application's connection must be to the queue's database, or its transaction
        would not hold the task. Ours is read once (it does not change)."""
        if self._identity is None:
            self._identity = tuple(self._fetch("database identity", "database_identity")[0])
        ours = self._identity
        if tuple(theirs) != ours:
            raise ValueError(f"connection= is a connection to database {theirs[0]!r} (server {theirs[1]}:"
                             f"{theirs[2]}), not to the queue's {ours[0]!r} ({ours[1]}:{ours[2]}): the task "
                             "would not be in the same transaction")

    def _enqueue_params(self, tasks: Sequence[NewTask]) -> dict[str, Any]:
        """The parameters of the ``enqueue`` statement for a batch."""
        rows = [[_text(t.task_name), t.args, t.priority, t.sender, bool(t.notify), t.cache_owner,
                 t.max_retries, t.retry, float(t.delay), float(t.created_at), t.queue, t.timeout,
                 t.headers] for t in tasks]
        return {"tasks": _json(rows), **self._channel}

    def enqueue_unique(self, tasks: Sequence[NewTask]) -> list[tuple[int, bool]]:
        """Each round is one transaction (expired holders of the batch's keys let go, then one
        ``INSERT ... ON CONFLICT DO NOTHING`` of the batch); the holders of the keys that
        conflicted are read after its commit, in a fresh snapshot (READ COMMITTED: the
        concurrent sender that won is committed by then). A holder can end between the two
        (its key then free): those tasks go again in another round, so a send never returns
        a duplicate of a task that no longer holds its key."""
        size = sum(_args_bytes(tasks))  # refused before anything is sent (a unique batch is one statement)
        allowance = size / SEND_BYTES_PER_S if size > BIG_SEND_BYTES else 0.0
        sent: list[tuple[int, bool] | None] = [None] * len(tasks)
        todo = list(range(len(tasks)))
        for _ in range(UNIQUE_ROUNDS):
            batch = [tasks[i] for i in todo]
            answers = self._run("enqueue", lambda conn, broke, batch=batch: self._enqueue_unique_round(
                conn, broke, batch, allowance), send=True)
            again = []
            for i, answer in zip(todo, answers, strict=True):
                if answer is None:
                    again.append(i)
                else:
                    sent[i] = answer
            todo = again
            if not todo:
                return [answer for answer in sent if answer is not None]
        raise QueueStorageError(f"enqueue on {self.name}: the holders of unique keys kept ending "
                                f"between insert and lookup for {UNIQUE_ROUNDS} rounds")

    def _enqueue_unique_round(self, conn: QueueConnection, broke: bool, tasks: list[NewTask],
                              allowance: float = 0.0) -> list[tuple[int, bool] | None]:
        """One round of ``enqueue_unique``: ``(row id, duplicate)`` per task, None for a task
        whose key's holder ended before it could be read (to send again)."""
        keys = list(dict.fromkeys(t.unique_key for t in tasks if t.unique_key is not None))
        stored: list[list] | None = None
        sender, created_at = tasks[0].sender, float(tasks[0].created_at)
        if broke and all(t.sender == sender and t.created_at == tasks[0].created_at for t in tasks):
            # the last try may have committed: what it stored is found, never stored twice
            found = conn.execute(self._q["find_batch"], {"sender": sender, "created_at": created_at,
                                                         "floor": self._id_floor}).fetchall()
            stored = [list(row) for row in found] or None
        if stored is None:
            rows = [[_text(t.task_name), t.args, t.priority, t.sender, bool(t.notify), t.cache_owner,
                     t.max_retries, t.retry, float(t.delay), float(t.created_at), t.unique_key,
                     t.unique_states if t.unique_key is not None else 0,
                     None if t.unique_for is None else float(t.unique_for), t.queue, t.timeout,
                     t.headers] for t in tasks]
            with conn.transaction():
                if allowance:  # a big send: timeouts for its size
                    _allow(conn, allowance)
                conn.execute(self._q["release_expired_unique"], {"unique_keys": keys})
                stored = conn.execute(self._q["enqueue_unique"],
                                      {"tasks": _json(rows), **self._channel}).fetchone()[0]
        if stored:
            self._id_floor = max(self._id_floor, stored[-1][0])
        answers, taken = match_stored(tasks, stored)
        if taken:
            holders = dict(conn.execute(self._q["unique_holders"], {"unique_keys": sorted(taken)}).fetchall())
            for i, task in enumerate(tasks):
                if answers[i] is None and task.unique_key in holders:
                    answers[i] = (holders[task.unique_key], True)
        return answers

    # -- working ---------------------------------------------------------------------
    def _claim_stamp(self) -> float:
        """The started_at of a claim: the client's time (for display), unique among this
        shard's claims, because it is also how a claim whose commit went unconfirmed is found."""
        stamp = time.time()
        if stamp <= self._last_stamp:
            stamp = self._last_stamp + 1e-6
        self._last_stamp = stamp
        return stamp

    def complete_and_claim(self, completions: Sequence[Completion], owner: str, limit: int,
                           lease_seconds: float, callbacked: Sequence[int] = (),
                           queue: str = DEFAULT_QUEUE) -> tuple[list[int], list[ClaimedTask]]:
        if not completions and not callbacked and limit <= 0:
            return [], []
        stamp = self._claim_stamp() if limit > 0 else 0.0
        params = {
            "completions": _json([[c.row_id, c.attempt, int(c.status), _text(c.result), _text(c.traceback),
                                   float(c.ended_at), float(c.retry_in), float(c.started_at), c.handed_over]
                                  for c in completions]),
            "owner": owner, "lease": float(lease_seconds), "stamp": stamp, "limit": max(limit, 0),
            "callbacked": _int_array(callbacked), "queue": queue, "max_bytes": CLAIM_MAX_BYTES,
            **self._channel,
        }
        query = self._q["complete_and_claim"]
        lock = self._q["lock_limits"] if limit > 0 and self._claims_are_limited() else None

        def body(conn: psycopg.Connection, broke: bool) -> tuple[set[int], list[list]]:
            if lock is None:
                return exchange(conn, broke)
            with conn.transaction():  # the limits' row locks, then the claim in a new snapshot
                conn.execute(lock)
                return exchange(conn, broke)

        def exchange(conn: psycopg.Connection, broke: bool) -> tuple[set[int], list[list]]:
            settled: list[int] = []
            if broke and completions:
                # The last try may have committed: what it applied is no longer RUNNING, so the
                # statement below would reject it as stale. It was applied, by this very call.
                settled = conn.execute(self._q["completions_settled"], {
                    "row_id": _int_array([c.row_id for c in completions]),
                    "attempt": _int_array([c.attempt for c in completions]), "owner": owner,
                }).fetchone()[0]
            applied, promoted, _signal, claims, _durable = conn.execute(query, params).fetchone()
            claims = claims or []
            if promoted and len(claims) < limit:
                # tasks just became ready (scheduled, now due): claim them in a second statement
                again = dict(params, completions="[]", callbacked="{}", limit=limit - len(claims))
                claims += conn.execute(query, again).fetchone()[3] or []
            return set(applied or ()).union(settled), claims

        def unsettled() -> None:  # settled before anything else runs on a new connection
            if limit > 0:
                self._unsettled.add((owner, stamp))

        applied, rows = self._run("complete/claim", body, unsettled)
        rejected = [c.row_id for c in completions if c.row_id not in applied]
        index = self.index
        claimed = [ClaimedTask(index, *r, queue=queue) for r in rows]
        claimed.sort(key=lambda c: (-c.priority, c.row_id))
        return rejected, claimed

    def declare_limits(self, limits: dict[str, int | None]) -> None:
        params = {"limits": _json([[n, m] for n, m in limits.items() if m is not None]),
                  "forget": [n for n, m in limits.items() if m is None]}
        self._run("declare limits", lambda conn, _broke: conn.execute(self._q["declare_limits"], params))
        self._limits_read_at = -LIMITS_FRESH_S  # read again at the next claim

    def list_limits(self) -> dict[str, int]:
        return dict(self._fetch("list limits", "list_limits"))

    def _claims_are_limited(self) -> bool:
        """Whether this schema has concurrency limits, read again at most once a second (a
        limit another process declares is honoured by the claim statement at once; the
        lock that makes its count exact under concurrent claims, within a second)."""
        now = time.monotonic()
        if now - self._limits_read_at >= LIMITS_FRESH_S:
            self._limited = bool(self.list_limits())
            self._limits_read_at = now
        return self._limited

    def take_rate(self, claim: ClaimedTask, owner: str, rate: Rate) -> float | None:
        name = {"task_name": claim.task_name}

        def body(conn: psycopg.Connection, _broke: bool) -> float | None:
            with conn.transaction():  # the window row's lock serializes every process's admissions
                now = conn.execute(self._q["wall_now"]).fetchone()[0]
                conn.execute(self._q["make_rate_window"], {**name, "window": 0.0})  # (0: none yet)
                stored, used = conn.execute(self._q["lock_rate_window"], name).fetchone()
                decision = admit(rate, now, stored, used, claim.rate_slot)
                if decision is None:
                    return None
                conn.execute(self._q["set_rate_window"],
                             {**name, "window": decision.window, "used": decision.used})
                if decision.run_at is None:
                    return None
                conn.execute(self._q["defer_to_window"], {
                    "row_id": claim.row_id, "attempt": claim.attempt, "owner": owner,
                    "window": decision.run_at, **self._channel})
                return decision.run_at

        return self._run("rate limit", body)

    def record_progress(self, owner: str, items: Sequence[tuple[int, int, str]]) -> None:
        if items:
            params = {"items": _json([list(item) for item in items]), "owner": owner}
            query = self._q["record_progress"]
            self._run("record progress", lambda conn, _broke: conn.execute(query, params))

    def get_progress(self, row_id: int) -> str | None:
        rows = self._fetch("get progress", "get_progress", {"row_id": row_id})
        return rows[0][0] if rows else None

    # -- cancellation ----------------------------------------------------------------
    def cancel(self, row_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """One transaction: the waiting ones cancelled in place, then the running ones asked
        (a row that was claimed meanwhile is found RUNNING by the second statement)."""
        if not row_ids:
            return [], []
        params = {"row_id": _int_array(row_ids), **self._channel}

        def body(conn: psycopg.Connection, _broke: bool) -> tuple[list[int], list[int]]:
            with conn.transaction():
                before = {r[0]: r[1] for r in conn.execute(self._q["cancel_state"], params).fetchall()}
                conn.execute(self._q["cancel_waiting"], params)
                conn.execute(self._q["request_cancel"], params)  # also one claimed meanwhile
                after = {r[0]: (r[1], r[2]) for r in conn.execute(self._q["cancel_state"], params).fetchall()}
            cancelled = [i for i in row_ids if i in after and after[i][0] == 7 and before.get(i) != 7]
            asked = [i for i in row_ids if i in after and after[i][0] == 2 and after[i][1] > 0]
            return cancelled, asked

        return self._run("cancel", body)

    def cancel_pending(self, row_ids: Sequence[int]) -> list[int]:
        rows = self._fetch("cancel state", "cancel_state", {"row_id": _int_array(row_ids)})
        return [row_id for row_id, status, requested in rows if status == 2 and requested == 1]

    def waiting_ids(self, task_name: str) -> list[int]:
        return [row[0] for row in self._fetch("waiting ids", "waiting_ids_of_name", {"task_name": task_name})]

    def cancel_requests(self, owner: str) -> list[int]:
        return [row[0] for row in self._fetch("cancel requests", "cancel_requests", {"owner": owner})]

    def cancel_seen(self, owner: str, claims: Sequence[ClaimedTask]) -> None:
        if claims:
            params = {"row_id": _int_array([c.row_id for c in claims]),
                      "attempt": _int_array([c.attempt for c in claims]), "owner": owner, **self._channel}
            self._run("cancel seen", lambda conn, _broke: conn.execute(self._q["cancel_seen"], params))

    def release(self, claims: Sequence[ClaimedTask], owner: str) -> int:
        if not claims:
            return 0
        params = {"row_id": _int_array([c.row_id for c in claims]),
                  "attempt": _int_array([c.attempt for c in claims]),
                  "owner": owner, **self._channel}
        return self._run("release", lambda conn, _broke: conn.execute(
            self._q["release"], params).fetchone()[0])

    def renew_leases(self, owner: str, leases: Sequence[tuple[int, int]], lease_seconds: float) -> list[int]:
        if not leases:
            return []
        params = {"row_id": _int_array([row_id for row_id, _ in leases]),
                  "attempt": _int_array([attempt for _, attempt in leases]),
                  "owner": owner, "lease": float(lease_seconds)}
        renewed = set(self._run("renew leases", lambda conn, _broke: conn.execute(
            self._q["renew_leases"], params).fetchone()[0]))
        return [row_id for row_id, _ in leases if row_id not in renewed]

    def recover_expired(self, crash_limit: int) -> RecoveryReport:
        def body(conn: psycopg.Connection, _broke: bool) -> RecoveryReport:
            report = RecoveryReport()
            with conn.transaction():
                report.failed += len(conn.execute(self._q["fail_orphaned_cached"]).fetchall())
                for (status,) in conn.execute(self._q["recover_expired"],
                                              {"crash_limit": crash_limit}).fetchall():
                    if status == 1:
                        report.requeued += 1
                    elif status == 7:  # a cancel was pending
                        report.cancelled += 1
                    else:
                        report.failed += 1
                conn.execute(self._q["forget_dead_nodes"])
                if report.requeued or report.failed or report.cancelled:
                    self._notify(conn)
            return report

        return self._run("recover expired leases", body)

    def expire_leases_of(self, owner: str) -> int:
        return self._run("expire a dead worker's leases", lambda conn, _broke: conn.execute(
            self._q["expire_leases_of_owner"], {"owner": owner}).rowcount)

    def seconds_until_due(self) -> float | None:
        return self._fetch("seconds until due", "seconds_until_due")[0][0]

    # -- outcomes for senders --------------------------------------------------------
    def outcome_row_ids(self, sender: str, limit: int) -> list[int]:
        return [r[0] for r in self._fetch("outcome row ids", "outcome_row_ids",
                                          {"sender": sender, "limit": limit})]

    def mark_callbacked(self, row_ids: Sequence[int]) -> None:
        if row_ids:
            self._run("mark callbacked", lambda conn, _broke: conn.execute(
                self._q["mark_callbacked"], {"row_id": _int_array(row_ids)}))

    def get_tasks(self, row_ids: Sequence[int]) -> list[TaskRecord]:
        if not row_ids:
            return []
        rows = self._fetch("get tasks", "get_tasks", {"row_id": _int_array(row_ids)})
        by_id = {r[0]: r for r in rows}
        return [_record(self.index, by_id[i]) for i in dict.fromkeys(row_ids) if i in by_id]

    def list_tasks(self, status: int | None, task_name: str | None, limit: int,
                   queue: str | None = None) -> list[TaskRecord]:
        query = listing_query(status)
        params = {"status": status, "task_name": task_name, "limit": limit, "queue": queue}
        if status == TaskStatus.NOT_STARTED and queue is None:  # the ready index is per queue
            rows = [r for q in self.list_queues()
                    for r in self._fetch("list tasks", query, {**params, "queue": q})]
            rows.sort(key=lambda r: (-r[6], r[0]))
            rows = rows[:limit]
        else:
            rows = self._fetch("list tasks", query, params)
        return [_record(self.index, r) for r in rows]

    def list_queues(self) -> list[str]:
        return [row[0] for row in self._fetch("list queues", "list_queues")]

    def declare_queues(self, names: Sequence[str]) -> None:
        params = {"names": list(names)}
        self._run("declare queues", lambda conn, _broke: conn.execute(self._q["declare_queues"], params))

    def count_by_queue(self) -> dict[str, dict[str, int]]:
        return {name: {"queued": ready, "scheduled": scheduled, "running": running}
                for name, ready, scheduled, running in self._fetch("count by queue", "count_by_queue")}

    def count_tasks(self) -> dict[tuple[int, int], int]:
        return {(s, o): n for s, o, n in self._fetch("count tasks", "count_tasks")}

    def ended_timings(self, limit: int) -> list[tuple[float, float | None, float]]:
        return self._fetch("ended timings", "ended_timings", {"limit": limit})

    def page_tasks(self, status: int | None, after: tuple[float, int], limit: int) -> list[TaskRecord]:
        params: dict[str, Any] = {"limit": limit}
        if status == 1:
            params.update(after_priority=int(after[0]), after_id=after[1])
        elif status == 6:
            params.update(after_run_after=float(after[0]), after_id=after[1])
        else:
            params["before"] = after[1]
        query = page_query(status)
        if status == 1:  # the ready index is per queue: a page of each, merged
            rows = [r for queue in self.list_queues()
                    for r in self._fetch("page tasks", query, {**params, "queue": queue})]
            rows = sorted(rows, key=lambda r: (-r[6], r[0]))[:limit]
        else:
            rows = self._fetch("page tasks", query, params)
        return [_record(self.index, r) for r in rows]

    def get_task_detail(self, row_id: int) -> TaskRecord | None:
        rows = self._fetch("get task", "get_task_detail", {"row_id": row_id})
        return _record(self.index, rows[0]) if rows else None

    def recent_ends(self, since: float, limit: int) -> list[tuple[float, float | None, float, int]]:
        return self._fetch("recent ends", "recent_ends", {"since": since, "limit": limit})

    def oldest_ready(self) -> tuple[int, str, float] | None:
        found = [rows[0] for queue in self.list_queues()
                 if (rows := self._fetch("oldest ready", "oldest_ready", {"queue": queue}))]
        return min(found) if found else None

    def list_nodes(self) -> list[NodeRecord]:
        return [NodeRecord(*row) for row in self._fetch("list nodes", "list_nodes")]

    def requeue_failed(self, row_id: int | None, task_name: str | None) -> int:
        query = "requeue_failed_all" if row_id is None else "requeue_failed_by_id"
        params = {"row_id": row_id, "task_name": task_name, **self._channel}
        return self._run("requeue failed", lambda conn, _broke: conn.execute(
            self._q[query], params).fetchone()[0])

    def remove_waiting(self, row_id: int | None, task_name: str | None) -> int:
        params = {"row_id": row_id, "task_name": task_name}

        def body(conn: psycopg.Connection, _broke: bool) -> int:
            if row_id is not None:
                return conn.execute(self._q["remove_waiting_by_id"], params).rowcount
            with conn.transaction():
                return sum(conn.execute(self._q[query], params).rowcount
                           for query in ("remove_ready", "remove_scheduled"))

        return self._run("remove waiting tasks", body)

    # -- schedules of periodic tasks -------------------------------------------------
    def wall_now(self) -> float:
        return self._fetch("read the server's clock", "wall_now")[0][0]

    def declare_schedules(self, schedules: Sequence[tuple[str, str, float, float]]) -> None:
        if schedules:
            params = {"schedules": _json([[_text(n), e, last, nxt] for n, e, last, nxt in schedules])}
            self._run("declare schedules", lambda conn, _broke: conn.execute(
                self._q["declare_schedules"], params))

    def enqueue_slots(self, name: str, expected_last: float, decided: float, next_slot: float,
                      runs: Sequence[tuple[float, NewTask]], skip_if_running: bool) -> list[int] | None:
        decide = {"name": name, "expected": float(expected_last), "decided": float(decided),
                  "next_slot": float(next_slot)}
        tasks = _json([[_text(t.task_name), t.args, t.priority, t.sender, t.max_retries, t.retry,
                        float(t.created_at), float(slot), t.queue] for slot, t in runs])

        def body(conn: psycopg.Connection, broke: bool) -> list[int] | None:
            # A replay after a lost reply finds last_slot moved and stores nothing: the slots
            # were decided (by this call or another process), and the unique index holds.
            with conn.transaction():
                if conn.execute(self._q["decide_slots"], decide).rowcount == 0:
                    return None
                if not runs or (skip_if_running and conn.execute(
                        self._q["previous_run_waiting"], {"name": name}).fetchone()[0]):
                    return []
                ids = conn.execute(self._q["enqueue_slots"],
                                   {"name": name, "tasks": tasks, **self._channel}).fetchone()[0]
                return list(ids or ())

        return self._run("enqueue periodic task", body)

    def list_schedules(self) -> list[ScheduleRecord]:
        return [ScheduleRecord(*row) for row in self._fetch("list schedules", "list_schedules")]

    def remove_schedules(self, names: Sequence[str]) -> int:
        return self._run("remove schedules", lambda conn, _broke: conn.execute(
            self._q["remove_schedules"], {"names": list(names)}).rowcount)

    # -- liveness and upkeep ---------------------------------------------------------
    def register_node(self, node: str, pid: int, host: str, lease_seconds: float) -> None:
        params = {"node": node, "pid": pid, "host": host, "lease": float(lease_seconds)}
        self._run("register node", lambda conn, _broke: conn.execute(self._q["register_node"], params))

    def unregister_node(self, node: str) -> int:
        def body(conn: psycopg.Connection, _broke: bool) -> int:
            with conn.transaction():
                conn.execute(self._q["unregister_node"], {"node": node})
                failed = len(conn.execute(self._q["fail_orphaned_cached"]).fetchall())
                if failed:
                    self._notify(conn)
            return failed

        return self._run("unregister node", body)

    def purge_ended(self, retention_seconds: float, limit: int) -> bool:
        deleted = self._run("purge", lambda conn, _broke: conn.execute(
            self._q["purge_ended"], {"retention": float(retention_seconds), "limit": limit}).rowcount)
        return deleted == limit

    def maintain(self) -> None:
        """Fold the appended count deltas into the counts (migration 0003), so reading them
        stays cheap; autovacuum keeps the tables and indexes in shape (the migrations lower
        its thresholds for these tables, which churn)."""
        self._run("fold counts", lambda conn, _broke: conn.execute(self._q["fold_counts"]))

    def close(self) -> None:
        self._closed = True
        for session in (self._reader, self._writer):
            with session.lock:
                session.discard()


class PostgresBackend(Backend):
    """The queue in one schema of a PostgreSQL database: one shard, one change feed."""

    def __init__(self, url: str, config: Config):
        self._target = Target(url)
        self.location = self._target.location
        if config.middleware_num > 1:
            log.info("PostgreSQL keeps a queue in one table (%s); middleware_num=%d is ignored: "
                     "claims skip each other's locked rows, so one table serves every worker",
                     self.location, config.middleware_num)
        self.shards: list[PostgresShard] = [PostgresShard(self._target, 0, config.durability)]
        self._listener: ChangeListener | None = None
        self._watch_lock = threading.Lock()

    def watch(self, on_change: Callable[[], None]) -> None:
        with self._watch_lock:
            if self._listener is not None and self._listener.pid != os.getpid():
                self._listener = None  # forked: the parent's thread and connection are not here
            if self._listener is None:
                self._listener = ChangeListener(self._target, on_change, self._own_sessions)

    def after_fork_in_child(self) -> None:
        self._watch_lock = threading.Lock()
        self._listener = None  # the parent's listening thread does not exist here
        super().after_fork_in_child()

    def _own_sessions(self) -> set[int]:
        return {pid for shard in self.shards if (pid := shard.session) is not None}

    @property
    def listening(self) -> threading.Event | None:
        """Set while the change feed is listening (None before ``watch``)."""
        return self._listener.listening if self._listener is not None else None

    def close(self) -> None:
        with self._watch_lock:
            if self._listener is not None and self._listener.pid == os.getpid():
                self._listener.close()
            self._listener = None
        for shard in self.shards:
            shard.close()
