"""The ceiling: a plain stdlib-sqlite3 queue loop with no features, batched as far as it goes.

One table, WAL, synchronous=NORMAL (FULL with durability="full"). Enqueue: one INSERT
per call, or ``executemany`` in one transaction. Workers: each thread has its own
connection and loops: claim up to 128 with ``UPDATE ... WHERE id IN (SELECT ... LIMIT 128)
RETURNING`` (one transaction), run them, record every result with ``executemany`` (one
transaction). Idle workers wait on an in-process condition (woken by local enqueues)
with a 1 ms timeout, i.e. they poll every 1 ms for other processes' work. Shards are
separate files; producers spread round-robin, workers rotate over them.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import sys
import threading
import time

LABEL = "raw stdlib sqlite3 batched loop"
CAPS = {"batch": True, "callbacks": False, "shards": True, "durability": True}
NOTES = (
    "WAL, synchronous=NORMAL; claim 128 per UPDATE..RETURNING, executemany complete; "
    "idle workers poll every 1 ms (woken at once by enqueues in their own process)"
)
CLAIM = 128
IDLE_S = 0.001

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    args       TEXT NOT NULL,
    status     INTEGER NOT NULL DEFAULT 0,  -- 0 queued, 1 claimed, 2 done
    result     TEXT,
    claimed_at REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_queued ON tasks (id) WHERE status = 0;
"""
INSERT = "INSERT INTO tasks (name, args, created_at) VALUES (?, ?, ?)"
CLAIM_SQL = (
    "UPDATE tasks SET status = 1, claimed_at = ? WHERE id IN "
    "(SELECT id FROM tasks WHERE status = 0 ORDER BY id LIMIT ?) RETURNING id, name, args"
)
PEEK = "SELECT 1 FROM tasks WHERE status = 0 LIMIT 1"
COMPLETE = "UPDATE tasks SET status = 2, result = ? WHERE id = ?"


def version() -> str:
    return f"sqlite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}"


def noop(i=0):
    return i


FUNCS = {"noop": noop}


def shard_paths(path: str, shards: int = 1) -> list[str]:
    return [os.path.join(path, f"raw-{k}.db") for k in range(shards)]


def _connect(file: str, durability: str) -> sqlite3.Connection:
    conn = sqlite3.connect(file, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = %s" % ("FULL" if durability == "full" else "NORMAL"))
    return conn


class Queue:
    def __init__(self, path, shards, durability):
        os.makedirs(path, exist_ok=True)
        self.files = shard_paths(path, shards)
        self.durability = durability
        self.conns = []
        for file in self.files:
            conn = _connect(file, durability)
            conn.executescript(SCHEMA)
            self.conns.append(conn)
        self.rotation = itertools.cycle(range(len(self.files)))
        self.lock = threading.Lock()
        self.wake = threading.Condition()
        self.results = threading.Condition()
        self.completed = 0
        self.stopping = False
        self.threads: list[threading.Thread] = []

    # producer side (one connection per shard, serialised by a lock)
    def put(self, rows):
        with self.lock:
            conn = self.conns[next(self.rotation)]
            if len(rows) == 1:
                conn.execute(INSERT, rows[0])
            else:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(INSERT, rows)
                conn.execute("COMMIT")
        with self.wake:
            self.wake.notify()

    # worker side
    def work(self, offset):
        conns = [_connect(f, self.durability) for f in self.files]
        n = len(conns)
        index = offset % n
        while not self.stopping:
            batch = None
            for step in range(n):
                conn = conns[(index + step) % n]
                if conn.execute(PEEK).fetchone() is None:  # a read: idle polls take no lock
                    continue
                conn.execute("BEGIN IMMEDIATE")
                rows = conn.execute(CLAIM_SQL, (time.time(), CLAIM)).fetchall()
                conn.execute("COMMIT")
                if rows:
                    batch, index = (conn, rows), (index + step + 1) % n
                    break
            if batch is None:
                with self.wake:
                    self.wake.wait(IDLE_S)
                continue
            conn, rows = batch
            done = [(json.dumps(FUNCS[name](**json.loads(args))), row_id) for row_id, name, args in rows]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(COMPLETE, done)
            conn.execute("COMMIT")
            with self.results:
                self.completed += len(done)
                self.results.notify_all()
        for conn in conns:
            conn.close()


def open(path, role="both", threads=4, shards=1, durability="normal", callbacks=False):
    return Queue(path, shards, durability)


def _row(i):
    return ("noop", json.dumps({"i": i}), time.time())


def enqueue(q, i):
    q.put([_row(i)])


def enqueue_batch(q, start, n):
    q.put([_row(i) for i in range(start, start + n)])


def prefill(q, n):
    for start in range(0, n, 10_000):
        enqueue_batch(q, start, min(10_000, n - start))


def start(q, threads):
    from adapters._common import start_threads

    start_threads(q, threads, pass_index=True)


def stop(q):
    from adapters._common import stop_threads

    stop_threads(q)


def done_counter(q, path, shards=1):
    if q is not None:  # workers in this process: their own count, exact and free
        return lambda: q.completed
    from adapters._common import counter

    return counter(shard_paths(path, shards), "SELECT count(*) FROM tasks WHERE status = 2")


def callbacks(q):
    return 0


def roundtrip(q, i, timeout=60.0):
    """Insert one task, then wait for its row to be done: woken by this process's workers,
    polling every 0.2 ms when a worker in another process runs it."""
    with q.lock:
        conn = q.conns[0]
        row_id = conn.execute(INSERT, _row(i)).lastrowid
    with q.wake:
        q.wake.notify()
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result within {timeout:.1f} s")
        with q.lock:
            status, result = conn.execute(
                "SELECT status, result FROM tasks WHERE id = ?", (row_id,)
            ).fetchone()
        if status == 2:
            return json.loads(result)
        with q.results:
            q.results.wait(0.0002)


def close(q):
    if q.threads:
        stop(q)
    for conn in q.conns:
        conn.close()
