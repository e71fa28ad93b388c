"""PostgreSQL-specific behaviour: schemas, migrations, LISTEN/NOTIFY, SKIP LOCKED claims,
fencing, reconnects. Runs when MQS_TEST_POSTGRES_DSN is set; shared behaviour is covered
by the conformance tests (``make_queue`` runs them on both backends)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import POSTGRES_DSN, drop_pg_schema, pg_url_with_fresh_schema, subprocess_env, wait_until

from message_queue_sqlite import MessageQueue
from message_queue_sqlite.backends import open_backend
from message_queue_sqlite.backends.base import Completion, NewTask
from message_queue_sqlite.core.config import Config
from message_queue_sqlite.core.errors import MissingDependencyError, QueueStorageError

pytestmark = pytest.mark.skipif(not POSTGRES_DSN, reason="needs MQS_TEST_POSTGRES_DSN")
psycopg = pytest.importorskip("psycopg")


# -- helpers ---------------------------------------------------------------------------
@pytest.fixture
def pg_url() -> Iterator[str]:
    url = pg_url_with_fresh_schema()
    yield url
    drop_pg_schema(url)


@pytest.fixture
def admin() -> Iterator[psycopg.Connection]:
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        yield conn


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


def open_pg(url: str, **config):
    from message_queue_sqlite.backends.postgres import PostgresBackend

    return PostgresBackend(url, Config(broker_url=url, **config))


def new_tasks(count: int, name: str = "noop", now: float | None = None, **fields) -> list[NewTask]:
    now = time.time() if now is None else now
    values = dict(args="{}", priority=0, sender="sender", notify=False, cache_owner=None,
                  max_retries=0, retry=None, delay=0.0, created_at=now)
    values.update(fields)
    return [NewTask(task_name=name, **values) for _ in range(count)]


def tables(admin, schema: str) -> set[str]:
    return {r[0] for r in admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}


# -- schemas and migrations ------------------------------------------------------------
def test_tables_live_in_the_url_schema_and_queues_in_two_schemas_are_separate(pg_url, admin):
    other = pg_url_with_fresh_schema()
    try:
        first, second = open_pg(pg_url), open_pg(other)
        try:
            first.shards[0].enqueue(new_tasks(3))
            assert first.shards[0].count_waiting() == 3
            assert second.shards[0].count_waiting() == 0
            assert tables(admin, schema_of(pg_url)) == {"mqs_tasks", "mqs_nodes", "mqs_counts",
                                                        "mqs_count_deltas", "mqs_schedules", "mqs_queues",
                                                        "mqs_limits", "mqs_rates", "mqs_schema_version"}
            assert not tables(admin, "public") & {"mqs_tasks", "mqs_nodes"}
            assert first.location.endswith(f"?schema={schema_of(pg_url)}")
        finally:
            first.close()
            second.close()
    finally:
        drop_pg_schema(other)


def test_default_schema_and_location_without_password():
    from message_queue_sqlite.backends.postgres import Target

    target = Target("postgresql://alice:s3cret@db.example:6543/jobs?sslmode=disable")
    assert target.schema == "mqs"
    assert target.location == "postgresql://alice@db.example:6543/jobs?schema=mqs"
    assert "s3cret" not in target.location and "schema" not in target.conninfo
    assert "sslmode" in target.conninfo
    socket = Target("postgresql:///jobs?host=/var/run/postgresql&schema=q1")
    assert socket.location == "postgresql:///jobs?host=/var/run/postgresql&schema=q1"
    assert "host=/var/run/postgresql" in socket.conninfo and socket.schema == "q1"
    with pytest.raises(ValueError, match="not a plain identifier"):
        Target("postgresql://h/db?schema=bad;name")


def test_migration_is_idempotent(pg_url, admin):
    from message_queue_sqlite.backends.postgres.connection import MIGRATIONS

    for _ in range(3):
        open_pg(pg_url).close()
    rows = admin.execute(f'SELECT version, name FROM "{schema_of(pg_url)}".mqs_schema_version '
                         'ORDER BY version').fetchall()
    assert rows == [(number, name) for number, name, _ in MIGRATIONS]


def test_concurrent_openers_of_a_fresh_schema_agree(pg_url, admin):
    start = threading.Barrier(6)
    errors: list[BaseException] = []
    opened = []

    def opener() -> None:
        try:
            start.wait(timeout=10)
            opened.append(open_pg(pg_url))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for backend in opened:
        backend.close()
    assert errors == []
    assert len(opened) == 6
    from message_queue_sqlite.backends.postgres.connection import MIGRATIONS

    rows = admin.execute(f'SELECT version FROM "{schema_of(pg_url)}".mqs_schema_version '
                         'ORDER BY version').fetchall()
    assert rows == [(number,) for number, _, _ in MIGRATIONS]


def test_a_schema_with_foreign_tables_is_refused_untouched(pg_url, admin):
    schema = schema_of(pg_url)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(f'CREATE TABLE "{schema}".invoices (id int PRIMARY KEY, total numeric)')
    admin.execute(f'INSERT INTO "{schema}".invoices VALUES (1, 9.5)')
    refused = r"not a queue schema.*other tables \(invoices\).*nothing was changed"
    with pytest.raises(QueueStorageError, match=refused):
        open_pg(pg_url)
    assert tables(admin, schema) == {"invoices"}
    assert admin.execute(f'SELECT * FROM "{schema}".invoices').fetchall() == [(1, 9.5)]


def test_a_table_named_like_ours_without_version_is_refused(pg_url, admin):
    schema = schema_of(pg_url)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(f'CREATE TABLE "{schema}".mqs_tasks (id int)')
    with pytest.raises(QueueStorageError, match="no mqs_schema_version"):
        open_pg(pg_url)
    assert tables(admin, schema) == {"mqs_tasks"}


def test_a_newer_schema_version_is_refused(pg_url, admin):
    open_pg(pg_url).close()
    admin.execute(f'INSERT INTO "{schema_of(pg_url)}".mqs_schema_version (version, name) VALUES (99, %s)',
                  ("future",))
    with pytest.raises(QueueStorageError, match="newer than this package supports"):
        open_pg(pg_url)


def test_an_empty_existing_schema_is_adopted(pg_url, admin):
    admin.execute(f'CREATE SCHEMA "{schema_of(pg_url)}"')
    open_pg(pg_url).close()
    assert "mqs_tasks" in tables(admin, schema_of(pg_url))


def test_unreachable_server_is_a_clear_error():
    url = "postgresql://postgres@127.0.0.1:1/none?schema=mqs_x&connect_timeout=2"
    with pytest.raises(QueueStorageError, match=r"cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/"):
        open_pg(url)


def test_middleware_num_is_one_table_on_postgres(pg_url, caplog):
    caplog.set_level(logging.INFO)
    backend = open_pg(pg_url, middleware_num=4)
    try:
        assert len(backend.shards) == 1
        assert "middleware_num=4 is ignored" in caplog.text
    finally:
        backend.close()


def test_missing_psycopg_is_a_clear_error(monkeypatch):
    prefixes = ("psycopg.", "message_queue_sqlite.backends.postgres")
    for name in [m for m in sys.modules if m == "psycopg" or m.startswith(prefixes)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'message_queue_sqlite\[postgres\]'"):
        open_backend(Config(broker_url="postgresql://nobody@127.0.0.1:1/none"))


# -- claims, fencing, completions ------------------------------------------------------
def test_two_threads_never_claim_the_same_task(pg_url):
    backends = [open_pg(pg_url) for _ in range(2)]
    try:
        backends[0].shards[0].enqueue(new_tasks(1500))
        claimed: list[list[int]] = [[], []]
        start = threading.Barrier(2)

        def claimer(k: int) -> None:
            shard = backends[k].shards[0]
            start.wait(timeout=10)
            while True:
                _, claims = shard.complete_and_claim([], f"owner{k}", 7, 30.0)
                if not claims:
                    return
                claimed[k].extend(c.row_id for c in claims)

        threads = [threading.Thread(target=claimer, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        every = claimed[0] + claimed[1]
        assert len(every) == len(set(every)) == 1500
    finally:
        for backend in backends:
            backend.close()


CLAIMER = textwrap.dedent("""
    import json, sys
    from message_queue_sqlite.backends.postgres import PostgresBackend
    from message_queue_sqlite.core.config import Config
    url, owner = sys.argv[1], sys.argv[2]
    backend = PostgresBackend(url, Config(broker_url=url))
    print("ready", flush=True)
    sys.stdin.readline()  # go
    ids = []
    while True:
        _, claims = backend.shards[0].complete_and_claim([], owner, 5, 30.0)
        if not claims:
            break
        ids.extend(c.row_id for c in claims)
    backend.close()
    print(json.dumps(ids), flush=True)
""")


def test_two_processes_never_claim_the_same_task(pg_url):
    backend = open_pg(pg_url)
    backend.shards[0].enqueue(new_tasks(1000))
    backend.close()
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, pg_url, f"proc{k}"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=subprocess_env()) for k in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # both start claiming together
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=60)[0].strip()) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    every = results[0] + results[1]
    assert len(every) == len(set(every)) == 1000
    assert results[0] and results[1], "both processes should have claimed some tasks"


def test_stale_completion_is_rejected_and_current_one_applies(pg_url):
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        shard.enqueue(new_tasks(1))
        now = time.time()
        _, [first] = shard.complete_and_claim([], "a", 1, 0.2)
        wait_until(lambda: shard.recover_expired(crash_limit=5).requeued == 1,
                   what="the lease of a (0.2 s, on the server's clock) to expire and be recovered")
        _, [second] = shard.complete_and_claim([], "b", 1, 30.0)
        assert second.row_id == first.row_id and second.attempt == first.attempt + 1
        late = Completion(first.row_id, first.attempt, 3, '"late"', None, now, now + 6)
        current = Completion(second.row_id, second.attempt, 3, '"ok"', None, now + 5, now + 6)
        rejected, _ = shard.complete_and_claim([late], "a", 0, 0.0)
        assert rejected == [first.row_id]
        rejected, _ = shard.complete_and_claim([current], "a", 0, 0.0)  # not a's lease
        assert rejected == [first.row_id]
        rejected, _ = shard.complete_and_claim([current], "b", 0, 0.0)
        assert rejected == []
        [record] = shard.get_tasks([first.row_id])
        assert (record.status, record.result, record.attempts) == (3, '"ok"', 2)
    finally:
        backend.close()


def test_claim_order_priority_then_fifo_and_cached_only_to_owner(pg_url):
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        low = new_tasks(3, "low")
        high = new_tasks(2, "high", priority=5)
        cached = new_tasks(1, "cached", priority=9, cache_owner="owner-x")
        shard.register_node("owner-x", os.getpid(), "h", 60.0)
        ids = shard.enqueue(low + high + cached)
        assert ids == sorted(ids) and len(set(ids)) == 6
        _, claims = shard.complete_and_claim([], "someone", 10, 30.0)
        assert [c.row_id for c in claims] == ids[3:5] + ids[:3]
        assert [c.task_name for c in claims] == ["high"] * 2 + ["low"] * 3
        _, claims = shard.complete_and_claim([], "owner-x", 10, 30.0)
        assert [c.row_id for c in claims] == ids[5:]
    finally:
        backend.close()


def test_scheduled_tasks_become_claimable_when_due(pg_url):
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        [much_later] = shard.enqueue(new_tasks(1, "much_later", delay=100.0))
        assert shard.seconds_until_due() == pytest.approx(100, abs=5)  # by the server's clock
        shard.enqueue(new_tasks(2, "later", delay=0.3))
        assert 0 < shard.seconds_until_due() <= 0.3
        assert shard.complete_and_claim([], "w", 10, 30.0)[1] == []
        claims = wait_until(lambda: shard.complete_and_claim([], "w", 10, 30.0)[1], what="the due tasks")
        assert [c.task_name for c in claims] == ["later", "later"]
        assert shard.seconds_until_due() == pytest.approx(100, abs=5)
        assert [r.status for r in shard.get_tasks([much_later])] == [6]
    finally:
        backend.close()


def test_text_with_nul_is_stored_visibly(pg_url):
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        shard.enqueue(new_tasks(1))
        _, [claim] = shard.complete_and_claim([], "w", 1, 30.0)
        shard.complete_and_claim([Completion(claim.row_id, claim.attempt, 4, "ValueError: a\x00b", "tb\x00",
                                             time.time(), time.time())], "w", 0, 0.0)
        [record] = shard.get_tasks([claim.row_id])
        assert record.result == "ValueError: a\\x00b" and record.status == 4
    finally:
        backend.close()


# -- connections -----------------------------------------------------------------------
def test_killed_connections_are_reopened(pg_url, admin):
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        shard.enqueue(new_tasks(2))
        assert shard.count_waiting() == 2  # opens the reader session
        sessions = [shard._writer.backend_pid, shard._reader.backend_pid]
        assert None not in sessions and len(set(sessions)) == 2
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (sessions,))
        assert shard.count_waiting() == 2  # a read reconnects
        shard.enqueue(new_tasks(1))  # so does a write
        assert shard.count_waiting() == 3
        assert {shard._writer.backend_pid, shard._reader.backend_pid}.isdisjoint(sessions)
    finally:
        backend.close()


class _BreakAfterCommit:
    """A connection whose next statement containing ``marker`` commits and then reports a
    lost connection: the worst case, where the client cannot know whether it happened."""

    def __init__(self, real, marker: str):
        self.real = real
        self.marker = marker
        self.armed = True

    def __getattr__(self, name):
        return getattr(self.real, name)

    def execute(self, query, params=None):
        cursor = self.real.execute(query, params)
        if self.armed and self.marker in query:
            self.armed = False
            cursor.fetchall()
            self.real.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return cursor


def test_a_claim_whose_commit_is_unknown_is_given_back_then_retried(pg_url):
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        shard.enqueue(new_tasks(3))
        shard._writer.conn = _BreakAfterCommit(shard._writer.conn, "claimed AS")
        _, claims = shard.complete_and_claim([], "w", 10, 30.0)
        assert len(claims) == 3
        # the lost first claim was given back; its attempt stays counted (the fencing token only grows)
        assert {c.attempt for c in claims} == {2}
        assert shard.count_by_status() == {2: 3}
    finally:
        backend.close()


def test_an_enqueue_whose_commit_is_unknown_is_not_stored_twice(pg_url):
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        shard._writer.conn = _BreakAfterCommit(shard._writer.conn, "inserted AS")
        ids = shard.enqueue(new_tasks(4))
        assert len(ids) == 4 and shard.count_waiting() == 4
        assert [r.row_id for r in shard.get_tasks(ids)] == ids
    finally:
        backend.close()


class _BreakAfterExchangeCommits(_BreakAfterCommit):
    """The first worker exchange that records completions commits, then the connection is
    lost before the reply arrives (the session is closed: broken)."""

    def __init__(self, real):
        super().__init__(real, "done AS")

    def execute(self, query, params=None):
        if not (isinstance(params, dict) and params.get("completions") not in (None, "[]")):
            return self.real.execute(query, params)
        return super().execute(query, params)


def test_completions_whose_commit_went_unconfirmed_count_as_applied(pg_url):
    """The exchange committed, the reply was lost, the call was replayed on a new connection:
    the replay finds the rows already ended, by this owner in this attempt, and counts them as
    applied, not as stale (a stale verdict makes the worker drop the outcome it holds in
    memory, and the sender's callback never runs). The claim in the same exchange, whose
    commit is as unknown, is given back first and claimed again."""
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        ids = shard.enqueue(new_tasks(4, notify=True))
        _, claims = shard.complete_and_claim([], "w", 3, 30.0)
        now = time.time()
        done = [Completion(claims[0].row_id, claims[0].attempt, 3, "0", None, now, now, handed_over=True),
                Completion(claims[1].row_id, claims[1].attempt, 4, "ValueError: x", "tb", now, now),
                Completion(claims[2].row_id, claims[2].attempt, 6, "ValueError: y", "tb", now, now,
                           retry_in=60.0)]
        breaker = _BreakAfterExchangeCommits(shard._writer.conn)
        shard._writer.conn = breaker
        rejected, [again] = shard.complete_and_claim(done, "w", 5, 30.0)
        assert not breaker.armed  # the first try did commit, then broke
        assert rejected == []
        assert (again.row_id, again.attempt) == (ids[3], 2)  # given back, claimed again: a new attempt
        records = {r.row_id: r for r in shard.get_tasks([c.row_id for c in claims])}
        assert [(records[c.row_id].status, records[c.row_id].notify) for c in claims] == [
            (3, False), (4, True), (6, True)]
        assert shard.count_by_status() == {2: 1, 3: 1, 4: 1, 6: 1}
    finally:
        backend.close()


def test_a_callback_is_not_lost_when_the_connection_drops_after_an_exchange_commits(pg_url, caplog):
    """The outcome of a task whose sender waits in this process is handed over in memory (the
    row's notify flag is cleared in the same commit): had the replayed exchange called it stale,
    the callback would never run, and no storage poll could find it."""
    with MessageQueue(broker_url=pg_url, workers=1) as mq:
        @mq.task
        def echo(i):
            return i

        got: list[int] = []
        shard = mq.engine.shards[0]
        breaker = _BreakAfterExchangeCommits(shard._writer.conn)
        shard._writer.conn = breaker
        for i in range(5):
            mq.send(echo, {"i": i}, callback=lambda outcome: got.append(outcome["result"]))
        mq.start()
        wait_until(lambda: len(got) == 5, what="the 5 callbacks")
        assert not breaker.armed
        assert sorted(got) == [0, 1, 2, 3, 4]
        assert "completion(s) discarded" not in caplog.text


class _InterruptMidCommand:
    """A connection whose next statement containing ``marker`` is sent and then interrupted
    (as Ctrl-C interrupts psycopg's wait for the result): the connection is left with a
    command in progress."""

    def __init__(self, real, marker: str):
        self.real = real
        self.marker = marker

    def __getattr__(self, name):
        return getattr(self.real, name)

    def execute(self, query, params=None):
        if self.marker in query:
            self.real.pgconn.send_query(b"SELECT pg_sleep(0.2)")
            raise KeyboardInterrupt
        return self.real.execute(query, params)


def test_a_command_interrupted_by_ctrl_c_leaves_no_half_used_connection(pg_url):
    """The original example stops on KeyboardInterrupt, which can land inside a send; the
    workers' next write must not reuse that connection ("another command is already in
    progress"), and the interrupted claim's leases are given back."""
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        shard.enqueue(new_tasks(2))
        shard._writer.conn = _InterruptMidCommand(shard._writer.conn, "claimed AS")
        with pytest.raises(KeyboardInterrupt):
            shard.complete_and_claim([], "w", 10, 30.0)
        _, claims = shard.complete_and_claim([], "w", 10, 30.0)
        assert len(claims) == 2 and shard.count_by_status() == {2: 2}
        ids = shard.enqueue(new_tasks(1))
        assert shard.count_waiting() == 1 and len(ids) == 1
    finally:
        backend.close()


def test_purge_never_deletes_the_newest_row(pg_url):
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        ids = shard.enqueue(new_tasks(3))
        ended = time.time() - 60
        _, claims = shard.complete_and_claim([], "w", 3, 30.0)
        done = [Completion(c.row_id, c.attempt, 3, "1", None, ended, ended) for c in claims]
        shard.complete_and_claim(done, "w", 0, 0.0)
        assert shard.purge_ended(30.0, 100) is False  # 2 deleted: fewer than the limit
        assert [r.row_id for r in shard.list_tasks(None, None, 10)] == [ids[-1]]
        assert shard.enqueue(new_tasks(1))[0] > ids[-1]
    finally:
        backend.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_opens_its_own_connection(pg_url):
    with MessageQueue(broker_url=pg_url) as mq:
        mq.send("t", {})
        parent_session = mq.engine.shards[0].session
        pid = os.fork()
        if pid == 0:  # child: must not reuse (or close) the parent's connection
            code = 1
            try:
                mq.send("t", {})
                code = 0 if mq.engine.shards[0].session != parent_session else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert mq.engine.shards[0].session == parent_session
        assert mq.stats()["totals"]["NOT_STARTED"] == 2


# -- the change feed -------------------------------------------------------------------
def test_listen_wakes_on_another_process_write_but_not_on_its_own(pg_url):
    watcher, writer = open_pg(pg_url), open_pg(pg_url)
    try:
        changes = threading.Event()
        watcher.watch(changes.set)
        wait_until(lambda: watcher.listening is not None and watcher.listening.is_set(), what="LISTEN")
        changes.clear()
        watcher.shards[0].enqueue(new_tasks(1))  # its own write: the engine rings its own bell
        writer.shards[0].enqueue(new_tasks(1))
        assert changes.wait(10), "no notification for another session's enqueue"
        changes.clear()
        _, [claim] = writer.shards[0].complete_and_claim([], "w", 1, 30.0)
        assert not changes.is_set()  # a claim notifies nobody
        writer.shards[0].complete_and_claim(
            [Completion(claim.row_id, claim.attempt, 3, "1", None, time.time(), time.time())], "w", 0, 0.0)
        assert changes.wait(10), "no notification for a completion"
    finally:
        watcher.close()
        writer.close()


def test_closing_the_feed_while_its_thread_is_between_polls_does_not_break_the_pipe(pg_url):
    """The listener thread closes its wake-up pipe's read end once it sees the stop flag; when
    it is between polls (connecting, backing off, just after LISTEN) it may see the flag and
    exit before ``close`` writes the wake-up byte: that write then failed with EPIPE (a test's
    teardown did, once). Here the thread is made to exit right as the flag is set."""
    from message_queue_sqlite.backends.postgres.notify import ChangeListener

    backend = open_pg(pg_url)
    try:
        listener = ChangeListener(backend._target, lambda: None)
        wait_until(listener.listening.is_set, what="LISTEN")
        thread = listener._thread

        class ExitsAtOnce(threading.Event):
            def set(self) -> None:
                super().set()
                thread.join(10)  # the thread runs to its end before close() goes on

        listener._stop = ExitsAtOnce()
        listener.close()  # raised BrokenPipeError when the byte was written after the flag
        assert not thread.is_alive()
    finally:
        backend.close()


def test_the_feed_reconnects_after_its_connection_is_killed(pg_url, admin):
    watcher, writer = open_pg(pg_url), open_pg(pg_url)
    try:
        changes = threading.Event()
        watcher.watch(changes.set)
        wait_until(lambda: watcher.listening is not None and watcher.listening.is_set(), what="LISTEN")

        listen = f'LISTEN "mqs_{schema_of(pg_url)}"'

        def listener_sessions() -> list[int]:
            return [r[0] for r in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE query = %s AND datname = current_database()",
                (listen,))]

        wait_until(lambda: len(listener_sessions()) == 1, what="the listening session")
        [old] = listener_sessions()
        admin.execute("SELECT pg_terminate_backend(%s)", (old,))
        wait_until(lambda: listener_sessions() not in ([], [old]), what="a new listening session")
        wait_until(lambda: watcher.listening.is_set(), what="LISTEN again")
        changes.clear()
        writer.shards[0].enqueue(new_tasks(1))
        assert changes.wait(10), "no notification after the reconnect"
    finally:
        watcher.close()
        writer.close()


def test_an_idle_worker_in_another_queue_object_wakes_at_once(pg_url, monkeypatch):
    """A worker and a sender in separate queue objects (as in separate processes): the
    notification, not the idle re-check (made a minute here), brings the task to the worker."""
    from message_queue_sqlite.engine import engine as engine_module

    monkeypatch.setattr(engine_module, "IDLE_RECHECK_S", 60.0)
    worker = MessageQueue(broker_url=pg_url, workers=1)
    sender = MessageQueue(broker_url=pg_url)
    try:
        @worker.task
        def echo(x):
            return x

        worker.start()
        wait_until(lambda: worker.engine.backend.listening.is_set(), what="LISTEN")
        for i in range(5):
            assert sender.send("echo", {"x": i}).result(timeout=10) == i
    finally:
        sender.close()
        worker.close()


def test_notifications_name_their_writer_and_flag_scheduled_retries(pg_url):
    """A queue object skips notifications of its own session (its engine already knows),
    except those with payload '*': a retry it scheduled changes its workers' wake-up time."""
    backend = open_pg(pg_url)
    try:
        shard = backend.shards[0]
        channel = f"mqs_{schema_of(pg_url)}"
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as listener:
            listener.execute(f'LISTEN "{channel}"')

            def next_note():
                return next(listener.notifies(timeout=10, stop_after=1))

            shard.enqueue(new_tasks(2))
            note = next_note()
            assert (note.pid, note.payload) == (shard.session, "")
            now = time.time()
            _, (first, second) = shard.complete_and_claim([], "w", 2, 30.0)
            shard.complete_and_claim([Completion(first.row_id, first.attempt, 3, "1", None, now, now)],
                                     "w", 0, 0.0)
            assert next_note().payload == ""
            shard.complete_and_claim([Completion(second.row_id, second.attempt, 6, "ValueError: x", None,
                                                 now, now, retry_in=5)], "w", 0, 0.0)
            assert next_note().payload == "*"
        from message_queue_sqlite.backends.postgres.notify import ChangeListener

        relevant = ChangeListener._relevant
        fake = type("Fake", (), {"_own_sessions": lambda self: {4242}})()
        assert not relevant(fake, 4242, "") and relevant(fake, 4242, "*") and relevant(fake, 7, "")
    finally:
        backend.close()


SAMPLE_PARAMS = {"attempt": 1, "max_bytes": 1 << 26, "callbacked": [1], "channel": "c", "completions": "[]",
                 "crash_limit": 3, "created_at": 1.0, "floor": 1, "host": "h", "lease": 30.0,
                 "limit": 10, "name": "n", "node": "n", "owner": "o", "pid": 1, "retention": 60.0,
                 "row_id": 1, "sender": "s", "stamp": 1.0, "status": 3, "task_name": "t", "tasks": "[]",
                 "schedules": "[]", "expected": 1.0, "decided": 2.0, "next_slot": 3.0, "names": ["n"],
                 "unique_keys": ["k"], "queue": "default", "before": 100, "after_priority": 0, "after_id": 1,
                 "after_run_after": 1.0, "since": 1.0, "items": "[]", "limits": "[]", "forget": ["n"],
                 "window": 1.0, "used": 1}


PRIMARY_KEY_WALKS = {"list_recent", "list_ended_as"}  # newest first, ended by their LIMIT


def _scans_of_tasks(node: dict) -> Iterator[dict]:
    if node.get("Relation Name") == "mqs_tasks" or str(node.get("Index Name", "")).startswith("mqs_tasks"):
        yield node
    for child in node.get("Plans", []):
        yield from _scans_of_tasks(child)


def test_every_query_uses_an_index(pg_url):
    """No statement reads the whole tasks table: with sequential scans priced out, each finds
    its rows by a condition on an index, or walks a partial index (only its state's rows);
    the two walks of the primary key back from the newest row are named."""
    from message_queue_sqlite.backends.postgres.backend import QUERIES
    from message_queue_sqlite.backends.postgres.connection import Target

    MessageQueue(broker_url=pg_url).close()  # creates the schema
    target = Target(pg_url)
    with psycopg.connect(POSTGRES_DSN) as conn:
        conn.execute("SET enable_seqscan = off")
        cursor = psycopg.ClientCursor(conn)  # literals inlined: EXPLAIN takes no parameters
        for name, sql in QUERIES.items():
            sql = target.sql(sql)
            params = {key: ([value] if f"%({key})s::bigint[]" in sql or f"%({key})s::integer[]" in sql
                            else value) for key, value in SAMPLE_PARAMS.items() if f"%({key})s" in sql}
            plan = cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()[0][0]["Plan"]
            for scan in _scans_of_tasks(plan):
                assert scan["Node Type"] != "Seq Scan", f"{name}: {json.dumps(plan)}"
                whole = scan.get("Index Name") == "mqs_tasks_pkey" and "Index Cond" not in scan
                assert not whole or name in PRIMARY_KEY_WALKS, f"{name} walks the whole table: {scan}"


# The dashboard's pages of one state must read that state's index: ordered by row id (or
# claim order), the planner may otherwise prefer walking the primary key for the ORDER BY
# and filter on the way, which crosses the whole table. Only real statistics show it (an
# empty table plans well either way), so the table is filled and analyzed first.
STATE_PAGES = {"page_ready": "mqs_tasks_ready", "page_scheduled": "mqs_tasks_scheduled",
               "page_failed": "mqs_tasks_failed", "page_running": "mqs_tasks_running",
               "page_cancelled": "mqs_tasks_cancelled"}


def test_state_pages_read_their_state_index_on_a_filled_table(pg_url, admin):
    from message_queue_sqlite.backends.postgres.backend import QUERIES

    with MessageQueue(broker_url=pg_url) as mq:
        shard = mq.engine.shards[0]

        def new(delay: float = 0.0) -> NewTask:
            return NewTask("t", "{}", 0, "s", False, None, 0, None, delay, time.time())

        for _ in range(20):  # 20,000 ended (1% failed, 1% cancelled), 10 running, 100 scheduled, 100 ready
            shard.enqueue([new() for _ in range(1000)])
            _, claims = shard.complete_and_claim([], "o", 1000, 600.0)
            now = time.time()
            shard.complete_and_claim([Completion(c.row_id, c.attempt, {0: 4, 1: 7}.get(c.row_id % 100, 3),
                                                 "1", None, now, now) for c in claims], "o", 0, 600.0)
        shard.enqueue([new() for _ in range(10)])
        shard.complete_and_claim([], "o", 10, 600.0)
        shard.enqueue([new(3600.0) for _ in range(100)] + [new() for _ in range(100)])
        admin.execute(f"ANALYZE {shard.name}")
        params = {"before": 2**62, "after_priority": 2**62, "after_id": 0, "after_run_after": -1.0,
                  "limit": 51, "queue": "default"}
        for name, index in STATE_PAGES.items():
            sql = shard._q[name]

            def explain(conn: psycopg.Connection, _broke: bool, sql: str = sql) -> dict:
                return psycopg.ClientCursor(conn).execute(
                    "EXPLAIN (FORMAT JSON) " + sql,
                    {k: v for k, v in params.items() if f"%({k})s" in sql}).fetchone()[0][0]["Plan"]

            plan = shard._run("explain", explain, read=True)  # the reader session, its settings
            used = {scan.get("Index Name") for scan in _scans_of_tasks(plan)}
            assert used == {index}, f"{name} reads {used}: {json.dumps(plan)}"
        assert set(STATE_PAGES) <= set(QUERIES)


def test_queue_sessions_run_without_jit(pg_url):
    """The sessions price sorts out (enable_sort = off): a plan that must still sort costs more
    than jit_above_cost, and JIT then compiled a 0.1 ms listing for 260 ms. Both the writer
    and the reader session (listings are reads) have it off."""
    with MessageQueue(broker_url=pg_url) as mq:
        shard = mq.engine.shards[0]
        shard.count_tasks()  # opens the reader session
        for session in (shard._writer, shard._reader):
            assert session.connection().execute("SHOW jit").fetchone()[0] == "off"
