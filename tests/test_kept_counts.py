"""The counts ``stats()`` reads are kept by the statements that move tasks, not scanned: after
every kind of move, on both backends, they equal a full scan of the table. And the admin
paths (counts, listings, requeue and removal by id) go through an index, never a table scan."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from conftest import POSTGRES_DSN, wait_until

from message_queue_sqlite import MessageQueue, TaskStatus
from message_queue_sqlite.backends.base import Completion


def t() -> None:
    pass


def a() -> None:
    pass


def b() -> None:
    pass


def scanned_counts(mq: MessageQueue) -> dict[tuple[int, int], int]:
    """The truth: every shard's table scanned (status, outcome) -> tasks."""
    total: dict[tuple[int, int], int] = {}
    for shard in mq.engine.shards:
        sql = "SELECT status, coalesce(outcome, 0), count(*) FROM {t} WHERE status <> 0 GROUP BY 1, 2"
        if hasattr(shard, "path"):
            with sqlite3.connect(shard.path) as conn:
                rows = conn.execute(sql.format(t="mqs_tasks")).fetchall()
        else:
            import psycopg

            assert POSTGRES_DSN
            with psycopg.connect(POSTGRES_DSN) as conn:
                rows = conn.execute(sql.format(t=shard.name)).fetchall()
        for status, outcome, n in rows:
            total[(status, outcome)] = total.get((status, outcome), 0) + n
    return total


def kept_counts(mq: MessageQueue) -> dict[tuple[int, int], int]:
    total: dict[tuple[int, int], int] = {}
    for shard in mq.engine.shards:
        for key, n in shard.count_tasks().items():
            total[key] = total.get(key, 0) + n
    return {key: n for key, n in total.items() if n}


def assert_counts_true(mq: MessageQueue, after: str) -> None:
    assert kept_counts(mq) == scanned_counts(mq), f"after {after}"


def completion(claim: Any, status: int, retry_in: float = 0.0) -> Completion:
    return Completion(row_id=claim.row_id, attempt=claim.attempt, status=status,
                      result='"x"' if status == 3 else "boom", traceback=None,
                      retry_in=retry_in, started_at=1.0, ended_at=2.0, handed_over=False)


def test_every_kind_of_move_keeps_the_counts_equal_to_a_scan(make_queue, backend_time):
    mq = backend_time.queue(make_queue)
    shard = mq.engine.shards[0]
    mq.task(t)

    shard.enqueue([_new(mq, "a"), _new(mq, "a"), _new(mq, "b")])
    mq.send("t", {})
    assert_counts_true(mq, "plain sends")
    mq.send("t", {}, delay=5 * backend_time.unit)
    mq.send_many([("t", {}), ("t", {})], delay=5 * backend_time.unit)
    assert_counts_true(mq, "delayed sends")

    _, claims = shard.complete_and_claim([], "w1", 3, 60.0)
    assert len(claims) == 3
    assert_counts_true(mq, "a claim")
    rejected, more = shard.complete_and_claim(
        [completion(claims[0], 3), completion(claims[1], 4), completion(claims[2], 6, retry_in=0.0)],
        "w1", 1, 60.0)
    assert rejected == [] and len(more) == 1
    assert_counts_true(mq, "finished, failed and retried completions with a claim")
    stale = completion(claims[0], 3)  # already applied: rejected, counted once
    assert shard.complete_and_claim([stale], "w1", 0, 60.0)[0] == [claims[0].row_id]
    assert_counts_true(mq, "a stale completion")
    assert shard.release(more, "w1") == 1
    assert_counts_true(mq, "a give-back")

    backend_time.advance(6 * backend_time.unit)  # the delayed tasks come due
    _, claims = shard.complete_and_claim([], "w2", 100, 60.0)
    assert len(claims) >= 4
    assert_counts_true(mq, "promoting due tasks")
    shard.complete_and_claim([completion(c, 4) for c in claims[:2]], "w2", 0, 60.0)
    shard.mark_callbacked([claims[0].row_id])
    assert_counts_true(mq, "a callback ran for a failure")
    done = [c.row_id for c in claims[:2]]
    assert mq.retry_failed(task_id=f"{shard.index}-{done[1]}") == 1
    assert_counts_true(mq, "requeue by id")
    assert mq.retry_failed() >= 1  # the callbacked failure and the first one
    assert_counts_true(mq, "requeue of all")

    _, claims = shard.complete_and_claim([], "w3", 100, 0.0)  # leases that expire at once
    backend_time.advance(1.0)
    report = shard.recover_expired(crash_limit=1)
    assert report.failed == len(claims) > 0
    assert_counts_true(mq, "crash recovery failing tasks")

    mq.send("t", {})
    mq.send("t", {}, delay=100.0)
    newest = mq.send("t", {}, delay=100.0)
    assert mq.purge(task_id=newest.task_id) == 1  # the newest row: kept as a tombstone
    assert_counts_true(mq, "removing the newest task")
    assert mq.purge(task_name="a") >= 0
    assert mq.purge() >= 2
    assert_counts_true(mq, "removing every waiting task")
    assert kept_counts(mq).get((1, 0), 0) == 0 and kept_counts(mq).get((6, 0), 0) == 0

    mq.engine.config.retention_seconds = 0.0
    backend_time.advance(1.0)
    mq.send("t", {})  # a newer row, so every ended one may go
    while shard.purge_ended(0.0, 1000):
        pass
    assert_counts_true(mq, "the retention purge")
    shard.maintain()  # PostgreSQL folds the appended deltas into the counts
    assert_counts_true(mq, "maintenance")
    assert sum(n for (status, _), n in kept_counts(mq).items() if status in (3, 4, 5)) == 0


def _new(mq: MessageQueue, name: str) -> Any:
    from message_queue_sqlite.backends.base import NewTask

    return NewTask(task_name=name, args="{}", priority=0, sender=mq.engine.node, notify=False,
                   cache_owner=None, max_retries=0, retry=None, delay=0.0, created_at=1.0)


def test_a_worker_and_callbacks_keep_the_counts_and_stats_split_outcomes(make_queue):
    def work(n: int) -> int:
        if n % 3 == 0:
            raise ValueError(f"no {n}")
        return n

    mq = make_queue(workers=2)
    mq.task(work)
    seen: list[Any] = []
    handles = [mq.send("work", {"n": n}, callback=seen.append) for n in range(30)]
    with mq.running():
        wait_until(lambda: len(seen) == 30, timeout=30, what="30 callbacks")
        wait_until(lambda: all(h.callback_ran for h in handles), timeout=30, what="callbacks recorded")
    assert_counts_true(mq, "a worker's run")
    outcomes = mq.stats()["outcomes"]
    assert outcomes == {"queued": 0, "scheduled": 0, "running": 0, "finished": 20, "failed": 10,
                        "cancelled": 0, "callback_ran": 30}
    assert mq.stats()["totals"]["CALLBACKED"] == 30
    assert len(mq.tasks(status=TaskStatus.FAILED, limit=100)) == 10


def test_counts_survive_reopening(make_queue, queue_dir):
    mq = make_queue()
    mq.task(t)
    mq.send_many([("t", {})] * 5)
    mq.send("t", {}, delay=60)
    mq.close()
    again = make_queue()
    assert again.stats()["outcomes"]["queued"] == 5
    assert again.stats()["outcomes"]["scheduled"] == 1


def test_migration_fills_the_counts_from_the_rows_there(tmp_path):
    """A folder written before the kept counts existed (schema 3) gets them from its rows,
    and every later migration applies on top (the file is built by migrations 1-3 alone)."""
    from message_queue_sqlite.backends.sqlite.connection import APPLICATION_ID, MIGRATIONS, _statements

    folder = tmp_path / "q"
    folder.mkdir()
    with sqlite3.connect(folder / "mq-shard-0.db", isolation_level=None) as conn:
        for number, _name, sql in MIGRATIONS:
            if number <= 3:
                for statement in _statements(sql):
                    conn.execute(statement)
        rows = [("t", "{}", 1, 0.0)] * 4 + [("t", "{}", 6, 2e9)]
        conn.executemany("INSERT INTO mqs_tasks (task_name, args, status, run_after, sender, created_at) "
                         "VALUES (?, ?, ?, ?, 'old', 1.0)", rows)
        conn.execute("UPDATE mqs_tasks SET status = 4, outcome = 4 WHERE id = 1")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 3")
    conn.close()
    with MessageQueue(str(folder)) as mq:
        assert mq.stats()["outcomes"] == {"queued": 3, "scheduled": 1, "running": 0, "finished": 0,
                                          "failed": 1, "cancelled": 0, "callback_ran": 0}
        assert_counts_true(mq, "the migration")
        assert mq.queue_depths() == {"default": {"queued": 3, "scheduled": 1, "running": 0}}


@pytest.mark.parametrize("waiting", ["ready", "scheduled"])
def test_purge_removes_waiting_tasks_by_id_name_or_all_and_never_running_ones(make_queue, waiting):
    mq = make_queue()
    mq.task(a)
    mq.task(b)
    delay = 60 if waiting == "scheduled" else None
    sent = [mq.send("a", {}, delay=delay) for _ in range(3)]
    sent += [mq.send("b", {}, delay=delay) for _ in range(2)]
    assert mq.purge(task_id=sent[0].task_id) == 1
    assert mq.purge(task_id=sent[0].task_id) == 0  # gone already
    with pytest.raises(LookupError, match="removed"):
        sent[0].status  # noqa: B018 - the lookup is the point
    assert mq.purge(task_name="b") == 2
    assert {t.task_name for t in mq.tasks()} == {"a"}
    mq.send("a", {})
    shard = mq.engine.shards[0]
    _, running = shard.complete_and_claim([], "w", 1, 60.0)  # the oldest waiting one
    assert mq.purge() == 2  # the two "a" tasks still waiting; not the running one
    assert [t.status for t in mq.tasks()] == [TaskStatus.RUNNING]
    assert mq.stats()["outcomes"]["running"] == 1 and mq.stats()["outcomes"]["queued"] == 0
    assert_counts_true(mq, "purges")


def test_unique_sends_that_store_nothing_keep_the_counts_true(make_queue, backend_time):
    """A duplicate stores nothing, so no count may move: ready, delayed, in a batch, and after
    an expired holder let go of its key (that moves no task either)."""
    mq = backend_time.queue(make_queue)
    mq.task(t)
    mq.send("t", {}, unique_key="r")
    mq.send("t", {}, unique_key="r")
    mq.send("t", {}, unique_key="d", delay=5 * backend_time.unit)
    mq.send("t", {}, unique_key="d", delay=5 * backend_time.unit)
    mq.send_many([("t", {}), ("t", {}), ("t", {})], unique_key="b", delay=5 * backend_time.unit)
    mq.send_many([("t", {}), ("t", {})])
    mq.send("t", {}, unique_key="e", unique_for=1 * backend_time.unit)
    backend_time.advance(2 * backend_time.unit)
    assert mq.send("t", {}, unique_key="e").duplicate is False  # the first one still waits
    for shard in mq.engine.shards:
        shard.maintain()  # PostgreSQL: fold the deltas (SQLite: nothing to fold)
    assert_counts_true(mq, "unique sends, duplicates among them")
    assert kept_counts(mq) == {(1, 0): 5, (6, 0): 2}
