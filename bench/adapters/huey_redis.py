"""huey's ``RedisHuey`` on the local Redis (db 13), with its own ``huey_consumer`` process:
``-k process`` workers, or ``-k thread`` where the workload asks for threads in one process."""

from __future__ import annotations

from importlib import metadata

import redis

from adapters._broker import BrokerQ, exports
from adapters._spawn import DBS, bin_path, redis_url

LABEL = "huey RedisHuey"
CAPS = {"batch": False, "callbacks": False, "shards": False, "durability": False}
SPAWNS = True
NOTES = (
    "RedisHuey db 13, not persisted to disk (a restart loses the queue); `huey_consumer "
    "t_huey.huey -k process -w N` (blocking BRPOP dequeue; `-k thread` for the 4-threads "
    "workloads); task(i) per call; done = entries of its results hash; round trip: "
    "result.get(blocking=True) polling every 1 ms"
)


def version() -> str:
    return metadata.version("huey")


class Q(BrokerQ):
    def __init__(self, path, role):
        super().__init__(path, role)
        import t_huey

        self.tasks = t_huey
        self.conn = redis.Redis.from_url(redis_url(DBS["huey_redis"]))
        self.result_key = t_huey.huey.storage.result_key

    def send(self, kind, arg):
        return getattr(self.tasks, kind)(arg)

    def wait(self, handle, timeout):
        from huey.exceptions import ResultTimeout

        try:
            return handle.get(blocking=True, timeout=timeout, backoff=1.0, max_delay=0.001)
        except ResultTimeout:
            raise TimeoutError(f"no result within {timeout:.1f} s") from None

    def count(self):
        return self.conn.hlen(self.result_key)

    def worker_argv(self, spec):
        kind, n = ("process", spec["processes"]) if spec.get("processes") else (
            spec.get("huey_kind", "process"), spec.get("threads") or 1)
        return [[bin_path("huey_consumer"), "t_huey.huey", "-k", kind, "-w", str(n), "-n", "-q"]]

    def reset(self):
        self.conn.flushdb()

    def close(self):
        self.conn.close()


globals().update(exports(Q))
