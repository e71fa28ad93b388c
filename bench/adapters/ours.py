"""This repository's package through its modern API (``MessageQueue``), from PYTHONPATH."""

from __future__ import annotations

import glob
import os
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
    from adapters._common import counter

    files = [os.path.join(path, f"mq-shard-{k}.db") for k in range(shards)]
    # FINISHED, FAILED, CALLBACKED: the result (or error) is stored. "ended_at > 0" (always true
    # for those) lets SQLite count on the partial index of ended tasks instead of scanning
    # every row, which over a 1M backlog would cost 0.2 s per look.
    return counter(files, "SELECT count(*) FROM mqs_tasks WHERE status IN (3, 4, 5) AND ended_at > 0")


def callbacks(q):
    return q.calls


def roundtrip(q, i, timeout=60.0):
    return q.mq.send("noop", {"i": i}).result(timeout=timeout)


def close(q):
    q.mq.close()
