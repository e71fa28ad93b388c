"""Celery on the local Redis: broker db 8, result backend db 9; its own ``celery worker``
process with the prefork pool (concurrency = the workload's), started by the trial."""

from __future__ import annotations

from importlib import metadata

import redis

from adapters._broker import BrokerQ, exports
from adapters._spawn import DBS, bin_path, redis_url

LABEL = "Celery (Redis)"
CAPS = {"batch": False, "callbacks": False, "shards": False, "durability": False}
SPAWNS = True
NOTES = (
    "Redis broker (db 8) + Redis result backend (db 9), Redis not persisted to disk (no RDB/AOF "
    "here: a restart loses the queue); `celery worker --pool prefork --concurrency N` (default "
    "prefetch multiplier 4) in its own process; apply_async() per task; done = result keys in "
    "db 9; round trip: AsyncResult.get() (pub/sub)"
)


def version() -> str:
    return metadata.version("celery")


class Q(BrokerQ):
    def __init__(self, path, role):
        super().__init__(path, role)
        import t_celery

        self.tasks = t_celery
        self.results = redis.Redis.from_url(redis_url(DBS["celery_results"]))

    def send(self, kind, arg):
        return getattr(self.tasks, kind).apply_async((arg,))

    def wait(self, handle, timeout):
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            return handle.get(timeout=timeout, interval=0.001)
        except CeleryTimeout:
            raise TimeoutError(f"no result within {timeout:.1f} s") from None

    def count(self):
        return self.results.dbsize()

    def forget_warmup(self, handle):
        handle.forget()

    def worker_argv(self, spec):
        n = spec.get("processes") or spec.get("threads") or 1
        return [[bin_path("celery"), "-A", "t_celery", "worker", "--pool", "prefork",
                 "--concurrency", str(n), "--loglevel", "WARNING"]]

    def reset(self):
        for db in (DBS["celery"], DBS["celery_results"]):
            redis.Redis.from_url(redis_url(db)).flushdb()

    def close(self):
        self.results.close()


globals().update(exports(Q))
