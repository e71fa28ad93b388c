"""arq's coroutines (Redis db 14): ``arq t_arq.WorkerSettings``."""

from __future__ import annotations

import asyncio
import os

from arq.connections import RedisSettings

REDIS = RedisSettings(host="127.0.0.1", port=6379, database=14)


async def noop(ctx, i=0):
    return i


async def asleep(ctx, i=0):
    await asyncio.sleep(0.01)
    return i


class WorkerSettings:
    functions = [noop, asleep]
    redis_settings = REDIS
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "100"))
    poll_delay = 0.005  # arq's default is 0.5 s between looks at the queue
    keep_result = 3600
    handle_signals = True
