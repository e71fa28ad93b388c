"""This repository's package through its modern API (``MessageQueue``), from PYTHONPATH."""

from __future__ import annotations

import glob
import os
import sqlite3
import subprocess

from message_queue_sqlite import MessageQueue

LABEL = "message_queue_sqlite (this repo), MessageQueue"
CAPS = {"batch": True, "callbacks": True, "shards": True, "durability": True}
NOTES = "send() per task, send_many() per batch; handle.result() for round trips"


def version() -> str:
    """The package version and the last commit that changed the package (``+changes`` when
    its files differ from that commit)."""
    import message_queue_sqlite

    folder = os.path.dirname(message_queue_sqlite.__file__)

    def git(*args):
        try:
            return subprocess.run(
                ["git", "-C", folder, *args], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except OSError:
            return ""

    rev = git("log", "-1", "--format=%h", "--", ".")  # the package's own last commit
    if not rev:
        return message_queue_sqlite.__version__
    changed = git("status", "--porcelain", "--", ".")
    return f"{message_queue_sqlite.__version__} (git {rev}{' +changes' if changed else ''})"


class Q:
    def __init__(self, mq, callbacks):
        self.mq = mq
        self.calls = 0
        self.callback = self._on_result if callbacks else None

    def _on_result(self, result):
        self.calls += 1


def open(path, role="both", threads=4, shards=1, durability="normal", callbacks=False):
    mq = MessageQueue(path, workers=threads, shards=shards, durability=durability)

    @mq.task
    def noop(i=0):
        return i

    return Q(mq, callbacks)


def enqueue(q, i):
    q.mq.send("noop", {"i": i}, callback=q.callback)


def enqueue_batch(q, start, n):
    q.mq.send_many([("noop", {"i": i}) for i in range(start, start + n)], callback=q.callback)


def prefill(q, n):
    for start in range(0, n, 10_000):
        enqueue_batch(q, start, min(10_000, n - start))


def start(q, threads):
    q.mq.start(threads)


def stop(q):
    q.mq.stop()


def shard_files(path):
    return sorted(glob.glob(os.path.join(path, "mq-shard-*.db")))


def done_counter(q, path, shards=1):
    """FINISHED, FAILED, CALLBACKED rows (the result or error is stored), counted without an
    index on ended rows (the package keeps none): rows end in about the order they were
    claimed, i.e. row-id order here (one priority), so each file keeps a cursor below which
    every row has ended, and each look reads only a window of rows past it. A row that ends
    beyond the window is counted once the window reaches it: the count may lag, never lead.
    Over a 1M backlog this costs a few thousand rows per look, not a million."""
    from adapters._common import counter

    files = [os.path.join(path, f"mq-shard-{k}.db") for k in range(shards)]
    state = {f: (0, 0) for f in files}  # file -> (cursor row id, rows ended at or below it)

    def ended(conn: sqlite3.Connection, f: str) -> int:
        cursor, below = state[f]
        # in SQL: this runs in the workers' process, and a Python loop would hold the GIL
        (first_open,) = conn.execute(
            "SELECT coalesce((SELECT id FROM mqs_tasks WHERE id > ?1 AND status NOT IN "
            "(3, 4, 5) ORDER BY id LIMIT 1), (SELECT max(id) + 1 FROM mqs_tasks), ?1 + 1)",
            (cursor,)).fetchone()
        ended_run, ahead = conn.execute(
            "SELECT (SELECT count(*) FROM mqs_tasks WHERE id > ?1 AND id < ?2), "
            "(SELECT count(*) FROM (SELECT status FROM mqs_tasks WHERE id > ?2 "
            "ORDER BY id LIMIT 4000) WHERE status IN (3, 4, 5))", (cursor, first_open)).fetchone()
        state[f] = (first_open - 1, below + ended_run)
        return below + ended_run + ahead

    return counter(files, ended)


def callbacks(q):
    return q.calls


def roundtrip(q, i, timeout=60.0):
    return q.mq.send("noop", {"i": i}).result(timeout=timeout)


def close(q):
    q.mq.close()
