"""PostgreSQL ceiling: a plain psycopg 3 loop with no features, batched as far as it goes.

One table with a partial index on ready rows. Enqueue: one multi-row INSERT (unnest of an
array). Workers: 4 threads, each with its own connection, loop: claim up to 100 with
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 100) RETURNING``, run
them, record every result with one UPDATE (unnest of two arrays). Idle workers block on
LISTEN (enqueues NOTIFY), with a 1 s safety timeout.
"""

from __future__ import annotations

import json
import threading
import time

import psycopg

LABEL = "raw psycopg 3 loop (ceiling)"
NOTES = (
    "4 threads, own connection each; claim 100 per UPDATE..FOR UPDATE SKIP LOCKED..RETURNING, "
    "one batched completion UPDATE; partial index on ready rows; LISTEN/NOTIFY wake-up"
)
CLAIM = 100
CHANNEL = "raw_bench_wake"
DONE_CHANNEL = "raw_bench_done"

SCHEMA = """
CREATE SCHEMA {s};
CREATE TABLE {s}.tasks (
    id      bigserial PRIMARY KEY,
    name    text NOT NULL,
    args    jsonb NOT NULL,
    status  smallint NOT NULL DEFAULT 0,  -- 0 ready, 1 claimed, 2 done
    result  jsonb
);
CREATE INDEX tasks_ready ON {s}.tasks (id) WHERE status = 0;
"""


def version() -> str:
    return f"psycopg {psycopg.__version__}"


def noop(i=0):
    return i


FUNCS = {"noop": noop}


class Q:
    def __init__(self, url, schema):
        self.url, self.schema = url, schema
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(SCHEMA.format(s=schema))
        self.stopping = threading.Event()
        self.threads = []
        s = schema
        self.claim = (
            f"UPDATE {s}.tasks SET status = 1 WHERE id IN (SELECT id FROM {s}.tasks WHERE status = 0 "
            f"ORDER BY id FOR UPDATE SKIP LOCKED LIMIT {CLAIM}) RETURNING id, name, args"
        )
        self.complete = (  # one statement: record the batch, then wake round-trip waiters
            f"WITH u AS (UPDATE {s}.tasks t SET status = 2, result = u.r FROM "
            "unnest(%s::bigint[], %s::jsonb[]) AS u(id, r) WHERE t.id = u.id RETURNING 1) "
            f"SELECT pg_notify('{DONE_CHANNEL}', '') FROM (SELECT count(*) FROM u) AS c"
        )
        self.listener = None
        self.insert = (
            f"INSERT INTO {s}.tasks (name, args) SELECT 'noop', a FROM unnest(%s::jsonb[]) AS a"
        )


def open(url, schema, workdir, threads=4):
    return Q(url, schema)


def _insert(conn, q, args):
    with conn.transaction():
        conn.execute(q.insert, (args,))
        conn.execute(f"NOTIFY {CHANNEL}")


def enqueue_batch(q, start, n):
    _insert(q.conn, q, [json.dumps({"i": i}) for i in range(start, start + n)])


prefill = enqueue_batch


def _worker(q):
    conn = psycopg.connect(q.url, autocommit=True)
    conn.execute(f"LISTEN {CHANNEL}")
    try:
        while not q.stopping.is_set():
            with conn.transaction():
                rows = conn.execute(q.claim).fetchall()
            if not rows:
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass
                continue
            ids, results = [], []
            for task_id, name, args in rows:
                ids.append(task_id)
                results.append(json.dumps(FUNCS[name](**args)))
            conn.execute(q.complete, (ids, results))
    finally:
        conn.close()


def start(q, threads):
    for _ in range(threads):
        t = threading.Thread(target=_worker, args=(q,), daemon=True)
        t.start()
        q.threads.append(t)


DONE_SQL = "SELECT count(*) FROM {schema}.tasks WHERE status = 2"


def roundtrip(q, i, timeout):
    """Send one task (INSERT + NOTIFY in one statement) and wait for its result: block on
    LISTEN for the workers' completion NOTIFY, then read the row."""
    if q.listener is None:
        q.listener = psycopg.connect(q.url, autocommit=True)
        q.listener.execute(f"LISTEN {DONE_CHANNEL}")
    task_id = q.conn.execute(
        f"WITH t AS (INSERT INTO {q.schema}.tasks (name, args) VALUES ('noop', %s) RETURNING id) "
        f"SELECT id, pg_notify('{CHANNEL}', '') FROM t",
        (json.dumps({"i": i}),),
    ).fetchone()[0]
    deadline = time.monotonic() + timeout
    while True:
        got = q.listener.execute(
            f"SELECT result FROM {q.schema}.tasks WHERE id = %s AND status = 2", (task_id,)
        ).fetchone()
        if got is not None:
            return got[0]
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(task_id)
        for _ in q.listener.notifies(timeout=left, stop_after=1):
            pass


def close(q):
    q.stopping.set()
    q.conn.execute(f"NOTIFY {CHANNEL}")
    for t in q.threads:
        t.join(2.0)
    q.conn.close()
    if q.listener is not None:
        q.listener.close()
