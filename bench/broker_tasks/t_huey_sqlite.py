"""huey's tasks on SQLite (``SqliteHuey``, the file $BENCH_HUEY_FILE): ``huey_consumer
t_huey_sqlite.huey``, for the worker-process workloads."""

from __future__ import annotations

import os

from huey import SqliteHuey
from work import sleep10 as _sleep10
from work import spin

huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_FILE"])


@huey.task()
def noop(i=0):
    return i


@huey.task()
def sleep10(i=0):
    return _sleep10(i)


@huey.task()
def cpu(iters=0):
    return spin(iters)
