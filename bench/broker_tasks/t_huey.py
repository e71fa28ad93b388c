"""huey's tasks on Redis (``RedisHuey``, db 13): ``huey_consumer t_huey.huey``."""

from __future__ import annotations

from huey import RedisHuey
from work import sleep10 as _sleep10
from work import spin

huey = RedisHuey("bench", host="127.0.0.1", port=6379, db=13)


@huey.task()
def noop(i=0):
    return i


@huey.task()
def sleep10(i=0):
    return _sleep10(i)


@huey.task()
def cpu(iters=0):
    return spin(iters)
