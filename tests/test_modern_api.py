"""The modern API, run against every backend (conformance)."""

from __future__ import annotations

import threading

import pytest
from conftest import wait_until

from message_queue_sqlite import TaskFailedError, TaskStatus
from message_queue_sqlite.core.errors import MessageQueueError


def test_result_status_and_errors(make_queue):
    mq = make_queue()

    @mq.task
    def add(a, b):
        return a + b

    @mq.task()
    def boom(why):
        raise KeyError(why)

    handle = mq.send(add, {"a": 2, "b": 3})
    assert handle.status == TaskStatus.NOT_STARTED
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.05)  # no worker yet
    mq.start()
    assert handle.result(timeout=10) == 5
    assert handle.status == TaskStatus.FINISHED  # no callback: stays FINISHED
    failing = mq.send("boom", {"why": "nope"})
    with pytest.raises(TaskFailedError) as err:
        failing.result(timeout=10)
    assert "KeyError" in str(err.value) and "raise KeyError" in err.value.traceback
    assert mq.get(handle.task_id).result(timeout=1) == 5


def test_results_pass_through_json(make_queue):
    mq = make_queue()

    @mq.task
    def echo(value):
        return value

    mq.start()
    value = {"nested": [1, 2.5, "x", None, True], "tuple": (1, 2)}
    assert mq.send(echo, {"value": value}).result(timeout=10) == {
        "nested": [1, 2.5, "x", None, True], "tuple": [1, 2]}


def test_unstorable_result_fails_the_task_with_the_reason(make_queue):
    mq = make_queue()

    @mq.task
    def gives_a_set():
        return {1, 2}

    mq.start()
    with pytest.raises(TaskFailedError, match="cannot be stored as JSON"):
        mq.send(gives_a_set).result(timeout=10)


def test_priority_then_send_order(make_queue):
    mq = make_queue(workers=1)
    ran = []

    @mq.task
    def record(n):
        ran.append(n)

    sends = [(0, "a"), (5, "b"), (0, "c"), (9, "d"), (5, "e"), (-1, "f"), (9, "g")]
    handles = [mq.send(record, {"n": n}, priority=p) for p, n in sends]
    mq.start()
    for handle in handles:
        handle.result(timeout=10)
    assert ran == ["d", "g", "b", "e", "a", "c", "f"]


def test_send_many_and_callbacks(make_queue):
    mq = make_queue(workers=3)

    @mq.task
    def square(x):
        return x * x

    got = {}
    done = threading.Event()

    def callback(result):
        got[result["task_id"]] = result["result"]
        if len(got) == 500:
            done.set()

    handles = mq.send_many([(square, {"x": i}) for i in range(500)], callback=callback)
    mq.start()
    assert done.wait(30), f"{len(got)} of 500 callbacks"
    assert [got[h.task_id] for h in handles] == [i * i for i in range(500)]
    wait_until(lambda: mq.stats()["totals"]["CALLBACKED"] == 500, what="500 CALLBACKED")


def test_unknown_function_and_closed_queue_errors(make_queue):
    mq = make_queue()

    def not_a_task():
        pass

    with pytest.raises(ValueError, match="not a registered task"):
        mq.send(not_a_task)
    mq.close()
    with pytest.raises(MessageQueueError, match="closed"):
        mq.send("anything", {})


def test_two_queue_objects_in_one_process_are_independent(make_queue, tmp_path):
    first = make_queue(str(tmp_path / "one"))
    second = make_queue(str(tmp_path / "two"))

    @first.task
    def which():
        return "first"

    @second.task(name="which")
    def which_second():
        return "second"

    first.start()
    second.start()
    assert first.send("which").result(timeout=10) == "first"
    assert second.send("which").result(timeout=10) == "second"


def test_stop_waits_for_running_task_and_start_again(make_queue):
    mq = make_queue(workers=2)
    gate = threading.Event()
    entered = threading.Event()

    @mq.task
    def blocked():
        entered.set()
        gate.wait(10)
        return "ok"

    handle = mq.send(blocked)
    mq.start()
    assert entered.wait(10)
    threading.Timer(0.05, gate.set).start()
    mq.stop()
    assert handle.status == TaskStatus.FINISHED
    mq.start()
    assert mq.send(blocked).result(timeout=10) == "ok"


def test_waiting_on_a_task_just_sent_does_not_read_storage(make_queue):
    """A wait on a task sent when nothing could have ended since skips the storage lookup,
    which would only compete with the worker about to run it (round-trip latency)."""
    mq = make_queue()

    @mq.task
    def echo(i):
        return i

    lookups = []
    real_find = mq.engine.find
    mq.engine.find = lambda task_id: lookups.append(task_id) or real_find(task_id)
    mq.start()
    assert mq.send(echo, {"i": -1}).result(timeout=10) == -1  # (the change feed starting up)
    lookups.clear()
    for i in range(20):
        assert mq.send(echo, {"i": i}).result(timeout=10) == i
    assert lookups == []


def test_a_task_that_ended_elsewhere_before_the_wait_is_looked_up(make_queue):
    """The other side of skipping lookups: once another process (here another queue object)
    ended the task before anyone waited, the wait reads storage at once instead of leaving
    it to the slow fallback poll."""
    sender, worker = make_queue(), make_queue()

    @worker.task
    def echo(i):
        return i

    with pytest.raises(TimeoutError):  # waiting turns on the sender's change feed
        sender.send("echo", {"i": 0}).result(timeout=0.01)
    handle = sender.send("echo", {"i": 1})
    epoch = sender.engine.outcome_epoch()
    assert epoch is not None
    worker.start()
    wait_until(lambda: worker.get(handle.task_id).status == TaskStatus.FINISHED,
               what="the other object's run")
    wait_until(lambda: sender.engine.outcome_epoch() != epoch, what="the sender noticing the commit")
    assert handle.result(timeout=0.05) == 1  # the fallback poll comes only after 0.1 s
