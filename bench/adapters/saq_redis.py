"""SAQ on the local Redis (db 15): asyncio jobs, its own ``saq`` worker process with
``concurrency`` = the workload's (async tasks only here)."""

from __future__ import annotations

import asyncio
from importlib import metadata

import redis

from adapters._broker import BrokerQ, exports
from adapters._spawn import DBS, bin_path, redis_url

LABEL = "SAQ (Redis)"
CAPS = {"batch": False, "callbacks": False, "shards": False, "durability": False}
SPAWNS = True
NOTES = (
    "Redis db 15, not persisted to disk (a restart loses the queue); `saq t_saq.settings "
    "--workers 1`, concurrency = the workload's (blocking dequeue); queue.enqueue() per task; "
    "done = tasks enqueued minus its 'incomplete' set; round trip: job.refresh(until_complete), "
    "which reads the job and then subscribes to its updates: a job that ends in between is "
    "missed, and that round trip waits out its timeout"
)
ENQUEUED = "bench:enqueued"  # ours, in SAQ's db: how many tasks the trial put in


def version() -> str:
    return metadata.version("saq")


class Q(BrokerQ):
    def __init__(self, path, role):
        super().__init__(path, role)
        self.conn = redis.Redis.from_url(redis_url(DBS["saq"]))
        self.loop = None
        self.queue = None

    def _queue(self):
        if self.queue is None:
            import t_saq

            self.loop = asyncio.new_event_loop()
            self.queue = t_saq.queue
            self.loop.run_until_complete(self.queue.connect())
        return self.queue

    def send(self, kind, arg):
        queue = self._queue()
        self.conn.incr(ENQUEUED)
        return self.loop.run_until_complete(queue.enqueue(kind, i=arg))

    def send_many(self, kind, args):
        queue = self._queue()
        self.conn.incrby(ENQUEUED, len(args))

        async def put():
            for s in range(0, len(args), 200):
                await asyncio.gather(*(queue.enqueue(kind, i=a) for a in args[s : s + 200]))

        self.loop.run_until_complete(put())

    def wait(self, handle, timeout):
        async def result():
            await handle.refresh(until_complete=timeout)
            return handle.result

        try:
            return self.loop.run_until_complete(result())
        except asyncio.TimeoutError:
            raise TimeoutError(f"no result within {timeout:.1f} s") from None

    def count(self):
        with self.conn.pipeline() as pipe:
            enqueued, incomplete = pipe.get(ENQUEUED).zcard("saq:default:incomplete").execute()
        return int(enqueued or 0) - incomplete

    def worker_argv(self, spec):
        return [[bin_path("saq"), "t_saq.settings", "--workers", "1"]]

    def worker_env(self, spec):
        return {"BENCH_CONCURRENCY": str(spec.get("async") or spec.get("threads") or 10)}

    def describe(self, spec):
        return f"saq t_saq.settings --workers 1 (concurrency={self.worker_env(spec)['BENCH_CONCURRENCY']})"

    def reset(self):
        self.conn.flushdb()

    def close(self):
        if self.queue is not None:
            self.loop.run_until_complete(self.queue.disconnect())
            self.loop.close()
        self.conn.close()


globals().update(exports(Q))
