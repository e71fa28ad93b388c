"""This repository's package deployed as a user would: ``mqs worker t_ours:mq`` in a process
of its own (``--workers T`` threads, ``--processes P`` supervised processes, or
``--async-concurrency C`` for ``async def`` tasks), started by the trial. Used by the
workloads that need a worker CLI (io_10ms, async_sleep, cpu_2ms); a flag this build's CLI
refuses is reported as not supported by this build."""

from __future__ import annotations

import os
import sys

from adapters._broker import BrokerQ, exports
from adapters._spawn import Unsupported

LABEL = "ours: mqs worker"
CAPS = {"batch": True, "callbacks": False, "shards": False, "durability": False}
SPAWNS = True
NOTES = (
    "`mqs worker t_ours:mq` in its own process; `--processes P` with the object's workers=1 "
    "(one thread per process); `--async-concurrency C` for the async def task; SQLite, WAL, "
    "synchronous=NORMAL: every send is committed to disk before it returns; send_many() to fill; "
    "done = rows ended in the file"
)


def version() -> str:
    from adapters import ours

    return ours.version()


class Q(BrokerQ):
    def __init__(self, path, role):
        super().__init__(path, role)
        os.environ["BENCH_MQ_PATH"] = path
        self.tasks = None

    def _mq(self):
        if self.tasks is None:
            import t_ours

            self.tasks = t_ours
        return self.tasks.mq

    def send(self, kind, arg):
        return self._mq().send(kind, self._args(kind, arg))

    @staticmethod
    def _args(kind, arg):
        return {"iters": arg} if kind in ("cpu", "cpu_proc") else {"i": arg}

    def send_many(self, kind, args):
        mq = self._mq()
        if kind == "asleep" and self.tasks.ASYNC_REFUSED:
            raise Unsupported(self.tasks.ASYNC_REFUSED)
        if kind == "cpu_proc" and self.tasks.PROCESS_REFUSED:
            raise Unsupported(self.tasks.PROCESS_REFUSED)
        for s in range(0, len(args), 10_000):
            mq.send_many([(kind, self._args(kind, a)) for a in args[s : s + 10_000]])

    def wait(self, handle, timeout):
        return handle.result(timeout=timeout)

    def count(self):
        if not hasattr(self, "_count"):
            from adapters import ours

            self._count = ours.done_counter(None, self.path, 1)
        return self._count()

    def failed(self):
        import sqlite3

        path = os.path.join(self.path, "mq-shard-0.db")
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT count(*) FROM mqs_tasks WHERE status = 4").fetchone()[0]

    def worker_argv(self, spec):
        argv = [sys.executable, "-m", "message_queue_sqlite", "worker", "t_ours:mq"]
        if spec.get("async"):
            argv += ["--async-concurrency", str(spec["async"])]
        elif spec.get("processes"):  # one thread each: the object's workers (BENCH_THREADS=1)
            argv += ["--processes", str(spec["processes"])]
        else:
            argv += ["--workers", str(spec.get("threads") or 1)]
        return [argv]

    def worker_env(self, spec):
        threads = "1" if spec.get("processes") else str(spec.get("threads") or 4)
        env = {"BENCH_MQ_PATH": self.path, "BENCH_THREADS": threads}
        if spec.get("executor_processes"):
            env["BENCH_PROCESSES"] = str(spec["executor_processes"])
        return env

    def describe(self, spec):
        text = "mqs " + " ".join(self.worker_argv(spec)[0][3:])
        if spec.get("executor_processes"):
            text += f' (executor="process" task, processes={spec["executor_processes"]})'
        return text

    def close(self):
        if self.tasks is not None:
            self.tasks.mq.close()


globals().update(exports(Q))
failed = Q.failed
