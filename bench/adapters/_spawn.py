"""Worker processes started from a CLI (broker peers, and ours' ``mqs worker``), and what
the broker adapters share (standard library only; each peer's own client is imported by its
adapter).

Every worker command runs in a session of its own, so that it and the children it forks
(prefork pools, process consumers, per-job forks) can be signalled as one group; its
session id is also appended to the file named by ``$BENCH_PIDS`` (set by run.py), so that
run.py can kill what a trial started even when the trial itself was killed first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = os.path.join(BENCH, "broker_tasks")  # the task modules the workers import
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# One Redis database number per system (flushed before each trial; nothing else is touched).
DBS = {"celery": 8, "celery_results": 9, "rq": 10, "dramatiq": 11, "dramatiq_results": 12,
       "huey_redis": 13, "arq": 14, "saq": 15}


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def bin_path(name: str) -> str:
    """A console script of this interpreter's virtualenv (``celery``, ``rq``, ...)."""
    return os.path.join(os.path.dirname(sys.executable), name)


class Unsupported(Exception):
    """The worker refused its command line (argparse's exit code 2): the flag this workload
    needs is not in this build."""


class Workers:
    """Worker processes of one trial: start, watch for an early exit, stop (and kill)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.procs: list[tuple[subprocess.Popen, str]] = []

    def start(self, argv: list[str], env: dict | None = None, name: str = "worker") -> subprocess.Popen:
        log = os.path.join(self.workdir, f"{name}-{len(self.procs)}.log")
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (TASKS, full_env.get("PYTHONPATH", "")) if p
        )
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        with open(log, "w") as f:
            proc = subprocess.Popen(
                argv, cwd=self.workdir, env=full_env, stdout=f, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        pids = os.environ.get("BENCH_PIDS")
        if pids:
            with open(pids, "a") as f:
                f.write(f"{proc.pid}\n")
        self.procs.append((proc, log))
        return proc

    def log_tail(self, log: str, size: int = 1500) -> str:
        try:
            with open(log, errors="replace") as f:
                return f.read()[-size:]
        except OSError:
            return ""

    def check(self) -> None:
        """Raise if a worker exited: Unsupported for argparse's refusal of a flag."""
        for proc, log in self.procs:
            rc = proc.poll()
            if rc is None:
                continue
            tail = self.log_tail(log)
            if rc == 2 and ("unrecognized arguments" in tail or "invalid choice" in tail
                            or "no such option" in tail.lower()):
                raise Unsupported(tail.strip().splitlines()[-1] if tail.strip() else "exit 2")
            raise RuntimeError(f"worker {proc.args[:3]} exited with {rc}: {tail[-600:]}")

    def alive(self) -> bool:
        return any(proc.poll() is None for proc, _ in self.procs)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of every live process in the workers' sessions."""
        sids = {proc.pid for proc, _ in self.procs}
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in sids:  # fields[3]: the session id
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM each worker command (a graceful stop, as a service manager asks: the
        command stops the children it manages), then SIGKILL its whole session."""
        for proc, _ in self.procs:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        for proc, _ in self.procs:
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc, _ in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        self.procs.clear()


def wait_until(predicate, timeout: float, workers: Workers | None = None, poll: float = 0.005):
    """Poll ``predicate()`` until true (returns its value) or ``timeout`` (TimeoutError);
    a worker that exits meanwhile raises at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if workers is not None:
            workers.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready within {timeout:.0f} s")
        time.sleep(poll)
