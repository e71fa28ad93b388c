"""What the adapters of CLI-deployed systems share: a handle with its worker processes, and
the functions every such adapter exposes the same way (``SPAWNS``: the trial starts the
worker CLI and times from its first recorded result, see trial.py).

An adapter module defines ``Q`` (subclass of ``BrokerQ``) and calls ``exports(Q)`` to get
the module-level functions of adapters/__init__.py's interface, plus ``prefill_kind``,
``spawn``, ``ready``, ``check``, ``cpu_seconds`` and ``reset`` (``q.describe(spec)`` gives the
worker command lines for the report).
"""

from __future__ import annotations

import sys

from adapters._spawn import TASKS, Workers, wait_until

if TASKS not in sys.path:
    sys.path.insert(0, TASKS)


class BrokerQ:
    """One handle: the peer's client in this process and the worker processes it started."""

    def __init__(self, path: str, role: str):
        self.path = path
        self.role = role
        self.workers = Workers(path)

    # -- what each adapter implements -------------------------------------------------
    def send(self, kind: str, arg: int):  # one task, one call; returns the peer's handle
        raise NotImplementedError

    def send_many(self, kind: str, args: list[int]) -> None:  # fastest way in (untimed)
        for a in args:
            self.send(kind, a)

    def wait(self, handle, timeout: float):  # block until that task's result is back
        raise NotImplementedError

    def count(self) -> int:  # results recorded in storage
        raise NotImplementedError

    def forget_warmup(self, handle) -> None:  # remove the warm-up's result from the count
        pass

    def worker_argv(self, spec: dict) -> list[list[str]]:  # one command line per process
        raise NotImplementedError

    def worker_env(self, spec: dict) -> dict:
        return {}

    def describe(self, spec: dict) -> str:
        """The worker command lines, as a user would type them (``N ×`` for N alike)."""
        lines: dict[str, int] = {}
        for argv in self.worker_argv(spec):
            text = " ".join([argv[0].rsplit("/", 1)[-1], *argv[1:]])
            lines[text] = lines.get(text, 0) + 1
        return " + ".join(f"{k} × {t}" if k > 1 else t for t, k in lines.items())

    def reset(self) -> None:  # flush what this system owns in Redis
        pass

    def close(self) -> None:
        pass


def exports(cls):
    """The adapter interface as module functions over handles of ``cls``."""

    def open(path, role="both", threads=4, shards=1, durability="normal", callbacks=False):
        return cls(path, role)

    def enqueue(q, i):
        q.send("noop", i)

    def prefill(q, n):
        q.send_many("noop", list(range(n)))

    def prefill_kind(q, n, kind, arg=None):
        q.send_many(kind, [arg if arg is not None else i for i in range(n)])

    def spawn(q, spec):
        for argv in q.worker_argv(spec):
            q.workers.start(argv, env=q.worker_env(spec))

    def start(q, threads):
        spawn(q, {"threads": threads})

    def ready(q, timeout=90.0):
        """Block until the workers run tasks: one warm-up task's result, then forgotten."""
        handle = q.send("noop", -1)
        wait_until(lambda: _try_wait(q, handle), timeout, q.workers, poll=0.01)
        q.forget_warmup(handle)

    def _try_wait(q, handle):
        try:
            q.wait(handle, 0.2)
            return True
        except TimeoutError:
            return False

    def stop(q):
        q.workers.stop()

    def done_counter(q, path, shards=1):
        q = q if q is not None else cls(path, "counter")
        return q.count

    def callbacks(q):
        return 0

    def roundtrip(q, i, timeout=60.0):
        return q.wait(q.send("noop", i), timeout)

    def close(q):
        q.workers.stop()
        q.close()

    return {
        "open": open, "enqueue": enqueue, "prefill": prefill, "prefill_kind": prefill_kind,
        "spawn": spawn, "start": start, "ready": ready, "stop": stop, "done_counter": done_counter,
        "callbacks": callbacks, "roundtrip": roundtrip, "close": close,
        "check": lambda q: q.workers.check(),
        "cpu_seconds": lambda q: q.workers.cpu_seconds(),
        "reset": lambda path: cls(path, "reset").reset(),
    }
