#!/usr/bin/env python3
"""What the admin paths cost at a million rows: the counts, the listings, requeue and removal.

    python3 bench/admin.py [--rows 1000000] [--broker-url postgresql://...] [--repeat 5]

Builds one shard of ``rows`` tasks through the package's storage interface (so the kept
counts are kept as in real use): about 1% failed, 1,000 ready, 100 scheduled, 10 running,
the rest finished, then times each call a dashboard or an operator makes (median of
``repeat``, in milliseconds), beside a full scan of the table (what ``stats()`` cost before
the counts were kept) for scale. A dashboard polling every second wants each well under 10 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from message_queue_sqlite import MessageQueue, TaskStatus  # noqa: E402
from message_queue_sqlite.backends.base import Completion, NewTask  # noqa: E402

BATCH = 1_000  # PostgreSQL's completion statement finds each row's values by position: O(batch²)


def build(mq: MessageQueue, rows: int) -> tuple[str, str]:
    """Fill shard 0; returns (a failed task's id, a ready task's id)."""
    shard = mq.engine.shards[0]
    node = mq.engine.node

    def new(delay: float = 0.0) -> NewTask:
        return NewTask(task_name="work", args='{"n": 1}', priority=0, sender=node, notify=False,
                       cache_owner=None, max_retries=0, retry=None, delay=delay, created_at=time.time())

    ended = rows - 1_000 - 100 - 10
    done = 0
    while done < ended:
        n = min(BATCH, ended - done)
        shard.enqueue([new() for _ in range(n)])
        _, claims = shard.complete_and_claim([], "bench", n, 600.0)
        now = time.time()
        shard.complete_and_claim(
            [Completion(c.row_id, c.attempt, 4 if c.row_id % 100 == 0 else 3,
                        '"boom"' if c.row_id % 100 == 0 else "1", None, now, now) for c in claims],
            "bench", 0, 600.0)
        done += n
    shard.enqueue([new() for _ in range(10)])
    shard.complete_and_claim([], "bench", 10, 600.0)  # running
    shard.enqueue([new(delay=3600.0) for _ in range(100)])
    ready = shard.enqueue([new() for _ in range(1_000)])
    failed = mq.tasks(status=TaskStatus.FAILED, limit=1)[0].task_id
    return failed, f"{shard.index}-{ready[0]}"


def timed(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def full_scan(mq: MessageQueue) -> Callable[[], object]:
    shard = mq.engine.shards[0]
    sql = "SELECT status, coalesce(outcome, 0), count(*) FROM {t} GROUP BY 1, 2"
    if hasattr(shard, "path"):
        import sqlite3

        conn = sqlite3.connect(shard.path)
        return lambda: conn.execute(sql.format(t="mqs_tasks")).fetchall()
    import psycopg

    conn = psycopg.connect(mq.engine.config.broker_url.split("?")[0])
    return lambda: conn.execute(sql.format(t=shard.name)).fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--broker-url", help="PostgreSQL URL (with ?schema=NAME of its own)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="mqs-admin-")
    mq = MessageQueue(folder, broker_url=args.broker_url)
    started = time.perf_counter()
    failed, ready = build(mq, args.rows)
    print(f"backend: {'postgresql' if args.broker_url else 'sqlite'}; {args.rows:,} rows built in "
          f"{time.perf_counter() - started:.0f} s; median of {args.repeat}, ms")
    calls: list[tuple[str, Callable[[], object]]] = [
        ("full scan GROUP BY (for scale)", full_scan(mq)),
        ("mq.stats()", mq.stats),
        ("mq.tasks()", mq.tasks),
        ("mq.tasks(status=FAILED)", lambda: mq.tasks(status=TaskStatus.FAILED)),
        ("mq.tasks(status=FINISHED)", lambda: mq.tasks(status=TaskStatus.FINISHED)),
        ("mq.tasks(status=NOT_STARTED)", lambda: mq.tasks(status=TaskStatus.NOT_STARTED)),
        ("mq.tasks(status=SCHEDULED)", lambda: mq.tasks(status=TaskStatus.SCHEDULED)),
        ("mq.tasks(status=RUNNING)", lambda: mq.tasks(status=TaskStatus.RUNNING)),
        ("mq.tasks(task_name='work')", lambda: mq.tasks(task_name="work")),
        ("mq.timings(limit=1000)", lambda: mq.timings(limit=1000)),
        ("mq.retry_failed(task_id=one) (write)", lambda: mq.retry_failed(task_id=failed)),
        ("mq.purge(task_id=one) (write)", lambda: mq.purge(task_id=ready)),
    ]
    first = {name: timed(call, args.repeat) for name, call in calls}
    if not args.broker_url:
        for name, ms in first.items():
            print(f"| {name:40} | {ms:9.2f} |")
        mq.close()
        return
    # Right after a burst of a million completions the partial indexes of the passing states
    # (ready, running) still hold their dead entries, until autovacuum has been by.
    settle(mq)
    print(f"| {'call':40} | {'after the burst':>15} | {'after VACUUM':>12} |")
    for name, call in calls:
        print(f"| {name:40} | {first[name]:15.2f} | {timed(call, args.repeat):12.2f} |")
    mq.close()


def settle(mq: MessageQueue) -> None:
    """What autovacuum and the housekeeper do between bursts: VACUUM ANALYZE, fold the counts."""
    import psycopg

    with psycopg.connect(mq.engine.config.broker_url.split("?")[0], autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {mq.engine.shards[0].name}")
    mq.engine.shards[0].maintain()


if __name__ == "__main__":
    main()
