"""PostgreSQL peer: procrastinate (psycopg 3 connector), from bench/.venvs/pg-peers."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg

LABEL = "procrastinate"
NOTES = (
    "App(PsycopgConnector), async no-op task; run_worker_async(concurrency=4), listen_notify on; "
    "batch = task.batch_defer_async(); done = status 'succeeded'; "
    "round trip: defer, then poll the job's status every 0.2 ms"
)


def version() -> str:
    from importlib.metadata import version as v

    return f"{v('procrastinate')}, psycopg {psycopg.__version__}"


class Q:
    pass


def _call(q, coro, timeout=120):
    return asyncio.run_coroutine_threadsafe(coro, q.loop).result(timeout)


def open(url, schema, workdir, threads=4):
    import procrastinate

    q = Q()
    q.url, q.schema = url, schema
    options = f"-c search_path={schema},public"
    q.sync = psycopg.connect(url, autocommit=True, options=options)
    q.sync.execute(f"CREATE SCHEMA {schema}")
    q.app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, kwargs={"options": options})
    )

    @q.app.task(name="noop")
    async def noop(i=0):
        return i

    q.task = noop
    q.loop = asyncio.new_event_loop()
    threading.Thread(target=q.loop.run_forever, daemon=True).start()

    async def setup():
        await q.app.open_async()
        await q.app.schema_manager.apply_schema_async()

    _call(q, setup())
    q.worker = None
    return q


def enqueue_batch(q, start, n):
    _call(q, q.task.batch_defer_async(*({"i": i} for i in range(start, start + n))))


prefill = enqueue_batch


def start(q, threads):
    q.worker = asyncio.run_coroutine_threadsafe(
        q.app.run_worker_async(concurrency=threads, wait=True, install_signal_handlers=False), q.loop
    )


DONE_SQL = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"


def roundtrip(q, i, timeout):
    job_id = _call(q, q.task.defer_async(i=i))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = q.sync.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", (job_id,)).fetchone()
        if row and row[0] == "succeeded":
            return i
        time.sleep(0.0002)
    raise TimeoutError(job_id)


def close(q):
    if q.worker is not None:
        q.worker.cancel()
    try:
        _call(q, q.app.close_async(), timeout=5)
    except Exception:
        pass
    q.sync.close()
