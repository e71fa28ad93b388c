"""The SQLite files: refusing what is not ours, schema and migrations, indexes, shards."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import wait_until

from message_queue_sqlite import Config, MessageQueue, QueueStorageError, TaskStatus, init_server
from message_queue_sqlite.backends.sqlite.backend import Q
from message_queue_sqlite.backends.sqlite.connection import APPLICATION_ID, SCHEMA_VERSION, arrange
from message_queue_sqlite.core.registry import TaskRegistry


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_layout_wal_and_schema_version(tmp_path):
    with MessageQueue(str(tmp_path / "q"), shards=2) as mq:
        mq.send("t", {})
    for index in range(2):
        conn = sqlite3.connect(tmp_path / "q" / f"mq-shard-{index}.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        conn.close()


def test_another_applications_database_is_refused_untouched(tmp_path):
    folder = tmp_path / "q"
    folder.mkdir()
    foreign = folder / "mq-shard-0.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    conn.execute("INSERT INTO invoices (amount) VALUES (9.5)")
    conn.commit()
    conn.close()
    before = _digest(foreign)
    with pytest.raises(QueueStorageError, match=r"another application's SQLite database \(tables: invoic"):
        init_server(TaskRegistry(), Config(middleware_path=str(folder)))
    assert _digest(foreign) == before
    assert sorted(p.name for p in folder.iterdir()) == ["mq-shard-0.db"]


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path):
    folder = tmp_path / "q"
    folder.mkdir()
    junk = folder / "mq-shard-0.db"
    junk.write_bytes(b"this is a text file, not a database\n" * 200)
    before = _digest(junk)
    with pytest.raises(QueueStorageError, match="not a SQLite database"):
        MessageQueue(str(folder))
    assert _digest(junk) == before


def test_queue_path_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(QueueStorageError, match="cannot create queue folder"):
        init_server(TaskRegistry(), Config(middleware_path=str(blocker / "sub")))


def test_newer_schema_is_refused(tmp_path):
    folder = tmp_path / "q"
    MessageQueue(str(folder)).close()
    conn = sqlite3.connect(folder / "mq-shard-0.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(QueueStorageError, match="newer than this package supports"):
        MessageQueue(str(folder))


def test_concurrent_openers_of_a_fresh_file_agree(tmp_path):
    folder = str(tmp_path / "q")
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def open_one():
        try:
            barrier.wait()
            MessageQueue(folder).close()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# Walks of the primary key back from the newest row, ended by their LIMIT: the newest tasks,
# and the newest finished ones (most ended tasks finished: an index kept on every completion
# for them would cost each task more than the listing saves).
PRIMARY_KEY_WALKS = {"list_recent", "list_ended_as"}


@pytest.mark.parametrize("query", sorted(Q))
def test_every_query_uses_an_index(tmp_path, query):
    """No statement scans the tasks table: each finds its rows by primary key or on an index
    (a partial one holds only the rows in its state); the two walks above are named."""
    with MessageQueue(str(tmp_path / "q")) as mq:
        conn = mq.engine.shards[0]._connection()
        sql = Q[query]
        rows = conn.execute("EXPLAIN QUERY PLAN " + sql, [None] * _arity(sql))
        steps = [str(row[-1]) for row in rows]
    scans = [step for step in steps if step == "SCAN mqs_tasks"]
    if query in PRIMARY_KEY_WALKS:
        assert scans == ["SCAN mqs_tasks"] and "ORDER BY id DESC LIMIT" in " ".join(sql.split()), steps
    else:
        assert scans == [], steps


@pytest.mark.parametrize("query, index", [("page_ready", "mqs_tasks_ready"),
                                          ("page_scheduled", "mqs_tasks_scheduled"),
                                          ("page_failed", "mqs_tasks_failed"),
                                          ("page_running", "mqs_tasks_running"),
                                          ("page_cancelled", "mqs_tasks_cancelled")])
def test_dashboard_pages_of_a_state_read_its_index(tmp_path, query, index):
    """A page of one state reads that state's partial index, never the primary key (which,
    for an ORDER BY row id, would cross every other state's rows on the way)."""
    with MessageQueue(str(tmp_path / "q")) as mq:
        conn = mq.engine.shards[0]._connection()
        plan = conn.execute("EXPLAIN QUERY PLAN " + Q[query], [None] * _arity(Q[query]))
        steps = [str(row[-1]) for row in plan]
    reads = [step for step in steps if "mqs_tasks" in step and step.startswith(("SEARCH", "SCAN"))]
    assert reads and all(index in step for step in reads), steps


def _arity(sql: str) -> int:
    """Parameters a prepared statement binds: its plain ``?`` (queries.sql's ?N made plain)."""
    return sql.count("?")


def test_claim_is_log_n_a_large_backlog_uses_the_ready_index(tmp_path):
    with MessageQueue(str(tmp_path / "q")) as mq:
        conn = mq.engine.shards[0]._connection()
        claim = Q["claim_batch"]
        plan = [row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + claim,
                                                arrange(claim, ("o", 0, 1, "default")))]
    # a range of the queue's part of the index, read in claim order: no sort of the backlog (the
    # one sort, for the concurrency limits' per-name ranks, is of the at most LIMIT rows read)
    search = [i for i, step in enumerate(plan) if "USING INDEX mqs_tasks_ready (queue=?)" in step]
    sorts = [i for i, step in enumerate(plan) if "TEMP B-TREE" in step]
    assert len(search) == 1 and len(sorts) <= 1 and all(i > search[0] for i in sorts), plan
    assert plan[search[0] - 1] == "CO-ROUTINE candidates", plan


def test_sends_spread_over_shards_by_load(tmp_path):
    folder = str(tmp_path / "q")
    with MessageQueue(folder, shards=3) as mq:
        for _ in range(30):
            mq.send("t", {})
        counts = [s.count_waiting() for s in mq.engine.shards]
    assert counts == [10, 10, 10]
    # A shard that already holds a backlog (from another sender) gets the new tasks last.
    with MessageQueue(folder, shards=3) as mq:
        mq.engine.shards[0].enqueue([])  # no-op
        extra = MessageQueue(folder, shards=1)
        for _ in range(20):
            extra.send("t", {})
        extra.close()
        mq.engine.balancer._next_refresh = 0  # count now rather than on the next timed refresh
        for _ in range(30):
            mq.send("t", {})
        counts = [s.count_waiting() for s in mq.engine.shards]
    assert counts == [30, 25, 25]


def test_workers_serve_every_shard(tmp_path):
    with MessageQueue(str(tmp_path / "q"), shards=4, workers=2) as mq:
        @mq.task
        def where():
            return "ok"

        handles = [mq.send(where) for _ in range(40)]
        assert {mq.engine.shard_of(h.task_id)[0] for h in handles} == {0, 1, 2, 3}
        mq.start()
        assert all(h.result(timeout=10) == "ok" for h in handles)


def test_cached_arguments_are_not_written_to_the_file(tmp_path):
    folder = tmp_path / "q"
    with MessageQueue(str(folder)) as mq:
        @mq.task(use_cache=True)
        def uses_lock(lock):
            with lock:
                return "locked"

        handle = mq.send(uses_lock, {"lock": threading.Lock()})
        row = sqlite3.connect(folder / "mq-shard-0.db").execute(
            "SELECT args, cache_owner FROM mqs_tasks WHERE id = ?",
            (mq.engine.shard_of(handle.task_id)[1],)).fetchone()
        assert "Lock" not in row[0] and row[1] == mq.engine.node  # a key into memory, no arguments
        mq.start()
        assert handle.result(timeout=10) == "locked"


def test_cache_mode_tasks_fail_when_their_sender_closes_first(tmp_path):
    folder = str(tmp_path / "q")
    sender = MessageQueue(folder)
    worker = MessageQueue(folder)
    try:
        @worker.task(use_cache=True)
        def cached(value):
            return value

        sender.registry.register(cached)
        handle = sender.send("cached", {"value": object()})
        worker.start()
        # Another object may not claim it: its arguments live in the sender's memory.
        task_id = handle.task_id
        assert worker.get(task_id).status == TaskStatus.NOT_STARTED
        sender.close()
        record = worker.engine.find(task_id)
        assert record.status == TaskStatus.FAILED
        assert "ended before it ran" in record.result
    finally:
        worker.close()


def test_cache_mode_tasks_of_a_dead_process_fail_on_recovery(tmp_path):
    folder = str(tmp_path / "q")
    sender = MessageQueue(folder, visibility_timeout=0.2)
    sender.registry.register(lambda: None, name="cached")
    handle = sender.send("cached", {}, use_cache=True)
    # Simulate a crash: the sender's liveness row expires and nothing closes it.
    sender.engine.housekeeper.close()
    with MessageQueue(folder, visibility_timeout=0.2) as other:
        def failed():
            other.housekeeping()
            return other.engine.find(handle.task_id).status == TaskStatus.FAILED

        wait_until(failed, timeout=10, what="orphaned cache task FAILED")
    sender._engine._node_registered = False  # it "died": no unregistering
    sender.close()


def _trace(shard, callback) -> None:
    """Set a trace callback on a live shard's connections while no thread uses them: setting
    one takes SQLite's connection mutex while holding the GIL, and a thread inside a statement
    holds that mutex while its trace callback waits for the GIL (a deadlock no timeout ends)."""
    with shard._lock, shard._read_lock:
        shard._connection().set_trace_callback(callback)
        shard._connection(reader=True).set_trace_callback(callback)


def test_an_idle_worker_does_not_take_the_write_lock(tmp_path):
    """Woken by changes that bring nothing to claim, idle workers only read."""
    with MessageQueue(str(tmp_path / "q"), workers=2) as mq:
        statements: list[str] = []
        mq.start()
        probes = []
        _trace(mq.engine.shards[0], statements.append)
        for _ in range(20):  # as if other processes committed twenty times
            mq.engine.bell.ring()
            wait_until(lambda: len([s for s in statements if "EXISTS" in s]) > len(probes),
                       what="the idle worker's probe")
            probes.append(1)
        _trace(mq.engine.shards[0], None)
        writes = [s for s in statements if s.split()[0] in ("BEGIN", "UPDATE", "INSERT", "DELETE")]
        assert not writes, writes


def test_a_network_file_system_is_warned_about(tmp_path, caplog):
    from message_queue_sqlite.backends.sqlite.connection import warn_if_network_filesystem

    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nserver:/export {tmp_path} nfs4 rw 0 0\n")
    warn_if_network_filesystem(str(tmp_path / "q"), str(mounts))
    assert "nfs4 network file system" in caplog.text
    caplog.clear()
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\n/dev/vdb {tmp_path} ext4 rw 0 0\n")
    warn_if_network_filesystem(str(tmp_path / "q"), str(mounts))
    assert caplog.text == ""


@pytest.mark.parametrize(("durability", "level"), [("normal", 1), ("full", 2)])
def test_durability_setting_reaches_sqlite(tmp_path, durability, level):
    with MessageQueue(str(tmp_path / "q"), durability=durability) as mq:
        shard = mq.engine.shards[0]
        assert shard._connection().execute("PRAGMA synchronous").fetchone()[0] == level
        assert shard._connection(reader=True).execute("PRAGMA synchronous").fetchone()[0] == level


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_workers", 0, "max_workers=0 is invalid; it must be an integer >= 1"),
    ("middleware_num", "2", "middleware_num='2' is invalid"),
    ("visibility_timeout", -1, "visibility_timeout=-1 is invalid"),
    ("durability", "fast", "durability='fast' is not a mode"),
    ("broker_url", "mysql://x", "broker_url='mysql://x' is not supported"),
])
def test_bad_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config(**{field: value})


def _new_task(name: str = "noop"):
    import time

    from message_queue_sqlite.backends.base import NewTask

    return NewTask(name, "{}", 0, "sender", False, None, 0, None, 0.0, time.time())


def test_the_change_feed_reports_other_connections_commits_not_our_own(tmp_path):
    """Our own commits would wake our idle workers and outcome poller for nothing (the engine
    rings its own bell): only another connection's commit is reported, once."""
    from message_queue_sqlite.backends.sqlite.backend import SQLiteBackend

    folder = str(tmp_path / "q")
    ours, theirs = SQLiteBackend(folder, 1), SQLiteBackend(folder, 1)
    newest_when_reported: list[int] = []
    reader = sqlite3.connect(str(tmp_path / "q" / "mq-shard-0.db"), check_same_thread=False)

    def reported() -> None:
        newest_when_reported.append(reader.execute("SELECT max(id) FROM mqs_tasks").fetchone()[0])

    try:
        ours.watch(reported)
        for _ in range(3):
            ours.shards[0].enqueue([_new_task()])  # rows 1-3: ours
        [foreign] = theirs.shards[0].enqueue([_new_task()])
        wait_until(lambda: foreign in newest_when_reported, what="the other connection's commit")
        assert newest_when_reported == [foreign]
    finally:
        ours.close()
        theirs.close()
        reader.close()


def test_own_writes_do_not_wake_the_change_watcher(tmp_path):
    """Each own commit used to wake the watcher thread in the middle of the same round trip
    (it then competed for the interpreter lock): own writes are muted; the one look at every
    shard once they pause comes from a timer, and other processes' writes still wake it."""
    from message_queue_sqlite.backends.sqlite.backend import SQLiteBackend

    folder = str(tmp_path / "q")
    ours, theirs = SQLiteBackend(folder, 1), SQLiteBackend(folder, 1)
    calls: list[tuple[frozenset[str] | None, bool]] = []
    real = ours._files_changed

    def recording(names, trailing):
        calls.append((None if names is None else frozenset(names), trailing))
        real(names, trailing)

    ours._files_changed = recording  # the watcher calls what it was given when it started
    try:
        ours.watch(lambda: None)
        for _ in range(20):
            ours.shards[0].enqueue([_new_task()])
        wait_until(lambda: (None, True) in calls, what="the look after own writes paused")
        assert all(names is None for names, _ in calls), calls
        theirs.shards[0].enqueue([_new_task()])
        wait_until(lambda: any(names and "mq-shard-0.db" in names for names, _ in calls),
                   what="another process's write")
    finally:
        ours.close()
        theirs.close()


def test_a_commit_of_another_process_during_an_own_write_is_reported(tmp_path):
    """Its WAL writes land while our watch is muted: the look once our writes pause finds it,
    though nothing of ours writes again."""
    from message_queue_sqlite.backends.sqlite.backend import SQLiteBackend

    folder = str(tmp_path / "q")
    ours, theirs = SQLiteBackend(folder, 1), SQLiteBackend(folder, 1)
    reported = threading.Event()
    try:
        ours.watch(reported.set)
        watcher = ours._watcher
        watcher.mute()  # as during a write of ours
        theirs.shards[0].enqueue([_new_task()])
        watcher.unmute()
        assert reported.wait(10)
    finally:
        ours.close()
        theirs.close()


def test_shard_files_adopted_from_several_threads_at_once_keep_their_places(tmp_path):
    """The change watcher, the housekeeper and idle workers all adopt new shard files: each
    file must be opened once, at the position of its index (tasks name their shard by it)."""
    from message_queue_sqlite.backends.sqlite.backend import SQLiteBackend

    folder = str(tmp_path / "q")
    SQLiteBackend(folder, 6).close()
    backend = SQLiteBackend(folder, 1)
    start = threading.Barrier(4)

    def adopt() -> None:
        start.wait()
        backend.adopt_new_shards()

    threads = [threading.Thread(target=adopt) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [shard.index for shard in backend.shards] == list(range(6))
    finally:
        backend.close()


def test_the_last_look_of_a_burst_waits_for_a_write_lock_held_without_looking(tmp_path):
    """A checkpoint holds the writer lock without looking for other processes' commits when
    it ends: the change watcher's look once the writes pause must wait for the lock, not
    give up (a commit made meanwhile would go unreported)."""
    from message_queue_sqlite.backends.sqlite.backend import SQLiteBackend

    folder = str(tmp_path / "q")
    ours, theirs = SQLiteBackend(folder, 1), SQLiteBackend(folder, 1)
    shard = ours.shards[0]
    shard.watch_foreign_commits(lambda: None)

    class WatchedLock:
        def __init__(self, real):
            self.real, self.tried = real, threading.Event()

        def acquire(self, blocking=True, timeout=-1):
            self.tried.set()
            return self.real.acquire(blocking, timeout)

        def release(self):
            self.real.release()

        def locked(self):
            return self.real.locked()

        __enter__ = acquire

        def __exit__(self, *exc):
            self.real.release()

    lock = shard._lock = WatchedLock(shard._lock)
    seen = []
    try:
        lock.real.acquire()  # held as a checkpoint holds it
        theirs.shards[0].enqueue([_new_task()])
        looker = threading.Thread(target=lambda: seen.append(shard.check_foreign_commit(wait_for_lock=True)))
        looker.start()
        assert lock.tried.wait(10)
        lock.real.release()
        looker.join(10)
        assert seen == [True]
    finally:
        ours.close()
        theirs.close()


def test_the_retention_sweep_stops_where_recent_tasks_begin(tmp_path):
    """No index on end times is kept per task: the purge walks row ids in windows and stops
    at the first window created after the cut-off, so a long queue of recent tasks costs one
    window, not a read of the whole table. An old task that has not ended stays."""
    from message_queue_sqlite.backends.base import Completion, NewTask
    from message_queue_sqlite.backends.sqlite.backend import SQLiteBackend
    from message_queue_sqlite.backends.sqlite.clock import Clock

    old, now = 1_000.0, 1_000_000.0
    backend = SQLiteBackend(str(tmp_path / "q"), 1, clock=Clock(wall=lambda: now))  # the cut-off's clock
    shard = backend.shards[0]

    def tasks(count: int, created: float) -> list[NewTask]:
        return [NewTask("t", "{}", 0, "s", False, None, 0, None, 0.0, created) for _ in range(count)]

    try:
        [stuck] = shard.enqueue(tasks(1, old))  # old, still running (a long task, say)
        shard.enqueue(tasks(999, old))
        _, claims = shard.complete_and_claim([], "w", 1000, 30.0)
        claims = [c for c in claims if c.row_id != stuck]
        shard.complete_and_claim([Completion(c.row_id, c.attempt, 3, "1", None, old, old) for c in claims],
                                 "w", 0, 0.0)
        shard.enqueue(tasks(4000, now))
        writes = []
        real_write = shard._write
        shard._write = lambda what: writes.append(what) or real_write(what)
        calls = 1
        while shard.purge_ended(3600, 500):
            calls += 1
        assert calls == 3  # two windows of old rows, then the first window of recent ones
        assert writes == ["purge", "purge"]  # the window of recent rows took no write lock
        assert shard.count_waiting() == 4000
        assert shard.get_tasks([stuck])[0].status == TaskStatus.RUNNING
        assert shard.purge_ended(3600, 500) is True  # the next sweep starts over: the stuck
        assert shard.purge_ended(3600, 500) is False  # one's window, then recent rows
    finally:
        backend.close()


def test_a_plain_send_stores_the_same_row_as_the_full_statement_would(tmp_path):
    """Sends without cached arguments, retries or delay use a shorter INSERT (fewer values to
    bind): every column must come out as the full INSERT writes it."""
    import time

    from message_queue_sqlite.backends.base import NewTask
    from message_queue_sqlite.backends.sqlite.backend import SQLiteBackend

    backend = SQLiteBackend(str(tmp_path / "q"), 1)
    try:
        shard = backend.shards[0]
        task = NewTask("t", '{"a":1}', 3, "sender", True, None, 0, None, 0.0, time.time())
        [plain] = shard.enqueue([task])
        conn = shard._connection()
        conn.execute(Q["enqueue"], (task.task_name, task.args, task.priority, task.sender, 1, None, 0,
                                    None, 0.0, task.created_at, task.queue, task.timeout, task.headers))
        full = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        rows = [conn.execute("SELECT * FROM mqs_tasks WHERE id = ?", (row_id,)).fetchone()[1:]
                for row_id in (plain, full)]
        assert rows[0] == rows[1]
        assert shard.enqueue([task, task]) == [full + 1, full + 2]  # batches too
    finally:
        backend.close()


def test_a_long_own_write_does_not_spin_the_watchers_timer(tmp_path):
    """While an own write stays muted past the trailing delay, the look after own writes is
    re-armed a full delay later each time, not at once (that spun a core)."""
    import re

    from message_queue_sqlite.backends.sqlite.watch import TRAILING_NOTIFY_MS, ChangeWatcher

    looks: list[bool] = []
    watcher = ChangeWatcher(str(tmp_path), [], lambda names, trailing: looks.append(trailing),
                            re.compile(rb"(x)"))
    try:
        watcher.mute()
        watcher.unmute()  # arms the look
        watcher.mute()  # a long write begins before it comes
        held = threading.Event()
        held.wait(0.1)
        during = len(looks)
        watcher.unmute()
        wait_until(lambda: looks and looks[-1] is True, what="the last look, once writes paused")
    finally:
        watcher.close()
    assert 1 <= during <= 0.1 / (TRAILING_NOTIFY_MS / 1000) + 2, during
    assert not any(looks[:during])  # looks during the write never wait for its lock


def test_when_muting_fails_midway_the_watcher_does_not_keep_looking(tmp_path):
    """If the folder watch cannot be changed (the folder was replaced), muting stops for good:
    the write that was muting must not stay counted, or the look after own writes would
    re-arm itself every few milliseconds forever."""
    import re

    from message_queue_sqlite.backends.sqlite.watch import ChangeWatcher

    looks: list[bool] = []
    watcher = ChangeWatcher(str(tmp_path), [], lambda names, trailing: looks.append(trailing),
                            re.compile(rb"(x)"))
    real = watcher._libc

    class Replaced:  # the folder's watch now answers with another descriptor
        def __getattr__(self, name):
            return getattr(real, name)

        def inotify_add_watch(self, fd, path, mask):
            return real.inotify_add_watch(fd, path, mask) + 1

    try:
        watcher.mute()
        watcher.unmute()  # arms the look after own writes
        watcher._libc = Replaced()
        watcher.mute()  # fails: muting is off from here on
        watcher._libc = real
        watcher.unmute()
        wait_until(lambda: looks and looks[-1] is True, what="the last look")
        settled = len(looks)
        threading.Event().wait(0.05)
        assert len(looks) == settled
    finally:
        watcher.close()
