"""litequeue (WAL, synchronous=NORMAL): a message queue with put / pop / done and no waiting
call. Each worker thread opens its own ``LiteQueue`` (one connection cannot be shared by
concurrent transactions) and loops ``pop`` -> run -> ``done``; ``done`` is the recorded
completion (no result store). Idle workers poll every 2 ms. A batch is its public
``transaction()`` around ``put`` calls. Round trips reply through a second queue table.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from importlib import metadata

from litequeue import LiteQueue

from adapters._common import IDLE_POLL_S, start_threads, stop_threads

LABEL = "litequeue"
CAPS = {"batch": True, "callbacks": False, "shards": False, "durability": False}
NOTES = (
    "threads loop pop -> run -> done (own LiteQueue each; done = recorded, no result store); "
    "idle workers poll every 2 ms; batch = put() calls inside its transaction()"
)
FILE = "litequeue.db"


def version() -> str:
    return metadata.version("litequeue")


def noop(i=0):
    return i


class Q:
    def __init__(self, path):
        os.makedirs(path, exist_ok=True)
        self.file = os.path.join(path, FILE)
        self.queue = LiteQueue(self.file)
        self.replies = LiteQueue(self.file, queue_name="results")
        self.lock = threading.Lock()
        self.stopping = False
        self.errors = 0  # "database is locked" raised to a worker (retried)
        self.threads = []

    def work(self):
        queue = LiteQueue(self.file)
        replies = LiteQueue(self.file, queue_name="results")
        while not self.stopping:
            try:
                message = queue.pop()
            except sqlite3.OperationalError:  # "database is locked" after its 5 s busy timeout
                self.errors += 1
                continue
            if message is None:
                time.sleep(IDLE_POLL_S)
                continue
            task = json.loads(message.data)
            result = noop(**task["kwargs"])
            if task.get("reply"):
                replies.put(json.dumps({"result": result}))
            while True:
                try:
                    queue.done(message.message_id)
                    break
                except sqlite3.OperationalError:
                    self.errors += 1
        queue.close()
        replies.close()


def open(path, role="both", threads=4, shards=1, durability="normal", callbacks=False):
    return Q(path)


def _data(i, reply=False):
    return json.dumps({"name": "noop", "kwargs": {"i": i}, "reply": reply})


def enqueue(q, i):
    with q.lock:
        q.queue.put(_data(i))


def enqueue_batch(q, start, n):
    with q.lock, q.queue.transaction(mode="IMMEDIATE"):
        for i in range(start, start + n):
            q.queue.put(_data(i))


def prefill(q, n):
    for start in range(0, n, 10_000):
        enqueue_batch(q, start, min(10_000, n - start))


def start(q, threads):
    start_threads(q, threads)


def stop(q):
    stop_threads(q)


def done_counter(q, path, shards=1):
    from adapters._common import counter

    return counter([os.path.join(path, FILE)], "SELECT count(*) FROM Queue WHERE status = 2")


def callbacks(q):
    return 0


def roundtrip(q, i, timeout=60.0):
    with q.lock:
        q.queue.put(_data(i, reply=True))
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result within {timeout:.1f} s")
        with q.lock:
            message = q.replies.pop()
            if message is not None:
                q.replies.done(message.message_id)
        if message is not None:
            return json.loads(message.data)["result"]
        time.sleep(IDLE_POLL_S)


def close(q):
    stop(q)
    q.queue.close()
    q.replies.close()
