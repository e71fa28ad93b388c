"""Sending in the application's own transaction (the outbox pattern), on both backends: with
the queue inside the application's SQLite database (``MessageQueue(database=...)``) or on the
same PostgreSQL database, ``send(..., connection=conn)`` stores the task in the application's
open transaction: a rollback leaves no task, a commit makes one that runs once (its workers
woken by the change feed, not by polling), and an application SIGKILLed mid-transaction
leaves neither its row nor the task. The application's own tables, user_version and
application_id are untouched; without ``database=`` its file is still refused, untouched."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import POSTGRES_DSN, subprocess_env, wait_until

from message_queue_sqlite import MessageQueue, QueueStorageError
from message_queue_sqlite.engine import engine as engine_module


class App:
    """The application's side: its own connection and its orders table."""

    def __init__(self, backend: str, tmp_path: Path, broker_url: str | None):
        self.backend = backend
        self.path = str(tmp_path / "app.db")
        self.broker_url = broker_url
        self.table = "orders" if backend == "sqlite" else f"orders_{abs(hash(broker_url)) % 10**8}"
        conn = self.connect()
        key = "INTEGER PRIMARY KEY" if backend == "sqlite" else "SERIAL PRIMARY KEY"
        conn.execute(f"CREATE TABLE {self.table} (id {key}, item TEXT NOT NULL)")
        if backend == "sqlite":
            conn.execute("PRAGMA user_version = 7")  # the application's own schema version
        conn.commit()
        conn.close()

    def connect(self):
        if self.backend == "sqlite":
            return sqlite3.connect(self.path)
        import psycopg

        return psycopg.connect(POSTGRES_DSN)

    def queue(self, **options) -> MessageQueue:
        if self.backend == "sqlite":
            return MessageQueue(database=self.path, **options)
        return MessageQueue(broker_url=self.broker_url, **options)

    def add_order(self, conn, item: str) -> int:
        sql = f"INSERT INTO {self.table} (item) VALUES (%s) RETURNING id"
        if self.backend == "sqlite":
            sql = sql.replace("%s", "?")
        return conn.execute(sql, (item,)).fetchone()[0]

    def orders(self) -> list[str]:
        conn = self.connect()
        try:
            return [row[0] for row in conn.execute(f"SELECT item FROM {self.table} ORDER BY id")]
        finally:
            conn.close()

    def drop(self) -> None:
        if self.backend == "postgres":
            conn = self.connect()
            conn.execute(f"DROP TABLE IF EXISTS {self.table}")
            conn.commit()
            conn.close()


@pytest.fixture
def app(backend, tmp_path, broker_url):
    made = App(backend, tmp_path, broker_url)
    yield made
    made.drop()


def test_a_rollback_leaves_no_task_and_a_commit_makes_one_that_runs_once(app, monkeypatch):
    monkeypatch.setattr(engine_module, "IDLE_RECHECK_S", 60.0)  # a worker that polled would wait 60 s
    mq = app.queue(workers=1)
    runs: list[int] = []

    @mq.task
    def confirm(order_id):
        runs.append(order_id)
        return f"confirmed {order_id}"

    conn = app.connect()
    try:
        with mq.running():
            order = app.add_order(conn, "book")
            mq.send(confirm, {"order_id": order}, connection=conn)
            conn.rollback()
            assert sum(mq.stats()["outcomes"].values()) == 0 and app.orders() == []

            order = app.add_order(conn, "pen")
            handle = mq.send(confirm, {"order_id": order}, connection=conn)
            assert mq.stats()["outcomes"]["queued"] == 0  # not there until the application commits
            conn.commit()
            assert handle.result(timeout=20) == f"confirmed {order}"  # woken by the commit, not a poll
        assert runs == [order] and app.orders() == ["pen"]
    finally:
        conn.close()
        mq.close()


def test_send_many_and_a_delay_in_the_applications_transaction(app):
    mq = app.queue(workers=2)

    @mq.task
    def ship(n):
        return n * 10

    conn = app.connect()
    try:
        app.add_order(conn, "crate")
        handles = mq.send_many([(ship, {"n": n}) for n in range(5)], connection=conn)
        later = mq.send(ship, {"n": 9}, delay=0.2, connection=conn)
        conn.commit()
        with mq.running():
            assert [h.result(timeout=20) for h in handles] == [0, 10, 20, 30, 40]
            assert later.result(timeout=20) == 90
    finally:
        conn.close()
        mq.close()


def test_what_cannot_join_the_applications_transaction_is_refused(app, tmp_path):
    mq = app.queue()

    @mq.task
    def job(n=0):
        return n

    conn = app.connect()
    try:
        with pytest.raises(ValueError, match="unique key.*connection= does not support"):
            mq.send(job, {"n": 1}, unique_key="k", connection=conn)
        if app.backend == "sqlite":
            other = sqlite3.connect(str(tmp_path / "other.db"))
            with pytest.raises(ValueError, match=r"other\.db.*not to the queue's database.*app\.db"):
                mq.send(job, connection=other)
            other.close()
        else:
            import psycopg

            other = psycopg.connect(POSTGRES_DSN.rsplit("/", 1)[0] + "/postgres")
            with pytest.raises(ValueError, match="database 'postgres'.*not to the queue's 'test'"):
                mq.send(job, connection=other)
            other.close()
        with pytest.raises(TypeError, match="connection='nope' must be"):
            mq.send(job, connection="nope")
        conn.rollback()
        assert sum(mq.stats()["outcomes"].values()) == 0
    finally:
        conn.close()
        mq.close()


APP_CRASH = '''
import sys, time
from message_queue_sqlite import MessageQueue
backend, where, table = sys.argv[1], sys.argv[2], sys.argv[3]
if backend == "sqlite":
    import sqlite3
    conn = sqlite3.connect(where)
    mq = MessageQueue(database=where)
    insert = f"INSERT INTO {table} (item) VALUES ('lost')"
else:
    import psycopg
    conn = psycopg.connect(sys.argv[4])
    mq = MessageQueue(broker_url=where)
    insert = f"INSERT INTO {table} (item) VALUES ('lost')"
mq.task(name="confirm")(lambda order_id=0: order_id)
conn.execute(insert)
mq.send("confirm", {"order_id": 1}, connection=conn)
print("in the transaction", flush=True)
sys.stdin.read()  # the test SIGKILLs us here, before any commit
'''


def test_an_application_killed_mid_transaction_leaves_neither_its_row_nor_the_task(app, tmp_path):
    script = tmp_path / "app_crash.py"
    script.write_text(textwrap.dedent(APP_CRASH))
    where = app.path if app.backend == "sqlite" else app.broker_url
    argv = [sys.executable, str(script), app.backend, where, app.table, POSTGRES_DSN or ""]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=subprocess_env())
    try:
        assert process.stdout.readline().strip() == "in the transaction"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    mq = app.queue()
    try:
        mq.task(name="confirm")(lambda order_id=0: order_id)
        wait_until(lambda: app.orders() == [], what="the killed transaction's row to be gone")
        assert sum(mq.stats()["outcomes"].values()) == 0 and mq.tasks() == []
        with mq.running():  # and the queue goes on: the dead transaction's lock went with it
            assert mq.send("confirm", {"order_id": 2}).result(timeout=20) == 2
    finally:
        mq.close()


def test_the_applications_database_keeps_its_tables_and_pragmas_and_is_refused_without_database(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.execute("PRAGMA user_version = 42")
    conn.execute("PRAGMA application_id = 1234")
    conn.commit()
    before = path.read_bytes()
    with pytest.raises(QueueStorageError, match=r"is a file.*MessageQueue\(database="):
        MessageQueue(str(path))
    assert path.read_bytes() == before  # refused, untouched
    mq = MessageQueue(database=str(path))
    mq.close()
    again = MessageQueue(database=str(path))  # migrated once: opening again changes nothing
    again.close()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 42
    assert conn.execute("PRAGMA application_id").fetchone()[0] == 1234
    assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert names - {"users"} and all(n.startswith("mqs_") for n in names - {"users"})
    conn.close()


def test_a_folder_queue_refuses_connection_and_names_database(queue_dir, tmp_path):
    mq = MessageQueue(queue_dir)
    mq.task(name="job")(lambda: None)
    conn = sqlite3.connect(tmp_path / "app.db")
    try:
        with pytest.raises(QueueStorageError, match=r"needs the queue inside.*MessageQueue\(database="):
            mq.send("job", connection=conn)
    finally:
        conn.close()
        mq.close()


def test_asend_joins_the_applications_transaction_async_connection_on_postgresql(app):
    """asend(connection=): an AsyncConnection (psycopg) is awaited; a sync one (sqlite3) is used
    as send uses it. A rollback leaves nothing, a commit makes the task, which then runs."""
    import asyncio

    mq = app.queue(workers=1)

    @mq.task
    def double(n):
        return n * 2

    async def main() -> int:
        if app.backend == "postgres":
            import psycopg

            conn = await psycopg.AsyncConnection.connect(POSTGRES_DSN)
            rollback, commit = conn.rollback, conn.commit
        else:
            conn = app.connect()

            async def rollback() -> None:
                conn.rollback()

            async def commit() -> None:
                conn.commit()
        try:
            await mq.asend(double, {"n": 1}, connection=conn)
            await rollback()
            assert sum(mq.stats()["outcomes"].values()) == 0
            handle = await mq.asend(double, {"n": 2}, connection=conn)
            await commit()
            mq.start()
            return await handle.aresult(timeout=20)
        finally:
            if app.backend == "postgres":
                await conn.close()
            else:
                conn.close()

    try:
        assert asyncio.run(main()) == 4
    finally:
        mq.close()
