"""The SQLite backend: one file per shard, one writer connection per shard per process.

Writes from every thread of a process go through one connection under a lock, so
threads queue on a cheap in-process lock instead of SQLite's file lock, and each
transaction opens with ``BEGIN IMMEDIATE``: in WAL mode a deferred transaction that reads
first and writes later gets SQLITE_BUSY at once, ignoring the busy timeout, if another
connection committed in between. SQLite has no ``SKIP LOCKED``: a claim is one
``UPDATE ... RETURNING`` statement, so two processes can never lease the same row.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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
from message_queue_sqlite.backends.sql_files import listing_query, load_queries, page_query
from message_queue_sqlite.backends.sqlite.clock import BOOT_ID, Clock
from message_queue_sqlite.backends.sqlite.connection import (
    arrange,
    check_sqlite_library,
    connect,
    is_locked_error,
    prepare_statement,
    retry_locked,
    storage_condition,
    warn_if_network_filesystem,
)
from message_queue_sqlite.backends.sqlite.watch import ChangeWatcher
from message_queue_sqlite.core.errors import QueueStorageError
from message_queue_sqlite.core.queues import DEFAULT_QUEUE
from message_queue_sqlite.core.rates import Rate, admit
from message_queue_sqlite.core.status import TaskStatus

log = logging.getLogger(__name__)

Q = {name: prepare_statement(sql) for name, sql in load_queries(__package__).items()}
SHARD_FILE = "mq-shard-{index}.db"
SHARD_PATTERN = re.compile(r"mq-shard-(\d+)\.db$")
# the NUL-padded name field of a change event on a shard file or its WAL: "mq-shard-3.db-wal\0"
SHARD_EVENT_NAME = re.compile(rb"(mq-shard-\d+\.db)(?:-wal)?\x00")
WAL_CHECKPOINT_BYTES = 64 * 1024 * 1024
FORK_LOCK_WAIT_S = 5.0  # a fork waits at most this long for a write in progress to end
# An own write looks whether another connection committed (PRAGMA data_version) at most this
# often: in a burst of one-row sends the look cost about a tenth of each; a commit it skips
# is seen by the next write's look, or by the change watcher's once the writes pause.
VERSION_LOOK_S = 0.001
PURGE_CLOCK_SLACK_S = 60.0  # rows stamped by senders whose clocks differ a little still get swept
_inherited: list[sqlite3.Connection] = []  # connections a fork() child must never close
TIMINGS_WINDOW = 4  # ended_timings looks at most this many times its limit of newest rows

# The kept counts (migration 0004): (status, outcome) keys, moved in the transactions that
# move tasks into or out of them.
SCHEDULED_KEY, FINISHED_KEY, FAILED_KEY, REMOVED_KEY = (6, 0), (3, 3), (4, 4), (0, 0)
CANCELLED_KEY = (7, 7)
CALLBACKED_KEY = {3: (5, 3), 4: (5, 4), 7: (5, 7)}  # by outcome
# where a completion moves a task
ENDED_KEY = {3: FINISHED_KEY, 4: FAILED_KEY, 6: SCHEDULED_KEY, 7: CANCELLED_KEY}


def _add_to_counts(conn: sqlite3.Connection, deltas: dict[tuple[int, int], int]) -> None:
    """Move the kept counts by ``deltas`` inside the caller's transaction."""
    rows = [(status, outcome, n) for (status, outcome), n in deltas.items() if n]
    if rows:
        conn.executemany(Q["add_to_count"], rows)


def shard_path(folder: str, index: int) -> str:
    return os.path.join(folder, SHARD_FILE.format(index=index))


def existing_shard_count(folder: str) -> int:
    """Shard files present in ``folder`` (0, 1, ... without gaps), for workers and the CLI."""
    indexes = sorted(int(m.group(1)) for p in glob.glob(os.path.join(folder, "mq-shard-*.db"))
                     if (m := SHARD_PATTERN.search(p)))
    count = 0
    while count in indexes:
        count += 1
    return count


def _file_version(path: str) -> tuple[int, int, int, int] | None:
    """What tells one version of a file from the next (inode, size, change times), without
    opening it (a descriptor closed on a database drops SQLite's locks); None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def folder_mistake(folder: str) -> tuple[str, str] | None:
    """(what is wrong, the folder meant) when ``folder`` cannot be a queue folder: an existing
    file (``MessageQueue("jobs.db")``, as SqliteHuey takes one), or a new path named like a
    database file, which is surely meant as one. None when it can be a folder."""
    try:
        is_folder: bool | None = stat.S_ISDIR(os.stat(folder).st_mode)  # one look: others may create it
    except OSError:
        is_folder = None  # not there (or not readable: makedirs says why)
    if is_folder:
        return None
    name = os.path.basename(os.path.normpath(folder))
    if is_folder is False and SHARD_PATTERN.fullmatch(name):  # a shard file: its folder is meant
        return f"{folder} is a shard file", os.path.dirname(folder) or "."
    meant = os.path.splitext(folder)[0] + "_dir"
    if is_folder is False:
        return f"{folder} is a file", meant
    if name.lower().endswith(DATABASE_SUFFIXES):
        return f"{folder} is named like a database file", meant
    return None


def _record(shard: int, row: tuple) -> TaskRecord:
    return TaskRecord(shard, row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                      row[8], row[9], bool(row[10]), row[11], row[12], row[13], row[14], row[15],
                      row[16], row[17], row[18], row[19] if len(row) > 19 else None,
                      row[20] if len(row) > 20 else None)

RECENT_ENDS_WINDOW = 10  # recent_ends looks at most this many times its limit of newest rows


def _is_plain(t: NewTask) -> bool:
    """Whether ``enqueue_plain`` stores this task (most sends): no cached arguments, retries,
    delay, timeout or headers of its own."""
    return (t.cache_owner is None and not t.max_retries and t.retry is None and not t.delay
            and t.timeout is None and t.headers is None)


def _plain_row(t: NewTask) -> tuple:
    """The values of ``enqueue_plain`` for one task."""
    return (t.task_name, t.args, t.priority, t.sender, int(t.notify), t.created_at, t.queue)


def _full_row(t: NewTask) -> tuple:
    """The values of ``enqueue`` for one task."""
    return (t.task_name, t.args, t.priority, t.sender, int(t.notify), t.cache_owner, t.max_retries,
            t.retry, t.delay, t.created_at, t.queue, t.timeout, t.headers)


def _run_statement(conn: sqlite3.Connection, sql: str, params: Sequence[object], fetch: bool) -> Any:
    """One statement: its cursor, or with ``fetch`` its rows."""
    cursor = conn.execute(sql, params)
    return cursor.fetchall() if fetch else cursor


class SQLiteShard(Shard):
    """A writer connection for every write, and a reader connection so that lookups,
    probes and counts never wait behind a write transaction (WAL readers never block).

    Every expiry and every time compared with one is read by the SQL itself from ``clock``
    (see clock.py): leases and node liveness on the host's boot clock, so no process's
    wall clock (stepped, or wrong) can expire a live lease or stretch a dead one."""

    def __init__(self, path: str, index: int, durability: str, clock: Clock | None = None,
                 embedded: bool = False):
        self.path = path
        self.index = index
        self.embedded = embedded  # inside an application's own database (Config.database)
        self.name = os.path.basename(path)
        self._durability = durability
        self.clock = clock or Clock()
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = connect(path, durability, self.clock, embedded)
        self._reader: sqlite3.Connection | None = None
        self._sent_here = False  # this object stored ready work since its last claim
        # Telling another process's commits from this object's own: PRAGMA data_version on
        # the writer connection changes only when some other connection committed.
        self._seen_version: int | None = None
        self._version_looked_at = 0.0  # monotonic time of an own write's last look
        self.on_foreign_commit: Callable[[], None] | None = None  # set while watched
        self._watcher: ChangeWatcher | None = None  # muted during this object's own writes
        self._purge_after = 0  # the retention sweep's position (a row id)
        self._held_at_fork: list[threading.Lock] = []
        self._unusable_in_child: str | None = None
        try:
            self._reader = connect(path, durability, self.clock, embedded)
            self._adopt_boot()
        except BaseException:
            self.close()
            raise

    def before_fork(self) -> None:
        """Hold both locks across the fork, so none of this object's connections is inside a
        statement or transaction then. SQLite keeps a process's lock state in memory that a
        child inherits: a transaction in flight at the fork would leave the child's own new
        connections waiting forever for a lock no thread of the child can release."""
        held = []
        for lock in (self._lock, self._read_lock):
            if not lock.acquire(timeout=FORK_LOCK_WAIT_S):
                break
            held.append(lock)
        self._held_at_fork = held

    def after_fork_in_parent(self) -> None:
        for lock in reversed(self._held_at_fork):
            lock.release()
        self._held_at_fork = []

    def after_fork_in_child(self) -> None:
        # New locks; the parent's connections stay open and untouched (SQLite: a connection
        # opened in the parent must not even be closed in a child); _connection opens the
        # child's own. A shard that was busy through the whole wait at the fork is refused.
        if len(self._held_at_fork) < 2:
            self._unusable_in_child = (
                f"{self.path} was in use by another thread of the parent process when it forked, "
                "so this child cannot use it safely; create the queue object after fork(), or "
                "start child processes with multiprocessing's 'spawn' or 'forkserver' method")
        self._held_at_fork = []
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._watcher = None
        self.on_foreign_commit = None
        self._seen_version = None

    # -- connection and transactions -------------------------------------------------
    def _connection(self, reader: bool = False) -> sqlite3.Connection:
        if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
            if self._unusable_in_child:
                raise QueueStorageError(self._unusable_in_child)
            _inherited.extend(c for c in (self._conn, self._reader) if c is not None)
            self._pid = os.getpid()
            self._conn = connect(self.path, self._durability, self.clock)
            self._reader = connect(self.path, self._durability, self.clock)
        conn = self._reader if reader else self._conn
        if conn is None:
            raise QueueStorageError(f"shard {self.path} is closed")
        return conn

    def _adopt_boot(self) -> None:
        """Expire what the previous boot left: the boot clock restarted, so its stored expiries
        mean nothing now, and every process that held them died with that boot. The first
        opener after a reboot does it (checked again under the write lock, so one does)."""
        with self._read() as conn:
            row = conn.execute(Q["boot_id"]).fetchone()
        if row is not None and row[0] == BOOT_ID:
            return
        with self._write("adopting this boot") as conn:
            row = conn.execute(Q["boot_id"]).fetchone()
            if row is not None and row[0] == BOOT_ID:
                return
            expired = conn.execute(Q["expire_leases_of_boot"]).rowcount
            conn.execute(Q["expire_nodes_of_boot"])
            conn.execute(Q["record_boot"], (BOOT_ID,))
        if expired:
            log.warning("%s: %d lease(s) were taken before this machine's last boot (or by an older "
                        "version, on the wall clock); expired: those tasks run again", self.name, expired)

    # Every write holds the writer lock through a ``with`` statement on the lock itself: a
    # Ctrl+C (KeyboardInterrupt, raised in the main thread between any two bytecodes) that
    # lands just after an acquire() call and before a try block would leave the lock taken
    # for good, and the app's own stop_server after its Ctrl+C then waited for it forever
    # (about one demo in thirty). The with statement releases it whatever is raised there.
    def _begin_write(self) -> sqlite3.Connection:
        """Under the writer lock: the connection. The change watcher of this object ignores
        the file writes made meanwhile (they are its own)."""
        conn = self._connection()
        if self._watcher is not None:
            self._watcher.mute()
        return conn

    def _end_write(self, succeeded: bool) -> bool:
        """Under the writer lock, after the work: did another connection commit meanwhile (to
        be reported once the lock is released)? Looked for only when the work succeeded."""
        if self._watcher is not None:
            self._watcher.unmute()
        if not succeeded or self.on_foreign_commit is None:
            return False
        now = time.monotonic()
        if now - self._version_looked_at < VERSION_LOOK_S:
            return False  # looked a moment ago: the next write or the watcher looks again
        self._version_looked_at = now
        return self._foreign_commit_seen(self._connection())

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One short write transaction; locked files are retried, any error rolls back."""
        with self._lock:
            conn = self._begin_write()
            succeeded = False
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:  # locked past the busy timeout: back off, retry
                    retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"), f"{what} on {self.name}")
                yield conn
                conn.execute("COMMIT")
                succeeded = True
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:  # (an I/O error may fail the rollback too: SQLite
                        pass               # then rolls back itself; the first error is the news)
                if isinstance(exc, sqlite3.Error):
                    raise self._storage_error(what, exc) from exc
                raise
            finally:
                foreign = self._end_write(succeeded)
        if foreign:
            self._report_foreign_commit()

    def _foreign_commit_seen(self, conn: sqlite3.Connection) -> bool:
        """Under the writer lock, after a write: did another connection commit since the last
        look? Whoever holds the lock looks when it is done, so the change watcher never has
        to wait for the lock: a commit it cannot check now is seen by the holder."""
        if self.on_foreign_commit is None:
            return False
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return True  # cannot tell: assume it was another process
        seen, self._seen_version = self._seen_version, version
        return seen is not None and version != seen

    def _report_foreign_commit(self) -> None:
        callback = self.on_foreign_commit
        if callback is not None:
            callback()

    def watch_foreign_commits(self, callback: Callable[[], None] | None,
                              watcher: ChangeWatcher | None = None) -> None:
        """Report other connections' commits from now on (the baseline is taken here); mute
        ``watcher`` during this object's own writes."""
        with self._lock:
            self.on_foreign_commit = callback
            self._watcher = watcher
            self._seen_version = None
            if callback is not None and self._conn is not None:
                self._foreign_commit_seen(self._connection())

    def check_foreign_commit(self, wait_for_lock: bool) -> bool:
        """For the change watcher: True when another connection committed since the last look.
        A first look gives up while a write of this object holds the lock (it looks when it
        ends), so the watcher never holds up our writes; the look once the writes paused
        (``wait_for_lock``) waits: whatever held the lock may have failed before looking."""
        if not wait_for_lock:
            if not self._lock.acquire(blocking=False):
                return False
        else:
            self._lock.acquire()
        try:
            conn = self._conn
            if conn is None or self._pid != os.getpid():
                return False
            return self._foreign_commit_seen(conn)
        finally:
            self._lock.release()

    def _write_one(self, sql: str, params: Sequence[object], what: str, fetch: bool = False) -> Any:
        """A single write statement in autocommit: SQLite takes the write lock when the
        statement starts (as BEGIN IMMEDIATE would) and commits when it ends. Returns the
        cursor, or with ``fetch`` its rows (read under the lock: the statement ends there)."""
        with self._lock:
            conn = self._begin_write()
            succeeded = False
            try:
                try:
                    result = _run_statement(conn, sql, params, fetch)
                except sqlite3.OperationalError as exc:
                    if not is_locked_error(exc):
                        raise
                    result = retry_locked(lambda: _run_statement(conn, sql, params, fetch),
                                          f"{what} on {self.name}")
                succeeded = True
            except sqlite3.Error as exc:
                raise self._storage_error(what, exc) from exc
            finally:
                foreign = self._end_write(succeeded)
        if foreign:
            self._report_foreign_commit()
        return result

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            try:
                yield self._connection(reader=True)
            except sqlite3.Error as exc:
                raise self._storage_error("read", exc) from exc

    def _storage_error(self, what: str, exc: sqlite3.Error) -> QueueStorageError:
        """Our error for a failed SQLite call: the file, SQLite's words, and the OS condition
        behind them (disk full, read-only file system, I/O error) with what to do."""
        condition = storage_condition(self.path, exc)
        return QueueStorageError(f"{what} on {self.path} failed: {exc}"
                                 f"{'; ' + condition if condition else ''}")

    # -- sending ---------------------------------------------------------------------
    def enqueue(self, tasks: Sequence[NewTask]) -> list[int]:
        if not tasks:
            return []
        self._sent_here = True
        if len(tasks) == 1:  # a send's every call: one statement, its own write transaction
            task = tasks[0]
            if _is_plain(task):
                return [self._write_one(Q["enqueue_plain"], _plain_row(task), "enqueue").lastrowid]
            if not task.delay > 0:  # (a delayed one is counted: SCHEDULED, below)
                return [self._write_one(Q["enqueue"], _full_row(task), "enqueue").lastrowid]
        if all(map(_is_plain, tasks)):
            sql = Q["enqueue_plain"]
            rows = [_plain_row(t) for t in tasks]
        else:
            sql = Q["enqueue"]
            rows = [_full_row(t) for t in tasks]
        delayed = sum(1 for t in tasks if t.delay > 0)  # stored SCHEDULED: counted; ready is not
        with self._write("enqueue") as conn:
            conn.executemany(sql, rows)
            last = conn.execute(Q["last_row_id"]).fetchone()[0]
            _add_to_counts(conn, {SCHEDULED_KEY: delayed})
        # one writer inside BEGIN IMMEDIATE, each rowid one past the largest: consecutive
        return list(range(last - len(rows) + 1, last + 1))

    def enqueue_in_transaction(self, connection: Any, tasks: Sequence[NewTask]) -> list[int]:
        """The rows go in through the application's ``sqlite3.Connection`` (a Python sqlite3
        connection opens its transaction before the first INSERT unless it is in autocommit
        mode), so they commit or roll back with the application's own writes. When it commits,
        the change watcher of every process serving this file sees the write and wakes them."""
        if not self.embedded:
            raise QueueStorageError(
                f"connection= sends in the application's transaction, which needs the queue inside "
                f"that application's database: MessageQueue(database='app.db'); this queue is the "
                f"shard file {self.path}")
        if not isinstance(connection, sqlite3.Connection):
            raise TypeError(f"connection={connection!r} must be the application's sqlite3.Connection to "
                            f"{self.path}")
        try:
            (file,) = connection.execute(Q["database_file"]).fetchone()
        except sqlite3.Error as exc:
            raise QueueStorageError(f"connection= cannot be used: {exc}") from exc
        if not file or os.path.realpath(file) != os.path.realpath(self.path):
            raise ValueError(f"connection= is a connection to {file or 'an in-memory database'!r}, not to "
                             f"the queue's database {self.path!r}: the task would not be in the same "
                             "transaction (SQLite in WAL mode cannot commit across files atomically)")
        now = self.clock.wall()
        rows = [(t.task_name, t.args, t.priority, t.sender, int(t.notify), t.max_retries, t.retry,
                 t.created_at, now + t.delay if t.delay > 0 else 0, t.queue, t.timeout, t.headers)
                for t in tasks]
        insert = Q["enqueue_in_transaction"]
        try:
            # (the application's own connection: its tuples arranged as ours are, see arrange)
            for queue in sorted({t.queue for t in tasks}):
                connection.execute(Q["declare_queue"], (queue,))
            ids = [connection.execute(insert, arrange(insert, row)).lastrowid for row in rows]
            delayed = sum(1 for t in tasks if t.delay > 0)
            if delayed:
                count = Q["add_to_count"]
                connection.execute(count, arrange(count, (*SCHEDULED_KEY, delayed)))
        except sqlite3.Error as exc:
            raise self._storage_error("enqueue in the application's transaction", exc) from exc
        return ids

    def enqueue_unique(self, tasks: Sequence[NewTask]) -> list[tuple[int, bool]]:
        """One transaction under the write lock (so the holder a conflict names is the one
        still there when it is read): expired holders of the batch's keys let go, then each
        task is inserted (``ON CONFLICT DO NOTHING`` on the unique index) or, its key being
        held, answered with the holder's row id. A skipped insert uses no row id, so the
        row ids stay consecutive and the ready count (max(id) minus the kept ones) stays true."""
        if not tasks:
            return []
        insert = Q["enqueue_unique"]
        keys = list(dict.fromkeys(t.unique_key for t in tasks if t.unique_key is not None))
        sent: list[tuple[int, bool]] = []
        with self._write("enqueue") as conn:
            conn.executemany(Q["release_expired_unique"], [(key,) for key in keys])
            delayed = 0
            for t in tasks:
                cursor = conn.execute(insert, (
                    t.task_name, t.args, t.priority, t.sender, int(t.notify), t.cache_owner,
                    t.max_retries, t.retry, t.delay, t.created_at, t.unique_key,
                    t.unique_states if t.unique_key is not None else 0, t.unique_for, t.queue,
                    t.timeout, t.headers))
                if cursor.rowcount == 1:
                    sent.append((cursor.lastrowid, False))
                    delayed += t.delay > 0
                else:
                    sent.append((conn.execute(Q["unique_holder"], (t.unique_key,)).fetchone()[0], True))
            _add_to_counts(conn, {SCHEDULED_KEY: delayed})  # stored SCHEDULED only
        self._sent_here = True
        return sent

    # -- working ---------------------------------------------------------------------
    def complete_and_claim(self, completions: Sequence[Completion], owner: str, limit: int,
                           lease_seconds: float, callbacked: Sequence[int] = (),
                           queue: str = DEFAULT_QUEUE) -> tuple[list[int], list[ClaimedTask]]:
        rejected: list[int] = []
        claim = (owner, lease_seconds, limit, queue)
        if not completions and not callbacked:
            hinted, self._sent_here = self._sent_here, False
            if hinted:  # this object just stored ready work: no need to look first
                ready, due = True, False
            else:
                with self._read() as conn:
                    ready, due = conn.execute(Q["probe_claimable"], (owner, queue)).fetchone()
            if not ready and not due:
                return rejected, []
            if not due:  # the claim alone: one statement, its own write transaction
                return rejected, self._claimed(self._write_one(Q["claim_batch"], claim, "claim", fetch=True),
                                               queue)
        with self._write("complete/claim") as conn:
            if callbacked:
                self._mark_callbacked(conn, callbacked)
            if completions:
                rejected = self._complete(conn, completions, owner)
            rows: list[tuple] = []
            if limit > 0:
                _add_to_counts(conn, {SCHEDULED_KEY: -conn.execute(Q["promote_due"]).rowcount})
                rows = conn.execute(Q["claim_batch"], claim).fetchall()
        return rejected, self._claimed(rows, queue)

    def _claimed(self, rows: list[tuple], queue: str) -> list[ClaimedTask]:
        index = self.index
        claimed = [ClaimedTask(index, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]),
                               r[9], r[10], r[11], r[12], r[13], r[14], r[15], r[16], queue=queue)
                   for r in rows]
        if len(claimed) > 1:
            claimed.sort(key=lambda c: (-c.priority, c.row_id))
        return claimed

    def _complete(self, conn: sqlite3.Connection, completions: Sequence[Completion],
                  owner: str) -> list[int]:
        by_statement: dict[str, list[tuple]] = {}
        for completion in completions:
            sql, row = self._completion_row(completion, owner)
            by_statement.setdefault(sql, []).append(row)
        rejected: list[int] = []
        for sql, rows in by_statement.items():
            rejected += self._complete_rows(conn, sql, rows)
        stale = set(rejected)
        deltas: dict[tuple[int, int], int] = {}
        for completion in completions:
            if completion.row_id not in stale:
                key = ENDED_KEY[completion.status]
                deltas[key] = deltas.get(key, 0) + 1
        _add_to_counts(conn, deltas)
        return rejected

    @staticmethod
    def _complete_rows(conn: sqlite3.Connection, sql: str, rows: list[tuple]) -> list[int]:
        """Run one completion statement over ``rows``; the row ids whose lease was lost."""
        if len(rows) == 1:
            return [] if conn.execute(sql, rows[0]).rowcount else [rows[0][0]]
        conn.execute("SAVEPOINT complete")
        if conn.executemany(sql, rows).rowcount == len(rows):
            conn.execute("RELEASE complete")
            return []
        # Some lease was lost (taken over after expiry): redo one by one to learn which.
        conn.execute("ROLLBACK TO complete")
        rejected = [row[0] for row in rows if conn.execute(sql, row).rowcount == 0]
        conn.execute("RELEASE complete")
        return rejected

    @staticmethod
    def _completion_row(c: Completion, owner: str) -> tuple[str, tuple]:
        """The statement and its values for one completion (row id first in both)."""
        if c.status == TaskStatus.FINISHED:
            return Q["complete_finished"], (c.row_id, c.attempt, c.result, c.handed_over,
                                            c.ended_at, c.started_at, owner)
        return Q["complete"], (c.row_id, c.attempt, c.status, c.result, c.traceback, c.ended_at,
                               c.retry_in, c.started_at, owner, c.handed_over)

    def release(self, claims: Sequence[ClaimedTask], owner: str) -> int:
        if not claims:
            return 0
        rows = [(c.row_id, c.attempt, owner) for c in claims]
        with self._write("release") as conn:
            return conn.executemany(Q["release"], rows).rowcount

    def renew_leases(self, owner: str, leases: Sequence[tuple[int, int]], lease_seconds: float) -> list[int]:
        if not leases:
            return []
        held = json.dumps([[row_id, attempt] for row_id, attempt in leases])
        renewed = {r[0] for r in self._write_one(Q["renew_leases"], (owner, held, lease_seconds),
                                                  "renew leases", fetch=True)}
        return [row_id for row_id, _ in leases if row_id not in renewed]

    def recover_expired(self, crash_limit: int) -> RecoveryReport:
        report = RecoveryReport()
        with self._write("recover expired leases") as conn:
            report.failed += self._fail_orphaned_cached(conn)
            statuses = [row[0] for row in conn.execute(Q["recover_expired"], (crash_limit,))]
            report.requeued += statuses.count(1)
            crashed_out = statuses.count(4)  # crash limit reached: FAILED
            report.failed += crashed_out
            report.cancelled += statuses.count(7)  # a cancel was pending: CANCELLED
            _add_to_counts(conn, {FAILED_KEY: crashed_out, CANCELLED_KEY: statuses.count(7)})
            conn.execute(Q["forget_dead_nodes"])
        return report

    def expire_leases_of(self, owner: str) -> int:
        with self._write("expire a dead worker's leases") as conn:
            return conn.execute(Q["expire_leases_of_owner"], (owner,)).rowcount

    def seconds_until_due(self) -> float | None:
        with self._read() as conn:
            return conn.execute(Q["seconds_until_due"]).fetchone()[0]

    def declare_limits(self, limits: dict[str, int | None]) -> None:
        with self._write("declare limits") as conn:  # (claims run under the same write lock: exact)
            conn.executemany(Q["declare_limit"], [(n, m) for n, m in limits.items() if m is not None])
            conn.executemany(Q["forget_limit"], [(n,) for n, m in limits.items() if m is None])

    def list_limits(self) -> dict[str, int]:
        with self._read() as conn:
            return dict(conn.execute(Q["list_limits"]).fetchall())

    def take_rate(self, claim: ClaimedTask, owner: str, rate: Rate) -> float | None:
        with self._write("rate limit") as conn:  # the write lock serializes every process's admissions
            now = conn.execute(Q["wall_now"]).fetchone()[0]
            row = conn.execute(Q["rate_window"], (claim.task_name,)).fetchone()
            decision = admit(rate, now, row[0] if row else None, row[1] if row else 0, claim.rate_slot)
            if decision is None:
                return None
            conn.execute(Q["set_rate_window"], (claim.task_name, decision.window, decision.used))
            if decision.run_at is None:
                return None
            deferred = conn.execute(Q["defer_to_window"],
                                    (claim.row_id, claim.attempt, owner, decision.run_at))
            if deferred.rowcount:
                _add_to_counts(conn, {SCHEDULED_KEY: 1})
            return decision.run_at

    def record_progress(self, owner: str, items: Sequence[tuple[int, int, str]]) -> None:
        if items:
            with self._write("record progress") as conn:
                conn.executemany(Q["record_progress"], [(row_id, owner, attempt, text)
                                                        for row_id, attempt, text in items])

    def get_progress(self, row_id: int) -> str | None:
        with self._read() as conn:
            row = conn.execute(Q["get_progress"], (row_id,)).fetchone()
        return None if row is None else row[0]

    # -- cancellation ----------------------------------------------------------------
    def cancel(self, row_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        cancelled: list[int] = []
        asked: list[int] = []
        with self._write("cancel") as conn:  # under the write lock: no claim moves a row meanwhile
            deltas = {SCHEDULED_KEY: 0, CANCELLED_KEY: 0}
            for row_id in row_ids:
                row = conn.execute(Q["cancel_state"], (row_id,)).fetchone()
                if row is None:
                    continue
                if row[0] in (TaskStatus.NOT_STARTED, TaskStatus.SCHEDULED):
                    conn.execute(Q["cancel_waiting"], (row_id,))
                    cancelled.append(row_id)
                    deltas[CANCELLED_KEY] += 1
                    deltas[SCHEDULED_KEY] -= row[0] == TaskStatus.SCHEDULED
                elif row[0] == TaskStatus.RUNNING and conn.execute(Q["request_cancel"], (row_id,)).fetchone():
                    asked.append(row_id)
            _add_to_counts(conn, deltas)
        return cancelled, asked

    def cancel_pending(self, row_ids: Sequence[int]) -> list[int]:
        with self._read() as conn:
            states = [(row_id, conn.execute(Q["cancel_state"], (row_id,)).fetchone()) for row_id in row_ids]
        return [row_id for row_id, state in states
                if state is not None and state[0] == TaskStatus.RUNNING and state[1] == 1]

    def waiting_ids(self, task_name: str) -> list[int]:
        with self._read() as conn:
            return [row[0] for row in conn.execute(Q["waiting_ids_of_name"], (task_name,))]

    def cancel_requests(self, owner: str) -> list[int]:
        with self._read() as conn:
            return [row[0] for row in conn.execute(Q["cancel_requests"], (owner,))]

    def cancel_seen(self, owner: str, claims: Sequence[ClaimedTask]) -> None:
        if claims:
            with self._write("cancel seen") as conn:
                conn.executemany(Q["cancel_seen"], [(c.row_id, owner, c.attempt) for c in claims])

    # -- outcomes for senders --------------------------------------------------------
    def outcome_row_ids(self, sender: str, limit: int) -> list[int]:
        with self._read() as conn:
            return [r[0] for r in conn.execute(Q["outcome_row_ids"], (sender, limit))]

    def mark_callbacked(self, row_ids: Sequence[int]) -> None:
        if row_ids:
            with self._write("mark callbacked") as conn:
                self._mark_callbacked(conn, row_ids)

    @staticmethod
    def _mark_callbacked(conn: sqlite3.Connection, row_ids: Sequence[int]) -> None:
        outcomes = [row[0] for row in conn.execute(Q["mark_callbacked"], (json.dumps(list(row_ids)),))]
        deltas: dict[tuple[int, int], int] = {}
        for outcome in (3, 4, 7):
            moved = outcomes.count(outcome)
            deltas[ENDED_KEY[outcome]] = -moved
            deltas[CALLBACKED_KEY[outcome]] = moved
        _add_to_counts(conn, deltas)

    @staticmethod
    def _fail_orphaned_cached(conn: sqlite3.Connection) -> int:
        """Fail the cached tasks whose sender is gone (see the query); how many."""
        scheduled = conn.execute(Q["count_orphaned_scheduled"]).fetchone()[0]
        failed = len(conn.execute(Q["fail_orphaned_cached"]).fetchall())
        _add_to_counts(conn, {SCHEDULED_KEY: -scheduled, FAILED_KEY: failed})
        return failed

    def get_tasks(self, row_ids: Sequence[int]) -> list[TaskRecord]:
        """The stored tasks among ``row_ids``, in that order (each once). One statement for
        many: a sender's poll reads its outcomes by the batch, and a statement per row cost
        it (and its interpreter lock) about as much as the send of that row."""
        if not row_ids:
            return []
        with self._read() as conn:
            if len(row_ids) == 1:
                row = conn.execute(Q["get_task"], (row_ids[0],)).fetchone()
                return [] if row is None else [_record(self.index, row)]
            by_id = {row[0]: row for row in conn.execute(Q["get_tasks"], (json.dumps(list(row_ids)),))}
        return [_record(self.index, by_id[i]) for i in dict.fromkeys(row_ids) if i in by_id]

    def list_tasks(self, status: int | None, task_name: str | None, limit: int,
                   queue: str | None = None) -> list[TaskRecord]:
        query = Q[listing_query(status)]
        with self._read() as conn:
            if status == TaskStatus.NOT_STARTED:  # the ready index is per queue: each in claim order
                queues = [queue] if queue is not None else self._queues(conn)
                rows = [r for q in queues for r in conn.execute(query, (status, task_name, limit, q))]
                rows.sort(key=lambda r: (-r[6], r[0]))
                rows = rows[:limit]
            else:
                rows = conn.execute(query, (status, task_name, limit, queue)).fetchall()
        return [_record(self.index, r) for r in rows]

    @staticmethod
    def _queues(conn: sqlite3.Connection) -> list[str]:
        return [row[0] for row in conn.execute(Q["list_queues"])]

    def list_queues(self) -> list[str]:
        with self._read() as conn:
            return self._queues(conn)

    def declare_queues(self, names: Sequence[str]) -> None:
        with self._write("declare queues") as conn:
            conn.executemany(Q["declare_queue"], [(name,) for name in names])

    def count_by_queue(self) -> dict[str, dict[str, int]]:
        with self._read() as conn:  # one read transaction: one snapshot
            counts = {q: {"queued": conn.execute(Q["count_ready_in_queue"], (q,)).fetchone()[0],
                          "scheduled": 0, "running": 0} for q in self._queues(conn)}
            for state, query in (("running", "count_running_by_queue"),
                                 ("scheduled", "count_scheduled_by_queue")):
                for q, n in conn.execute(Q[query]):
                    counts.setdefault(q, {"queued": 0, "scheduled": 0, "running": 0})[state] = n
        return counts

    def count_tasks(self) -> dict[tuple[int, int], int]:
        with self._read() as conn:
            rows = conn.execute(Q["count_tasks"]).fetchall()
        counts = {(status, outcome): n for status, outcome, n in rows}
        stored = counts.pop((-1, 0))  # every row id ever given: the rest are ready
        ready = stored - sum(counts.values())
        counts.pop(REMOVED_KEY)
        counts[(1, 0)] = ready
        return {key: n for key, n in counts.items() if n}

    def ended_timings(self, limit: int) -> list[tuple[float, float | None, float]]:
        with self._read() as conn:
            return conn.execute(Q["ended_timings"], (limit, limit * TIMINGS_WINDOW)).fetchall()

    def page_tasks(self, status: int | None, after: tuple[float, int], limit: int) -> list[TaskRecord]:
        query = Q[page_query(status)]
        with self._read() as conn:
            if status == TaskStatus.NOT_STARTED:  # the ready index is per queue: a page of each, merged
                rows = [r for queue in self._queues(conn)
                        for r in conn.execute(query, (after[0], after[1], limit, queue))]
                rows = sorted(rows, key=lambda r: (-r[6], r[0]))[:limit]
            else:
                params = (after[0], after[1], limit) if status == TaskStatus.SCHEDULED else (after[1], limit)
                rows = conn.execute(query, params).fetchall()
        return [_record(self.index, r) for r in rows]

    def get_task_detail(self, row_id: int) -> TaskRecord | None:
        with self._read() as conn:
            row = conn.execute(Q["get_task_detail"], (row_id,)).fetchone()
        return None if row is None else _record(self.index, row)

    def recent_ends(self, since: float, limit: int) -> list[tuple[float, float | None, float, int]]:
        with self._read() as conn:
            return conn.execute(Q["recent_ends"], (limit, limit * RECENT_ENDS_WINDOW, since)).fetchall()

    def oldest_ready(self) -> tuple[int, str, float] | None:
        with self._read() as conn:
            found = [row for queue in self._queues(conn)
                     if (row := conn.execute(Q["oldest_ready"], (queue,)).fetchone()) is not None]
        return min(found) if found else None

    def list_nodes(self) -> list[NodeRecord]:
        with self._read() as conn:
            return [NodeRecord(*row) for row in conn.execute(Q["list_nodes"])]

    def requeue_failed(self, row_id: int | None, task_name: str | None) -> int:
        query, key = ("requeue_failed_all", task_name) if row_id is None else ("requeue_failed_by_id", row_id)
        with self._write("requeue failed") as conn:
            requeued = {status: conn.execute(Q[query], (key, task_name, status)).rowcount
                        for status in (4, 5)}
            _add_to_counts(conn, {FAILED_KEY: -requeued[4], CALLBACKED_KEY[4]: -requeued[5]})
        return sum(requeued.values())

    def remove_waiting(self, row_id: int | None, task_name: str | None) -> int:
        with self._write("remove waiting tasks") as conn:
            scheduled, removed = self._tombstone_newest(conn, row_id, task_name)
            if row_id is not None:
                statuses = [r[0] for r in conn.execute(Q["remove_waiting_by_id"], (row_id, task_name))]
                scheduled += statuses.count(6)
                removed += len(statuses)
            else:
                removed += conn.execute(Q["remove_ready"], (task_name,)).rowcount
                gone = conn.execute(Q["remove_scheduled"], (task_name,)).rowcount
                scheduled += gone
                removed += gone
            _add_to_counts(conn, {SCHEDULED_KEY: -scheduled, REMOVED_KEY: removed})
        return removed

    @staticmethod
    def _tombstone_newest(conn: sqlite3.Connection, row_id: int | None,
                          task_name: str | None) -> tuple[int, int]:
        """The newest row, if it is to be removed, stays as a tombstone (row ids are never
        reused: every row id up to the newest is a row stored). (scheduled, removed) by it."""
        newest = conn.execute(Q["newest_row"]).fetchone()
        if newest is None:
            return 0, 0
        newest_id, status, name = newest
        if status not in (1, 6) or row_id not in (None, newest_id) or task_name not in (None, name):
            return 0, 0
        conn.execute(Q["tombstone"], (newest_id,))
        return int(status == 6), 1

    # -- schedules of periodic tasks -------------------------------------------------
    def wall_now(self) -> float:
        return self.clock.wall()

    def declare_schedules(self, schedules: Sequence[tuple[str, str, float, float]]) -> None:
        if schedules:
            with self._write("declare schedules") as conn:
                conn.executemany(Q["declare_schedule"], schedules)

    def enqueue_slots(self, name: str, expected_last: float, decided: float, next_slot: float,
                      runs: Sequence[tuple[float, NewTask]], skip_if_running: bool) -> list[int] | None:
        with self._write("enqueue periodic task") as conn:
            if skip_if_running and runs and conn.execute(Q["previous_run_waiting"], (name,)).fetchone()[0]:
                runs = ()  # the previous run is still waiting or running: these slots are skipped
            if not conn.execute(Q["decide_slots"], (name, expected_last, decided, next_slot)).rowcount:
                return None
            stored = []
            for slot, t in runs:
                row = conn.execute(Q["enqueue_slot"], (t.task_name, t.args, t.priority, t.sender,
                                                       t.max_retries, t.retry, t.created_at, name,
                                                       slot, t.queue)).fetchone()
                if row is not None:
                    stored.append(row[0])
            if stored:
                conn.execute(Q["note_last_task"], (name, stored[-1]))
                self._sent_here = True
        return stored

    def list_schedules(self) -> list[ScheduleRecord]:
        with self._read() as conn:
            return [ScheduleRecord(*row) for row in conn.execute(Q["list_schedules"])]

    def remove_schedules(self, names: Sequence[str]) -> int:
        with self._write("remove schedules") as conn:
            return sum(conn.execute(Q["remove_schedule"], (name,)).rowcount for name in names)

    # -- liveness and upkeep ---------------------------------------------------------
    def register_node(self, node: str, pid: int, host: str, lease_seconds: float) -> None:
        self._write_one(Q["register_node"], (node, pid, host, lease_seconds), "register node")

    def unregister_node(self, node: str) -> int:
        with self._write("unregister node") as conn:
            conn.execute(Q["unregister_node"], (node,))
            return self._fail_orphaned_cached(conn)

    def purge_ended(self, retention_seconds: float, limit: int) -> bool:
        """One window of ``limit`` rows, walked by row id from where the last call stopped
        (a sweep). Rows are created in row-id order, so once a window holds only rows created
        after the cut-off nothing further can have ended before it: the sweep ends there, and
        a table of recent tasks costs one window to sweep. The write lock is taken only for
        a window that holds something to delete. The cut-off is on the wall clock, as the
        end stamps are."""
        before = self.clock.wall() - retention_seconds
        with self._read() as conn:
            last_id, due, oldest = conn.execute(
                Q["purge_window"], (self._purge_after, before, limit)).fetchone()
        if last_id is None or oldest > before + PURGE_CLOCK_SLACK_S:
            self._purge_after = 0
            return False
        if due:
            with self._write("purge") as conn:
                deleted = conn.execute(Q["purge_ended"], (before, self._purge_after, last_id)).fetchall()
                deltas: dict[tuple[int, int], int] = {REMOVED_KEY: 0}
                for status, outcome in deleted:
                    if status:  # a tombstone (0) was counted as removed already
                        deltas[(status, outcome)] = deltas.get((status, outcome), 0) - 1
                        deltas[REMOVED_KEY] += 1
                _add_to_counts(conn, deltas)
        self._purge_after = last_id
        return True

    def maintain(self) -> None:
        """Truncate the WAL when it grew past its bound (a long reader starved checkpoints)."""
        try:
            size = os.stat(self.path + "-wal").st_size  # stat opens no descriptor on the file
        except OSError:
            return
        if size > WAL_CHECKPOINT_BYTES:
            busy, _, _ = self._write_one("PRAGMA wal_checkpoint(TRUNCATE)", (), "checkpoint", fetch=True)[0]
            log.info("%s: WAL was %d bytes; checkpoint %s", self.name, size,
                     "deferred (readers busy)" if busy else "done")

    def close(self) -> None:
        with self._lock, self._read_lock:
            if self._pid == os.getpid():
                for conn in (self._reader, self._conn):
                    if conn is not None:
                        conn.close()
            self._conn = self._reader = None


class SQLiteBackend(Backend):
    """The shard files in one folder."""

    inline_io = True  # a one-row send commits in tens of microseconds (README, "Async client")

    def __init__(self, folder: str, shard_count: int, durability: str = "normal",
                 clock: Clock | None = None, database: str | None = None):
        check_sqlite_library()
        self.clock = clock or Clock()  # every shard's, the ones adopted later too
        self.location = folder
        self.database = database  # an application's database holding the queue, or None
        self._event_name = SHARD_EVENT_NAME
        if database is not None:
            self._open_database(database, durability)
            return
        mistake = folder_mistake(folder)
        if mistake is not None:
            inside = (f", or, to keep it inside that application database (to send in its "
                      f"transactions): MessageQueue(database={folder!r})") if os.path.isfile(folder) else ""
            raise QueueStorageError(f"{mistake[0]}; the queue is a folder of shard files: "
                                    f"MessageQueue({mistake[1]!r}){inside}")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise QueueStorageError(f"cannot create queue folder {folder!r}: {exc}") from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise QueueStorageError(f"queue folder {folder!r} is not writable")
        warn_if_network_filesystem(folder)
        self._durability = durability
        self._watcher: ChangeWatcher | None = None
        self._on_change: Callable[[], None] | None = None
        self._adopt_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._refused: dict[str, tuple[int, int, int, int] | None] = {}  # path: version refused
        self.shards: list[SQLiteShard] = []
        try:
            for index in range(shard_count):
                self.shards.append(SQLiteShard(shard_path(folder, index), index, durability, self.clock))
        except BaseException:
            self.close()
            raise

    @classmethod
    def in_database(cls, path: str, durability: str = "normal", clock: Clock | None = None) -> SQLiteBackend:
        """The queue inside an application's own SQLite database ``path`` (``Config.database``):
        one shard, that file; its ``mqs_*`` tables made by the migrations, nothing else touched."""
        return cls(os.path.dirname(os.path.abspath(path)), 1, durability, clock, database=path)

    def _open_database(self, path: str, durability: str) -> None:
        if os.path.isdir(path):
            raise QueueStorageError(f"Config.database={path!r} is a folder; it names an SQLite database "
                                    f"file (for a folder of shard files: MessageQueue({path!r}))")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise QueueStorageError(f"Config.database={path!r}: its folder {folder!r} does not exist")
        warn_if_network_filesystem(folder)
        self.location = folder
        self._durability = durability
        self._watcher = None
        self._on_change = None
        self._adopt_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        name = os.path.basename(path)
        self._event_name = re.compile(rb"(" + re.escape(os.fsencode(name)) + rb")(?:-wal)?\x00")
        self.shards = [SQLiteShard(os.path.abspath(path), 0, durability, self.clock, embedded=True)]

    def after_fork_in_child(self) -> None:
        self._adopt_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._watcher = None  # the parent's watcher thread does not exist here
        self._on_change = None
        super().after_fork_in_child()

    def adopt_new_shards(self) -> bool:
        """Shard files another process added (``middleware_num`` raised there) are served too.

        A file that is not ours (another application's database dropped in under a shard's
        name, a file that is not SQLite) is refused, untouched, and logged once per version of
        it: the callers (housekeeping before renewal and recovery, idle workers, the change
        watcher) must go on serving the shards they have, or one foreign file would stop the
        recovery of every task a dead worker held. Shards are numbered without gaps, so the
        files after a refused one wait until it is removed or replaced (then it is looked at
        again). True when a shard was adopted."""
        if self.database is not None:
            return False  # the one file: no shard files to adopt
        present = existing_shard_count(self.location)
        if present <= len(self.shards):
            return False
        adopted = False
        with self._adopt_lock:  # the watcher, the housekeeper and idle workers all look
            for index in range(len(self.shards), present):
                path = shard_path(self.location, index)
                version = _file_version(path)
                if self._refused.get(path) == version:
                    break  # refused as it is; already said so
                try:
                    shard = SQLiteShard(path, index, self._durability, self.clock)
                except QueueStorageError as exc:
                    self._refused[path] = version
                    log.error("refusing %s, which appeared in the live queue folder %s: %s. This process "
                              "goes on serving, renewing and recovering shards 0-%d; remove or rename "
                              "that file (it is not modified here) for shard %d and later ones to be "
                              "served.", path, self.location, exc, index - 1, index)
                    break
                self._refused.pop(path, None)
                watcher = self._watcher
                shard.watch_foreign_commits(self._on_change, watcher)
                if watcher is not None:  # (its polling, if it polls, opens only what it is told)
                    watcher.add_database(shard.path)
                self.shards.append(shard)
                adopted = True
                log.info("serving %s, created by another process", shard.name)
        return adopted

    def watch(self, on_change: Callable[[], None]) -> None:
        """Only other processes' commits are reported: this object's own writes would wake
        its idle workers and its outcome poller for nothing (the engine rings its own bell)."""
        with self._watch_lock:
            if self._watcher is None:
                self._on_change = on_change
                self._watcher = ChangeWatcher(self.location, [s.path for s in self.shards],
                                              self._files_changed, self._event_name)
                for shard in self.shards:
                    shard.watch_foreign_commits(on_change, self._watcher)

    def _files_changed(self, names: set[str] | None, trailing: bool) -> None:
        """The watcher saw writes to these shard files (or their WAL; None: to any): report
        the change if another connection committed, or if a shard file appeared that is not
        open here. ``trailing``: the writes have paused (the last look of a burst)."""
        known = {shard.name: shard for shard in self.shards}
        if names is None:
            names = set(known)
        foreign = any(name not in known for name in names)
        if foreign:
            self.adopt_new_shards()
        for name in names:
            shard = known.get(name)
            if shard is not None and shard.check_foreign_commit(wait_for_lock=trailing):
                foreign = True
        if foreign and self._on_change is not None:
            self._on_change()

    def close(self) -> None:
        with self._watch_lock:
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
        for shard in self.shards:
            shard.close()
