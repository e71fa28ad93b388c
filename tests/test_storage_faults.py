"""Storage faults found by the adversarial run of issue 17 (SQLite): a foreign file dropped into a
live queue folder, a multi-shard send that fails on one shard, storage errors that must say what
happened and what to do, and arguments too deeply nested to store."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env, wait_until

from message_queue_sqlite import MessageQueue

PY = sys.executable

HOLD_TASKS = """
import os
import threading
import time

from message_queue_sqlite import task_function


@task_function()
def hold(marks: str) -> int:
    '''Say which process started it, then wait (bounded) until the test lets it end.'''
    open(os.path.join(marks, f"started-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(marks, "go")) and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    return os.getpid()
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start_worker(app: Path, folder: Path, name: str) -> subprocess.Popen:
    with open(app / f"{name}.log", "w") as out:
        return subprocess.Popen([PY, "-m", "message_queue_sqlite", "worker", "holdapp", "--path", str(folder),
                                 "--workers", "1", "--visibility-timeout", "1.5"],
                                cwd=app, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)


def _logs(app: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(app.glob("*.log")))


def test_a_foreign_file_in_a_live_folder_is_refused_and_recovery_goes_on(tmp_path):
    """Issue 17 finding 4: another application's database appearing as the next shard name
    made shard adoption raise inside housekeeping, before renewal and recovery, every round, so
    a SIGKILLed worker's task stayed RUNNING forever. Now the file is refused (logged once,
    naming it and why), untouched, and the other worker still recovers and runs the task."""
    app = tmp_path / "app"
    (app / "holdapp").mkdir(parents=True)
    (app / "holdapp" / "__init__.py").write_text("from . import tasks\n")
    (app / "holdapp" / "tasks.py").write_text(HOLD_TASKS)
    marks = tmp_path / "marks"
    marks.mkdir()
    folder = tmp_path / "q"
    sender = MessageQueue(str(folder), shards=1)
    workers: list[subprocess.Popen] = []
    try:
        first = _start_worker(app, folder, "worker-a")
        workers.append(first)
        handle = sender.send("hold", {"marks": str(marks)})
        wait_until(lambda: (marks / f"started-{first.pid}").exists(), timeout=30,
                   what=lambda: f"worker A to start the task\n{_logs(app)}")
        second = _start_worker(app, folder, "worker-b")  # idle: A holds the only task
        workers.append(second)
        wait_until(lambda: "worker:" in (app / "worker-b.log").read_text(), timeout=30,
                   what=lambda: f"worker B to start\n{_logs(app)}")
        made = tmp_path / "invoices.db"  # made elsewhere and moved in whole, as a copied file lands
        conn = sqlite3.connect(made)
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        conn.execute("INSERT INTO invoices (amount) VALUES (12.5)")
        conn.commit()
        conn.close()
        before = _digest(made)
        foreign = folder / "mq-shard-1.db"
        os.rename(made, foreign)
        # both workers have met the file (refused it, or failed on it) before A dies
        for name in ("worker-a", "worker-b"):
            wait_until(lambda name=name: "mq-shard-1.db" in (app / f"{name}.log").read_text(), timeout=30,
                       what=lambda: f"the workers to meet the foreign file\n{_logs(app)}")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        (marks / "go").touch()
        # B recovers A's expired lease and runs the task, foreign file or not
        assert handle.result(timeout=30) == second.pid, _logs(app)
        log_b = (app / "worker-b.log").read_text()
        refusals = [line for line in log_b.splitlines() if "refus" in line and "mq-shard-1.db" in line]
        assert len(refusals) == 1, _logs(app)
        assert "another application's SQLite database" in refusals[0], refusals
        assert "housekeeping failed" not in log_b, _logs(app)
        assert _digest(foreign) == before
        assert second.poll() is None, _logs(app)
    finally:
        sender.close()
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
