"""``mqs worker TARGET --processes N``: N worker processes under one supervisor.

Each child is a whole ``mqs worker`` (its threads, its event loop, its claim rounds) in a
fresh interpreter, so CPU-bound tasks use every core (dramatiq's processes x threads). The
supervisor runs no tasks. It gives each child its node id (the owner of the leases it takes)
and watches them:

- a child that dies (SIGKILL, the OOM killer, a segfault in a C extension) has its leases
  expired and recovered at once (a crash counted, as a lease expiry would), so its tasks run
  again now rather than after the visibility timeout; then a new child takes its place
  (after a back-off when children keep dying as they start);
- SIGTERM or SIGINT is passed on to every child (each stops gracefully, draining); a second
  one is passed on too (each gives its running tasks back at once);
- it exits when every child has, with the worst of their exit codes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from message_queue_sqlite.api.queue import MessageQueue

log = logging.getLogger(__name__)

NODE_FLAG = "--node-id"
RESTART_BACKOFF_S = (0.5, 30.0)  # first and longest wait before restarting a child that keeps dying
QUICK_DEATH_S = 5.0  # a child that dies sooner than this after its start counts towards the back-off
SAFETY_LOOK_S = 1.0  # children are looked at this often even if no SIGCHLD arrived


@dataclass
class _Child:
    slot: int
    node: str
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


def child_argv(argv: Sequence[str], slot: int, node: str, metrics_port: int | None) -> list[str]:
    """The child's ``mqs worker`` command: the supervisor's own arguments without
    ``--processes``, with its node id (and its own metrics port: the given one plus its slot)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--processes", "--metrics-port"):
            skip = True
            continue
        if arg.startswith(("--processes=", "--metrics-port=")):
            continue
        out.append(arg)
    out += [NODE_FLAG, node]
    if metrics_port is not None:
        out += ["--metrics-port", str(metrics_port + slot)]
    return [sys.executable, "-m", "message_queue_sqlite", *out]


class Supervisor:
    def __init__(self, queue: MessageQueue, argv: Sequence[str], processes: int, metrics_port: int | None):
        self._queue = queue
        self._argv = list(argv)
        self._processes = processes
        self._metrics_port = metrics_port
        self._children: dict[int, _Child] = {}
        self._wake = threading.Event()
        self._signals = 0
        self._quick_deaths = 0
        self.replaced = 0

    def run(self) -> int:
        """Start the children, keep them going until a stop signal, then wait for them all."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda _s, _f: self._wake.set())
        for slot in range(self._processes):
            self._start(slot)
        print(f"supervisor: {self._processes} worker processes (pids "
              f"{', '.join(str(c.process.pid) for c in self._children.values())}; pid {os.getpid()})",
              flush=True)
        codes: dict[int, int] = {}
        while self._children:
            self._wake.wait(SAFETY_LOOK_S)
            self._wake.clear()
            for slot, child in list(self._children.items()):
                code = child.process.poll()
                if code is None:
                    continue
                del self._children[slot]
                if self._signals:  # (one killed by the SIGTERM passed on was still starting: no
                    codes[slot] = 0 if code == -signal.SIGTERM else code  # handler yet, nothing run)
                    continue
                self._died(child, code)
                self._restart(slot, child.started)
        return max(codes.values(), default=0) if all(c >= 0 for c in codes.values()) else 1

    def _start(self, slot: int) -> None:
        node = uuid.uuid4().hex[:16]
        argv = child_argv(self._argv, slot, node, self._metrics_port)
        self._children[slot] = _Child(slot, node, subprocess.Popen(argv))

    def _died(self, child: _Child, code: int) -> None:
        """A child ended without being asked: its leases are recovered now."""
        how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        expired = 0
        try:
            engine = self._queue.engine
            for shard in engine.shards:
                expired += shard.expire_leases_of(child.node)
                shard.recover_expired(engine.config.crash_limit)
            engine.storage_changed()
        except Exception as exc:  # noqa: BLE001 - its leases then expire on their own
            log.error("recovering the tasks of worker process %d failed (%s); they run again when "
                      "their leases expire", child.process.pid, exc)
        log.warning("worker process %d died (%s); %d of its task(s) were recovered at once; starting "
                    "another", child.process.pid, how, expired)

    def _restart(self, slot: int, started: float) -> None:
        if time.monotonic() - started < QUICK_DEATH_S:
            self._quick_deaths += 1
        else:
            self._quick_deaths = 0
        if self._quick_deaths:
            first, longest = RESTART_BACKOFF_S
            delay = min(longest, first * 2 ** (self._quick_deaths - 1))
            log.warning("worker processes keep dying as they start; waiting %.1f s before the next", delay)
            if self._stop_requested(delay):
                return
        self._start(slot)
        self.replaced += 1

    def _stop_requested(self, delay: float) -> bool:
        deadline = time.monotonic() + delay
        while not self._signals:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._wake.wait(left)
            self._wake.clear()
        return True

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        log.warning("%s: stopping the %d worker processes%s", name, len(self._children),
                    "" if self._signals == 1 else " (again: they give their running tasks back now)")
        for child in list(self._children.values()):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        self._wake.set()
