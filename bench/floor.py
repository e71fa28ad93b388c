#!/usr/bin/env python3
"""What this machine's floor is for an idle round trip: the numbers the latency goals meet.

    python3 bench/floor.py [--n 300] [--gap 0.01]

Prints (standard library only, nothing of this package):
- a thread hand-off: one ``threading.Event`` ping-pong between two threads (a round trip is
  two hand-offs), warm (back to back) and idle (``gap`` seconds apart, as the latency workload);
- a minimal in-process round trip: the sender inserts a row (autocommit) and wakes one
  worker thread, which claims it (``UPDATE ... RETURNING``), records the result in a write
  transaction and sets the sender's event: two hand-offs and three write transactions, the
  least any SQLite queue with a worker thread can do. Our engine adds to this a lookup of
  the task by the waiting sender, leases and fencing in the rows, and more threads (change
  watcher, callbacks) competing for the interpreter lock.

- the same few microseconds of Python (a loop and a ``json.dumps``), back to back and
  right after ``gap`` seconds asleep: on a virtual machine the code after a pause runs
  several times slower (its caches went cold while the CPU idled), so an idle round trip
  costs in proportion to how much code and data its path touches, not only to its hand-offs.

On a virtual machine where waking a thread costs tens of microseconds, this floor is what
limits an in-process round trip; compare the engine's p50 with it, not with a laptop's.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import threading
import time


def handoff(n: int, gap: float) -> tuple[float, float]:
    """Median ping-pong round trip in µs: back to back, and ``gap`` seconds apart."""
    ping, pong = threading.Event(), threading.Event()

    def other() -> None:
        while True:
            ping.wait()
            ping.clear()
            pong.set()

    threading.Thread(target=other, daemon=True).start()

    def once() -> float:
        start = time.perf_counter()
        ping.set()
        pong.wait()
        pong.clear()
        return time.perf_counter() - start

    return back_to_back_and_after_pauses(once, n, gap)


def back_to_back_and_after_pauses(once, n: int, gap: float) -> tuple[float, float]:
    """Median µs of ``once()`` (which returns its own seconds): n calls back to back, then n
    each right after ``gap`` seconds asleep."""
    warm = [once() for _ in range(n)]
    idle = []
    for _ in range(n):
        time.sleep(gap)
        idle.append(once())
    return statistics.median(warm) * 1e6, statistics.median(idle) * 1e6


def cold_code(n: int, gap: float) -> tuple[float, float]:
    """Median µs of the same small piece of Python: back to back, and right after a sleep."""
    def work() -> str:
        total = 0
        for i in range(200):
            total += i
        return json.dumps({"i": total})

    def once() -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    return back_to_back_and_after_pauses(once, n, gap)


def minimal_round_trip(n: int, gap: float) -> tuple[float, float]:
    """p50 and p99 in ms of the least an SQLite queue with one worker thread can do."""
    folder = tempfile.mkdtemp(prefix="mqs-floor-")
    conn = sqlite3.connect(os.path.join(folder, "floor.db"), isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, args TEXT NOT NULL, "
                 "status INTEGER NOT NULL DEFAULT 0, result TEXT)")
    conn.execute("CREATE INDEX tasks_queued ON tasks (id) WHERE status = 0")
    lock = threading.Lock()  # one writer connection, shared as our engine shares its own
    wake = threading.Condition()
    waiting: dict[int, threading.Event] = {}
    pending = [0]

    def worker() -> None:
        while True:
            with wake:
                while not pending[0]:
                    wake.wait()
                pending[0] = 0
            with lock:
                rows = conn.execute("UPDATE tasks SET status = 1 WHERE id IN (SELECT id FROM tasks "
                                    "WHERE status = 0 ORDER BY id LIMIT 128) RETURNING id, args").fetchall()
            done = [(json.dumps(json.loads(args)["i"]), row_id) for row_id, args in rows]
            with lock:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("UPDATE tasks SET status = 2, result = ? WHERE id = ?", done)
                conn.execute("COMMIT")
            for _, row_id in done:
                waiting.pop(row_id).set()

    threading.Thread(target=worker, daemon=True).start()
    samples = []
    for i in range(n):
        time.sleep(gap)
        start = time.perf_counter()
        event = threading.Event()
        with lock:
            row_id = conn.execute("INSERT INTO tasks (args) VALUES (?)", (json.dumps({"i": i}),)).lastrowid
            waiting[row_id] = event
        with wake:
            pending[0] = 1
            wake.notify()
        event.wait()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2] * 1e3, samples[int(len(samples) * 0.99)] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.01, help="seconds between idle round trips")
    args = parser.parse_args()
    warm, idle = handoff(args.n, args.gap)
    hot, cold = cold_code(args.n, args.gap)
    p50, p99 = minimal_round_trip(args.n, args.gap)
    print(f"thread ping-pong round trip (two hand-offs): {warm:.0f} µs back to back, "
          f"{idle:.0f} µs after {args.gap * 1e3:.0f} ms idle")
    print(f"the same Python (a loop, a json.dumps): {hot:.1f} µs back to back, {cold:.1f} µs "
          f"right after {args.gap * 1e3:.0f} ms asleep ({cold / hot:.1f}x)")
    print(f"minimal in-process SQLite round trip ({args.n}, {args.gap * 1e3:.0f} ms apart): "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
