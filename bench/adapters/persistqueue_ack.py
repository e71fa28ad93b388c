"""persist-queue's ``SQLiteAckQueue`` (its defaults: WAL, synchronous=FULL, pickle). It is a
queue, not a task runner: the adapter's worker threads share one queue object
(``multithreading=True``) and loop ``get`` -> run -> ``ack``; ``ack`` is the recorded
completion (it stores no result). Its blocking ``get`` is only woken by puts in the same
object, so workers wait at most 2 ms per ``get`` and poll for other processes' puts.
Round trips send the result back through a second ack queue (``name="results"``).
"""

from __future__ import annotations

import os
import time
from importlib import metadata

from persistqueue import SQLiteAckQueue
from persistqueue.exceptions import Empty

from adapters._common import IDLE_POLL_S, start_threads, stop_threads

LABEL = "persist-queue SQLiteAckQueue"
CAPS = {"batch": False, "callbacks": False, "shards": False, "durability": False}
NOTES = (
    "threads loop get -> run -> ack (ack = recorded; no result store); get waits <= 2 ms, "
    "so idle workers poll every 2 ms; results of round trips go back through a 2nd ack queue"
)
FILE = "data.db"


def version() -> str:
    return metadata.version("persist-queue")


def noop(i=0):
    return i


class Q:
    def __init__(self, path):
        self.path = path
        self.queue = SQLiteAckQueue(path, multithreading=True, auto_resume=False)
        self.replies = SQLiteAckQueue(path, name="results", multithreading=True, auto_resume=False)
        self.stopping = False
        self.threads = []

    def work(self):
        while not self.stopping:
            try:
                item = self.queue.get(block=True, timeout=IDLE_POLL_S, raw=True)
            except Empty:
                continue
            task = item["data"]
            result = noop(**task["kwargs"])
            if task.get("reply"):
                self.replies.put({"i": task["kwargs"]["i"], "result": result})
            self.queue.ack(id=item["pqid"])


def open(path, role="both", threads=4, shards=1, durability="normal", callbacks=False):
    return Q(path)


def enqueue(q, i):
    q.queue.put({"name": "noop", "kwargs": {"i": i}})


def prefill(q, n):
    """n rows as put() stores them, in one transaction (per-call puts fsync each; not timed)."""
    dumps = q.queue._serializer.dumps
    now = time.time()
    rows = [(dumps({"name": "noop", "kwargs": {"i": i}}), now) for i in range(n)]
    with q.queue.tran_lock, q.queue._putter as conn:
        conn.executemany(q.queue._sql_insert, rows)
    q.queue.total += n


def start(q, threads):
    start_threads(q, threads)


def stop(q):
    stop_threads(q)


def done_counter(q, path, shards=1):
    from adapters._common import counter

    return counter([os.path.join(path, FILE)], "SELECT count(*) FROM ack_queue_default WHERE status = 5")


def callbacks(q):
    return 0


def roundtrip(q, i, timeout=60.0):
    q.queue.put({"name": "noop", "kwargs": {"i": i}, "reply": True})
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result within {timeout:.1f} s")
        try:
            item = q.replies.get(block=True, timeout=IDLE_POLL_S, raw=True)
        except Empty:
            continue
        q.replies.ack(id=item["pqid"])
        return item["data"]["result"]


def close(q):
    stop(q)
    q.queue.close()
    q.replies.close()
