#!/usr/bin/env python3
"""How ``await mq.asend(...)`` should store its task: in the loop's thread, or on a thread.

    PYTHONPATH=. python3 bench/async_send.py [--n 2000] [--pg postgresql://postgres@127.0.0.1:5432/test]

For each backend (SQLite; PostgreSQL when --pg is given) and each way (``inline``: the
blocking send in the event loop's thread; ``thread``: ``asyncio.to_thread``), it measures
one coroutine sending n tasks one after another (µs per send) while a 1 ms ticker coroutine
records how late it runs (the loop's stalls: what another request of a web server would
wait), then 50 coroutines sending n in all at once (sends/s). On PostgreSQL it also times
psycopg's own ``AsyncConnection`` doing a bare one-row insert, the floor of an async driver.
No workers run: this is the send alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from message_queue_sqlite import MessageQueue  # noqa: E402
from message_queue_sqlite.engine.engine import Engine  # noqa: E402


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    """Sleeps 1 ms at a time; records how much later than asked it woke."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t - 0.001)


async def measure(mq: MessageQueue, n: int) -> dict[str, float]:
    stop, lags = asyncio.Event(), []
    tick = asyncio.create_task(ticker(stop, lags))
    await asyncio.sleep(0.005)
    t0 = time.perf_counter()
    for i in range(n):
        await mq.asend("noop", {"i": i})
    sequential_us = (time.perf_counter() - t0) / n * 1e6
    stop.set()
    await tick

    async def sender(k: int, count: int) -> None:
        for i in range(count):
            await mq.asend("noop", {"i": i})

    t0 = time.perf_counter()
    await asyncio.gather(*(sender(k, n // 50) for k in range(50)))
    rate = (n // 50 * 50) / (time.perf_counter() - t0)
    return {"seq_us": sequential_us, "rate": rate, "lag_max_ms": max(lags) * 1e3,
            "lag_p99_ms": sorted(lags)[int(len(lags) * 0.99)] * 1e3}


def run(label: str, make, n: int, reps: int) -> None:
    for way in ("inline", "thread", "inline", "thread")[: 2 * reps]:
        Engine.async_inline = property(lambda self, w=way: w == "inline")  # type: ignore[assignment]
        mq = make()

        @mq.task
        def noop(i=0):
            return i

        asyncio.run(measure(mq, 200))  # warm up (schema, connections, the executor's threads)
        figures = asyncio.run(measure(mq, n))
        mq.close()
        print(f"{label:<10} {way:<7} {figures['seq_us']:8.0f} µs/send sequential  "
              f"{figures['rate']:8,.0f} sends/s (50 coroutines)  loop stall max "
              f"{figures['lag_max_ms']:6.2f} ms, p99 {figures['lag_p99_ms']:5.2f} ms", flush=True)


async def psycopg_async_floor(dsn: str, schema: str, n: int) -> float:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f'CREATE TABLE "{schema}".floor (id bigserial PRIMARY KEY, args text)')
        t0 = time.perf_counter()
        for i in range(n):
            await conn.execute(f'INSERT INTO "{schema}".floor (args) VALUES (%s)', (str(i),))
        return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--pg", help="a PostgreSQL DSN: measure that backend too")
    args = parser.parse_args()
    folders: list[str] = []

    def sqlite_queue() -> MessageQueue:
        folders.append(tempfile.mkdtemp(prefix="mqs-async-"))
        return MessageQueue(folders[-1])

    try:
        run("sqlite", sqlite_queue, args.n, args.reps)
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    if not args.pg:
        return
    import psycopg

    schema = f"mqs_bench_{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in args.pg else "?"
    try:
        run("postgres", lambda: MessageQueue(broker_url=f"{args.pg}{separator}schema={schema}"),
            args.n, args.reps)
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        floor = asyncio.run(psycopg_async_floor(args.pg, schema, args.n))
        print(f"postgres   psycopg AsyncConnection, bare one-row INSERT: {floor:.0f} µs sequential")
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
