"""This repository's package through the seed-compatible API (``init_server`` & co.)."""

from __future__ import annotations

import threading

from adapters import ours
from message_queue_sqlite import (
    Config,
    discover_and_mount_ts,
    init_server,
    start_server,
    stop_server,
)

LABEL = "message_queue_sqlite (this repo), seed API"
CAPS = {"batch": False, "callbacks": True, "shards": True, "durability": False}
NOTES = (
    "send_message() per task (the seed API has no batch call); callbacks for round trips; "
    "start_server() in a thread"
)
version = ours.version


class Q:
    def __init__(self, path, threads, shards, callbacks):
        tasks = discover_and_mount_ts("seed_tasks")
        self.server, self.client, self.send = init_server(
            tasks, Config(middleware_path=path, max_workers=threads, middleware_num=shards)
        )
        self.calls = 0
        self.callback = self._on_result if callbacks else None
        self.thread = None

    def _on_result(self, result):
        self.calls += 1


def open(path, role="both", threads=4, shards=1, durability="normal", callbacks=False):
    return Q(path, threads, shards, callbacks)


def enqueue(q, i):
    q.send("noop", {"i": i}, q.callback)


def prefill(q, n):
    for i in range(n):
        q.send("noop", {"i": i}, q.callback)


def start(q, threads):
    q.thread = threading.Thread(target=start_server, args=(q.server, q.client), daemon=True)
    q.thread.start()


def stop(q):
    if q.thread is not None:
        stop_server(q.server, q.client)
        q.thread.join()
        q.thread = None


done_counter = ours.done_counter


def callbacks(q):
    return q.calls


def roundtrip(q, i, timeout=60.0):
    box = []
    event = threading.Event()

    def got(result):
        box.append(result)
        event.set()

    q.send("noop", {"i": i}, got)
    if not event.wait(timeout):
        raise TimeoutError(f"no callback within {timeout:.1f} s")
    return box[0]


def close(q):
    if q.thread is not None:
        stop(q)
    else:
        stop_server(q.server, q.client)
