#!/usr/bin/env python3
"""What one drained task costs: CPU per task, and the part of it that is SQLite alone.

    python3 bench/cost.py [--n 20000] [--pairs 3]

Prints, for this package (MessageQueue, callbacks on) and the raw stdlib-sqlite3 loop:
- a drain of ``n`` pre-enqueued no-op tasks with 4 threads, each in a child process of its
  own, alternated ``pairs`` times: tasks per second and CPU microseconds per task (user +
  system of the whole process: every thread, the callbacks included);
- SQLite alone, one thread, no engine: a send's single-row INSERT in autocommit (what
  per-call enqueue cannot go below), alternated in this process; and the statements each
  system runs per batch of 128 (claim, record the results, and for ours mark CALLBACKED),
  each batch step its own transaction, in microseconds per task.

The drain is one process on one core (the GIL), so CPU per task is what bounds its rate;
the difference between the two lines is what our rows (leases, fencing, delivery flags,
their indexes) and our Python (task objects, outcome routing, the callback) add.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DRAIN = r"""
import importlib, os, resource, sys, tempfile, time
sys.path[:0] = [sys.argv[3], sys.argv[4]]
ad = importlib.import_module("adapters." + sys.argv[1])
n = int(sys.argv[2])
folder = tempfile.mkdtemp(prefix="mqs-cost-")
q = ad.open(folder, role="both", threads=4, **({"callbacks": True} if ad.CAPS["callbacks"] else {}))
ad.prefill(q, n)
done = ad.done_counter(q, folder, 1)
finished = (lambda: ad.callbacks(q)) if ad.CAPS["callbacks"] else done
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
ad.start(q, 4)
while finished() < n or done() < n:
    time.sleep(0.002)
elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
ad.stop(q)
print(n / elapsed, cpu / n * 1e6)
"""


def drain(system: str, n: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", DRAIN, system, str(n), HERE, ROOT],
                         capture_output=True, text=True, timeout=600, check=True)
    rate, cpu = out.stdout.split()[-2:]
    return float(rate), float(cpu)


def timed_transactions(conn):
    """``step(name, sql, params, many=False)``: run one statement in a transaction of its own,
    adding its time (commit included) to ``steps[name]``; returns its rows."""
    steps: dict[str, float] = defaultdict(float)

    def step(name: str, sql: str, params, many: bool = False):
        conn.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        result = (conn.executemany if many else conn.execute)(sql, params).fetchall()
        conn.execute("COMMIT")
        steps[name] += time.perf_counter() - started
        return result

    return steps, step


OWNER = "0123456789abcdef"


def open_ours():
    """A shard of ours (our schema, pragmas and functions), its send's INSERT, and a row."""
    sys.path.insert(0, ROOT)
    from message_queue_sqlite.backends.sqlite.backend import Q
    from message_queue_sqlite.backends.sqlite.connection import connect

    conn = connect(os.path.join(tempfile.mkdtemp(prefix="mqs-cost-"), "mq-shard-0.db"), "normal")
    return conn, Q["enqueue_plain"], lambda i: ("noop", json.dumps({"i": i}), 0, OWNER, 1, time.time(),
                                                "default")


def open_raw():
    """The raw loop's file, its INSERT, and a row."""
    sys.path.insert(0, HERE)
    import sqlite3

    from adapters import raw

    conn = sqlite3.connect(os.path.join(tempfile.mkdtemp(prefix="mqs-cost-"), "raw.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(raw.SCHEMA)
    return conn, raw.INSERT, lambda i: ("noop", json.dumps({"i": i}), time.time())


def insert_each(opener, n: int) -> float:
    """A send's SQLite alone: ``n`` single-row INSERTs, each its own (autocommit) transaction,
    into a fresh file, after 200 to warm up; microseconds per INSERT."""
    conn, sql, row = opener()
    for i in range(200):
        conn.execute(sql, row(i))
    started = time.perf_counter()
    for i in range(n):
        conn.execute(sql, row(i))
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed / n * 1e6


def prefilled(opener, n: int):
    conn, sql, row = opener()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(sql, [row(i) for i in range(n)])
    conn.execute("COMMIT")
    return conn


def sql_ours(n: int) -> dict[str, float]:
    from message_queue_sqlite.backends.sqlite.backend import Q

    conn = prefilled(open_ours, n)
    now, owner = time.time(), OWNER
    steps, step = timed_transactions(conn)

    while rows := step("claim", Q["claim_batch"], (owner, 60.0, 128, "default")):
        done = [(r[0], r[4], str(r[0]), 1, now, now, owner) for r in rows]
        step("complete", Q["complete_finished"], done, True)
        step("mark", Q["mark_callbacked"], (json.dumps([r[0] for r in rows]),))
    conn.close()
    return {name: seconds / n * 1e6 for name, seconds in steps.items()}


def sql_raw(n: int) -> dict[str, float]:
    from adapters import raw

    conn = prefilled(open_raw, n)
    steps, step = timed_transactions(conn)

    while rows := step("claim", raw.CLAIM_SQL, (time.time(), 128)):
        step("complete", raw.COMPLETE, [(str(r[0]), r[0]) for r in rows], True)
    conn.close()
    return {name: seconds / n * 1e6 for name, seconds in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"raw": [], "ours": []}
    for _ in range(args.pairs):
        for system in runs:
            runs[system].append(drain(system, args.n))
    print(f"drain {args.n:,} no-op tasks, 4 threads, {args.pairs} alternated runs each:")
    for system, found in runs.items():
        rates = ", ".join(f"{rate:,.0f}/s" for rate, _ in found)
        cpus = ", ".join(f"{cpu:.1f}" for _, cpu in found)
        print(f"  {system:5s} {rates}   CPU µs per task: {cpus}")
    ratio = statistics.median(r for r, _ in runs["ours"]) / statistics.median(r for r, _ in runs["raw"])
    print(f"  ours / raw, medians: {ratio:.2f}x")
    inserts: dict[str, list[float]] = {"raw": [], "ours": []}
    for _ in range(2 * args.pairs + 1):  # short: more alternations, in this process
        for system, opener in (("raw", open_raw), ("ours", open_ours)):
            inserts[system].append(insert_each(opener, args.n // 4))
    medians = {system: statistics.median(found) for system, found in inserts.items()}
    print(f"SQLite alone, a send's INSERT (autocommit, {args.n // 4:,} each, "
          f"{2 * args.pairs + 1} alternated): raw {medians['raw']:.1f} µs, ours {medians['ours']:.1f} µs"
          f" ({medians['ours'] / medians['raw']:.2f}x; ours' row and indexes, its commit included)")
    for system, measure in (("raw", sql_raw), ("ours", sql_ours)):
        steps = measure(args.n)
        parts = ", ".join(f"{name} {value:.2f}" for name, value in steps.items())
        print(f"SQLite alone, {system}: {sum(steps.values()):.1f} µs per task ({parts}; commits included)")


if __name__ == "__main__":
    main()
