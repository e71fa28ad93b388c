"""PostgreSQL findings of issue 17's adversarial run ("Proof at scale"), each with the test that
failed before its fix: claims commit durably (finding 3), claims are bounded by bytes and a
send refuses arguments no claim could return (finding 7), and a completion lost in a server
crash does not leave its task RUNNING under a live worker (finding 1)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import POSTGRES_DSN, drop_pg_schema, pg_url_with_fresh_schema, wait_until

from message_queue_sqlite import MessageQueue
from message_queue_sqlite.backends.base import NewTask
from message_queue_sqlite.core.config import Config

pytestmark = pytest.mark.skipif(not POSTGRES_DSN, reason="needs MQS_TEST_POSTGRES_DSN")
psycopg = pytest.importorskip("psycopg")

from message_queue_sqlite.backends.postgres import PostgresBackend  # noqa: E402
from message_queue_sqlite.backends.postgres import backend as pg_backend  # noqa: E402

MiB = 1024 * 1024


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = pg_url_with_fresh_schema()
    yield url
    drop_pg_schema(url)


def open_pg(url: str, **config) -> PostgresBackend:
    return PostgresBackend(url, Config(broker_url=url, **config))


def tasks(count: int, args: str = "{}", name: str = "noop") -> list[NewTask]:
    now = time.time()
    return [NewTask(task_name=name, args=args, priority=0, sender="sender", notify=False, cache_owner=None,
                    max_retries=0, retry=None, delay=0.0, created_at=now) for _ in range(count)]


# -- finding 3: a claim commits durably whatever the durability of completions ------------
def test_a_claim_commits_with_synchronous_commit_on_under_normal_durability(pg_url):
    """durability="normal" runs the session with synchronous_commit off; the transaction that
    claims turns it on for its own commit (an immediate server restart must not lose the
    claim: the next claim would hand out the same attempt, the fencing token, again). Read
    inside that transaction: the claim runs in a transaction the test holds open."""
    backend = open_pg(pg_url, durability="normal")
    try:
        shard = backend.shards[0]
        shard.enqueue(tasks(1))
        conn = shard._writer.connection()
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        with conn.transaction(force_rollback=True):
            _, idle = shard.complete_and_claim([], "nobody-ready", 1, 30.0, queue="empty-queue")
            assert idle == []
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"  # nothing claimed
            _, claimed = shard.complete_and_claim([], "w", 1, 30.0)
            assert len(claimed) == 1
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"  # local to that commit
    finally:
        backend.close()


# -- finding 7: large arguments --------------------------------------------------------------
def test_a_claim_is_bounded_by_bytes_of_arguments_but_takes_at_least_one(pg_url, monkeypatch):
    monkeypatch.setattr(pg_backend, "CLAIM_MAX_BYTES", 30 * MiB)  # (the default: 64 MiB)
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        big = '"' + "x" * (20 * MiB) + '"'
        shard.enqueue(tasks(3, big))
        shard.enqueue(tasks(2, ""))  # empty arguments count 0 bytes
        shard.enqueue(tasks(1, '"' + "y" * (40 * MiB) + '"'))  # alone above the bound
        sizes = []
        for _ in range(4):
            _, claimed = shard.complete_and_claim([], "w", 10, 30.0)
            sizes.append([len(c.args) // MiB for c in claimed])
        # two of 20 MiB exceed 30: one at a time (the empty ones fit beside the third); then the
        # 40 MiB one, alone above the bound, still claimed (always one)
        assert sizes == [[20], [20], [20, 0, 0], [40]], sizes
        assert shard.complete_and_claim([], "w", 10, 30.0)[1] == []
    finally:
        backend.close()


def test_a_send_refuses_arguments_too_large_to_ever_claim(pg_url, monkeypatch):
    monkeypatch.setattr(pg_backend, "MAX_ARGS_BYTES", 1 * MiB)
    with MessageQueue("unused", broker_url=pg_url) as mq:
        with pytest.raises(ValueError) as caught:
            mq.send("noop", {"blob": "é" * (MiB // 2 + 10)})  # 2 bytes each in UTF-8: above 1 MiB
        message = str(caught.value)
        assert "1,048,576 bytes" in message and "'noop'" in message, message
        size = int(message.split(" are ", 1)[1].split(" bytes", 1)[0].replace(",", ""))
        assert size > MiB, message
        assert mq.send("noop", {"blob": "x" * 1000}).task_id  # the queue still takes normal sends
        assert sum(mq.stats()["totals"].values()) == 1


def test_a_batch_above_the_chunk_size_is_stored_whole_in_order(pg_url, monkeypatch):
    monkeypatch.setattr(pg_backend, "ENQUEUE_CHUNK_BYTES", 3 * MiB)
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        batch = [dataclasses.replace(t, args=f'"{i}' + "z" * MiB + '"') for i, t in enumerate(tasks(7))]
        ids = shard.enqueue(batch)
        assert ids == sorted(ids) and len(set(ids)) == 7
        _, claimed = shard.complete_and_claim([], "w", 10, 30.0)
        assert [c.row_id for c in claimed] == ids
        assert [c.args[:2] for c in claimed] == [f'"{i}' for i in range(7)]
    finally:
        backend.close()


# -- finding 1: a lost completion is recovered, not renewed forever ------------------------------
def test_a_completion_lost_in_a_server_crash_is_recovered_while_the_worker_lives(pg_url):
    """The completion committed (the worker's ledger let the lease go), then the server lost it
    (synchronous_commit off, a crash): the row is RUNNING again under the live worker's name.
    Here the loss is written directly. Renewal covers only the ledger's leases, so this one
    expires and is recovered, and the task runs again; blind renewal (every RUNNING row of
    the node) would keep it RUNNING for as long as the worker lives."""
    runs: list[int] = []
    ran = threading.Event()
    with MessageQueue("unused", broker_url=pg_url, visibility_timeout=1.0, workers=1) as mq:
        @mq.task
        def once(n: int) -> int:
            runs.append(n)
            ran.set()
            return n

        mq.start()
        handle = mq.send("once", {"n": 1})
        assert handle.result(timeout=20) == 1
        shard = mq.engine.shards[0]
        row_id = mq.engine.shard_of(handle.task_id)[1]
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
            lost = admin.execute(
                f'UPDATE "{pg_url.rsplit("schema=", 1)[1]}".mqs_tasks SET status = 2, outcome = NULL, '
                "ended_at = NULL, result = NULL, lease_expires = date_part('epoch', clock_timestamp()) + 1 "
                "WHERE id = %s AND lease_owner = %s RETURNING attempts", (row_id, mq.engine.node)).fetchall()
        assert lost == [(1,)], "the finished row still names its worker as its lease owner"

        def rerun() -> bool:
            [record] = shard.get_tasks([row_id])
            return len(runs) == 2 and record.status in (3, 5) and record.attempts == 2

        wait_until(rerun, timeout=20, what=lambda: f"the lost completion's task to be recovered and run "
                   f"again (runs {runs}, row {shard.get_tasks([row_id])})")


def test_a_big_send_gets_timeouts_for_its_size(pg_url):
    """A send's statement timeout (10 s) and wait for a reply (12 s) would cut a big send short
    (measured: ~7 MiB/s on loopback, a 60 MiB send 7.5 s): above 1 MiB it runs with both raised
    by its size at SEND_BYTES_PER_S. Read in a transaction the test holds open."""
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        conn = shard._writer.connection()
        with conn.transaction(force_rollback=True):
            shard.enqueue(tasks(1, "{}"))
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "10s"
            shard.enqueue(tasks(1, '"' + "b" * (4 * MiB) + '"'))
            expected = pg_backend.STATEMENT_TIMEOUT_S + (4 * MiB + 2) / pg_backend.SEND_BYTES_PER_S
            shown = conn.execute("SELECT setting FROM pg_settings "
                                 "WHERE name = 'statement_timeout'").fetchone()[0]
            assert int(shown) == int(expected * 1000), (shown, expected)  # milliseconds
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "10s"
    finally:
        backend.close()
