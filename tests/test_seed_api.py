"""The original package's API, kept exactly (issue: the core)."""

from __future__ import annotations

import threading

import pytest
from conftest import wait_until

from message_queue_sqlite import (
    TaskStatus,
    discover_and_mount_ts,
    init_server,
    start_server,
    stop_server,
    task_function,
)
from message_queue_sqlite.config import Config
from message_queue_sqlite.constants import TaskStatus as ConstantsTaskStatus

TASKS = {
    "engine": """
        from message_queue_sqlite import task_function

        @task_function(use_cache=True)
        def test(message):
            return "test:" + str(message)

        @task_function()
        def test1(message):
            return "test1:" + str(message)

        @task_function()
        def fails(message):
            raise ValueError("bad " + message)

        @task_function
        def bare(x=1):
            return x * 2
    """,
}


def test_status_values_are_the_stored_contract():
    assert ConstantsTaskStatus is TaskStatus
    assert [(s.name, s.value) for s in TaskStatus][:5] == [
        ("NOT_STARTED", 1), ("RUNNING", 2), ("FINISHED", 3), ("FAILED", 4), ("CALLBACKED", 5)]


def test_decorated_function_stays_callable():
    @task_function(use_cache=True)
    def double(x):
        return 2 * x

    assert double(4) == 8


def test_discover_registers_by_name(app_package):
    package = app_package(TASKS)
    tasks = discover_and_mount_ts(package)
    assert tasks.get_all_task_names() == ["bare", "fails", "test", "test1"]
    assert tasks.get("test").options.use_cache is True


def test_discover_rejects_two_tasks_with_one_name(app_package):
    package = app_package({"a": "from message_queue_sqlite import task_function\n"
                                "@task_function()\ndef same(): pass\n",
                           "b": "from message_queue_sqlite import task_function\n"
                                "@task_function()\ndef same(): pass\n"})
    with pytest.raises(ValueError) as err:
        discover_and_mount_ts(package)
    assert f"{package}.a" in str(err.value) and f"{package}.b" in str(err.value)


@pytest.fixture
def seed(app_package, queue_dir):
    tasks = discover_and_mount_ts(app_package(TASKS))
    server, client, send_message = init_server(tasks, Config(middleware_path=queue_dir, max_workers=3))
    thread = threading.Thread(target=start_server, args=(server, client))
    yield server, client, send_message, thread
    stop_server(server, client)
    if thread.ident is not None:
        thread.join(10)


def test_init_server_starts_no_worker_and_send_waits(seed):
    server, client, send_message, thread = seed
    got = []
    task_id = send_message("test1", {"message": "hi"}, got.append, 0)
    assert isinstance(task_id, str)
    assert client.queue.get(task_id).status == TaskStatus.NOT_STARTED
    assert not any(t.name.startswith("mqs-worker") for t in threading.enumerate())
    thread.start()
    wait_until(lambda: got, what="callback")
    assert got[0]["result"] == "test1:hi"


def test_callback_gets_its_own_result_and_status_becomes_callbacked(seed):
    server, client, send_message, thread = seed
    thread.start()
    results: dict[int, dict] = {}
    ids = []
    for i in range(20):
        # each call has its own callback (the original called the last one for all)
        ids.append(send_message("test1", {"message": i}, lambda r, i=i: results.__setitem__(i, r), 1))
    wait_until(lambda: len(results) == 20, what="20 callbacks")
    for i, task_id in enumerate(ids):
        r = results[i]
        assert r["task_id"] == task_id and r["result"] == f"test1:{i}"
        assert r["task_name"] == "test1" and r["status"] == TaskStatus.FINISHED
        assert r["start_time"] <= r["end_time"]
    wait_until(lambda: all(client.queue.get(t).callback_ran for t in ids), what="CALLBACKED recorded")
    # the stored value is the original's 5; what a person reads is the outcome
    assert {client.queue.engine.find(t).status for t in ids} == {TaskStatus.CALLBACKED}
    assert {client.queue.get(t).status for t in ids} == {TaskStatus.FINISHED}


def test_positional_send_with_cache_mode(seed):
    server, client, send_message, thread = seed
    thread.start()
    got = []
    lock = threading.Lock()  # not JSON: only cache mode can carry it
    send_message("test", {"message": lock}, got.append, 1, True)
    wait_until(lambda: got, what="callback")
    assert got[0]["status"] == TaskStatus.FINISHED and got[0]["result"].startswith("test:<unlocked")


def test_failure_is_recorded_with_traceback_and_worker_goes_on(seed):
    server, client, send_message, thread = seed
    thread.start()
    got = []
    send_message("fails", {"message": "x"}, got.append)
    send_message("test1", {"message": "after"}, got.append)
    wait_until(lambda: len(got) == 2, what="two callbacks")
    failed = next(r for r in got if r["task_name"] == "fails")
    assert failed["status"] == TaskStatus.FAILED
    assert failed["result"] == "ValueError: bad x"
    assert "Traceback" in failed["traceback"] and "raise ValueError" in failed["traceback"]
    assert next(r for r in got if r["task_name"] == "test1")["status"] == TaskStatus.FINISHED


def test_callback_that_raises_is_logged_and_recorded(seed, caplog):
    server, client, send_message, thread = seed
    thread.start()
    got = []

    def broken(result):
        raise RuntimeError("callback broke")

    first = send_message("test1", {"message": 1}, broken)
    send_message("test1", {"message": 2}, got.append)
    wait_until(lambda: got, what="the next callback")
    wait_until(lambda: client.queue.get(first).callback_ran, what="status recorded")
    assert "callback broke" in caplog.text


def test_unknown_task_and_bad_arguments_are_refused_and_store_nothing(seed):
    server, client, send_message, thread = seed
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*test1"):
        send_message("nope", {})
    with pytest.raises(TypeError, match=r"argument 'message' .*use_cache=True"):
        send_message("test1", {"message": object()})
    with pytest.raises(TypeError, match="dict of keyword arguments"):
        send_message("test1", ["not", "a", "dict"])
    with pytest.raises(TypeError, match="priority"):
        send_message("test1", {"message": 1}, None, "high")
    assert sum(client.queue.stats()["totals"].values()) == 0


def test_stop_server_returns_zero_after_running_tasks_and_callbacks(app_package, queue_dir):
    package = app_package({"slow": """
        import threading
        from message_queue_sqlite import task_function
        started = threading.Event()
        release = threading.Event()

        @task_function()
        def slow():
            started.set()
            release.wait(10)
            return "done"
    """})
    import importlib

    module = importlib.import_module(f"{package}.slow")
    tasks = discover_and_mount_ts(package)
    server, client, send_message = init_server(tasks, Config(middleware_path=queue_dir, max_workers=2))
    thread = threading.Thread(target=start_server, args=(server, client))
    thread.start()
    got = []
    send_message("slow", {}, got.append)
    assert module.started.wait(10)
    stopper = threading.Timer(0.05, module.release.set)  # the task ends while stop waits for it
    stopper.start()
    assert stop_server(server, client) == 0
    assert got and got[0]["result"] == "done"  # its callback ran before stop returned
    thread.join(10)
    assert not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("mqs-") and not t.daemon]
