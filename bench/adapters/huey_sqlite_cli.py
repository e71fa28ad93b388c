"""huey's ``SqliteHuey`` deployed with its own ``huey_consumer`` process, for the worker-process
workloads (the in-process adapter is huey_sqlite.py): ``-k thread`` for 4 threads in one
process, ``-k process`` for processes; polling as in huey_sqlite.py (1 ms .. 100 ms)."""

from __future__ import annotations

import os

from adapters._broker import BrokerQ, exports
from adapters._spawn import bin_path

LABEL = "huey SqliteHuey (huey_consumer)"
CAPS = {"batch": False, "callbacks": False, "shards": False, "durability": False}
SPAWNS = True
NOTES = (
    "`huey_consumer t_huey_sqlite.huey -k thread|process -w N -d 0.001 -b 1.15 -m 0.1` (its "
    "defaults poll 100 ms .. 10 s); SQLite file, WAL, synchronous=FULL; done = results in kv"
)
FILE = "huey.db"


def version() -> str:
    from importlib import metadata

    return metadata.version("huey")


class Q(BrokerQ):
    def __init__(self, path, role):
        super().__init__(path, role)
        os.makedirs(path, exist_ok=True)
        os.environ["BENCH_HUEY_FILE"] = os.path.join(path, FILE)
        self.tasks = None
        self._count = None

    def _huey(self):
        if self.tasks is None:
            import t_huey_sqlite

            self.tasks = t_huey_sqlite
        return self.tasks

    def send(self, kind, arg):
        return getattr(self._huey(), kind)(arg)

    def send_many(self, kind, args):
        """In one transaction, as huey_sqlite.prefill does (untimed)."""
        tasks = self._huey()
        huey, task = tasks.huey, getattr(tasks, kind)
        rows = [(huey.storage.name, huey.storage.to_blob(huey.serialize_task(task.s(a))), 0) for a in args]
        with huey.storage.db(commit=True) as cursor:
            cursor.executemany("insert into task (queue, data, priority) values (?, ?, ?)", rows)

    def wait(self, handle, timeout):
        from huey.exceptions import ResultTimeout

        try:
            return handle.get(blocking=True, timeout=timeout, backoff=1.0, max_delay=0.001)
        except ResultTimeout:
            raise TimeoutError(f"no result within {timeout:.1f} s") from None

    def count(self):
        if self._count is None:
            from adapters._common import counter

            query = "SELECT count(*) FROM kv WHERE queue = 'bench'"
            self._count = counter([os.path.join(self.path, FILE)], query)
        return self._count()

    def worker_argv(self, spec):
        kind, n = ("process", spec["processes"]) if spec.get("processes") else (
            "thread", spec.get("threads") or 1)
        return [[bin_path("huey_consumer"), "t_huey_sqlite.huey", "-k", kind, "-w", str(n), "-n", "-q",
                 "-d", "0.001", "-b", "1.15", "-m", "0.1"]]

    def worker_env(self, spec):
        return {"BENCH_HUEY_FILE": os.path.join(self.path, FILE)}

    def close(self):
        if self.tasks is not None:
            self.tasks.huey.storage.close()


globals().update(exports(Q))
