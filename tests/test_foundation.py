"""The engine's foundation: the claim ledger, total runs, replaced threads, isolated
callbacks and hooks, fork safety, bounded memory, and input checked at the edge. Each test
here reproduces a failure the engine had before the ledger, executor and hook redesign."""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
import tracemalloc

import pytest
from conftest import wait_until
from faulty import install

from message_queue_sqlite import MessageQueue, MessageQueueError, TaskFailedError, TaskStatus
from message_queue_sqlite.engine import engine as engine_module
from message_queue_sqlite.engine.hooks import Hook


class _BadMessage(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


def _alive_workers(mq: MessageQueue) -> int:
    return mq.engine.worker.executor.threads.alive


# -- runs are total: a task can never take its worker thread down ---------------------

def test_an_exception_whose_message_cannot_be_rendered_fails_the_task_not_the_thread(make_queue):
    mq = make_queue(workers=2)

    @mq.task
    def bad():
        raise _BadMessage()

    @mq.task
    def good():
        return "fine"

    with mq.running():
        handle = mq.send(bad)
        with pytest.raises(TaskFailedError, match="_BadMessage"):
            handle.result(timeout=10)
        assert mq.engine.find(handle.task_id).outcome == TaskStatus.FAILED
        assert [mq.send(good).result(timeout=10) for _ in range(4)] == ["fine"] * 4
        assert _alive_workers(mq) == 2


def test_a_return_value_too_deep_to_store_fails_the_task_with_the_reason(make_queue):
    mq = make_queue(workers=1)

    @mq.task
    def deep():
        value: list = []
        for _ in range(100_000):
            value = [value]
        return value

    @mq.task
    def shallow():
        return [1]

    with mq.running():
        handle = mq.send(deep)
        with pytest.raises(TaskFailedError, match=r"return value \(list\) is nested 100001 levels deep"):
            handle.result(timeout=20)
        assert mq.send(shallow).result(timeout=10) == [1]  # the one worker thread lives on
        assert _alive_workers(mq) == 1


def test_a_worker_thread_killed_by_a_bug_is_replaced_and_its_claim_runs_again(make_queue, monkeypatch):
    mq = make_queue(workers=2)
    runs = []

    @mq.task
    def job(i):
        runs.append(i)
        return i

    real_run = mq.engine.runner.run
    broken = {"left": 1}

    def run_once_broken(claim):
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("a bug in the engine, outside the task")
        return real_run(claim)

    monkeypatch.setattr(mq.engine.runner, "run", run_once_broken)
    with mq.running():
        handles = [mq.send(job, {"i": i}) for i in range(5)]
        assert sorted(h.result(timeout=20) for h in handles) == list(range(5))
        executor = mq.engine.worker.executor.threads
        assert executor.replaced == 1
        wait_until(lambda: executor.alive == 2, what="the replacement thread")
    assert not mq.tasks(status=TaskStatus.RUNNING)


# -- the ledger: no claim is forgotten when an exchange raises after it ------------------

def test_claims_survive_a_failed_recording_of_another_shards_completions(make_queue):
    mq = make_queue(workers=1, shards=2)
    if len(mq.engine.shards) < 2:
        pytest.skip("one table on PostgreSQL: no second shard to fail")

    @mq.task
    def job(i):
        return i

    faulty = install(mq, 0)
    # Recording shard 0's completions fails while the rule stands (a pure flush: limit 0).
    faulty.fail("complete_and_claim", lambda: MessageQueueError("injected: shard 0 is unavailable"),
                matches=lambda completions, owner, limit, *rest, **kw: bool(completions) and limit == 0)
    sent = {i: mq.send(job, {"i": i}) for i in range(12)}
    on_shard = {0: {}, 1: {}}
    for i, handle in sent.items():
        on_shard[int(handle.task_id.split("-")[0])][i] = handle
    assert on_shard[0] and on_shard[1]
    with mq.running():
        # Shard 1's tasks are claimed in rounds whose recording of shard 0 fails right after
        # the claim: they must still run and be recorded.
        assert {i: h.result(timeout=20) for i, h in on_shard[1].items()} == {i: i for i in on_shard[1]}
        assert faulty.rules[0].fired > 0
        faulty.heal()
        assert {i: h.result(timeout=20) for i, h in on_shard[0].items()} == {i: i for i in on_shard[0]}
    assert not mq.tasks(status=TaskStatus.RUNNING)


# -- callbacks are isolated like tasks -----------------------------------------------

def test_a_callback_calling_sys_exit_spares_the_other_callbacks(make_queue):
    mq = make_queue(workers=2)
    got: list[str] = []

    @mq.task
    def job(i):
        return i

    def exits(_outcome):
        sys.exit("a callback that exits")

    handles = [mq.send(job, {"i": 0}, callback=exits)]
    handles += [mq.send(job, {"i": i}, callback=lambda o: got.append(o["task_id"])) for i in range(1, 50)]
    with mq.running():
        wait_until(lambda: len(got) == 49, timeout=20, what="the 49 other callbacks")
    assert sorted(got) == sorted(h.task_id for h in handles[1:])
    assert all(mq.engine.find(h.task_id).status == TaskStatus.CALLBACKED for h in handles)


# -- hooks ---------------------------------------------------------------------------

class _Recorder(Hook):
    def __init__(self) -> None:
        self.points: list[tuple[str, str]] = []

    def after_send(self, task_id, request):
        self.points.append(("after_send", task_id))

    def before_run(self, claim):
        self.points.append(("before_run", claim.task_id))

    def after_run(self, claim, run):
        self.points.append(("after_run", claim.task_id))

    def failed(self, claim, run):
        self.points.append(("failed", claim.task_id))

    def after_commit(self, claims):
        self.points.extend(("after_commit", c.task_id) for c in claims)

    def callback_ran(self, outcome):
        self.points.append(("callback_ran", outcome.task_id))


class _Raising(Hook):
    def before_run(self, claim):
        raise RuntimeError("a broken hook")

    def retry_delay(self, claim, run):
        raise RuntimeError("a broken retry hook")


def test_hooks_see_each_point_in_order_and_a_raising_hook_is_ignored(make_queue, caplog):
    recorder = _Recorder()
    mq = make_queue(workers=1, hooks=[_Raising(), recorder])

    @mq.task
    def ok():
        return 1

    @mq.task
    def fails():
        raise ValueError("no")

    with mq.running():
        good = mq.send(ok, callback=lambda o: None)
        assert good.result(timeout=10) == 1
        bad = mq.send(fails)
        with pytest.raises(TaskFailedError):
            bad.result(timeout=10)
        wait_until(lambda: ("callback_ran", good.task_id) in recorder.points, what="the callback hook")
        wait_until(lambda: ("after_commit", bad.task_id) in recorder.points, what="the commit hook")
    mine = [p for p, task_id in recorder.points if task_id == good.task_id]
    assert mine == ["after_send", "before_run", "after_run", "after_commit", "callback_ran"]
    assert [p for p, task_id in recorder.points if task_id == bad.task_id] == [
        "after_send", "before_run", "after_run", "failed", "after_commit"]
    assert "a broken hook" in caplog.text


def test_a_hook_can_decide_retries_after_the_default_policy(make_queue):
    class RetryTwice(Hook):
        def retry_delay(self, claim, run):
            return 0.0 if claim.attempt < 3 else None

    mq = make_queue(workers=1, hooks=[RetryTwice()])
    calls = []

    @mq.task  # no retries of its own: the Retries hook says no, the next hook decides
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("again")
        return "third"

    with mq.running():
        assert mq.send(flaky).result(timeout=20) == "third"
    assert len(calls) == 3


def test_a_hook_must_be_a_hook(queue_dir):
    with pytest.raises(TypeError, match="must be an instance of message_queue_sqlite.Hook"):
        MessageQueue(queue_dir, hooks=[object()])


# -- fork safety -----------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_the_queue_is_busy_can_send_and_wait(make_queue):
    mq = make_queue(workers=2)

    @mq.task
    def echo(x):
        return x

    stop = threading.Event()

    def keep_sending():
        while not stop.is_set():
            mq.send(echo, {"x": "parent"}, callback=lambda o: None)

    with mq.running():
        senders = [threading.Thread(target=keep_sending) for _ in range(2)]
        for t in senders:
            t.start()
        try:
            parent_node = mq.engine.node
            for round_ in range(8):
                pid = os.fork()
                if pid == 0:  # the child: must never hang, must not be the parent's node
                    code = 1
                    try:
                        if mq.engine.node != parent_node:
                            handle = mq.send(echo, {"x": f"child {round_}"})
                            code = 0 if handle.result(timeout=20) == f"child {round_}" else 3
                    except BaseException:  # noqa: BLE001
                        code = 4
                    os._exit(code)
                deadline = time.monotonic() + 30
                while True:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        break
                    if time.monotonic() > deadline:
                        os.kill(pid, 9)
                        os.waitpid(pid, 0)
                        pytest.fail(f"child {round_} hung (a lock held at fork, or a thread it lacks)")
                    threading.Event().wait(0.01)
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (round_, status)
        finally:
            stop.set()
            for t in senders:
                t.join()


# -- bounded memory and handles --------------------------------------------------------

def test_closing_queue_objects_leaves_no_exit_handler_behind(queue_dir):
    before = atexit._ncallbacks()
    for _ in range(50):
        mq = MessageQueue(queue_dir)
        mq.send("t", {}, use_cache=True)  # registers the node, which used to add a handler
        mq.close()
    assert atexit._ncallbacks() <= before


def test_a_pending_callback_costs_little_memory(queue_dir):
    with MessageQueue(queue_dir) as mq:
        def callback(_outcome):
            return None

        mq.send("t", {}, callback=callback)  # warm up: connections, caches
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            ids = [mq.send("t", {}, callback=callback).task_id for _ in range(5000)]
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        per_task = grown / len(ids)
        ids_cost = sum(sys.getsizeof(task_id) for task_id in ids) / len(ids) + 8  # the list of ids
        assert per_task - ids_cost < 130, per_task  # ~89 bytes measured; 185 before __slots__


def test_pending_callbacks_are_bounded_by_back_pressure(queue_dir, monkeypatch):
    monkeypatch.setattr(engine_module, "BACKPRESSURE_WAIT_S", 0.3)
    with MessageQueue(queue_dir, max_pending_callbacks=5, workers=2) as mq:
        @mq.task
        def job():
            return 1

        for _ in range(5):
            mq.send(job, callback=lambda o: None)
        with pytest.raises(MessageQueueError, match="max_pending_callbacks=5"):
            mq.send(job, callback=lambda o: None)
        assert mq.stats()["totals"]["NOT_STARTED"] == 5  # the refused send stored nothing
        got = []
        with mq.running():  # with workers, sends wait for room and all go through
            for _ in range(40):
                mq.send(job, callback=got.append)
            wait_until(lambda: len(got) == 40, what="all callbacks")


def test_max_pending_callbacks_is_checked(queue_dir):
    with pytest.raises(ValueError, match="max_pending_callbacks=0"):
        MessageQueue(queue_dir, max_pending_callbacks=0)


# -- input checked at the edge -------------------------------------------------------

@pytest.mark.parametrize("priority", [2**63, -(2**63) - 1])
def test_a_priority_out_of_range_is_refused_by_name(make_queue, priority):
    mq = make_queue()
    with pytest.raises(ValueError, match=rf"priority={priority}.*-2\*\*63 to 2\*\*63-1"):
        mq.send("t", {}, priority=priority)
    assert mq.send("t", {}, priority=2**63 - 1).task_id  # the bounds themselves are fine
    assert sum(mq.stats()["totals"].values()) == 1


@pytest.mark.parametrize("delay", [math.nan, math.inf, -1.0])
def test_a_delay_that_is_not_a_finite_number_of_seconds_is_refused(make_queue, delay):
    mq = make_queue()
    with pytest.raises(ValueError, match=rf"delay={delay!r}.*finite number of seconds"):
        mq.send("t", {}, delay=delay)
    assert sum(mq.stats()["totals"].values()) == 0


# -- the ledger and renewal ------------------------------------------------------------

def test_a_prefetched_claim_whose_lease_was_taken_over_is_never_started_here(tmp_path):
    """SQLite, a fake lease clock: while the one worker thread runs a long task, a second task
    waits in its buffer (prefetched: tasks were measured short); its lease expires (the worker
    stalled), another process takes it over. The renewal learns the lease is lost: the claim
    leaves the ledger and never runs here."""
    from conftest import FakeClock, measure_tasks_short, use_clock

    clock = FakeClock()
    folder = str(tmp_path / "q")
    mq = use_clock(MessageQueue(folder, workers=1, visibility_timeout=10, prefetch=2), clock)
    other = use_clock(MessageQueue(folder, visibility_timeout=10), clock)
    try:
        entered, release = threading.Event(), threading.Event()
        ran: list[str] = []

        @mq.task
        def hold():
            entered.set()
            release.wait(30)
            return "held"

        @mq.task
        def second():
            ran.append("here")
            return "here"

        mq.start()
        measure_tasks_short(mq)  # a claim now takes more than the one free slot
        first, waiting = mq.send_many([(hold, {}), (second, {})])  # one commit: claimed together
        assert entered.wait(10)
        worker = mq.engine.worker
        wait_until(lambda: len(worker.ledger) == 2, what="both claims in the ledger")
        clock.advance(11)  # both leases expire: the worker stalled past the visibility timeout
        assert other.housekeeping().requeued == 2
        _, taken = other.engine.shards[0].complete_and_claim([], "another-process", 2, 10)
        assert {c.task_id for c in taken} == {first.task_id, waiting.task_id}
        mq.housekeeping()  # renewal: both leases are someone else's now
        assert len(worker.ledger) == 0
        release.set()  # the stalled run ends: its completion is fenced out
        wait_until(lambda: worker.executor.free_slots() == 1, what="the worker to go idle")
        mq.stop()
        assert ran == []  # the prefetched claim never started here
        for handle in (first, waiting):
            record = mq.engine.find(handle.task_id)
            assert (record.status, record.lease_owner) == (TaskStatus.RUNNING, "another-process")
    finally:
        mq.close()
        other.close()


def test_a_fresh_worker_leases_no_more_than_its_free_slots(make_queue):
    """Issue 17, finding 10 (celery #4537): a worker that has not measured its tasks yet claims
    one per free thread, so slow tasks never sit prefetched while another worker is idle."""
    mq = make_queue(workers=1)
    entered, release = threading.Event(), threading.Event()

    @mq.task
    def slow(n):
        entered.set()
        release.wait(30)
        return n

    handles = mq.send_many([(slow, {"n": n}) for n in range(3)])
    mq.start()
    try:
        assert entered.wait(10)
        statuses = sorted(mq.engine.find(h.task_id).status for h in handles)
        assert statuses == [TaskStatus.NOT_STARTED, TaskStatus.NOT_STARTED, TaskStatus.RUNNING]
        assert len(mq.engine.worker.ledger) == 1
    finally:
        release.set()
        mq.stop()
