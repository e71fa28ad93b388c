"""The original ``message-queue-sqlite==2.0.1`` from PyPI, in its own virtualenv (it has our
import name). Driven exactly as its README shows: ``init_server`` / ``start_server`` in a
thread / ``send_message(name, kwargs, callback, priority)``.

Its INFO log line per task is silenced (root logger set to WARNING) so the figures are the
queue's, not the terminal's. Its tables: ``middleware_N.db`` / ``messages``; a row is done
when its status is FINISHED (3), FAILED (4), CALLBACKED (5) or CALLBACKING (6).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from importlib import metadata

from message_queue_sqlite import discover_and_mount_ts, init_server, start_server, stop_server
from message_queue_sqlite.config import Config

logging.getLogger().setLevel(logging.WARNING)

# Its files use the rollback journal, where a reader blocks writers: count rarely, so the
# measuring does not slow it down (the figures are resolved to ~0.1 s).
POLL_S = 0.1

LABEL = "message-queue-sqlite 2.0.1 (PyPI)"
CAPS = {"batch": False, "callbacks": True, "shards": True, "durability": False}
NOTES = (
    "send_message() per task (no batch call); its workers poll (1 ms .. 1 s, adaptive), "
    "claim max_workers rows per poll; no handle: a round trip waits for the callback in "
    "one process, and polls the row count every 1 ms across processes (its callbacks "
    "only run in a process that also runs start_server)"
)


def version() -> str:
    return metadata.version("message-queue-sqlite")


class Q:
    def __init__(self, path, threads, shards, callbacks):
        self.path = path
        self.shards = shards
        tasks = discover_and_mount_ts("seed_tasks")
        self.server, self.client, self.send = init_server(
            tasks, Config(max_workers=threads, middleware_path=path, middleware_num=shards)
        )
        self.calls = 0
        self.callback = self._on_result if callbacks else (lambda result: None)
        self.thread = None
        self.count = None

    def _on_result(self, result):
        self.calls += 1


def open(path, role="both", threads=4, shards=1, durability="normal", callbacks=False):
    return Q(path, threads, shards, callbacks)


def enqueue(q, i):
    q.send("noop", {"i": i}, q.callback, 0)


def prefill(q, n):
    """What n ``send_message`` calls store, written in one transaction (a per-call prefill
    of 20,000 rows takes minutes). The callback is registered the way send_message does."""
    from message_queue_sqlite.task_service import Services

    back_id = id(callable)  # sic: 2.0.1 keys every callback by id(callable)
    Services.register_function(back_id, q.callback)
    rows = [
        (str(uuid.uuid4()), json.dumps({"task_name": "noop", "task_args": {"i": i}}), 0, back_id)
        for i in range(n)
    ]
    conn = sqlite3.connect(os.path.join(q.path, "middleware_0.db"))
    conn.executemany("INSERT INTO messages (id, content, priority, back_id) VALUES (?,?,?,?)", rows)
    conn.commit()
    conn.close()


def start(q, threads):
    q.thread = threading.Thread(target=start_server, args=(q.server, q.client), daemon=True)
    q.thread.start()


def stop(q):
    if q.thread is not None:
        stop_server(q.server, q.client)
        q.thread.join(timeout=5)  # its loops sleep up to ~1 s (or more) between polls
        q.thread = None


def done_counter(q, path, shards=1):
    from adapters._common import counter

    files = [os.path.join(path, f"middleware_{k}.db") for k in range(shards)]
    return counter(files, "SELECT count(*) FROM messages WHERE status IN (3, 4, 5, 6)")


def callbacks(q):
    return q.calls


def roundtrip(q, i, timeout=60.0):
    if q.thread is not None:  # workers and callback listener in this process
        event = threading.Event()
        q.send("noop", {"i": i}, lambda result: event.set(), 0)
        if not event.wait(timeout):
            raise TimeoutError(f"no callback within {timeout:.1f} s")
        return i
    if q.count is None:
        q.count = done_counter(q, q.path, q.shards)
    before = q.count()
    q.send("noop", {"i": i}, q.callback, 0)
    deadline = time.monotonic() + timeout
    while q.count() <= before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result within {timeout:.1f} s")
        time.sleep(0.001)
    return i


def close(q):
    stop(q)
