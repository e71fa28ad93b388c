"""Leases, recovery, fencing, retries, graceful stop, bad environments (issue: reliability)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import FakeClock, subprocess_env, use_clock, wait_until

from message_queue_sqlite import MessageQueue, QueueStorageError, TaskFailedError, TaskStatus
from message_queue_sqlite.backends.base import Completion


def test_a_long_task_keeps_its_lease_while_its_worker_lives(make_queue, backend_time):
    t = backend_time
    worker = t.queue(make_queue, visibility_timeout=10 * t.unit)
    rescuer = t.queue(make_queue, visibility_timeout=10 * t.unit)
    entered, release = threading.Event(), threading.Event()

    @worker.task
    def long_job():
        entered.set()
        release.wait(20)
        return "mine"

    handle = worker.send(long_job)
    worker.start(1)
    assert entered.wait(10)
    for _ in range(3):  # 24 units: well past the first lease's expiry
        t.advance(8 * t.unit)
        worker.housekeeping()  # the worker's renewal
        rescuer.housekeeping()  # another process's recovery finds nothing expired
        assert handle.status == TaskStatus.RUNNING
    release.set()
    assert handle.result(timeout=10) == "mine"
    record = worker.engine.find(handle.task_id)
    assert record.attempts == 1


def test_an_expired_lease_is_recovered_and_the_stale_completion_rejected(make_queue, backend_time):
    t = backend_time
    lease = 5 * t.unit
    mq = t.queue(make_queue, visibility_timeout=lease)
    handle = mq.send("job", {})
    shard = mq.engine.shards[0]
    _, [first] = shard.complete_and_claim([], "worker-a", 1, lease)
    t.advance(6 * t.unit)  # worker-a died: its lease expires
    report = shard.recover_expired(crash_limit=5)
    assert report.requeued == 1
    _, [second] = shard.complete_and_claim([], "worker-b", 1, lease)
    assert (second.row_id, second.attempt) == (first.row_id, 2)
    done_b = Completion(second.row_id, second.attempt, TaskStatus.FINISHED, "\"from b\"", None,
                        t.now(), t.now())
    assert shard.complete_and_claim([done_b], "worker-b", 0, lease)[0] == []
    late_a = Completion(first.row_id, first.attempt, TaskStatus.FINISHED, '"from a"', None, t.now(), t.now())
    rejected, _ = shard.complete_and_claim([late_a], "worker-a", 0, lease)
    assert rejected == [first.row_id]
    assert handle.result(timeout=1) == "from b"
    record = mq.engine.find(handle.task_id)
    assert (record.attempts, record.status) == (2, TaskStatus.FINISHED)


def test_a_batch_of_completions_with_a_stale_one_records_the_rest(make_queue, backend_time):
    """Finished and failed completions go through different statements; a lease lost in the
    middle of the batch is rejected alone, whichever statement carries it."""
    t = backend_time
    mq = t.queue(make_queue, visibility_timeout=5 * t.unit)
    handles = [mq.send("job", {"i": i}) for i in range(4)]
    shard = mq.engine.shards[0]
    _, [stale] = shard.complete_and_claim([], "worker-a", 1, 5 * t.unit)
    _, again = shard.complete_and_claim([], "worker-a", 3, 100 * t.unit)
    claims = [stale, *again]
    t.advance(6 * t.unit)  # only the first lease has expired
    assert shard.recover_expired(crash_limit=5).requeued == 1
    _, [taken] = shard.complete_and_claim([], "worker-b", 1, 5 * t.unit)
    assert taken.row_id == stale.row_id
    now = t.now()
    batch = [Completion(again[0].row_id, again[0].attempt, TaskStatus.FINISHED, '"ok"', None, now, now),
             Completion(stale.row_id, stale.attempt, TaskStatus.FINISHED, '"late"', None, now, now),
             Completion(again[1].row_id, again[1].attempt, TaskStatus.FAILED, "ValueError: x", "tb",
                        now, now),
             Completion(again[2].row_id, again[2].attempt, TaskStatus.FINISHED, '"ok"', None, now, now)]
    rejected, _ = shard.complete_and_claim(batch, "worker-a", 0, 5 * t.unit)
    assert rejected == [stale.row_id]
    statuses = {r.row_id: r.status for r in shard.get_tasks([c.row_id for c in claims])}
    assert statuses[stale.row_id] == TaskStatus.RUNNING  # still worker-b's
    assert sorted(statuses.values()) == sorted([TaskStatus.FINISHED, TaskStatus.FINISHED,
                                                TaskStatus.FAILED, TaskStatus.RUNNING])
    assert len(handles) == 4


def test_crash_limit_fails_a_task_that_kills_its_workers(make_queue, backend_time):
    t = backend_time
    mq = t.queue(make_queue, visibility_timeout=1 * t.unit, crash_limit=2)
    handle = mq.send("poison", {})
    shard = mq.engine.shards[0]
    for _ in range(2):
        assert shard.complete_and_claim([], "doomed", 1, 1 * t.unit)[1]
        t.advance(2 * t.unit)
        shard.recover_expired(crash_limit=2)
    with pytest.raises(TaskFailedError, match="died 2 times"):
        handle.result(timeout=1)


def test_retries_back_off_exponentially_on_the_clock(make_queue, backend_time):
    t = backend_time
    mq = t.queue(make_queue, workers=1)
    calls = []

    @mq.task(retries=3, retry_backoff=10 * t.unit, retry_jitter=False)
    def flaky():
        calls.append(t.now())
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "third time"

    handle = mq.send(flaky)
    mq.start()
    for expected_delay in (10 * t.unit, 20 * t.unit):  # backoff * 2^(retry-1)
        wait_until(lambda: handle.status == TaskStatus.SCHEDULED, what="a scheduled retry")
        record = mq.engine.find(handle.task_id)
        # due that long after the failed try ended: between its start and now (on a loaded
        # machine the try's end may come well after its start, by the server's clock)
        earliest, latest = calls[-1] + expected_delay, t.now() + expected_delay
        assert earliest - t.tolerance <= record.run_after <= latest + t.tolerance
        assert "ConnectionError" in record.result
        attempts = len(calls)
        early = expected_delay - 0.5 if t.exact else expected_delay / 2  # real time: a margin
        t.advance(early)
        mq.engine.bell.ring()
        assert handle.status == TaskStatus.SCHEDULED and len(calls) == attempts  # not due yet
        t.advance(expected_delay - early)
        mq.engine.bell.ring()
        wait_until(lambda n=attempts: len(calls) > n, what="the retry to run")
    assert handle.result(timeout=10) == "third time"
    assert mq.engine.find(handle.task_id).attempts == 3


def test_jitter_stays_within_half_and_full_delay():
    from message_queue_sqlite import RetryPolicy

    policy = RetryPolicy(max_retries=5, backoff=1.0, backoff_max=6.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 6.0), (5, 6.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert full / 2 <= min(delays) and max(delays) <= full


def test_exhausted_and_non_matching_errors_fail_and_can_be_requeued(make_queue):
    mq = make_queue(workers=1)
    runs = {"retry_on": 0, "other": 0}

    @mq.task(retries=2, retry_backoff=0, retry_on=(ValueError,))
    def picky(kind):
        runs[kind] += 1
        raise ValueError("v") if kind == "retry_on" else TypeError("t")

    exhausted = mq.send(picky, {"kind": "retry_on"})
    other = mq.send(picky, {"kind": "other"})
    mq.start()
    with pytest.raises(TaskFailedError) as err:
        exhausted.result(timeout=10)
    assert err.value.message == "ValueError: v" and "raise ValueError" in err.value.traceback
    with pytest.raises(TaskFailedError, match="TypeError"):
        other.result(timeout=10)
    assert runs == {"retry_on": 3, "other": 1}
    dead = {r.task_id for r in mq.tasks(status=TaskStatus.FAILED)}
    assert dead == {exhausted.task_id, other.task_id}
    assert mq.retry_failed(task_id=other.task_id) == 1
    wait_until(lambda: runs["other"] == 2, what="the requeued task to run")


def test_per_send_retries_override_the_task(make_queue):
    mq = make_queue(workers=1)
    runs = []

    @mq.task(retries=0)
    def once():
        runs.append(1)
        raise OSError("x")

    from message_queue_sqlite import RetryPolicy

    handle = mq.send(once, retry=RetryPolicy(max_retries=2, backoff=0))
    mq.start()
    with pytest.raises(TaskFailedError):
        handle.result(timeout=10)
    assert len(runs) == 3


def test_stop_gives_unfinished_leases_back_at_once(make_queue):
    mq = make_queue(workers=1, visibility_timeout=300, drain_timeout=0.2)
    entered = threading.Event()
    never = threading.Event()

    @mq.task
    def stuck():
        entered.set()
        never.wait(30)

    handle = mq.send(stuck)
    queued = [mq.send(stuck) for _ in range(3)]
    mq.start()
    assert entered.wait(10)
    mq.stop()  # drain times out after 0.2 s, far below the 300 s visibility timeout
    record = mq.engine.find(handle.task_id)
    assert record.status == TaskStatus.NOT_STARTED and record.lease_owner is None
    for h in queued:  # prefetched or not, never started: back in the queue
        record = mq.engine.find(h.task_id)  # (a prefetch stays counted: the fencing token only grows)
        assert record.status == TaskStatus.NOT_STARTED and record.lease_owner is None
        assert record.attempts <= 1
    never.set()


def test_a_late_completion_after_stop_does_not_overwrite(make_queue, caplog):
    mq = make_queue(workers=1, drain_timeout=0.05)
    entered, release = threading.Event(), threading.Event()

    @mq.task
    def slow():
        entered.set()
        release.wait(30)
        return "late"

    handle = mq.send(slow)
    mq.start()
    assert entered.wait(10)
    mq.stop()
    other = make_queue()
    other.registry.register(lambda: "fresh", name="slow")
    other.start()
    assert other.get(handle.task_id).result(timeout=10) == "fresh"
    release.set()  # the first attempt ends now; its completion is fenced out
    wait_until(lambda: "completion(s) discarded" in caplog.text, what="the late completion")
    assert other.get(handle.task_id).result(timeout=1) == "fresh"
    assert other.engine.find(handle.task_id).attempts == 2


WORKER_TASKS = """
import os, pathlib, time
from message_queue_sqlite import task_function

@task_function()
def hang(marker):
    pathlib.Path(marker).write_text(str(os.getpid()))
    while True:
        time.sleep(1)

@task_function()
def quick(n):
    return n
"""


def _worker(tmp_path: Path, folder: str, *extra: str) -> subprocess.Popen:
    pkg = tmp_path / "relapp"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(WORKER_TASKS)
    return subprocess.Popen([sys.executable, "-m", "message_queue_sqlite", "worker", "relapp",
                             "--path", folder, *extra], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_task_is_recovered(tmp_path):
    folder = str(tmp_path / "q")
    marker = tmp_path / "ran"
    with MessageQueue(folder, visibility_timeout=0.5) as mq:
        handle = mq.send("hang", {"marker": str(marker)})
        worker = _worker(tmp_path, folder, "--visibility-timeout", "0.5")
        try:
            wait_until(marker.exists, timeout=20, what="the task to start")
            assert handle.status == TaskStatus.RUNNING
            worker.kill()  # SIGKILL: no chance to give the lease back
            worker.wait(10)
        finally:
            worker.kill()
        mq.registry.register(lambda marker: "recovered", name="hang")
        mq.start(1)  # this object's housekeeper requeues the expired lease, its worker runs it
        assert handle.result(timeout=20) == "recovered"
        record = mq.engine.find(handle.task_id)
        assert record.attempts == 2


def test_sigterm_drains_then_returns_leases_and_exits_3(tmp_path):
    """A task still running after the drain timeout is given back, and the exit code says so."""
    folder = str(tmp_path / "q")
    marker = tmp_path / "ran"
    with MessageQueue(folder) as mq:
        hung = mq.send("hang", {"marker": str(marker)})
        quick = [mq.send("quick", {"n": i}) for i in range(50)]
        worker = _worker(tmp_path, folder, "--workers", "2", "--drain-timeout", "0.3")
        wait_until(marker.exists, timeout=20, what="the hanging task to start")
        assert [h.result(timeout=20) for h in quick] == list(range(50))
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 3, err
        assert "1 task(s) given back unfinished" in err
        record = mq.engine.find(hung.task_id)
        assert record.status == TaskStatus.NOT_STARTED  # given back, not left to expire
        assert mq.stats()["totals"]["RUNNING"] == 0


def test_second_signal_stops_at_once(tmp_path):
    folder = str(tmp_path / "q")
    marker = tmp_path / "ran"
    with MessageQueue(folder) as mq:
        hung = mq.send("hang", {"marker": str(marker)})
        worker = _worker(tmp_path, folder, "--drain-timeout", "600")
        wait_until(marker.exists, timeout=20, what="the hanging task to start")
        worker.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping gracefully" in _peek_stderr(worker), timeout=20,
                   what="the first signal to register")
        worker.send_signal(signal.SIGINT)
        worker.communicate(timeout=30)  # well before the 600 s drain
        assert mq.engine.find(hung.task_id).status == TaskStatus.NOT_STARTED


def _peek_stderr(proc: subprocess.Popen) -> str:
    import fcntl

    fd = proc.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = os.read(fd, 65536).decode()
    except BlockingIOError:
        chunk = ""
    proc._peeked = getattr(proc, "_peeked", "") + chunk  # type: ignore[attr-defined]
    return proc._peeked  # type: ignore[attr-defined]


def test_disk_full_during_send_raises_and_keeps_the_file_valid(tmp_path):
    folder = tmp_path / "q"
    with MessageQueue(str(folder)) as mq:
        mq.send("t", {"n": 0})
        conn = mq.engine.shards[0]._connection()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # the "disk" is now full
        big = {"blob": "x" * 200_000}
        with pytest.raises(QueueStorageError, match="full.*free disk space"):
            mq.send("t", big)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert mq.stats()["totals"]["NOT_STARTED"] == 1  # nothing half-written
        conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
        mq.send("t", big)
        assert mq.stats()["totals"]["NOT_STARTED"] == 2


def test_a_worker_backs_off_while_storage_fails_and_loses_nothing(tmp_path, caplog):
    folder = str(tmp_path / "q")
    with MessageQueue(folder, workers=1) as mq, MessageQueue(folder) as sender:
        @mq.task
        def work(n):
            return n

        mq.start()
        conn = mq.engine.shards[0]._connection()
        with mq.engine.shards[0]._lock:
            conn.execute("PRAGMA query_only = 1")  # the worker's storage turns read-only
        handles = [sender.send("work", {"n": i}) for i in range(20)]
        wait_until(lambda: "failed" in caplog.text, what="a failed write to be logged")
        with mq.engine.shards[0]._lock:
            conn.execute("PRAGMA query_only = 0")  # writable again: the worker resumes
        assert [h.result(timeout=20) for h in handles] == list(range(20))


def test_read_only_file_at_open_is_a_clear_error(tmp_path):
    folder = tmp_path / "q"
    MessageQueue(str(folder)).close()
    uri = folder / "mq-shard-0.db"
    conn = sqlite3.connect(uri)
    conn.execute("PRAGMA user_version = 0")  # force a migration on open
    conn.close()
    os.chmod(uri, 0o444)
    if os.geteuid() == 0:
        pytest.skip("root can write a read-only file; covered by the query_only simulation")
    with pytest.raises(QueueStorageError, match="read-only"):
        MessageQueue(str(folder))


def test_retention_purges_ended_tasks_in_batches(tmp_path):
    clock = FakeClock()
    with use_clock(MessageQueue(str(tmp_path / "q"), retention=60, clock=clock, workers=2), clock) as mq:
        @mq.task
        def noop():
            return None

        handles = [mq.send(noop) for _ in range(30)]
        with mq.running():
            for h in handles:
                h.result(timeout=10)
        young = mq.send(noop)
        mq.housekeeping()
        assert sum(mq.stats()["totals"].values()) == 31  # nothing old enough yet
        clock.advance(61)
        mq.engine.housekeeper._next_purge = 0
        mq.housekeeping()
        totals = mq.stats()["totals"]
        assert sum(totals.values()) == 1 and totals["NOT_STARTED"] == 1  # the queued one stays
        assert young.status == TaskStatus.NOT_STARTED


def test_wal_is_truncated_when_it_outgrows_its_bound(tmp_path, monkeypatch):
    from message_queue_sqlite.backends.sqlite import backend as sqlite_backend

    folder = tmp_path / "q"
    with MessageQueue(str(folder)) as mq:
        mq.send_many([("t", {"pad": "x" * 1000}) for _ in range(2000)])
        wal = folder / "mq-shard-0.db-wal"
        assert wal.stat().st_size > 1_000_000
        monkeypatch.setattr(sqlite_backend, "WAL_CHECKPOINT_BYTES", 100_000)
        mq.engine.shards[0].maintain()
        assert wal.stat().st_size == 0


def test_delayed_send_waits_for_its_time(make_queue, backend_time):
    t = backend_time
    mq = t.queue(make_queue, workers=1)

    @mq.task
    def later():
        return t.now()

    sent = t.now()
    handle = mq.send(later, delay=30 * t.unit)
    mq.start()
    assert handle.status == TaskStatus.SCHEDULED
    mq.engine.bell.ring()
    assert handle.status == TaskStatus.SCHEDULED
    t.advance(30 * t.unit)
    mq.engine.bell.ring()
    assert handle.result(timeout=10) >= sent + 30 * t.unit - t.tolerance


def test_a_retry_run_by_another_worker_still_reaches_the_senders_callback(make_queue, backend_time):
    """The first attempt ran in the sender's own workers; the retry is taken by another
    queue object (as another process would): the sender must look for its outcome in
    storage again, not wait for its own workers to hand it over."""
    t = backend_time
    sender = t.queue(make_queue, workers=1)
    other = t.queue(make_queue, workers=1)
    calls = []

    for mq in (sender, other):
        @mq.task(retries=1, retry_backoff=20 * t.unit, retry_jitter=False)
        def flaky():
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("first try")
            return "second try"

    got = []
    handle = sender.send("flaky", callback=got.append)
    sender.start()
    wait_until(lambda: handle.status == TaskStatus.SCHEDULED, what="the retry to be scheduled")
    sender.stop()
    other.start()
    t.advance(20 * t.unit)
    other.engine.bell.ring()
    wait_until(lambda: got, what="the sender's callback")
    assert got[0]["result"] == "second try" and got[0]["attempts"] == 2
    assert handle.result(timeout=10) == "second try"


def test_retention_purge_keeps_up_with_a_busy_queue(tmp_path):
    """More tasks end than one purge round removes: the housekeeper comes back sooner
    instead of waiting a full period, so the file stops growing (it once removed at most
    10,000 rows a round, one round per period)."""
    with MessageQueue(str(tmp_path / "q"), retention=0, workers=2) as mq:
        @mq.task
        def noop(i):
            return i

        mq.send_many([(noop, {"i": i}) for i in range(15_000)])
        with mq.running():
            wait_until(lambda: sum(mq.stats()["totals"].values()) <= 1, timeout=8,
                       what="the tasks to run and the housekeeper to purge them (its period: 10 s)")


def test_without_a_change_feed_work_and_outcomes_still_arrive_by_the_fallback_polls(make_queue):
    """A missed notification costs a fallback poll, never a task: with no change feed at all,
    an idle worker re-checks storage (every second) and a waiting sender polls for its
    outcome (every 0.1 s)."""
    worker, sender = make_queue(workers=1), make_queue()
    for mq in (worker, sender):
        mq.engine.backend.watch = lambda on_change: None  # no notifications, ever

    @worker.task
    def echo(i):
        return i

    worker.start()
    wait_until(lambda: worker.engine.bell._waiting, what="the worker to wait, idle")
    handles = [sender.send("echo", {"i": i}) for i in range(3)]
    assert [h.result(timeout=15) for h in handles] == [0, 1, 2]


def test_more_outcomes_from_elsewhere_than_one_poll_reads_all_reach_their_callbacks_at_once(
        make_queue, monkeypatch):
    """Another queue object (as another process would) ends more of a sender's tasks than one
    storage poll reads, then goes quiet: the sender reads on at once, past the rows it has
    just delivered (their CALLBACKED marks written first), instead of waiting for a change
    that never comes. It once delivered one poll's page per fallback poll (1,000 per 100 ms)."""
    from message_queue_sqlite.engine import dispatcher

    monkeypatch.setattr(dispatcher, "FETCH_LIMIT", 5)
    monkeypatch.setattr(dispatcher, "FALLBACK_POLL_S", 600.0)  # no rescue by the slow poll
    sender = make_queue(workers=1)
    other = make_queue(workers=1)
    for mq in (sender, other):
        @mq.task
        def double(n):
            return 2 * n

    got: list[int] = []
    for n in range(40):
        sender.send("double", {"n": n}, callback=lambda outcome: got.append(outcome["result"]))
    with other.running():
        wait_until(lambda: len(got) == 40, what=lambda: f"all 40 callbacks (got {len(got)})")
    assert sorted(got) == [2 * n for n in range(40)]


def test_closing_while_storage_does_not_answer_says_so_in_one_line(make_queue, caplog, monkeypatch):
    """A queue object closed during a partition cannot unregister its node: one warning that
    says what happens instead, not a traceback."""
    from message_queue_sqlite.core.errors import QueueStorageError

    mq = make_queue(workers=1)

    @mq.task
    def job():
        return 1

    with mq.running():
        assert mq.send(job).result(timeout=10) == 1

    def unreachable(node):
        raise QueueStorageError("unregister node on the queue failed: server closed the connection")

    monkeypatch.setattr(mq.engine.shards[0], "unregister_node", unreachable)
    with caplog.at_level(logging.WARNING, logger="message_queue_sqlite.engine.engine"):
        mq.close()
    said = [r for r in caplog.records if "could not unregister" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None
    assert "server closed the connection" in said[0].getMessage()
    assert "counts as gone once its liveness expires" in said[0].getMessage()
