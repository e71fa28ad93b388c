"""huey's ``SqliteHuey`` (its defaults: WAL, SQLite's default synchronous=FULL), with a
thread consumer in the worker process.

Consumer polling is set for low latency: ``initial_delay=1 ms``, backoff 1.15, at most
100 ms between polls when idle (huey's defaults are 100 ms .. 10 s). A round trip waits
with ``result.get(blocking=True)`` polling every 1 ms (its default starts at 50 ms).
``task.map()`` enqueues one by one, so huey has no batched enqueue here.
"""

from __future__ import annotations

import os
from importlib import metadata

from huey import SqliteHuey

LABEL = "huey SqliteHuey"
CAPS = {"batch": False, "callbacks": False, "shards": False, "durability": False}
NOTES = (
    "thread consumer, poll 1 ms..100 ms (backoff 1.15); result.get(blocking) polls every "
    "1 ms; no batch enqueue (map() enqueues one by one); done = result stored in kv"
)
FILE = "huey.db"


def version() -> str:
    return metadata.version("huey")


class Q:
    def __init__(self, path):
        os.makedirs(path, exist_ok=True)
        self.huey = SqliteHuey("bench", filename=os.path.join(path, FILE))

        @self.huey.task()
        def noop(i=0):
            return i

        self.noop = noop
        self.consumer = None


def open(path, role="both", threads=4, shards=1, durability="normal", callbacks=False):
    return Q(path)


def enqueue(q, i):
    q.noop(i)


def prefill(q, n):
    """n tasks as ``noop(i)`` would store them, in one transaction (not timed)."""
    huey = q.huey
    rows = [(huey.storage.name, huey.storage.to_blob(huey.serialize_task(q.noop.s(i))), 0) for i in range(n)]
    with huey.storage.db(commit=True) as cursor:
        cursor.executemany("insert into task (queue, data, priority) values (?, ?, ?)", rows)


def start(q, threads):
    q.consumer = q.huey.create_consumer(
        workers=threads,
        worker_type="thread",
        periodic=False,
        initial_delay=0.001,
        backoff=1.15,
        max_delay=0.1,
        check_worker_health=False,
    )
    q.consumer.start()


def stop(q):
    if q.consumer is not None:
        q.consumer.stop(graceful=True)
        q.consumer = None


def done_counter(q, path, shards=1):
    from adapters._common import counter

    return counter([os.path.join(path, FILE)], "SELECT count(*) FROM kv WHERE queue = 'bench'")


def callbacks(q):
    return 0


def roundtrip(q, i, timeout=60.0):
    from huey.exceptions import ResultTimeout

    try:
        return q.noop(i).get(blocking=True, timeout=timeout, backoff=1.0, max_delay=0.001)
    except ResultTimeout:
        raise TimeoutError(f"no result within {timeout:.1f} s") from None


def close(q):
    stop(q)
    q.huey.storage.close()
