"""The task served by the fault-injection runner's workers (``scripts/faults.py``).

Workers run it as ``python -m message_queue_sqlite worker fault_tasks`` from this folder.
Every execution appends one line ``KEY PID NONCE KIND`` to a log file of its own process,
opened with O_APPEND and fsync'd before the task returns, so the record of an execution
survives a SIGKILL that comes right after it. The nonce is also the task's result (or
part of its error), so the runner can tell which execution's outcome was recorded.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from message_queue_sqlite import task_function

_lock = threading.Lock()
_files: dict[tuple[str, int], int] = {}


class FaultTaskError(Exception):
    """Raised on purpose by the tasks sent with ``fail=True``."""


def _log_file(folder: str) -> int:
    key = (folder, os.getpid())
    with _lock:
        fd = _files.get(key)
        if fd is None:
            path = os.path.join(folder, f"exec-{os.getpid()}.log")
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            _files[key] = fd
        return fd


def record_execution(folder: str, key: str, kind: str) -> str:
    """Append this execution to the process's log durably; returns its nonce."""
    nonce = uuid.uuid4().hex[:16]
    fd = _log_file(folder)
    os.write(fd, f"{key} {os.getpid()} {nonce} {kind}\n".encode())  # one write: atomic with O_APPEND
    os.fsync(fd)
    return nonce


@task_function
def fault_work(key: str, seconds: float, log_dir: str, fail: bool = False, after: float = 0.0) -> str:
    """Work for ``seconds`` (simulated), record the execution (the task's side effect), work
    ``after`` seconds more, then succeed or fail on purpose. A kill during ``after`` leaves a
    recorded execution without a recorded outcome: the task runs again (a duplicate)."""
    if seconds > 0:
        time.sleep(seconds)  # the task's own work, long enough for some to be killed mid-run
    nonce = record_execution(log_dir, key, "fail" if fail else "ok")
    if after > 0:
        time.sleep(after)
    if fail:
        raise FaultTaskError(f"{key} fails on purpose nonce={nonce}")
    return nonce
