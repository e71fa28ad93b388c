"""Ours' tasks for ``mqs worker t_ours:mq`` (the queue folder comes from $BENCH_MQ_PATH)."""

from __future__ import annotations

import asyncio
import os

from work import sleep10 as _sleep10
from work import spin

from message_queue_sqlite import MessageQueue

mq = MessageQueue(os.environ["BENCH_MQ_PATH"], workers=int(os.environ.get("BENCH_THREADS", "4")))


@mq.task
def noop(i=0):
    return i


@mq.task
def sleep10(i=0):
    return _sleep10(i)


@mq.task
def cpu(iters=0):
    return spin(iters)


async def asleep(i=0):
    await asyncio.sleep(0.01)
    return i


try:  # async def tasks are new; a build without them refuses the registration
    mq.task(asleep)
except TypeError as exc:
    ASYNC_REFUSED = str(exc).split(". ")[0]
else:
    ASYNC_REFUSED = None
