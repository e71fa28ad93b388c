"""Unique tasks, on both backends (``make_queue`` runs each test on SQLite and PostgreSQL):
a held key stores nothing and answers with the holder's handle; the key is free again once
the holder leaves its unique states or its ``unique_for`` ran out; derived keys; batches;
shards; bad input; and the cross-process guarantee with real processes."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from datetime import timedelta

import pytest
from conftest import POSTGRES_DSN, wait_until
from test_kept_counts import assert_counts_true

from message_queue_sqlite import MessageQueue, TaskStatus
from message_queue_sqlite.api.compat import init_server
from message_queue_sqlite.core.config import Config
from message_queue_sqlite.core.registry import TaskRegistry, task_function


def stored_rows(mq: MessageQueue) -> int:
    return sum(n for shard in mq.engine.shards for n in shard.count_by_status().values())


def test_a_taken_key_stores_nothing_and_returns_the_holders_handle(make_queue):
    mq = make_queue()

    @mq.task
    def charge(invoice):
        return invoice

    first = mq.send(charge, {"invoice": 42}, unique_key="invoice-42")
    second = mq.send(charge, {"invoice": 42}, unique_key="invoice-42")
    other = mq.send(charge, {"invoice": 43}, unique_key="invoice-43")
    assert first.duplicate is False and other.duplicate is False
    assert second.duplicate is True and second.task_id == first.task_id
    assert "duplicate=True" in repr(second)
    assert stored_rows(mq) == 2
    assert_counts_true(mq, "a duplicate send")
    mq.start()
    assert second.result(timeout=10) == 42  # the holder's outcome


def test_the_key_is_free_again_after_the_first_ends(make_queue):
    mq = make_queue()

    @mq.task
    def job():
        return "done"

    first = mq.send(job, unique_key="k")
    with mq.running():
        assert first.result(timeout=10) == "done"
        again = mq.send(job, unique_key="k")
        assert again.duplicate is False and again.task_id != first.task_id
        assert again.result(timeout=10) == "done"
    assert_counts_true(mq, "sends after the holder ended")


def test_a_delayed_duplicate_moves_no_scheduled_count(make_queue):
    mq = make_queue()

    @mq.task
    def later():
        pass

    mq.send(later, delay=60, unique_key="k")
    dup = mq.send(later, delay=60, unique_key="k")
    assert dup.duplicate and dup.status == TaskStatus.SCHEDULED
    if mq.engine.backend.location.startswith("postgresql"):
        mq.engine.shards[0].maintain()
    assert mq.stats()["outcomes"]["scheduled"] == 1
    assert_counts_true(mq, "a delayed duplicate")


def test_unique_for_frees_the_key_while_the_first_still_waits(make_queue, backend_time):
    mq = backend_time.queue(make_queue)

    @mq.task
    def job():
        pass

    first = mq.send(job, unique_key="k", unique_for=2 * backend_time.unit)
    assert mq.send(job, unique_key="k").duplicate
    if backend_time.exact:
        backend_time.advance(3.0)
        later = mq.send(job, unique_key="k")
    else:  # the server's clock decides: send until it has passed, with a deadline
        later = wait_until(lambda: (h := mq.send(job, unique_key="k")) and not h.duplicate and h,
                           timeout=10, what="unique_for to run out")
    assert later.duplicate is False and later.task_id != first.task_id
    assert first.status == TaskStatus.NOT_STARTED  # still waiting: only its key expired
    assert mq.send(job, unique_key="k").task_id == later.task_id  # the new holder holds it
    assert_counts_true(mq, "an expired key taken over")


def test_custom_states_also_block_while_a_finished_one_is_stored(make_queue):
    mq = make_queue()

    @mq.task(unique=True, unique_states=("queued", "scheduled", "running", "finished"))
    def report(day):
        return day

    first = report.send("2026-12-02")
    with mq.running():
        assert first.result(timeout=10) == "2026-12-02"
        wait_until(lambda: first.callback_ran or first.status == TaskStatus.FINISHED, what="the end")
        again = report.send("2026-12-02")
        assert again.duplicate and again.task_id == first.task_id
        # a per-send override: the default states, so a finished holder does not count
        fresh = mq.send(report, {"day": "2026-12-02"}, unique_states=("queued", "scheduled", "running"))
        assert fresh.duplicate  # the stored finished one still holds under its own states
        assert report.send("2026-12-03").duplicate is False


def test_failed_in_states_keeps_the_key_through_a_requeue(make_queue):
    mq = make_queue()

    @mq.task(unique=True, unique_states=("queued", "scheduled", "running", "failed"))
    def flaky():
        raise RuntimeError("no")

    first = flaky.send()
    with mq.running():
        wait_until(lambda: first.status == TaskStatus.FAILED, what="the failure")
        assert flaky.send().task_id == first.task_id
    assert mq.retry_failed(task_id=first.task_id) == 1
    assert flaky.send().task_id == first.task_id  # held all along: still the holder


def test_a_requeued_task_that_did_not_hold_its_key_while_failed_runs_without_it(make_queue):
    mq = make_queue()

    @mq.task(unique=True)
    def flaky():
        raise RuntimeError("no")

    first = flaky.send()
    with mq.running():
        wait_until(lambda: first.status == TaskStatus.FAILED, what="the failure")
    second = flaky.send()
    assert second.duplicate is False
    assert mq.retry_failed() == 1  # would be a second holder: it is requeued without its key
    assert first.status == TaskStatus.NOT_STARTED
    assert flaky.send().task_id == second.task_id
    assert_counts_true(mq, "a requeue without the key")


def test_purging_the_holder_frees_its_key(make_queue):
    mq = make_queue()

    @mq.task
    def job():
        pass

    first = mq.send(job, unique_key="k")
    assert mq.purge(task_id=first.task_id) == 1
    assert mq.send(job, unique_key="k").duplicate is False


def test_derived_keys_same_arguments_same_key_subset_keys(make_queue):
    mq = make_queue()

    @mq.task(unique=True)
    def resize(path, width=128):
        return path

    @mq.task(unique=("customer_id",))
    def bill(customer_id, amount):
        return amount

    a = resize.send("a.png")
    assert resize.send(path="a.png").task_id == a.task_id  # keyword or positional
    assert resize.send("a.png", 128).task_id == a.task_id  # the default applied
    assert resize.send("a.png", width=64).duplicate is False  # another argument
    assert resize.send("b.png").duplicate is False
    assert mq.send("resize", {"path": "a.png"}).duplicate  # by name too
    b = bill.send(7, 10)
    assert bill.send(7, 99).task_id == b.task_id  # the amount is not part of the key
    assert bill.send(8, 10).duplicate is False


def test_derived_keys_are_stable_across_processes(make_queue, tmp_path):
    """The key is a hash of canonical JSON, not Python's salted hash(): a fresh interpreter
    derives the same one (and so finds the holder)."""
    import subprocess
    import sys
    import textwrap

    from conftest import subprocess_env

    from message_queue_sqlite.core.unique import derive_key

    def f(a, b=1):
        pass

    here = derive_key("f", f, True, (), {"b": 1, "a": {"y": [1, 2], "x": "é"}})
    code = textwrap.dedent("""
        from message_queue_sqlite.core.unique import derive_key
        def f(a, b=1): pass
        print(derive_key("f", f, True, ({"x": "é", "y": [1, 2]},), {}))
    """)
    env = subprocess_env()
    env["PYTHONHASHSEED"] = "12345"
    there = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert there.stdout.strip() == here


def test_send_many_collapses_duplicates_onto_the_first(make_queue):
    mq = make_queue()

    @mq.task(unique=True)
    def job(n):
        return n

    held = job.send(1)
    handles = mq.send_many([(job, {"n": 0}), (job, {"n": 1}), (job, {"n": 0}), (job, {"n": 2}),
                            (job, {"n": 2})])
    assert [h.duplicate for h in handles] == [False, True, True, False, True]
    assert handles[1].task_id == held.task_id
    assert handles[2].task_id == handles[0].task_id and handles[4].task_id == handles[3].task_id
    assert stored_rows(mq) == 3
    same = mq.send_many([("job", {"n": 5}), ("job", {"n": 6})], unique_key="one")
    assert [h.duplicate for h in same] == [False, True]
    assert_counts_true(mq, "a batch with duplicates")


def test_sqlite_shards_route_a_key_to_one_shard(tmp_path):
    with MessageQueue(str(tmp_path / "q"), shards=4) as mq:
        @mq.task(unique=True)
        def job(n):
            pass

        firsts = [job.send(n) for n in range(40)]
        assert len({mq.engine.shard_of(h.task_id)[0] for h in firsts}) > 1  # spread by hash
        again = [job.send(n) for n in range(40)]
        assert all(h.duplicate for h in again)
        assert [h.task_id for h in again] == [h.task_id for h in firsts]
        batch = mq.send_many([(job, {"n": n}) for n in range(40, 50)] * 2)
        assert [h.duplicate for h in batch] == [False] * 10 + [True] * 10
    # another sender with the same shard count finds the holders
    with MessageQueue(str(tmp_path / "q"), shards=4) as other:
        other.registry.register(job)  # with the options it was declared with
        assert all(other.send(job, {"n": n}).duplicate for n in range(50))
        assert sum(other.stats()["outcomes"].values()) == 50


@pytest.mark.parametrize("call, message", [
    (lambda mq, t: mq.send(t, unique_key=""), "unique_key='' must be a non-empty str"),
    (lambda mq, t: mq.send(t, unique_key=42), "unique_key=42 must be a non-empty str"),
    (lambda mq, t: mq.send(t, unique_key="k", unique_for=0), "unique_for=0 must be a positive"),
    (lambda mq, t: mq.send(t, unique_key="k", unique_for=-1.5), "unique_for=-1.5 must be a positive"),
    (lambda mq, t: mq.send(t, unique_key="k", unique_for=float("nan")), "unique_for=nan"),
    (lambda mq, t: mq.send(t, unique_key="k", unique_states=("queued", "done")),
     r"unknown state name\(s\) \['done'\]"),
    (lambda mq, t: mq.send(t, unique_key="k", unique_states="queued"), "must be a tuple of state names"),
    (lambda mq, t: mq.send(t, unique_key="k", unique_states=("queued",)),
     r"missing \['scheduled', 'running'\]"),
    (lambda mq, t: mq.send(t, unique_for=10), "unique_for= of task 't' needs a unique key"),
])
def test_bad_unique_input_is_a_clear_error_and_stores_nothing(make_queue, call, message):
    mq = make_queue()

    @mq.task(name="t")
    def t():
        pass

    with pytest.raises((TypeError, ValueError), match=message):
        call(mq, t)
    assert stored_rows(mq) == 0


def test_bad_decorator_options_fail_at_decoration(tmp_path):
    with MessageQueue(str(tmp_path / "q")) as mq:
        wrong = r"unique=\('custmer_id',\) of task 'bill' names \['custmer_id'\]"
        with pytest.raises(ValueError, match=wrong):
            @mq.task(unique=("custmer_id",))
            def bill(customer_id):
                pass
        with pytest.raises(ValueError, match=r"unique_for=datetime.timedelta\(0\) must be a positive"):
            mq.task(unique=True, unique_for=timedelta(0))
        with pytest.raises(TypeError, match="unique='customer_id' must be True"):
            mq.task(unique="customer_id")
        with pytest.raises(TypeError, match="unique_for= applies to unique tasks"):
            mq.task(unique_for=10)
        with pytest.raises(ValueError, match="names \\['nope'\\]"):
            @task_function(unique=("nope",))
            def marked(x):
                pass


def test_unique_arguments_that_json_cannot_carry_are_a_clear_error(tmp_path):
    import threading

    with MessageQueue(str(tmp_path / "q")) as mq:
        @mq.task(unique=True, use_cache=True)
        def locked(lock):
            pass

        with pytest.raises(TypeError, match="derives its unique key from its arguments as JSON"):
            locked.send(threading.Lock())
        assert mq.send(locked, {"lock": threading.Lock()}, unique_key="lock-1").duplicate is False


def test_the_seed_api_takes_unique_as_a_decorator_option(tmp_path):
    @task_function(unique=("message",))
    def greet(message):
        return message

    registry = TaskRegistry()
    registry.register(greet)
    server, client, send_message = init_server(registry, Config(middleware_path=str(tmp_path / "q")))
    try:
        first = send_message("greet", {"message": "hi"})
        assert send_message("greet", {"message": "hi"}) == first  # the holder's id
        assert send_message("greet", {"message": "ho"}) != first
        assert stored_rows(client.queue) == 2
    finally:
        client.queue.close()


# -- the cross-process guarantee ------------------------------------------------------
SENDERS, SENDS_EACH = 8, 200


def _send_same_key(folder: str, broker_url: str | None, ready, go, results) -> None:
    """One sender process: wait for the start, then send the same key SENDS_EACH times."""
    mq = MessageQueue(folder, broker_url=broker_url)
    try:
        ids = set()
        duplicates = 0
        ready.wait()  # every process is open
        go.wait(timeout=60)
        for _ in range(SENDS_EACH):
            handle = mq.send("work", {}, unique_key="the-one")
            ids.add(handle.task_id)
            duplicates += handle.duplicate
        results.put((os.getpid(), sorted(ids), duplicates))
    finally:
        mq.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_eight_processes_sending_one_key_store_exactly_one_task(tmp_path, backend):
    if backend == "postgres" and not POSTGRES_DSN:
        pytest.skip("PostgreSQL tests need MQS_TEST_POSTGRES_DSN")
    from conftest import drop_pg_schema, pg_url_with_fresh_schema

    folder = str(tmp_path / "q")
    url = pg_url_with_fresh_schema() if backend == "postgres" else None
    try:
        MessageQueue(folder, broker_url=url).close()  # created before the race
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Barrier(SENDERS + 1)
        go = ctx.Event()
        results = ctx.Queue()
        procs = [ctx.Process(target=_send_same_key, args=(folder, url, ready, go, results))
                 for _ in range(SENDERS)]
        for proc in procs:
            proc.start()
        ready.wait(timeout=120)
        go.set()
        reports = [results.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
        ids = {task_id for _, found, _ in reports for task_id in found}
        duplicates = sum(d for _, _, d in reports)
        assert len(ids) == 1, reports  # every send of every process got the one task's id
        assert duplicates == SENDERS * SENDS_EACH - 1
        if url is None:
            with sqlite3.connect(os.path.join(folder, "mq-shard-0.db")) as conn:
                stored = conn.execute("SELECT count(*) FROM mqs_tasks").fetchone()[0]
        else:
            import psycopg

            with psycopg.connect(POSTGRES_DSN) as conn:
                schema = url.rsplit("schema=", 1)[1]
                stored = conn.execute(f'SELECT count(*) FROM "{schema}".mqs_tasks').fetchone()[0]
        assert stored == 1
        print(f"\n{backend}: {SENDERS} processes x {SENDS_EACH} sends: stored={stored} "
              f"duplicates={duplicates} distinct_ids={len(ids)}")
    finally:
        if url is not None:
            drop_pg_schema(url)
