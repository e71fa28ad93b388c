"""What a new user expects: outcomes never hidden by CALLBACKED, sending by the function with
its own arguments (checked at send), absolute times, and results as values (both backends)."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest
from conftest import wait_until

from message_queue_sqlite import TaskFailedError, TaskStatus
from message_queue_sqlite.engine import engine as engine_module


def test_status_says_finished_or_failed_whether_or_not_the_callback_ran(make_queue):
    mq = make_queue()

    @mq.task
    def ok():
        return "yes"

    @mq.task
    def bad():
        raise ValueError("no")

    called = []
    with mq.running():
        good = mq.send(ok, callback=called.append)
        failed = mq.send(bad, callback=called.append)
        plain = mq.send(ok)
        wait_until(lambda: good.callback_ran and failed.callback_ran, what="both callbacks recorded")
        assert plain.result(timeout=10) == "yes"
    assert (good.status, failed.status, plain.status) == (
        TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.FINISHED)
    assert (good.callback_ran, failed.callback_ran, plain.callback_ran) == (True, True, False)
    listed = {t.task_id: t for t in mq.tasks()}
    assert listed[failed.task_id].status == TaskStatus.FAILED and listed[failed.task_id].callback_ran
    assert listed[failed.task_id].error == "ValueError: no" and listed[failed.task_id].result is None
    assert listed[good.task_id].result == "yes"  # decoded, not the JSON text '"yes"'
    assert {t.task_id for t in mq.tasks(status=TaskStatus.FAILED)} == {failed.task_id}
    assert TaskStatus.CALLBACKED not in {t.status for t in mq.tasks()}


def test_a_task_sends_itself_with_its_own_arguments(make_queue):
    mq = make_queue()

    @mq.task
    def scale(value, factor=2, *, offset=0):
        return value * factor + offset

    with mq.running():
        assert scale.send(3).result(timeout=10) == 6
        assert scale.send(3, 10, offset=1).result(timeout=10) == 31
        handle = mq.send(scale, {"offset": 5}, args=(1, 3), priority=2)
        assert handle.result(timeout=10) == 8
    assert scale(2) == 4  # still a plain function


def test_positional_arguments_are_stored_as_such(make_queue):
    mq = make_queue()

    @mq.task
    def pair(a, b):
        return [a, b]

    handle = mq.send(pair, args=("x", [1, 2]))
    shard = mq.engine.shards[0]
    if hasattr(shard, "_connection"):  # SQLite: read the row as another tool would
        text = shard._connection(reader=True).execute(
            "SELECT args FROM mqs_tasks WHERE id = ?", (int(handle.task_id.split("-")[1]),)).fetchone()[0]
        assert json.loads(text) == [["x", [1, 2]], {}]
    with mq.running():
        assert handle.result(timeout=10) == ["x", [1, 2]]


def test_arguments_that_do_not_fit_the_function_are_refused_at_send(make_queue):
    mq = make_queue()

    @mq.task
    def test1(message):
        return message

    for bad in [lambda: mq.send(test1, {"msg": "typo"}), lambda: test1.send(),
                lambda: test1.send("a", "b"), lambda: mq.send("test1", {"message": 1, "extra": 2})]:
        with pytest.raises(TypeError, match=r"arguments of task 'test1' do not fit test1\(message\)"):
            bad()
    assert sum(mq.stats()["totals"].values()) == 0  # nothing stored

    @mq.task
    def anything(*args, **kwargs):
        return len(args) + len(kwargs)

    with mq.running():
        assert anything.send(1, 2, x=3).result(timeout=10) == 3


def test_eta_and_timedelta_delays(make_queue):
    mq = make_queue()

    @mq.task
    def later():
        return "later"

    future = mq.send(later, eta=datetime.now(timezone.utc) + timedelta(hours=1))
    soon = mq.send(later, delay=timedelta(milliseconds=10))
    past = mq.send(later, eta=datetime.now(timezone.utc) - timedelta(days=1))
    assert future.status == TaskStatus.SCHEDULED
    with pytest.raises(ValueError, match="has no time zone"):
        mq.send(later, eta=datetime.now() + timedelta(hours=1))
    with pytest.raises(TypeError, match="not both"):
        mq.send(later, delay=5, eta=datetime.now(timezone.utc))
    with mq.running():
        assert soon.result(timeout=10) == past.result(timeout=10) == "later"
        assert future.status == TaskStatus.SCHEDULED


def test_send_many_takes_the_options_of_send(make_queue):
    mq = make_queue(workers=1)
    runs = []

    @mq.task
    def flaky(i, tag="x"):
        runs.append(i)
        if runs.count(i) == 1:
            raise OSError("first try")
        return f"{tag}{i}"

    from message_queue_sqlite import RetryPolicy

    handles = mq.send_many([(flaky, {"i": 1}), (flaky, (2,), {"tag": "y"})],
                           retry=RetryPolicy(max_retries=1, backoff=0), priority=3)
    delayed = mq.send_many([(flaky, {"i": 3})], delay=3600)
    assert delayed[0].status == TaskStatus.SCHEDULED
    with mq.running():
        assert [h.result(timeout=10) for h in handles] == ["x1", "y2"]
    with pytest.raises(TypeError, match=r"\(task, kwargs\) or \(task, args, kwargs\)"):
        mq.send_many([flaky])


def test_cache_mode_keeps_positional_arguments_in_memory(make_queue):
    mq = make_queue()
    lock = threading.Lock()

    @mq.task(use_cache=True)
    def holds(lock_, label):
        return f"{label}:{lock_.locked()}"

    with mq.running():
        assert holds.send(lock, label="free").result(timeout=10) == "free:False"


def test_a_failed_result_raises_with_the_task_error(make_queue):
    mq = make_queue()

    @mq.task
    def bad(code):
        raise KeyError(code)

    with mq.running(), pytest.raises(TaskFailedError, match="KeyError: 'E42'"):
        bad.send("E42").result(timeout=10)


def test_immediate_mode_runs_the_task_inside_send(queue_dir):
    from message_queue_sqlite import MessageQueue

    with MessageQueue(queue_dir, immediate=True) as mq:
        calls: list[int] = []
        got: list[dict] = []

        @mq.task(retries=2)
        def flaky(x):
            calls.append(x)
            if len(calls) < 3:
                raise OSError("again")
            return x * 2

        @mq.task
        def parent(n):
            return [child.send(i).result(timeout=0) for i in range(n)]

        @mq.task
        def child(i):
            return i + 100

        handle = mq.send(flaky, {"x": 21}, callback=got.append, delay=3600)
        assert calls == [21, 21, 21]  # ran, with its retries, before send returned
        assert handle.status == TaskStatus.FINISHED and handle.result(timeout=0) == 42
        assert [g["result"] for g in got] == [42]  # its callback too
        assert parent.send(3).result(timeout=0) == [100, 101, 102]
        with pytest.raises(TaskFailedError, match="ZeroDivisionError"):
            mq.send(lambda_task(mq)).result(timeout=0)


def lambda_task(mq):
    @mq.task
    def divide():
        return 1 / 0

    return divide


def _cache_task(mq):
    @mq.task(use_cache=True)
    def holds(lock):
        return "ran"

    return holds


def test_a_cache_mode_send_with_no_workers_started_is_warned_about(make_queue, monkeypatch, caplog):
    """A cache-mode task can run only on its sender's own workers: a CLI worker never can."""
    monkeypatch.setattr(engine_module, "CACHE_WORKER_GRACE_S", 0.05)
    mq = make_queue()
    holds = _cache_task(mq)
    with caplog.at_level(logging.WARNING, logger="message_queue_sqlite.engine.engine"):
        holds.send(threading.Lock())
        mq.engine._cache_check.join(timeout=10)
    assert "sent in cache mode" in caplog.text and "'holds'" in caplog.text
    assert "a CLI worker never can" in caplog.text


def test_a_cache_mode_send_whose_sender_starts_its_workers_is_not_warned_about(make_queue, monkeypatch,
                                                                                  caplog):
    monkeypatch.setattr(engine_module, "CACHE_WORKER_GRACE_S", 0.5)
    mq = make_queue()
    holds = _cache_task(mq)
    with caplog.at_level(logging.WARNING, logger="message_queue_sqlite.engine.engine"):
        handle = holds.send(threading.Lock())
        mq.start()  # within the grace period, as start_server just after the first sends
        assert handle.result(timeout=10) == "ran"
        mq.engine._cache_check.join(timeout=10)
    assert "sent in cache mode" not in caplog.text
