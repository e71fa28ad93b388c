"""``make demo``: the original README's example app, unmodified, against SQLite.

It runs ``main.py`` in a child process as a user would, shows progress read from the
queue files, stops it with one Ctrl+C (SIGINT), and summarizes from the files: tasks
finished, failed (with the most common reason), still queued, scheduled and running, the
callbacks recorded as run and printed, throughput and latency. It says OK only when the
figures agree with what the app was promised (``verdict`` states the rule), else NOT OK
with what disagrees, and exits 1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from message_queue_sqlite.api.queue import MessageQueue, TaskInfo
from message_queue_sqlite.core.errors import MessageQueueError
from message_queue_sqlite.core.status import TaskStatus

START_LIMIT_S = 60.0  # the app must be sending by then
STOP_LIMIT_S = 60.0  # and must have exited this long after its Ctrl+C
SEED_FILES = ("main.py", "app/__init__.py", "app/engine/__init__.py", "app/engine/test.py")
START_POLL_S = 0.05  # how often the app's files are read for its first task (see _wait_until_sending)
PROGRESS_S = 0.5  # a progress line this often
FAILURES_READ = 1_000  # the most common failure reason is found among the newest this many


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
                try:  # the progress interval, ended at once by the app's exit
                    child.wait(timeout=min(PROGRESS_S, max(0.0, started + seconds - time.monotonic())))
                    break  # exited early: reported below
                except subprocess.TimeoutExpired:
                    pass
                if queue is not None:
                    t = queue.stats()["outcomes"]
                    print(f"  t={time.monotonic() - started:4.1f}s  finished={t['finished']:7d}  "
                          f"failed={t['failed']:4d}  running={t['running']:4d}  "
                          f"waiting={t['queued'] + t['scheduled']:5d}", flush=True)
            if child.poll() is None:
                print("demo: sending Ctrl+C (SIGINT) to the app, as a user would")
                child.send_signal(signal.SIGINT)
            code: int | None = None  # None: it did not exit (killed below, reported NOT OK)
            try:
                code = child.wait(timeout=STOP_LIMIT_S)
            except subprocess.TimeoutExpired:
                print(f"demo: the app did not exit within {STOP_LIMIT_S:g} s of its Ctrl+C; killing it")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
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
        # A bounded poll, not a wait on an event: what it waits for happens in another process
        # (the app, unmodified) and shows only as a row in its SQLite files, and SQLite tells
        # no other process of a write. The pause is child.wait, so the app's exit ends it at once.
        try:
            child.wait(timeout=START_POLL_S)
        except subprocess.TimeoutExpired:
            pass
    return queue


def _open_if_ready(folder: Path) -> MessageQueue | None:
    if not (folder / "mq-shard-0.db").exists():
        return None
    try:
        return MessageQueue(str(folder))
    except MessageQueueError:
        return None


def _summarize(queue: MessageQueue | None, code: int | None, log_path: Path) -> int:
    """Print the summary and the verdict; 0 when OK, else 1. ``code``: main.py's exit code,
    None when it did not exit after its Ctrl+C (and was killed)."""
    if queue is None:
        ended = "did not exit" if code is None else f"exited with code {code}"
        print(f"demo: NOT OK: the app {ended} before creating its queue; see {log_path}")
        return 1
    with queue:
        stats = queue.stats()
        timings = queue.timings()
        failures = queue.tasks(TaskStatus.FAILED, limit=FAILURES_READ)
    counts = stats["outcomes"]
    callbacks = log_path.read_text(errors="replace").count("{'task_id': ")  # prints interleave
    stored = sum(n for name, n in counts.items() if name != "callback_ran")
    span = (max(t[2] for t in timings) - min(t[0] for t in timings)) if timings else 0.0
    latencies = [(t[2] - t[0]) * 1000 for t in timings]
    print("demo: summary")
    print(f"  exit code of main.py      {'none: killed' if code is None else code}")
    print(f"  tasks sent (stored)       {stored}")
    print(f"  finished                  {counts['finished']}")
    print(f"  failed                    {counts['failed']}{_most_common_failure(failures)}")
    print(f"  still queued              {counts['queued']}  (kept in the files for the next run)")
    print(f"  scheduled                 {counts['scheduled']}")
    print(f"  running (must be 0)       {counts['running']}")
    print(f"  callbacks                 {counts['callback_ran']} recorded as run, {callbacks} printed "
          "by the app")
    if span > 0:
        print(f"  throughput                {len(timings) / span:,.0f} tasks/s over {span:.1f} s "
              "(the app paces its sends: 2 per 2 ms sleep)")
        print(f"  latency send->end         p50 {_percentile(latencies, 0.5):.2f} ms, "
              f"p99 {_percentile(latencies, 0.99):.2f} ms")
    problems = verdict(code, stats, callbacks, failures)
    for problem in problems:
        print(f"demo: NOT OK: {problem}")
    if not problems:
        print("demo: OK")
    return 0 if not problems else 1


def _most_common_failure(failures: list[TaskInfo]) -> str:
    """``  most common failure: <reason> (k of n)``, among the newest FAILURES_READ."""
    if not failures:
        return ""
    reason, times = Counter(f.error or "(no message)" for f in failures).most_common(1)[0]
    of = f"{len(failures)}" if len(failures) < FAILURES_READ else f"the newest {len(failures)}"
    return f"  most common failure: {reason} ({times} of {of})"


def _orphaned_at_the_stop(failure: TaskInfo) -> bool:
    """A cache-mode ``test`` task that did not run before the app closed, failed by the
    close: no traceback, as nothing ran (a task that raised, or that could not find its
    arguments, has one). Not "attempts 0": a task a worker had claimed but not started
    when the stop came was given back with its attempt counted."""
    return failure.task_name == "test" and failure.traceback is None


def verdict(code: int | None, stats: dict[str, Any], callbacks: int,
            failures: list[TaskInfo]) -> list[str]:
    """What the example app was promised, and where the figures say otherwise (empty: OK).

    The app (main.py and app/, the original README's) sends two tasks in a loop, ``test`` in
    cache mode and ``test1`` stored, each with a callback that prints the outcome, until
    Ctrl+C; then ``stop_server`` stops the workers gracefully (no new claims, running tasks
    end), runs the callbacks of what ended, and closes. Neither task raises. So OK means:

    - main.py exited, within STOP_LIMIT_S of its Ctrl+C, with code 0;
    - it ran tasks: at least one finished;
    - nothing is left RUNNING;
    - every finished task's callback ran (no task is stored FINISHED, callback not run:
      every send has a callback), and the app printed one line per callback recorded as run;
    - no task failed, except cache-mode ``test`` tasks still waiting at the stop: the seed
      README says cache mode is not durable (the arguments live only in the sender's
      memory), so the close fails them without running them, callback not run.

    Tasks still queued (``test1``, stored) are kept in the files for the next run: durable,
    as promised, so no problem; the graceful stop does not promise to empty the queue."""
    counts, totals = stats["outcomes"], stats["totals"]
    problems = []
    if code is None:
        problems.append(f"main.py did not exit within {STOP_LIMIT_S:g} s of its Ctrl+C (the demo "
                        "killed it)")
    elif code != 0:
        problems.append(f"main.py exited with code {code}")
    if not counts["finished"]:
        problems.append("no task finished")
    if counts["running"]:
        problems.append(f"{counts['running']} task(s) left RUNNING after the app stopped")
    if totals["FINISHED"]:
        problems.append(f"{totals['FINISHED']} task(s) finished but their callback did not run")
    if callbacks != counts["callback_ran"]:
        problems.append(f"{callbacks} callback line(s) printed, but {counts['callback_ran']} "
                        "recorded as run")
    unexpected = [f for f in failures if not _orphaned_at_the_stop(f)]
    if unexpected:
        example = unexpected[0]
        problems.append(f"{len(unexpected)} task(s) failed that were not cache-mode tasks orphaned "
                        f"at the stop, e.g. {example.task_id} ({example.task_name}): {example.error}")
    elif counts["failed"] > len(failures):
        problems.append(f"{counts['failed']} tasks failed; the newest {len(failures)} were cache-mode "
                        "tasks orphaned at the stop, the others were not read, so cannot be told apart")
    return problems
