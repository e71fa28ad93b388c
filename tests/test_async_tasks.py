"""``async def`` tasks, on both backends: they run at once on the worker's event loop (real
concurrency: a barrier only all of them together can pass), bounded by async_concurrency and
apart from the threads; sync and async tasks mix in one worker; each sees its own
current_task; a timeout and a cancel arrive as asyncio cancellation and end the run as
TaskTimeout (retried per policy) or CANCELLED; a failure is recorded with its traceback; a stop
drains them or gives them back; immediate mode runs them inline; a CLI worker process runs
them with --async-concurrency."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from conftest import start_cli_worker, stop_processes, subprocess_env, worker_logs

from message_queue_sqlite import (
    MessageQueue,
    TaskCancelled,
    TaskFailedError,
    TaskStatus,
    current_task,
)


class Gate:
    """Counts runs in progress (the most at once) and opens when ``size`` have arrived."""

    def __init__(self, size: int):
        self.size = size
        self.now = 0
        self.most = 0
        self.arrived = 0
        self.lock = threading.Lock()
        self.open = threading.Event()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.arrived += 1
            self.most = max(self.most, self.now)
            if self.arrived >= self.size:
                self.open.set()

    def leave(self) -> None:
        with self.lock:
            self.now -= 1

    async def pass_through(self, timeout: float = 20.0) -> None:
        """Wait (without blocking the loop) until ``size`` runs arrived; a run that never sees
        that raises TimeoutError: the runs were not concurrent."""
        self.enter()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not self.open.is_set():
                if loop.time() > deadline:
                    raise TimeoutError(f"only {self.arrived} of {self.size} runs arrived")
                await asyncio.sleep(0.005)
        finally:
            self.leave()


def test_async_tasks_run_concurrently_apart_from_the_threads_and_mix_with_sync_ones(make_queue):
    mq = make_queue(workers=1)
    gate = Gate(60)
    sync_started = threading.Event()
    release_sync = threading.Event()

    @mq.task
    async def meet(n):
        await gate.pass_through()
        return n * 2

    @mq.task
    def hold():
        sync_started.set()
        release_sync.wait(20)  # the only thread is busy: async runs must not need it
        return "held"

    with mq.running():
        blocker = mq.send(hold)
        assert sync_started.wait(10)
        handles = [meet.send(n) for n in range(60)]
        assert [h.result(timeout=30) for h in handles] == [n * 2 for n in range(60)]
        release_sync.set()
        assert blocker.result(timeout=10) == "held"
    assert gate.most == 60  # all 60 were in progress at once, with the one thread taken


def test_async_concurrency_bounds_the_runs_at_once(make_queue):
    mq = make_queue(workers=1, async_concurrency=4)
    gate = Gate(4)

    @mq.task
    async def step(n):
        await gate.pass_through()
        await asyncio.sleep(0.01)
        return n

    with mq.running():
        handles = [step.send(n) for n in range(40)]
        assert sorted(h.result(timeout=30) for h in handles) == list(range(40))
    assert gate.most == 4


def test_each_async_run_sees_its_own_current_task(make_queue):
    mq = make_queue()
    gate = Gate(20)

    @mq.task
    async def whoami():
        before = current_task.task_id
        await gate.pass_through()  # every run is suspended here at once
        assert current_task.task_id == before
        return before

    with mq.running():
        handles = [whoami.send() for _ in range(20)]
        assert [h.result(timeout=30) for h in handles] == [h.task_id for h in handles]


def test_an_async_failure_is_recorded_with_its_traceback_and_retried_per_policy(make_queue):
    mq = make_queue()
    attempts = []

    @mq.task(retries=1, retry_backoff=0.01, retry_jitter=False)
    async def flaky():
        attempts.append(current_task.attempt)
        await asyncio.sleep(0)
        raise ValueError("no luck")

    with mq.running():
        handle = flaky.send()
        with pytest.raises(TaskFailedError, match="ValueError: no luck") as raised:
            handle.result(timeout=30)
    assert "in flaky" in raised.value.traceback
    assert len(attempts) == 2 and handle.status == TaskStatus.FAILED


def test_an_async_run_past_its_timeout_is_cancelled_and_fails_with_task_timeout(make_queue):
    mq = make_queue()
    unwound = []

    @mq.task(timeout=0.3, retries=1, retry_backoff=0.01, retry_jitter=False)
    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            unwound.append(current_task.attempt)
            raise

    @mq.task
    async def quick():
        return "ok"

    with mq.running():
        handle = forever.send()
        with pytest.raises(TaskFailedError, match=r"TaskTimeout: timed out after 0\.3 s"):
            handle.result(timeout=30)
        assert quick.send().result(timeout=10) == "ok"
    assert unwound == [1, 2]  # each attempt got asyncio cancellation at its await, and was retried once


def test_a_timed_out_async_task_that_swallows_the_cancellation_still_times_out(make_queue):
    mq = make_queue()

    @mq.task(timeout=0.2)
    async def stubborn():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "pretended to finish"

    with mq.running(), pytest.raises(TaskFailedError, match="TaskTimeout"):
        stubborn.send().result(timeout=30)


def test_cancelling_a_running_async_task_cancels_it_at_its_await(make_queue):
    mq = make_queue()
    started = threading.Event()
    saw = []

    @mq.task(retries=3)
    async def long_job():
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            saw.append("cancelled")
            raise

    with mq.running():
        handle = long_job.send()
        assert started.wait(10)
        assert handle.cancel(wait=10) == "stopping"
        with pytest.raises(TaskCancelled):
            handle.result(timeout=30)
    assert saw == ["cancelled"] and handle.status == TaskStatus.CANCELLED  # not retried


def test_a_stop_drains_running_async_tasks(make_queue):
    mq = make_queue()
    started = threading.Event()

    @mq.task
    async def finishing():
        started.set()
        await asyncio.sleep(0.3)
        return "done"

    mq.start()
    handle = finishing.send()
    assert started.wait(10)
    mq.stop(drain_timeout=30)
    assert handle.status == TaskStatus.FINISHED and handle.result(timeout=1) == "done"


def test_a_stop_past_its_drain_timeout_gives_running_async_tasks_back(make_queue):
    mq = make_queue()
    started = threading.Event()
    runs = []

    @mq.task
    async def slow(n):
        runs.append(n)
        started.set()
        await asyncio.sleep(3600 if len(runs) == 1 else 0)
        return n

    mq.start()
    handle = slow.send(1)
    assert started.wait(10)
    mq.stop(drain_timeout=0.2)
    assert handle.status == TaskStatus.NOT_STARTED  # given back: ready again for any worker
    with mq.running():
        assert handle.result(timeout=30) == 1  # ran again
    assert runs == [1, 1]


def test_an_async_task_runs_inline_in_immediate_mode_also_inside_a_running_loop():
    mq = MessageQueue(immediate=True)

    @mq.task
    async def double(n):
        await asyncio.sleep(0)
        return n * 2

    assert mq.send(double, {"n": 4}).result(timeout=1) == 8

    async def from_a_coroutine():
        return mq.send(double, {"n": 5}).result(timeout=1)

    assert asyncio.run(from_a_coroutine()) == 10
    mq.close()


def test_async_generators_and_async_tasks_in_a_process_are_refused(queue_dir):
    with MessageQueue(queue_dir) as mq:
        with pytest.raises(TypeError, match="'stream'.*async generator"):
            @mq.task
            async def stream():
                yield 1
        with pytest.raises(ValueError, match="'fetch'.*event loop.*executor='process'"):
            @mq.task(executor="process")
            async def fetch():
                return 1
        with pytest.raises(ValueError, match="executor='fork'.*'thread', 'process'"):
            mq.task(executor="fork")
        assert "stream" not in mq.registry and "fetch" not in mq.registry


APP = '''
import asyncio, os
from message_queue_sqlite import MessageQueue

mq = MessageQueue(os.environ["QUEUE_DIR"], broker_url=os.environ.get("BROKER") or None)
arrived = 0

@mq.task
async def meet(n):
    global arrived
    arrived += 1
    for _ in range(4000):  # 20 s at most: all must be in progress at once in this one process
        if arrived >= 30:
            return os.getpid()
        await asyncio.sleep(0.005)
    raise TimeoutError(f"only {arrived} runs arrived")
'''


def test_a_cli_worker_process_runs_async_tasks_concurrently(tmp_path, queue_dir, broker_url):
    app_dir = Path(tmp_path) / "app"
    app_dir.mkdir()
    (app_dir / "async_app.py").write_text(APP)
    env = {**subprocess_env(), "QUEUE_DIR": queue_dir, "BROKER": broker_url or ""}
    sender = MessageQueue(queue_dir, broker_url=broker_url)

    @sender.task
    async def meet(n):  # the sender's view of the same task: only its name matters here
        return n

    handles = [meet.send(n) for n in range(30)]
    worker = start_cli_worker(app_dir, "async_app:mq", env, "--workers", "1", "--async-concurrency", "30")
    try:
        pids = {h.result(timeout=60) for h in handles}
        assert pids == {worker.pid}, worker_logs(app_dir)
    finally:
        stop_processes([worker])
        sender.close()
    assert worker.returncode == 0, worker_logs(app_dir)
    assert "async tasks up to 30 at once" in worker_logs(app_dir)


def test_async_concurrency_must_be_a_positive_integer(queue_dir):
    with pytest.raises(ValueError, match="async_concurrency"):
        MessageQueue(queue_dir, async_concurrency=0)
