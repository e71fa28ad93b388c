"""dramatiq's actors: Redis broker (db 11), results through its Results middleware (db 12)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend
from work import sleep10 as _sleep10
from work import spin

broker = RedisBroker(url="redis://127.0.0.1:6379/11")
backend = RedisBackend(url="redis://127.0.0.1:6379/12")
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def noop(i=0):
    return i


@dramatiq.actor(store_results=True, max_retries=0)
def sleep10(i=0):
    return _sleep10(i)


@dramatiq.actor(store_results=True, max_retries=0)
def cpu(iters=0):
    return spin(iters)
