"""Leases decided by the backend's clock, and a fencing token that only grows.

Every time that decides a lease (its expiry at claim and renewal, recovery's comparison, a
node's liveness) is the backend's: the PostgreSQL server's, or on SQLite the host's boot
clock, so no queue object's clock, wrong or stepped, can take a live lease or shorten one.
A lease's attempt number is its fencing token: every claim adds one and nothing takes one
away, so a completion of an earlier holder never matches a later lease; retries are counted
apart from it.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time

import pytest
from conftest import FakeClock, use_clock, wait_until

from message_queue_sqlite import MessageQueue, TaskFailedError, TaskStatus
from message_queue_sqlite.backends.base import Completion


def _blocking_task(mq: MessageQueue, runs: list[int]):
    entered, release = threading.Event(), threading.Event()

    @mq.task
    def hold():
        runs.append(1)
        entered.set()
        release.wait(30)
        return "done"

    return hold, entered, release


# -- Bug A: leases follow the backend's clock, not any client's -----------------------------
def test_a_queue_whose_clock_runs_ahead_does_not_take_a_live_lease(make_queue):
    """A second queue object (another process, another host) whose clock is 40 s ahead runs
    housekeeping while the first runs a task: the lease is not its to judge."""
    worker = make_queue(workers=2, visibility_timeout=10)
    ahead = make_queue(visibility_timeout=10, clock=lambda: time.time() + 40)
    runs: list[int] = []
    hold, entered, release = _blocking_task(worker, runs)
    handle = worker.send(hold)
    worker.start()
    assert entered.wait(10)
    for _ in range(2):
        ahead.housekeeping()
        assert handle.status == TaskStatus.RUNNING
    release.set()
    assert handle.result(timeout=10) == "done"
    assert len(runs) == 1
    assert worker.engine.find(handle.task_id).attempts == 1


def test_a_wall_clock_step_does_not_expire_a_running_lease(tmp_path, monkeypatch):
    """SQLite, one host: the wall clock steps 60 s forward (NTP, an operator) while a task runs;
    every process on the host sees the step. Leases are on the host's boot clock: none expires."""
    folder = str(tmp_path / "q")
    wall = lambda: time.time()  # noqa: E731 - the process's wall clock, read at each call
    worker = MessageQueue(folder, workers=2, visibility_timeout=10, clock=wall)
    other = MessageQueue(folder, visibility_timeout=10, clock=wall)
    try:
        runs: list[int] = []
        hold, entered, release = _blocking_task(worker, runs)
        handle = worker.send(hold)
        worker.start()
        assert entered.wait(10)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 60)
        other.housekeeping()  # another process's recovery
        worker.housekeeping()
        assert handle.status == TaskStatus.RUNNING
        release.set()
        assert handle.result(timeout=10) == "done"
        assert len(runs) == 1
    finally:
        other.close()
        worker.close()


def _frames_of(thread: threading.Thread) -> set[str]:
    frame = sys._current_frames().get(thread.ident or -1)
    names = set()
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    return names


def test_a_renewal_that_waited_for_the_write_lock_still_grants_a_full_lease(make_queue, backend_time,
                                                                            queue_dir, broker_url):
    """The renewal's expiry is computed once the write lock is taken, not before: a renewal
    that queued behind another writer (SQLite: another process's write transaction; PostgreSQL:
    a row lock) still leaves a full visibility timeout."""
    t = backend_time
    lease = 20 * t.unit
    mq = t.queue(make_queue, workers=1, visibility_timeout=lease)
    runs: list[int] = []
    hold, entered, release = _blocking_task(mq, runs)
    handle = mq.send(hold)
    mq.start()
    assert entered.wait(10)
    mq.engine.housekeeper.close()  # only the renewal below runs
    shard = mq.engine.shards[0]
    row_id = mq.engine.shard_of(handle.task_id)[1]
    if broker_url is None:  # another process holds the file's write lock
        other = sqlite3.connect(shard.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
    else:  # another session holds the task's row lock
        import psycopg

        from message_queue_sqlite.backends.postgres import Target

        target = Target(broker_url)
        other = psycopg.connect(target.conninfo, autocommit=True)
        other.execute("BEGIN")
        other.execute(target.sql("SELECT 1 FROM {schema}.mqs_tasks WHERE id = %s FOR UPDATE"), (row_id,))
        watcher = psycopg.connect(target.conninfo, autocommit=True)  # its own snapshot of the stats
    renewal = threading.Thread(target=mq.housekeeping)
    try:
        renewal.start()
        if broker_url is None:
            wait_until(lambda: {"register_node", "renew_leases"} & _frames_of(renewal),
                       what="the renewal round to wait for the write lock")
        else:
            session = shard.session
            wait_until(lambda: watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                               (session,)).fetchone()[0] == "Lock",
                       what="the renewal to wait for the row lock")
            watcher.close()
        t.advance(lease / 2)
    finally:
        other.execute("COMMIT")
        other.close()
    renewal.join(30)
    assert not renewal.is_alive()
    record = mq.engine.find(handle.task_id)
    now = t.now() if broker_url is None else _server_time(broker_url)
    assert record.lease_expires == pytest.approx(now + lease, abs=t.tolerance)
    release.set()
    assert handle.result(timeout=10) == "done"


def _server_time(url: str) -> float:
    import psycopg

    from message_queue_sqlite.backends.postgres import Target

    with psycopg.connect(Target(url).conninfo, autocommit=True) as conn:
        return conn.execute("SELECT date_part('epoch', clock_timestamp())").fetchone()[0]


def test_a_lease_of_a_previous_boot_is_recovered_at_once_by_the_next_opener(tmp_path, caplog):
    """SQLite leases are on the boot clock, which restarts at a reboot: the file records the boot,
    and the first opener in a new boot expires every lease and liveness row of the previous
    one (their processes all died with it). An opener of the same boot changes nothing."""
    folder = str(tmp_path / "q")
    with MessageQueue(folder) as first:
        handle = first.send("job", {})
        shard = first.engine.shards[0]
        _, [claim] = shard.complete_and_claim([], "worker-of-last-boot", 1, 3600.0)
        shard.register_node("worker-of-last-boot", 1, "h", 3600.0)
        with MessageQueue(folder) as same_boot:  # an opener of this boot: nothing expires
            assert same_boot.engine.housekeeper.run_once().requeued == 0
            assert same_boot.engine.find(handle.task_id).status == TaskStatus.RUNNING
    conn = sqlite3.connect(f"{folder}/mq-shard-0.db", isolation_level=None)
    conn.execute("UPDATE mqs_meta SET value = 'a-boot-before-the-last-reboot' WHERE key = 'boot_id'")
    conn.close()
    with caplog.at_level(logging.WARNING), MessageQueue(folder) as after_reboot:
        record = after_reboot.engine.find(handle.task_id)
        assert record.status == TaskStatus.RUNNING and record.lease_expires == 0  # expired on opening
        assert "taken before this machine's last boot" in caplog.text
        conn = sqlite3.connect(f"{folder}/mq-shard-0.db", isolation_level=None)
        nodes = conn.execute("SELECT expires_at FROM mqs_nodes WHERE node_id = 'worker-of-last-boot'")
        assert nodes.fetchall() == [(0,)]  # its liveness expired too
        conn.close()
        assert after_reboot.engine.housekeeper.run_once().requeued == 1
        after_reboot.registry.register(lambda: "ran again", name="job")
        after_reboot.start(1)
        assert after_reboot.get(handle.task_id).result(timeout=10) == "ran again"
        assert after_reboot.engine.find(handle.task_id).attempts == claim.attempt + 1


# -- Bug B: the fencing token only grows; retries are counted apart --------------------------
def test_a_give_back_then_reclaim_is_a_new_attempt_and_fences_out_the_old_one(make_queue):
    mq = make_queue()
    handle = mq.send("job", {})
    shard = mq.engine.shards[0]
    _, [first] = shard.complete_and_claim([], "w", 1, 30.0)
    assert shard.release([first], "w") == 1  # a graceful give-back, before it started
    _, [second] = shard.complete_and_claim([], "w", 1, 30.0)  # the same owner takes it again
    assert second.row_id == first.row_id and second.attempt == first.attempt + 1
    now = time.time()
    stale = Completion(first.row_id, first.attempt, TaskStatus.FINISHED, '"stale"', None, now, now)
    assert shard.complete_and_claim([stale], "w", 0, 30.0)[0] == [first.row_id]
    fresh = Completion(second.row_id, second.attempt, TaskStatus.FINISHED, '"fresh"', None, now, now)
    assert shard.complete_and_claim([fresh], "w", 0, 30.0)[0] == []
    assert handle.result(timeout=5) == "fresh"


def test_a_release_by_another_owner_is_a_no_op(make_queue):
    mq = make_queue()
    handle = mq.send("job", {})
    shard = mq.engine.shards[0]
    _, [claim] = shard.complete_and_claim([], "w", 1, 30.0)
    assert shard.release([claim], "intruder") == 0
    record = mq.engine.find(handle.task_id)
    assert (record.status, record.lease_owner, record.attempts) == (TaskStatus.RUNNING, "w", 1)


def _always_failing(mq: MessageQueue, retries: int, runs: list[int]):
    @mq.task(retries=retries, retry_backoff=0)
    def broken():
        runs.append(1)
        raise ValueError(f"run {len(runs)}")

    return broken


def test_requeue_failed_keeps_the_attempt_count_and_gives_a_fresh_retry_budget(make_queue):
    mq = make_queue(workers=1)
    runs: list[int] = []
    handle = mq.send(_always_failing(mq, 1, runs))
    mq.start()
    with pytest.raises(TaskFailedError, match="run 2"):
        handle.result(timeout=10)
    assert mq.engine.find(handle.task_id).attempts == 2
    mq.stop()
    assert mq.retry_failed(task_id=handle.task_id) == 1
    record = mq.engine.find(handle.task_id)
    assert (record.status, record.attempts) == (TaskStatus.NOT_STARTED, 2)  # the fencing token is kept
    mq.start()
    wait_until(lambda: len(runs) == 4 and mq.engine.find(handle.task_id).status == TaskStatus.FAILED,
               what="two more runs (a fresh budget of one retry), then FAILED")
    record = mq.engine.find(handle.task_id)
    assert record.attempts == 4 and record.result == "ValueError: run 4"


def test_a_task_given_back_many_times_still_gets_its_full_retries(make_queue):
    """Graceful give-backs (a stop while the task was prefetched, or after the drain timeout)
    use no retry and count no crash: the task still gets 1 + retries runs."""
    mq = make_queue(workers=1, crash_limit=2)
    runs: list[int] = []
    handle = mq.send(_always_failing(mq, 2, runs))
    shard = mq.engine.shards[0]
    for _ in range(3):
        _, [claim] = shard.complete_and_claim([], mq.engine.node, 1, 30.0)
        assert shard.release([claim], mq.engine.node) == 1
    mq.start()
    with pytest.raises(TaskFailedError, match="run 3"):
        handle.result(timeout=10)
    assert len(runs) == 3
    assert mq.engine.find(handle.task_id).attempts == 6


def test_renewal_extends_exactly_the_leases_still_held(make_queue):
    """Renewal names its leases: one the owner no longer holds (recovered and taken by another
    attempt, or ended) is reported, not extended, so a lost claim is never kept alive."""
    mq = make_queue()
    handles = [mq.send("job", {"i": i}) for i in range(3)]
    shard = mq.engine.shards[0]
    _, claims = shard.complete_and_claim([], "w", 3, 30.0)
    kept, ended, given_back = claims
    now = time.time()
    shard.complete_and_claim([Completion(ended.row_id, ended.attempt, 3, "1", None, now, now)], "w", 0, 30.0)
    shard.release([given_back], "w")
    _, [retaken] = shard.complete_and_claim([], "w", 1, 30.0)  # the same owner, a newer attempt
    assert retaken.row_id == given_back.row_id
    leases = [(c.row_id, c.attempt) for c in (kept, ended, given_back)]
    assert shard.renew_leases("w", leases, 60.0) == [ended.row_id, given_back.row_id]
    assert shard.renew_leases("someone-else", [(kept.row_id, kept.attempt)], 60.0) == [kept.row_id]
    assert shard.renew_leases("w", [], 60.0) == []
    assert len(handles) == 3


def test_the_housekeeper_renews_the_leases_its_workers_hold(tmp_path):
    """SQLite, a fake lease clock: the worker's own lease outlives many visibility timeouts,
    a lease its node holds without its workers knowing (a claim it lost track of) expires."""
    clock = FakeClock()
    with use_clock(MessageQueue(str(tmp_path / "q"), workers=1, visibility_timeout=10, clock=clock),
                   clock) as mq:
        runs: list[int] = []
        hold, entered, release = _blocking_task(mq, runs)
        mq.registry.register(lambda: "later", name="job")
        running = mq.send(hold)
        mq.start()
        assert entered.wait(10)  # its one worker thread is busy: it claims nothing more now
        forgotten = mq.send("job", {})
        shard = mq.engine.shards[0]
        _, [lost] = shard.complete_and_claim([], mq.engine.node, 1, 10)  # not in the pool's ledger
        assert lost.task_id == forgotten.task_id
        requeued = 0
        for _ in range(3):  # 24 s: well past both leases' first expiry
            clock.advance(8)
            requeued += mq.engine.housekeeper.run_once().requeued
        assert requeued == 1
        assert forgotten.status == TaskStatus.NOT_STARTED
        assert running.status == TaskStatus.RUNNING
        release.set()
        assert running.result(timeout=10) == "done"


def test_a_file_of_the_previous_schema_is_upgraded_in_place(tmp_path):
    """Migration 0003 on a file written by the previous version: retries used are derived from
    the claims that neither crashed nor are running now, and the leases, on the wall clock
    there, are expired once (no boot is recorded yet), like a reboot's."""
    from message_queue_sqlite.backends.sqlite.connection import APPLICATION_ID, MIGRATIONS, _statements

    folder = tmp_path / "q"
    folder.mkdir()
    conn = sqlite3.connect(folder / "mq-shard-0.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for number, _name, sql in MIGRATIONS:
        if number <= 2:
            for statement in _statements(sql):
                conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 2")
    now = time.time()
    insert = ("INSERT INTO mqs_tasks (task_name, status, sender, attempts, crashes, max_retries, run_after, "
              "lease_owner, lease_expires, created_at) VALUES (?, ?, 's', ?, ?, 3, ?, ?, ?, ?)")
    conn.execute(insert, ("running", 2, 3, 1, 0, "old-worker", now + 3600, now))  # its 3rd claim, 1 crash
    conn.execute(insert, ("backing_off", 6, 2, 0, now + 60, None, None, now))  # 2 runs failed
    conn.close()
    with MessageQueue(str(folder)) as mq:
        rows = {r.task_name: r for r in mq.engine.shards[0].list_tasks(None, None, 100)}
        assert rows["running"].lease_expires == 0  # expired: taken on the wall clock
        assert mq.engine.housekeeper.run_once().requeued == 1
    conn = sqlite3.connect(folder / "mq-shard-0.db")
    try:
        retries = dict(conn.execute("SELECT task_name, retries FROM mqs_tasks"))
        assert retries == {"running": 1, "backing_off": 2}
        assert conn.execute("SELECT count(*) FROM mqs_meta WHERE key = 'boot_id'").fetchone()[0] == 1
    finally:
        conn.close()
