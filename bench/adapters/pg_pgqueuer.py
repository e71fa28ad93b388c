"""PostgreSQL peer: pgqueuer (psycopg async driver), from bench/.venvs/pg-peers."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import psycopg

LABEL = "pgqueuer"
NOTES = (
    "one PgQueuer (asyncio, psycopg driver) with batch_size=100 and no concurrency cap; "
    "batch = one Queries.enqueue(lists); done = job row gone (pgqueuer deletes finished jobs); "
    "round trip: enqueue, then poll the job's row every 0.2 ms"
)
BATCH = 100


def version() -> str:
    from importlib.metadata import version as v

    return f"{v('pgqueuer')}, psycopg {psycopg.__version__}"


class Q:
    pass


def _call(q, coro, timeout=120):
    return asyncio.run_coroutine_threadsafe(coro, q.loop).result(timeout)


def open(url, schema, workdir, threads=4):
    os.environ["PGQUEUER_SCHEMA"] = schema
    from pgqueuer import PgQueuer, Queries
    from pgqueuer.db import PsycopgDriver

    q = Q()
    q.url, q.schema, q.sent = url, schema, 0
    q.loop = asyncio.new_event_loop()
    threading.Thread(target=q.loop.run_forever, daemon=True).start()
    options = f"-c search_path={schema},public"

    async def setup():
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, options=options)
        q.queries = Queries(PsycopgDriver(conn))
        await q.queries.install()
        wconn = await psycopg.AsyncConnection.connect(url, autocommit=True, options=options)
        q.pgq = PgQueuer(PsycopgDriver(wconn))

        @q.pgq.entrypoint("noop")
        async def noop(job):
            return None

        q.conns = [conn, wconn]

    _call(q, setup())
    q.sync = psycopg.connect(url, autocommit=True, options=options)
    q.worker = None
    return q


def enqueue_batch(q, start, n):
    payloads = [str(i).encode() for i in range(start, start + n)]
    _call(q, q.queries.enqueue(["noop"] * n, payloads, [0] * n))
    q.sent += n


prefill = enqueue_batch


def start(q, threads):
    q.worker = asyncio.run_coroutine_threadsafe(q.pgq.run(batch_size=BATCH), q.loop)


# pgqueuer deletes a job's row when it finishes (and logs it): done = sent - still queued
DONE_SQL = "SELECT {n} - count(*) FROM pgqueuer"


def roundtrip(q, i, timeout):
    (job_id,) = _call(q, q.queries.enqueue("noop", str(i).encode(), 0))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if q.sync.execute("SELECT 1 FROM pgqueuer WHERE id = %s", (job_id,)).fetchone() is None:
            return i
        time.sleep(0.0002)
    raise TimeoutError(job_id)


def close(q):
    if q.worker is not None:
        q.pgq.shutdown.set()
        try:
            q.worker.result(5)
        except Exception:
            q.worker.cancel()
    q.sync.close()
