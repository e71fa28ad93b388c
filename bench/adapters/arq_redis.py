"""arq on the local Redis (db 14): asyncio jobs, its own ``arq`` worker process with
``max_jobs`` = the workload's concurrency (async tasks only: arq runs coroutines)."""

from __future__ import annotations

import asyncio
from importlib import metadata

import redis

from adapters._broker import BrokerQ, exports
from adapters._spawn import DBS, bin_path, redis_url

LABEL = "arq (Redis)"
CAPS = {"batch": False, "callbacks": False, "shards": False, "durability": False}
SPAWNS = True
NOTES = (
    "Redis db 14, not persisted to disk (a restart loses the queue); `arq t_arq.WorkerSettings`, "
    "one process, max_jobs = concurrency, poll_delay 5 ms (its default is 0.5 s); enqueue_job() "
    "per task; done = its result keys; round trip: job.result(poll_delay=1 ms); the 5 ms "
    "queue poll is what its idle worker's CPU is"
)
COUNT = "return #redis.call('keys', 'arq:result:*')"


def version() -> str:
    return metadata.version("arq")


class Q(BrokerQ):
    def __init__(self, path, role):
        super().__init__(path, role)
        self.conn = redis.Redis.from_url(redis_url(DBS["arq"]))
        self.loop = None
        self.pool = None

    def _pool(self):
        if self.pool is None:
            from arq import create_pool
            from t_arq import REDIS

            self.loop = asyncio.new_event_loop()
            self.pool = self.loop.run_until_complete(create_pool(REDIS))
        return self.pool

    def send(self, kind, arg):
        pool = self._pool()
        return self.loop.run_until_complete(pool.enqueue_job(kind, arg))

    def send_many(self, kind, args):
        pool = self._pool()

        async def put():
            for s in range(0, len(args), 200):
                await asyncio.gather(*(pool.enqueue_job(kind, a) for a in args[s : s + 200]))

        self.loop.run_until_complete(put())

    def wait(self, handle, timeout):
        try:
            return self.loop.run_until_complete(handle.result(timeout=timeout, poll_delay=0.001))
        except asyncio.TimeoutError:
            raise TimeoutError(f"no result within {timeout:.1f} s") from None

    def count(self):
        return self.conn.eval(COUNT, 0)

    def worker_argv(self, spec):
        return [[bin_path("arq"), "t_arq.WorkerSettings"]]

    def worker_env(self, spec):
        return {"BENCH_CONCURRENCY": str(spec.get("async") or spec.get("threads") or 10)}

    def describe(self, spec):
        return f"arq t_arq.WorkerSettings (max_jobs={self.worker_env(spec)['BENCH_CONCURRENCY']})"

    def reset(self):
        self.conn.flushdb()

    def close(self):
        if self.pool is not None:
            self.loop.run_until_complete(self.pool.aclose())
            self.loop.close()
        self.conn.close()


globals().update(exports(Q))
