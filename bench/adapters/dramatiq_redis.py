"""dramatiq on the local Redis: broker db 11, Results middleware backend db 12; its own
``dramatiq`` CLI worker (processes × threads), started by the trial."""

from __future__ import annotations

from importlib import metadata

import redis

from adapters._broker import BrokerQ, exports
from adapters._spawn import DBS, bin_path, redis_url

LABEL = "dramatiq (Redis)"
CAPS = {"batch": False, "callbacks": False, "shards": False, "durability": False}
SPAWNS = True
NOTES = (
    "RedisBroker db 11 + Results middleware (RedisBackend, db 12), Redis not persisted to disk "
    "(a restart loses the queue); `dramatiq t_dramatiq --processes P --threads T` (default "
    "prefetch); actor.send() per task; done = result keys in db 12; round trip: "
    "message.get_result(block=True)"
)


def version() -> str:
    return metadata.version("dramatiq")


class Q(BrokerQ):
    def __init__(self, path, role):
        super().__init__(path, role)
        import t_dramatiq

        self.tasks = t_dramatiq
        self.results = redis.Redis.from_url(redis_url(DBS["dramatiq_results"]))

    def send(self, kind, arg):
        return getattr(self.tasks, kind).send(arg)

    def wait(self, handle, timeout):
        from dramatiq.results import ResultTimeout

        try:
            return handle.get_result(block=True, timeout=max(1, int(timeout * 1000)))
        except ResultTimeout:
            raise TimeoutError(f"no result within {timeout:.1f} s") from None

    def count(self):
        return self.results.dbsize()

    def forget_warmup(self, handle):
        self.results.flushdb()

    def worker_argv(self, spec):
        procs = spec.get("processes") or 1
        threads = 1 if spec.get("processes") else (spec.get("threads") or 1)
        return [[bin_path("dramatiq"), "t_dramatiq", "--processes", str(procs), "--threads", str(threads),
                 "--worker-shutdown-timeout", "3000"]]

    def reset(self):
        for db in (DBS["dramatiq"], DBS["dramatiq_results"]):
            redis.Redis.from_url(redis_url(db)).flushdb()

    def close(self):
        self.results.close()


globals().update(exports(Q))
