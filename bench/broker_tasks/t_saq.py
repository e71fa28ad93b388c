"""SAQ's coroutines (Redis db 15): ``saq t_saq.settings``."""

from __future__ import annotations

import asyncio
import os

from saq import Queue

queue = Queue.from_url("redis://127.0.0.1:6379/15")


async def noop(ctx, *, i=0):
    return i


async def asleep(ctx, *, i=0):
    await asyncio.sleep(0.01)
    return i


settings = {
    "queue": queue,
    "functions": [noop, asleep],
    "concurrency": int(os.environ.get("BENCH_CONCURRENCY", "100")),
}
