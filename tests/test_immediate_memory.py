"""Immediate mode keeps its tasks in memory (huey's ``immediate_use_memory``): no folder, no
file, nothing written to disk; each queue object's memory its own, freed when it closes; the
same outcomes, retries, callbacks, errors and inspection as with the files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import subprocess_env, wait_until

from message_queue_sqlite import Config, MessageQueue, TaskFailedError, TaskStatus

# Run in a child with an empty working folder and temporary folder, and an audit hook that
# records every folder made, file opened for writing and SQLite database opened (SQLite's own
# file opens are not audited, but the database each connection names is).
NO_DISK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from message_queue_sqlite import MessageQueue, TaskFailedError

    WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    events = []

    def audit(event, args):
        if event == "os.mkdir":
            events.append([event, str(args[0])])
        elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] or 0
            if (mode and any(c in mode for c in "wax+")) or flags & WRITING:
                events.append([event, str(args[0])])
        elif event == "sqlite3.connect":
            name = str(args[0])
            if name != ":memory:" and not (name.startswith("file:/") and name.endswith("?vfs=memdb")):
                events.append([event, name])

    sys.addaudithook(audit)
    for path in ("queue_dir", sys.argv[1]):
        with MessageQueue(path, immediate=True, shards=2) as mq:
            tries = []

            @mq.task(retries=1)
            def flaky(x):
                tries.append(x)
                if len(tries) % 2:
                    raise OSError("once")
                return x + 1

            @mq.task
            def broken():
                raise KeyError("k")

            got = []
            results = [mq.send(flaky, {"x": i}, callback=got.append, delay=60).result(timeout=0)
                       for i in range(5)]
            try:
                broken.send().result(timeout=0)
            except TaskFailedError:
                pass
            assert results == [1, 2, 3, 4, 5] and len(got) == 5, (results, got)
            assert mq.stats()["outcomes"]["failed"] == 1 and len(mq.tasks()) == 6
            mq.housekeeping()
    print(json.dumps(events))
""")


def test_immediate_mode_creates_no_folder_and_no_files(tmp_path: Path):
    work, temp = tmp_path / "work", tmp_path / "temp"
    work.mkdir()
    temp.mkdir()
    absolute = tmp_path / "absolute_queue"
    env = {**subprocess_env(), "TMPDIR": str(temp), "SQLITE_TMPDIR": str(temp),
           "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("MQS_BROKER_URL", None)
    done = subprocess.run([sys.executable, "-c", NO_DISK_SCRIPT, str(absolute)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # no mkdir, no write, no file database
    assert not absolute.exists()
    assert os.listdir(work) == [] and os.listdir(temp) == []


def test_immediate_memory_keeps_outcomes_retries_callbacks_and_errors(tmp_path: Path):
    path = tmp_path / "queue"
    with MessageQueue(path, immediate=True) as mq:
        attempts: dict[str, int] = {}
        got: list[dict] = []

        @mq.task(retries=3, retry_on=(ConnectionError,))
        def fetch(url):
            attempts[url] = attempts.get(url, 0) + 1
            if attempts[url] < 3:
                raise ConnectionError(f"{url} down")
            return f"<{url}>"

        @mq.task
        def crawl(urls):
            handles = mq.send_many([(fetch, {"url": u}) for u in urls])  # sent from inside a task
            return [h.result(timeout=0) for h in handles]

        @mq.task
        def divide(a, b):
            return a / b

        page = mq.send(fetch, {"url": "a"}, callback=got.append, delay=3600)
        assert attempts == {"a": 3}  # ran with its retries before send returned
        assert page.status == TaskStatus.FINISHED and page.callback_ran
        assert page.result(timeout=0) == "<a>" and page.outcome(timeout=0).attempts == 3
        assert [(g["task_id"], g["result"]) for g in got] == [(page.task_id, "<a>")]
        assert crawl.send(["b", "c"]).result(timeout=0) == ["<b>", "<c>"]
        failed = mq.send(divide, {"a": 1, "b": 0}, callback=got.append)
        with pytest.raises(TaskFailedError, match="ZeroDivisionError"):
            failed.result(timeout=0)
        assert failed.status == TaskStatus.FAILED
        assert got[-1]["status"] == TaskStatus.FAILED and "ZeroDivisionError" in got[-1]["result"]
        assert mq.get(page.task_id).result(timeout=0) == "<a>"

        stats = mq.stats()
        assert stats["location"].startswith("memory:")
        assert stats["outcomes"] == {"queued": 0, "scheduled": 0, "running": 0, "finished": 4,
                                     "failed": 1, "cancelled": 0, "callback_ran": 2}
        (listed,) = mq.tasks(status=TaskStatus.FAILED)
        assert listed.task_id == failed.task_id and listed.error.startswith("ZeroDivisionError")
        assert sorted(t.task_name for t in mq.tasks()) == ["crawl", "divide"] + ["fetch"] * 3
        assert mq.housekeeping().requeued == 0
    assert not path.exists()


def test_two_immediate_queues_in_one_process_are_isolated(tmp_path: Path):
    path = tmp_path / "same_path"
    with MessageQueue(path, immediate=True) as first, MessageQueue(path, immediate=True) as second:

        @first.task
        def add(a, b):
            return a + b

        @second.task
        def mul(a, b):
            return a * b

        sent = [add.send(i, 1) for i in range(3)]
        other = mul.send(3, 4)
        assert [h.result(timeout=0) for h in sent] == [1, 2, 3] and other.result(timeout=0) == 12
        assert [t.task_name for t in first.tasks()] == ["add"] * 3
        assert [t.task_name for t in second.tasks()] == ["mul"]
        assert first.get(other.task_id).task_name == "add"  # the same id is another task there
        assert (first.stats()["outcomes"]["finished"], second.stats()["outcomes"]["finished"]) == (3, 1)
        assert first.stats()["location"] != second.stats()["location"]
    assert not path.exists()


def test_closing_an_immediate_queue_frees_its_memory(tmp_path: Path):
    path = tmp_path / "queue"
    mq = MessageQueue(path, immediate=True, shards=2)

    @mq.task
    def echo(x):
        return x

    mq.send_many([(echo, {"x": i}) for i in range(4)])
    databases = [shard.path for shard in mq.engine.shards]
    for database in databases:  # the name reaches the live memory while the queue is open...
        probe = sqlite3.connect(database, uri=True)
        assert probe.execute("SELECT count(*) FROM mqs_tasks").fetchone()[0] == 2
        probe.close()
    mq.close()
    for database in databases:  # ...and an empty new database once it closed
        probe = sqlite3.connect(database, uri=True)
        assert probe.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        probe.close()
    with MessageQueue(path, immediate=True, shards=2) as again:
        assert again.tasks() == [] and set(again.stats()["outcomes"].values()) == {0}
    assert not path.exists()


def test_immediate_memory_serves_sends_from_many_threads(tmp_path: Path):
    """Several threads' connections share one in-memory shard under SQLite's locking (a write
    holds readers off, within the busy timeout): every task runs once, every callback runs,
    and each send returns after its own task ended, even when another thread's send ran it."""
    with MessageQueue(tmp_path / "queue", immediate=True) as mq:

        @mq.task
        def square(x):
            return x * x

        got: list[int] = []
        results: dict[int, int] = {}

        def sender(base: int) -> None:
            for i in range(base, base + 25):
                handle = mq.send(square, {"x": i}, callback=lambda d: got.append(d["result"]))
                results[i] = handle.result(timeout=0)

        threads = [threading.Thread(target=sender, args=(n * 25,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert results == {i: i * i for i in range(100)}
        wait_until(lambda: len(got) == 100, what="every callback")
        assert sorted(got) == sorted(i * i for i in range(100))
        assert mq.stats()["outcomes"]["finished"] == 100


def test_immediate_memory_ignores_the_broker_url(tmp_path: Path):
    # nothing listens on port 1: a connection attempt would fail
    with MessageQueue(tmp_path / "queue", immediate=True,
                      broker_url="postgresql://nobody@127.0.0.1:1/none") as mq:

        @mq.task
        def hello():
            return "hi"

        assert hello.send().result(timeout=0) == "hi"
        assert mq.stats()["location"].startswith("memory:")


def test_immediate_use_memory_false_keeps_the_tasks_in_the_folder(queue_dir: str):
    with MessageQueue(queue_dir, immediate=True, immediate_use_memory=False) as mq:

        @mq.task
        def hello():
            return "hi"

        handle = hello.send()
        assert handle.result(timeout=0) == "hi"
    assert os.path.isfile(os.path.join(queue_dir, "mq-shard-0.db"))
    with MessageQueue(queue_dir) as reader:  # another object reads it from the file
        assert reader.get(handle.task_id).result(timeout=0) == "hi"


def test_immediate_use_memory_must_be_a_bool():
    with pytest.raises(ValueError, match="immediate_use_memory='no' is invalid"):
        Config(immediate=True, immediate_use_memory="no")  # type: ignore[arg-type]
