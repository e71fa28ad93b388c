"""``executor="process"`` tasks, on both backends: they run in child processes of the worker
(not its own), at most ``processes`` at once; a run past its timeout is stopped for real (its
child killed at the deadline, TaskTimeout, retried per policy, a new child next); a child
SIGKILLed mid-run fails that run with the way it died and the retry runs in a new child, so
nothing is lost; a cancel kills the child (CANCELLED); an exception crosses back as its own
class (retry_on matches it); current_task and progress work in the child."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import wait_until

from message_queue_sqlite import MessageQueue, TaskCancelled, TaskFailedError, TaskStatus

TASKS = '''
import os, signal, time
from pathlib import Path
from message_queue_sqlite import current_task

def burn(n):
    total = 0
    for i in range(n):
        total += i * i
    return os.getpid()

def stuck(marker):
    Path(marker).write_text(str(os.getpid()))
    time.sleep(3600)

def dies_once(marker):
    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return ["survived", current_task.attempt, os.getpid()]

class Odd(Exception):
    def __init__(self, a, b):  # pickles badly: its args do not rebuild it
        super().__init__(f"{a}/{b}")

def fails(kind, marker):
    with open(marker, "a") as out:
        out.write("run\\n")
    if kind == "key":
        raise KeyError("missing")
    raise Odd(1, 2)

def reports(gate):
    current_task.progress(3, total=4, message="three of four")
    for _ in range(2000):
        if Path(gate).exists():
            return current_task.task_id
        time.sleep(0.01)
    raise TimeoutError("the gate never opened")
'''


@pytest.fixture
def tasks(app_package):
    package = app_package({"cpu": TASKS})
    __import__(f"{package}.cpu")
    return sys.modules[f"{package}.cpu"]


def register(mq: MessageQueue, tasks, **options):
    for name in ("burn", "stuck", "dies_once", "reports"):
        mq.task(executor="process", **options.get(name, {}))(getattr(tasks, name))
    mq.task(executor="process", retries=1, retry_backoff=0.01, retry_jitter=False,
            retry_on=(KeyError,))(tasks.fails)


def test_process_tasks_run_in_child_processes_at_most_processes_at_once(make_queue, tasks):
    mq = make_queue(workers=2, processes=2)
    register(mq, tasks)

    @mq.task
    def here():
        return os.getpid()

    with mq.running():
        handles = [mq.send("burn", {"n": 20000}) for _ in range(40)]
        local = mq.send(here)
        pids = {h.result(timeout=60) for h in handles}
        assert local.result(timeout=10) == os.getpid()  # plain tasks stay on the threads
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_a_process_task_past_its_timeout_is_killed_recorded_and_retried(make_queue, tasks, tmp_path):
    mq = make_queue(processes=1)
    register(mq, tasks, stuck={"timeout": 0.5, "retries": 1, "retry_backoff": 0.01, "retry_jitter": False})
    marker = tmp_path / "stuck.pid"
    with mq.running():
        handle = mq.send("stuck", {"marker": str(marker)})
        with pytest.raises(TaskFailedError, match=r"TaskTimeout: timed out after 0\.5 s"):
            handle.result(timeout=30)
        stuck_pid = int(marker.read_text())
        # the child stuck in time.sleep(3600) was killed, not left behind
        wait_until(lambda: not _alive(stuck_pid), what="the stuck child to be gone")
        after = mq.send("burn", {"n": 10}).result(timeout=30)
        assert after != stuck_pid  # a new child took its place
        executor = mq.engine.worker.executor.of("process")
        assert executor.timed_out == 2  # the first attempt and its one retry
    outcome = handle.outcome(timeout=1)
    assert outcome.attempts == 2 and handle.status == TaskStatus.FAILED


def test_a_child_killed_mid_run_loses_nothing_its_retry_runs_in_a_new_child(make_queue, tasks, tmp_path):
    mq = make_queue(processes=1)
    register(mq, tasks, dies_once={"retries": 2, "retry_backoff": 0.01, "retry_jitter": False})
    marker = tmp_path / "died.pid"
    with mq.running():
        handle = mq.send("dies_once", {"marker": str(marker)})
        word, attempt, pid = handle.result(timeout=60)
    assert (word, attempt) == ("survived", 2) and pid != int(marker.read_text())


def test_a_child_killed_mid_run_without_retries_fails_saying_how_it_died(make_queue, tasks, tmp_path):
    mq = make_queue(processes=1)
    register(mq, tasks)
    with mq.running():
        handle = mq.send("dies_once", {"marker": str(tmp_path / "died.pid")})
        with pytest.raises(TaskFailedError, match="ChildDied.*killed by signal SIGKILL"):
            handle.result(timeout=60)


def test_cancelling_a_running_process_task_kills_its_child(make_queue, tasks, tmp_path):
    mq = make_queue(processes=1)
    register(mq, tasks, stuck={"retries": 3})
    marker = tmp_path / "stuck.pid"
    with mq.running():
        handle = mq.send("stuck", {"marker": str(marker)})
        wait_until(lambda: marker.exists(), timeout=30, what="the task to start in its child")
        assert handle.cancel(wait=10) == "stopping"
        with pytest.raises(TaskCancelled):
            handle.result(timeout=30)
        wait_until(lambda: not _alive(int(marker.read_text())), what="the child to be killed")
    assert handle.status == TaskStatus.CANCELLED  # not retried


def test_an_exception_crosses_back_as_its_own_class(make_queue, tasks, tmp_path):
    mq = make_queue(processes=1)
    register(mq, tasks)
    key_runs, odd_runs = tmp_path / "key", tmp_path / "odd"
    with mq.running():
        key = mq.send("fails", {"kind": "key", "marker": str(key_runs)})
        odd = mq.send("fails", {"kind": "odd", "marker": str(odd_runs)})
        with pytest.raises(TaskFailedError, match="KeyError: 'missing'") as raised:
            key.result(timeout=30)
        assert "in fails" in raised.value.traceback  # the child's traceback
        with pytest.raises(TaskFailedError, match="ChildTaskError: Odd: 1/2"):
            odd.result(timeout=30)
    assert key_runs.read_text().count("run") == 2  # retry_on=(KeyError,) matched: retried once
    assert odd_runs.read_text().count("run") == 1  # not a KeyError: not retried


def test_current_task_and_progress_work_in_the_child(make_queue, tasks, tmp_path):
    mq = make_queue(processes=1)
    register(mq, tasks)
    gate = tmp_path / "gate"
    with mq.running():
        handle = mq.send("reports", {"gate": str(gate)})
        wait_until(lambda: handle.progress is not None, timeout=30, what="the child's progress report")
        progress = handle.progress
        assert (progress.done, progress.total, progress.message) == (3, 4, "three of four")
        gate.write_text("open")
        assert handle.result(timeout=30) == handle.task_id


def test_process_tasks_must_be_module_level_and_not_cache_mode(queue_dir):
    with MessageQueue(queue_dir) as mq:
        with pytest.raises(ValueError, match="'nested'.*not defined at module level"):
            @mq.task(executor="process")
            def nested():
                return 1
        with pytest.raises(ValueError, match="use_cache=True cannot use executor='process'"):
            mq.task(executor="process", use_cache=True)
        assert "nested" not in mq.registry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())
