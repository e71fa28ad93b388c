"""``make demo``: the original README's example app, unmodified, against SQLite.

It runs ``main.py`` in a child process as a user would, shows progress read from the
queue files, stops it with one Ctrl+C (SIGINT), and summarizes from the files: tasks
done, throughput, latency, and whether every callback arrived.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from message_queue_sqlite.api.queue import MessageQueue
from message_queue_sqlite.core.errors import MessageQueueError

START_LIMIT_S = 60.0  # the app must be sending by then
STOP_LIMIT_S = 60.0  # and must have exited this long after its Ctrl+C
SEED_FILES = ("main.py", "app/__init__.py", "app/engine/__init__.py", "app/engine/test.py")


def write_seed_app(folder: str | Path) -> Path:
    """Copy the example app's files, byte for byte, into ``folder``."""
    target = Path(folder)
    source = resources.files("message_queue_sqlite.cli").joinpath("seed_app")
    for name in SEED_FILES:
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source.joinpath(name).read_bytes())
    return target


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def run_demo(seconds: float = 5.0, folder: str | None = None, force: bool = False,
             keep: bool = False) -> int:
    """Run the example app for ``seconds`` and summarize. In ``folder`` (kept; a folder that
    is not empty is refused unless ``force``: the demo writes main.py, app/ and message_queue/
    there), or else in a new temporary folder, removed afterwards unless ``keep`` (or the run
    had a problem: then it is kept, to look into)."""
    if not seconds > 0:
        raise MessageQueueError(f"--seconds {seconds:g} is invalid; it must be a number of seconds > 0")
    if folder is not None:
        workdir = Path(folder)
        if workdir.exists() and not workdir.is_dir():
            raise MessageQueueError(f"--dir {folder} is a file; name a new or empty folder")
        if workdir.is_dir() and any(workdir.iterdir()) and not force:
            raise MessageQueueError(
                f"--dir {folder} is not empty; the demo writes main.py, app/, message_queue/ and "
                "app-output.log there: name a new or empty folder, or pass --force to overwrite them")
        temporary = False
    else:
        workdir = Path(tempfile.mkdtemp(prefix="mqs-demo-"))
        temporary = True
    code = 1
    try:
        code = _run_demo(seconds, workdir, temporary and not keep)
    finally:
        if temporary and (keep or code != 0):
            why = "as asked (--keep)" if keep else "to look into"
            print(f"demo: kept its folder {workdir} {why}: main.py, app/, message_queue/, app-output.log")
        elif temporary:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"demo: removed its temporary folder {workdir} (--keep keeps it)")
    return code


def _run_demo(seconds: float, workdir: Path, removed_after: bool) -> int:
    if (workdir / "message_queue").exists():
        shutil.rmtree(workdir / "message_queue")
    write_seed_app(workdir)
    log_path = workdir / "app-output.log"
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [package_root, os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    print(f"demo: running the original example app (main.py) in {workdir} for {seconds:g} s")
    removed = " (the folder is removed at the end; --keep keeps it)" if removed_after else ""
    print(f"demo: its output (one line per task and per callback) goes to {log_path}{removed}")
    with open(log_path, "wb") as log:
        child = subprocess.Popen([sys.executable, "main.py"], cwd=workdir, stdout=log,
                                 stderr=subprocess.STDOUT, env=env)
        queue = None
        try:
            queue = _wait_until_sending(child, workdir / "message_queue")
            started = time.monotonic()
            while queue is not None and time.monotonic() - started < seconds:
                try:
                    child.wait(timeout=0.5)
                    break  # exited early: reported below
                except subprocess.TimeoutExpired:
                    pass
                if queue is not None:
                    t = queue.stats()["totals"]
                    done = t["CALLBACKED"] + t["FINISHED"] + t["FAILED"]
                    print(f"  t={time.monotonic() - started:4.1f}s  done={done:7d}  "
                          f"running={t['RUNNING']:4d}  waiting={t['NOT_STARTED']:5d}", flush=True)
            if child.poll() is None:
                print("demo: sending Ctrl+C (SIGINT) to the app, as a user would")
                child.send_signal(signal.SIGINT)
            code = child.wait(timeout=STOP_LIMIT_S)
        finally:
            if child.poll() is None:
                child.kill()
        queue = queue or _open_if_ready(workdir / "message_queue")
    return _summarize(queue, code, log_path)


def _wait_until_sending(child: subprocess.Popen, folder: Path) -> MessageQueue | None:
    """The app's queue once the app has stored a task, i.e. is inside its send loop (whose
    ``try`` catches Ctrl+C); None if it exited or took over ``START_LIMIT_S``. A Ctrl+C
    before that loop, while it imports or starts its server thread, would leave the app's
    server thread running and the app alive: a slow start must not be cut there."""
    deadline = time.monotonic() + START_LIMIT_S
    queue = None
    while time.monotonic() < deadline and child.poll() is None:
        queue = queue or _open_if_ready(folder)
        if queue is not None and sum(queue.stats()["totals"].values()):
            return queue
        time.sleep(0.05)  # polling another process's start: there is nothing to wait on
    return queue


def _open_if_ready(folder: Path) -> MessageQueue | None:
    if not (folder / "mq-shard-0.db").exists():
        return None
    try:
        return MessageQueue(str(folder))
    except MessageQueueError:
        return None


def _summarize(queue: MessageQueue | None, code: int, log_path: Path) -> int:
    if queue is None:
        print(f"demo: the app exited with code {code} before creating its queue; see {log_path}")
        return 1
    with queue:
        totals = queue.stats()["totals"]
        timings = queue.timings()
    callbacks = log_path.read_text(errors="replace").count("{'task_id': ")  # prints interleave
    stored = sum(totals.values())
    ended = len(timings)
    span = (max(t[2] for t in timings) - min(t[0] for t in timings)) if timings else 0.0
    latencies = [(t[2] - t[0]) * 1000 for t in timings]
    print("demo: summary")
    print(f"  exit code of main.py      {code}")
    print(f"  tasks sent (stored)       {stored}")
    print(f"  tasks done                {ended}  (callbacks received: {callbacks})")
    print(f"  still queued for next run {totals['NOT_STARTED'] + totals['SCHEDULED']}")
    print(f"  running (must be 0)       {totals['RUNNING']}")
    if ended:
        print(f"  throughput                {ended / span:,.0f} tasks/s over {span:.1f} s "
              "(the app paces its sends: 2 per 2 ms sleep)")
        print(f"  latency send->end         p50 {_percentile(latencies, 0.5):.2f} ms, "
              f"p99 {_percentile(latencies, 0.99):.2f} ms")
    ok = code == 0 and totals["RUNNING"] == 0 and callbacks == totals["CALLBACKED"]
    print("demo: OK" if ok else "demo: PROBLEM (see above)")
    return 0 if ok else 1
