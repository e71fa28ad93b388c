"""Ours' tasks for ``mqs worker t_ours:mq`` (the queue folder comes from $BENCH_MQ_PATH)."""

from __future__ import annotations

import asyncio
import os

from work import sleep10 as _sleep10
from work import spin

from message_queue_sqlite import MessageQueue

_options = {"workers": int(os.environ.get("BENCH_THREADS", "4"))}
if os.environ.get("BENCH_PROCESSES"):  # child processes for executor="process" tasks
    _options["processes"] = int(os.environ["BENCH_PROCESSES"])
mq = MessageQueue(os.environ["BENCH_MQ_PATH"], **_options)


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


def cpu_proc(iters=0):
    return spin(iters)


try:  # executor="process" is new: a build without it refuses the option
    mq.task(cpu_proc, executor="process")
except (TypeError, ValueError) as exc:
    PROCESS_REFUSED = str(exc).split(". ")[0]
else:
    PROCESS_REFUSED = None
