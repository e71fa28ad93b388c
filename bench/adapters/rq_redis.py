"""RQ on the local Redis (db 10): N ``rq worker`` processes, each running one job at a time;
the default worker class ``rq.Worker`` forks a work horse per job (SimpleWorker where named)."""

from __future__ import annotations

from importlib import metadata

import redis

from adapters._broker import BrokerQ, exports
from adapters._spawn import DBS, bin_path, redis_url

LABEL = "RQ (Redis)"
CAPS = {"batch": False, "callbacks": False, "shards": False, "durability": False}
SPAWNS = True
NOTES = (
    "Redis db 10, not persisted to disk (a restart loses the queue); N `rq worker` processes "
    "(one job at a time each), worker class rq.Worker: forks a work horse per job (its default); "
    "Queue.enqueue() per task (enqueue_many in pipelines for prefills); done = FinishedJobRegistry "
    "size; round trip: job.latest_result(timeout) (blocking XREAD)"
)
URL = redis_url(DBS["rq"])


def version() -> str:
    return metadata.version("rq")


class Q(BrokerQ):
    def __init__(self, path, role):
        super().__init__(path, role)
        from rq import Queue

        self.conn = redis.Redis.from_url(URL)
        self.queue = Queue("default", connection=self.conn)
        self.finished_key = self.queue.finished_job_registry.key

    def send(self, kind, arg):
        return self.queue.enqueue("t_rq." + kind, arg)

    def send_many(self, kind, args):
        from rq import Queue

        for s in range(0, len(args), 1000):
            with self.conn.pipeline() as pipe:
                self.queue.enqueue_many(
                    [Queue.prepare_data("t_rq." + kind, (a,)) for a in args[s : s + 1000]], pipeline=pipe
                )
                pipe.execute()

    def wait(self, handle, timeout):
        result = handle.latest_result(timeout=max(1, round(timeout)) if timeout >= 1 else 0)
        if result is None:
            raise TimeoutError(f"no result within {timeout:.1f} s")
        return result.return_value

    def count(self):
        return self.conn.zcard(self.finished_key)

    def forget_warmup(self, handle):
        self.queue.finished_job_registry.remove(handle)
        handle.delete()

    def worker_argv(self, spec):
        n = spec.get("processes") or spec.get("threads") or 1
        cls = spec.get("rq_class", "rq.Worker")
        return [[bin_path("rq"), "worker", "-u", URL, "--worker-class", cls, "--logging_level", "WARNING",
                 "default"] for _ in range(n)]

    def reset(self):
        self.conn.flushdb()

    def close(self):
        self.conn.close()


globals().update(exports(Q))
