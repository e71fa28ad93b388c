"""Cancellation on both backends: waiting tasks never start (in any process, prefetched ones
included), running ones are asked to stop, ended ones are left alone; never retried; the
callback runs once with CANCELLED; a dead worker's pending cancel ends CANCELLED; and with
CLI worker processes draining, no cancelled task starts after the cancel returned."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import measure_tasks_short, start_cli_worker, stop_processes, subprocess_env, wait_until

from message_queue_sqlite import MessageQueue, TaskCancelled, TaskStatus, current_task


def test_waiting_tasks_cancelled_never_run_and_say_so(make_queue):
    mq = make_queue()
    ran: list[int] = []
    called: list[dict] = []

    @mq.task
    def job(n):
        ran.append(n)
        return n

    ready = mq.send(job, {"n": 1}, callback=called.append)
    later = mq.send(job, {"n": 2}, delay=60)
    kept = mq.send(job, {"n": 3})
    assert mq.cancel(ready.task_id, later.task_id) == {ready.task_id: "cancelled", later.task_id: "cancelled"}
    assert mq.cancel(ready.task_id) == {ready.task_id: "ended"}  # once is enough
    assert ready.status == later.status == TaskStatus.CANCELLED
    counts = mq.stats()["outcomes"]
    assert (counts["cancelled"], counts["queued"], counts["scheduled"]) == (2, 1, 0)
    with mq.running():
        assert kept.result(timeout=10) == 3
        wait_until(lambda: called, what="the cancelled task's callback")
    with pytest.raises(TaskCancelled, match="cancelled before it started"):
        ready.result(timeout=1)
    assert ran == [3]
    assert len(called) == 1 and called[0]["status"] == TaskStatus.CANCELLED
    info = {t.task_id: t for t in mq.tasks()}[ready.task_id]
    assert info.status == TaskStatus.CANCELLED and info.error == "cancelled before it started"
    assert ready.status == TaskStatus.CANCELLED  # also once its callback ran (stored CALLBACKED)


def test_a_running_task_is_asked_to_stop_and_ends_cancelled_without_a_retry(make_queue):
    mq = make_queue()
    started = threading.Event()

    @mq.task(retries=3)
    def long():
        started.set()
        for _ in range(3000):
            current_task.check_cancelled()
            time.sleep(0.01)
        return "never"

    with mq.running():
        handle = mq.send(long)
        assert started.wait(10)
        assert handle.cancel() == "stopping"
        with pytest.raises(TaskCancelled, match="stopped when asked"):
            handle.result(timeout=30)
    [info] = mq.tasks()
    assert info.status == TaskStatus.CANCELLED and info.attempts == 1


def test_a_running_task_that_returns_anyway_finishes_first_commit_wins(make_queue):
    mq = make_queue()
    started, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    @mq.task
    def stubborn():
        started.set()
        release.wait(10)
        seen.append(current_task.cancelled)
        return "done anyway"

    with mq.running():
        handle = mq.send(stubborn)
        assert started.wait(10)
        assert handle.cancel() == "stopping"
        release.set()
        assert handle.result(timeout=10) == "done anyway"
    assert seen == [True] and handle.status == TaskStatus.FINISHED
    assert handle.cancel() == "ended"


def test_prefetched_tasks_never_start_once_cancelled(make_queue):
    """One thread busy with a blocking task; the worker has claimed (leased) more behind it.
    Cancelling those answers from the worker's buffer: they never start."""
    mq = make_queue(workers=1)
    release = threading.Event()
    started: list[int] = []

    @mq.task
    def blocker():
        release.wait(30)

    @mq.task
    def queued(n):
        started.append(n)

    try:
        with mq.running():
            measure_tasks_short(mq)  # so the claim that takes the blocker takes the next too
            first, *behind = mq.send_many([(blocker, {}), *[(queued, {"n": n}) for n in range(20)]])
            wait_until(lambda: first.status == TaskStatus.RUNNING, what="the blocker to run")
            wait_until(lambda: any(h.status == TaskStatus.RUNNING for h in behind), timeout=10,
                       what="a task claimed behind the blocker")
            leased = [h.task_id for h in behind if h.status == TaskStatus.RUNNING]
            states = mq.cancel(*(h.task_id for h in behind))
            assert {states[t] for t in leased} == {"cancelled"}, states  # answered from the buffer
            assert set(states.values()) == {"cancelled"}
            release.set()
            first.result(timeout=10)
        assert started == []
        assert {h.status for h in behind} == {TaskStatus.CANCELLED}
    finally:
        release.set()


def test_the_cancel_watcher_wakes_for_changes_of_storage_not_for_every_local_send(make_queue, monkeypatch):
    """A cancel request is a change of storage: local sends (each rings the workers' bell) must
    not wake the cancel watcher, whose look would compete with the worker for the interpreter
    on the send's way to it; a change of storage (another process's commit, a cancel) must."""
    from message_queue_sqlite.engine import cancellation

    monkeypatch.setattr(cancellation, "MIN_GAP_S", 0.0)
    monkeypatch.setattr(cancellation, "LOOK_EVERY_S", 60.0)
    looks: list[float] = []
    original = cancellation.CancelWatcher.look
    monkeypatch.setattr(cancellation.CancelWatcher, "look", lambda self: (looks.append(1), original(self)))
    mq = make_queue()

    @mq.task
    def job(n):
        return n

    with mq.running():
        wait_until(lambda: looks, what="the cancel watcher's first look")
        listening = getattr(mq._engine.backend, "listening", None)  # PostgreSQL's change feed
        if listening is not None:  # starting to listen is a change of storage (a look may follow)
            wait_until(listening.is_set, what="LISTEN")
        before = len(looks)
        for n in range(20):  # one at a time: each send rings the bell while the workers idle
            assert mq.send(job, {"n": n}).result(timeout=10) == n
        assert len(looks) - before <= 1  # at most the feed's "now listening" look; a look per send is 20
        seen = len(looks)
        mq._engine.storage_changed()
        wait_until(lambda: len(looks) > seen, what="a look after storage changed")


def test_cancel_by_name_takes_every_waiting_task_of_that_name(make_queue):
    mq = make_queue()

    @mq.task
    def a():
        return None

    @mq.task
    def b():
        return None

    mine = [mq.send(a) for _ in range(3)] + [mq.send(a, delay=60)]
    other = mq.send(b)
    states = mq.cancel(task_name="a")
    assert states == {h.task_id: "cancelled" for h in mine}
    assert other.status == TaskStatus.NOT_STARTED and mq.cancel(task_name="a") == {}


def test_the_seed_api_cancels_by_id(tmp_path, app_package):
    from message_queue_sqlite import Config, discover_and_mount_ts, init_server

    package = app_package({"jobs": """
        from message_queue_sqlite import task_function

        @task_function
        def job():
            return 1
    """})
    server, client, send_message = init_server(discover_and_mount_ts(package),
                                               Config(middleware_path=str(tmp_path / "q")))
    try:
        task_id = send_message("job", {})
        assert client.cancel_message(task_id) == "cancelled"
        assert client.queue.get(task_id).status == TaskStatus.CANCELLED
    finally:
        client.queue.close()


APP = '''
import os
import time
from message_queue_sqlite import MessageQueue, current_task

mq = MessageQueue(os.environ["CANCEL_DIR"], workers=2, visibility_timeout=1.0,
                  broker_url=os.environ.get("CANCEL_URL") or None)
LOG = os.environ["CANCEL_LOG"]


@mq.task
def work(n):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{n} {time.time():.6f} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
    time.sleep(0.002)


@mq.task
def forever():
    while True:
        time.sleep(0.01)
'''


def _workers(tmp_path: Path, broker_url: str | None, count: int) -> tuple[list[subprocess.Popen], Path, dict]:
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "cancel_app.py").write_text(APP)
    log = tmp_path / "runs.log"
    env = subprocess_env()
    env.update(CANCEL_DIR=str(tmp_path / "q"), CANCEL_URL=broker_url or "", CANCEL_LOG=str(log))
    return [start_cli_worker(app, "cancel_app:mq", env) for _ in range(count)], log, env


def _runs(log: Path) -> dict[int, float]:
    runs: dict[int, float] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            n, stamp, _pid = line.split()
            runs[int(n)] = float(stamp)
    return runs


def test_no_cancelled_task_starts_after_the_cancel_returned_while_workers_drain(tmp_path, backend,
                                                                                broker_url):
    """2 CLI worker processes x 2 threads drain 2,000 tasks; the 1,000 right behind the drain's
    front are cancelled mid-drain (some of them leased, prefetched or running by then).
    Counted from the log the task writes: none of them starts after the cancel returned, and
    none that came back "cancelled" ever starts."""
    workers, log, _env = _workers(tmp_path, broker_url, 2)
    try:
        with MessageQueue(str(tmp_path / "q"), broker_url=broker_url) as sender:
            handles = sender.send_many([("work", {"n": n}) for n in range(2000)])
            wait_until(lambda: len(_runs(log)) >= 100, timeout=60, what="the drain to be under way")
            front = max(_runs(log)) + 1  # the 1,000 right behind the drain's front: some leased already
            targets = [h.task_id for h in handles[front:front + 1000]]
            states = sender.cancel(*targets, wait=30)
            returned = time.time()
            number = {h.task_id: n for n, h in enumerate(handles)}
            wait_until(lambda: sender.stats()["outcomes"]["queued"] + sender.stats()["outcomes"]["running"]
                       == 0, timeout=120, what="the drain to end")
        runs = _runs(log)
        late = [t for t in targets if number[t] in runs and runs[number[t]] > returned]
        cancelled = [t for t in targets if states[t] == "cancelled"]
        assert late == [], late[:5]
        assert not [t for t in cancelled if number[t] in runs]
        assert len(cancelled) + sum(1 for t in targets if states[t] != "cancelled") == 1000
        print(f"\n{backend}: cancel of 1,000 tasks while 2 processes x 2 threads drained: "
              f"{len(cancelled)} cancelled before starting, {1000 - len(cancelled)} had started or "
              f"ended; started after the cancel returned: {len(late)}")
    finally:
        stop_processes(workers)


def test_a_cancel_pending_when_its_worker_dies_ends_cancelled(tmp_path, backend, broker_url):
    workers, _log, _env = _workers(tmp_path, broker_url, 1)
    try:
        with MessageQueue(str(tmp_path / "q"), broker_url=broker_url) as sender:
            handle = sender.send("forever", {})
            wait_until(lambda: handle.status == TaskStatus.RUNNING, timeout=60, what="the task to run")
            workers[0].kill()
            workers[0].wait()
            assert handle.cancel(wait=0.2) == "stopping"  # asked; nobody answers: its worker is dead

            def recovered() -> bool:
                sender.housekeeping()  # what any live worker's housekeeper does
                return handle.status == TaskStatus.CANCELLED

            wait_until(recovered, timeout=30, what="the expired lease to be recovered as CANCELLED")
            assert "its worker died with the cancel pending" in sender.tasks()[0].error
    finally:
        stop_processes(workers)


def test_mqs_cancel_by_id_and_by_name(tmp_path):
    folder = tmp_path / "q"
    with MessageQueue(str(folder)) as mq:
        mq.task(lambda: None, name="job")
        ids = [mq.send("job", {}).task_id for _ in range(3)]
    run = [sys.executable, "-m", "message_queue_sqlite", "cancel", "--path", str(folder)]
    one = subprocess.run([*run, ids[0]], env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert one.returncode == 0 and f"{ids[0]}  cancelled" in one.stdout, one.stdout + one.stderr
    again = subprocess.run([*run, ids[0]], env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and f"{ids[0]}  ended" in again.stdout
    by_name = subprocess.run([*run, "--task", "job"], env=subprocess_env(), capture_output=True, text=True,
                             timeout=60)
    assert by_name.returncode == 0 and "2 cancelled before they started" in by_name.stdout
    for bad in ([], ["nonsense"], ["0-99999"]):
        result = subprocess.run([*run, *bad], env=subprocess_env(), capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == (1 if bad == ["0-99999"] else 2), (bad, result.stdout, result.stderr)
    assert "0-99999  not found" in subprocess.run([*run, "0-99999"], env=subprocess_env(),
                                                  capture_output=True, text=True, timeout=60).stdout
