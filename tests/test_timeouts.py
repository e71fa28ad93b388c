"""Timeouts and the running task's context, on both backends: a run past its timeout ends
FAILED with TaskTimeout at its deadline, frees its slot at once while its thread is stuck,
never records the late result, is retried per policy; the deadline-or-end race records one
completion; CLI workers enforce it too; current_task tells a task about itself."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import subprocess_env, wait_until

from message_queue_sqlite import (
    Config,
    Hook,
    TaskFailedError,
    TaskStatus,
    TaskTimeout,
    current_task,
)


def test_a_stuck_run_fails_at_its_deadline_frees_its_slot_and_its_late_result_is_dropped(make_queue):
    mq = make_queue(workers=1)
    release = threading.Event()

    @mq.task(timeout=0.5)
    def stuck():
        release.wait()  # blocked in C: the TaskTimeout raised in the thread cannot land
        return "late"

    @mq.task
    def quick(n):
        return n

    try:
        with mq.running():
            handle = mq.send(stuck)
            with pytest.raises(TaskFailedError, match=r"TaskTimeout: timed out after 0\.5 s") as raised:
                handle.result(timeout=30)
            assert "the task was still running, at:" in raised.value.traceback
            assert "release.wait()" in raised.value.traceback  # where it was stuck
            outcome = handle.outcome(timeout=1)
            overshoot = outcome.end_time - outcome.start_time - 0.5
            assert overshoot >= 0, outcome  # never before the deadline
            print(f"\ntimed out {overshoot * 1000:.1f} ms after the 0.5 s deadline")
            # the one worker thread is stuck, yet another task runs: its slot was given a new thread
            assert mq.send(quick, {"n": 7}).result(timeout=10) == 7
            release.set()  # the stuck run now returns "late": dropped, never recorded
            executor = mq.engine.worker.executor.threads
            wait_until(lambda: executor.alive == 1, what="the abandoned thread to exit")
            assert mq.send(quick, {"n": 8}).result(timeout=10) == 8
        assert handle.status == TaskStatus.FAILED and executor.timed_out == 1
        [info] = [t for t in mq.tasks() if t.task_id == handle.task_id]
        assert info.attempts == 1 and "TaskTimeout" in info.error
    finally:
        release.set()


def test_a_run_in_python_code_is_interrupted_and_its_thread_exits(make_queue):
    mq = make_queue(workers=1)
    spins = [0]

    @mq.task(timeout=0.3)
    def spin():
        while True:
            spins[0] += 1

    with mq.running():
        with pytest.raises(TaskFailedError, match="TaskTimeout"):
            mq.send(spin).result(timeout=30)
        executor = mq.engine.worker.executor.threads
        wait_until(lambda: executor.alive == 1, what="the interrupted thread to exit")
        stopped_at = spins[0]
        assert mq.send(spin, timeout=5.0) is not None  # (another, left to the stop below)
    assert spins[0] >= stopped_at


def test_timeouts_are_retried_per_policy_unless_retry_on_excludes_them(make_queue):
    mq = make_queue()
    release = threading.Event()

    @mq.task(timeout=0.2, retries=2, retry_backoff=0.01, retry_jitter=False)
    def retried():
        release.wait(5)

    @mq.task(timeout=0.2, retries=2, retry_backoff=0.01, retry_on=(ValueError,))
    def not_retried():
        release.wait(5)

    try:
        with mq.running(workers=4):
            first, second = mq.send(retried), mq.send(not_retried)
            for handle in (first, second):
                with pytest.raises(TaskFailedError, match="TaskTimeout"):
                    handle.result(timeout=30)
        attempts = {t.task_name: t.attempts for t in mq.tasks()}
        assert attempts == {"retried": 3, "not_retried": 1}
    finally:
        release.set()


def test_the_send_s_timeout_wins_over_the_task_s_and_the_config_default_applies_last(make_queue):
    mq = make_queue(task_timeout=0.3)
    release = threading.Event()

    @mq.task
    def uses_default():
        release.wait(5)

    @mq.task(timeout=30)
    def generous():
        release.wait(5)
        return "done"

    try:
        with mq.running(workers=4):
            with pytest.raises(TaskFailedError, match=r"timed out after 0\.3 s"):
                mq.send(uses_default).result(timeout=30)
            with pytest.raises(TaskFailedError, match=r"timed out after 0\.2 s"):
                mq.send(generous, timeout=0.2).result(timeout=30)
            slow = mq.send(generous)  # its own 30 s: not cut at the queue's 0.3 s
            wait_until(lambda: slow.status == TaskStatus.RUNNING, what="the generous task to start")
            release.set()
            assert slow.result(timeout=10) == "done"
    finally:
        release.set()


class _Commits(Hook):
    def __init__(self) -> None:
        self.ids: list[str] = []

    def after_commit(self, claims):
        self.ids.extend(c.task_id for c in claims)


def test_a_run_ending_at_its_deadline_is_recorded_once_whichever_wins(make_queue):
    commits = _Commits()
    mq = make_queue(workers=4, hooks=[commits])

    @mq.task(timeout=0.05)
    def on_the_edge():
        time.sleep(0.05)
        return "in time"

    with mq.running():
        handles = mq.send_many([(on_the_edge, {})] * 40)
        outcomes = [h.outcome(timeout=30) for h in handles]
    ids = [h.task_id for h in handles]
    wait_until(lambda: set(commits.ids) >= set(ids), what="every completion committed")
    assert max(Counter(commits.ids).values()) == 1  # one completion each, never two
    stored = {t.task_id: t.status for t in mq.tasks(limit=100)}
    assert all(stored[o.task_id] == o.status for o in outcomes)  # what the sender got is what is stored
    print(f"\n{sum(o.ok for o in outcomes)} of 40 ended in time, the rest at their deadline")


@pytest.mark.parametrize("bad", [0, -1, "5", float("nan"), True])
def test_bad_timeouts_are_refused_by_name(make_queue, bad):
    mq = make_queue()

    @mq.task
    def job():
        return None

    with pytest.raises(ValueError, match=r"timeout=.* must be a positive number of seconds"):
        mq.task(timeout=bad)
    with pytest.raises(ValueError, match=r"timeout=.* must be a positive number of seconds"):
        mq.send(job, timeout=bad)
    assert mq.tasks() == []
    with pytest.raises(ValueError, match=r"Config.task_timeout=.* is invalid"):
        Config(task_timeout=bad)


def test_current_task_tells_a_task_about_its_own_run(make_queue):
    mq = make_queue()
    seen: list[dict] = []

    @mq.task(retries=1, retry_backoff=0.01, queue="mail", timeout=60)
    def flaky():
        seen.append({"id": current_task.task_id, "name": current_task.task_name,
                     "attempt": current_task.attempt, "retries": current_task.retries,
                     "max_retries": current_task.max_retries, "queue": current_task.queue,
                     "deadline": current_task.deadline - current_task.started_at,
                     "slot": current_task.scheduled_at, "in_task": bool(current_task)})
        if len(seen) == 1:
            raise RuntimeError("first attempt fails")
        return current_task.get().task_id

    with mq.running():
        handle = mq.send(flaky)
        assert handle.result(timeout=30) == handle.task_id
    assert [(s["attempt"], s["retries"]) for s in seen] == [(1, 0), (2, 1)]
    assert {(s["id"], s["name"], s["max_retries"], s["queue"], s["slot"], s["in_task"]) for s in seen} == {
        (handle.task_id, "flaky", 1, "mail", None, True)}
    assert all(abs(s["deadline"] - 60) < 1e-6 for s in seen)
    assert not current_task and current_task.get() is None
    with pytest.raises(RuntimeError, match="current_task.task_id was read outside a running task"):
        current_task.task_id  # noqa: B018 - the read is the point


def test_a_periodic_task_reads_its_slot_from_its_context(make_queue):
    mq = make_queue()
    slots: list[datetime] = []

    @mq.periodic(every=1, tz="UTC")
    def tick():
        slots.append(current_task.scheduled_at)

    with mq.running():
        wait_until(lambda: slots, what="a slot to run")
    slot = slots[0]
    assert slot.tzinfo is not None and slot.utcoffset().total_seconds() == 0
    assert slot.timestamp() == int(slot.timestamp())  # every=1: on the second
    assert abs(slot.timestamp() - datetime.now(timezone.utc).timestamp()) < 60


APP = '''
import os
import threading
from message_queue_sqlite import MessageQueue

mq = MessageQueue(os.environ["TIMEOUT_DIR"], workers=1, broker_url=os.environ.get("TIMEOUT_URL") or None)
forever = threading.Event()


@mq.task(timeout=1.0)
def hangs():
    forever.wait()


@mq.task
def answers(n):
    return n
'''


def test_a_cli_worker_times_out_a_hung_task_serves_on_and_stops_cleanly(tmp_path, backend, broker_url):
    from message_queue_sqlite import MessageQueue

    app = tmp_path / "app"
    app.mkdir()
    (app / "timeout_app.py").write_text(APP)
    env = subprocess_env()
    env.update(TIMEOUT_DIR=str(tmp_path / "q"), TIMEOUT_URL=broker_url or "")
    log = Path(tmp_path / "worker.log")
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "-m", "message_queue_sqlite", "worker", "timeout_app:mq"],
                                  cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with MessageQueue(str(tmp_path / "q"), broker_url=broker_url) as sender:
            hung = sender.send("hangs", {})
            began = time.time()
            with pytest.raises(TaskFailedError, match=r"TaskTimeout: timed out after 1\.0 s"):
                hung.result(timeout=60)
            print(f"\nthe hung task's failure reached the sender {time.time() - began:.2f} s after the send")
            # the worker's one thread is stuck forever, yet it still serves
            assert sender.send("answers", {"n": 5}).result(timeout=30) == 5
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()  # the stuck thread does not hold the stop
    finally:
        if worker.poll() is None:
            worker.kill()
    assert "timed out after 1.0 s; its thread is left behind and replaced" in log.read_text()


def test_task_timeout_is_a_timeout_error_with_its_seconds():
    error = TaskTimeout(2.5)
    assert isinstance(error, TimeoutError) and error.seconds == 2.5 and str(error) == "timed out after 2.5 s"
    assert str(TaskTimeout()) == "timed out"


# -- progress ----------------------------------------------------------------------------------
def test_progress_is_stored_while_the_task_runs_and_writes_are_batched(make_queue):
    mq = make_queue()
    release = threading.Event()

    @mq.task
    def crunch(steps):
        for step in range(steps):
            current_task.progress(step + 1, total=steps, message=f"step {step + 1} of {steps}")
        release.wait(30)
        current_task.progress(0.5)  # a fraction: no total
        return "done"

    try:
        with mq.running():
            handle = mq.send(crunch, {"steps": 2000})
            assert handle.progress is None or handle.progress.done <= 2000
            wait_until(lambda: handle.progress is not None and handle.progress.done == 2000,
                       what="the last of 2,000 reports to be stored")
            seen = handle.progress
            assert (seen.total, seen.message, seen.fraction) == (2000, "step 2000 of 2000", 1.0)
            writes = mq.engine.progress.writes
            assert writes < 100, writes  # 2,000 reports, a few writes: rate-limited and batched
            print(f"\n2,000 progress reports, {writes} write(s)")
            release.set()
            assert handle.result(timeout=10) == "done"
        info = mq.task_info(handle.task_id)
        assert info.progress is not None and info.progress.fraction in (0.5, 1.0)
    finally:
        release.set()


def test_a_late_progress_report_of_an_ended_run_changes_nothing(make_queue):
    mq = make_queue()

    @mq.task
    def quick():
        return 1

    handle = mq.send(quick)
    with mq.running():
        handle.result(timeout=10)
    shard, row_id = mq.engine.shard_of(handle.task_id)
    mq.engine.shards[shard].record_progress(mq.engine.node, [(row_id, 1, '{"done": 9, "at": 0}')])
    assert handle.progress is None  # fenced: the run had ended


@pytest.mark.parametrize(("args", "message"), [
    ((-1,), "must be a finite number >= 0"), ((float("inf"),), "must be a finite number"),
    ((1, 0), "total=0"), ((5, 2), "done is more than the total"), (("half",), "done='half'"),
])
def test_bad_progress_is_refused_by_name_inside_the_task(make_queue, args, message):
    mq = make_queue()

    @mq.task
    def reports():
        current_task.progress(*args)

    with mq.running(), pytest.raises(TaskFailedError, match=message):
        mq.send(reports).result(timeout=10)
    with pytest.raises(RuntimeError, match="outside a running task"):
        current_task.progress(0.5)
