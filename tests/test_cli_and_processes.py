"""The command line, the original example app run unmodified, and two processes on one queue."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import subprocess_env, wait_until

from message_queue_sqlite import Config, MessageQueue, TaskStatus
from message_queue_sqlite.cli.demo import write_seed_app

PY = sys.executable

TASK_MODULE = """
from message_queue_sqlite import task_function

@task_function()
def square(x):
    return x * x

@task_function()
def whoami():
    import os
    return os.getpid()
"""


def cli(*args: str, cwd: str | Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "message_queue_sqlite", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [[], ["worker"], ["stats"], ["failed"], ["retry"], ["demo"]])
def test_help_on_every_command(command):
    result = cli(*command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_stats_json_shape(tmp_path):
    folder = str(tmp_path / "q")
    with MessageQueue(folder, shards=2) as mq:
        for _ in range(4):
            mq.send("t", {})
    result = cli("stats", "--path", folder, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["totals"]["NOT_STARTED"] == 4 and data["totals"]["RUNNING"] == 0
    assert [row["NOT_STARTED"] for row in data["shards"]] == [2, 2]
    assert set(data["totals"]) >= {"NOT_STARTED", "RUNNING", "FINISHED", "FAILED", "CALLBACKED"}


def test_stats_on_a_folder_without_queue_files(tmp_path):
    result = cli("stats", "--path", str(tmp_path))
    assert result.returncode == 2 and "no queue files" in result.stderr


def _start_worker(tmp_path: Path, folder: str, *extra: str) -> subprocess.Popen:
    package = tmp_path / "workapp"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(TASK_MODULE)
    return subprocess.Popen([PY, "-m", "message_queue_sqlite", "worker", "workapp", "--path", folder,
                             "--workers", "2", *extra], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_one_process_sends_another_works_callbacks_come_back(tmp_path):
    folder = str(tmp_path / "q")
    sender = MessageQueue(folder, shards=2)
    worker = _start_worker(tmp_path, folder)
    try:
        got: dict[str, dict] = {}
        done = threading.Event()

        def callback(result):
            got[result["task_id"]] = result
            if len(got) == 200:
                done.set()

        ids = [sender.send("square", {"x": i}, callback=callback).task_id for i in range(200)]
        if not done.wait(30):
            worker.kill()
            raise AssertionError(f"{len(got)} of 200 callbacks; worker said {worker.communicate()}")
        assert [got[i]["result"] for i in ids] == [i * i for i in range(200)]
        pid = sender.send("whoami").result(timeout=10)
        assert pid == worker.pid  # it really ran in the other process
        wait_until(lambda: sender.stats()["totals"]["CALLBACKED"] == 200, what="CALLBACKED")
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        sender.close()
    assert worker.returncode == 0, err
    assert "stopped" in out


def test_failed_and_retry_commands(tmp_path):
    folder = str(tmp_path / "q")
    with MessageQueue(folder) as mq:
        @mq.task
        def flaky(n):
            raise RuntimeError(f"no {n}")

        handles = [mq.send(flaky, {"n": i}) for i in range(3)]
        with mq.running():
            for h in handles:
                h.outcome(timeout=10)
    listed = cli("failed", "--path", folder, "--json")
    rows = json.loads(listed.stdout)
    assert len(rows) == 3 and rows[0]["error"].startswith("RuntimeError: no ")
    one = cli("retry", handles[0].task_id, "--path", folder)
    assert one.returncode == 0 and "1 task(s)" in one.stdout
    rest = cli("retry", "--task", "flaky", "--path", folder)
    assert "2 task(s)" in rest.stdout
    with MessageQueue(folder) as mq:
        assert mq.stats()["totals"]["NOT_STARTED"] == 3
        assert mq.get(handles[0].task_id).status == TaskStatus.NOT_STARTED


def test_the_original_example_app_runs_unmodified(tmp_path):
    """The seed README's app: its main.py loops sending until one Ctrl+C, then exits 0."""
    app = write_seed_app(tmp_path / "demo")
    child = subprocess.Popen([PY, "main.py"], cwd=app, env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    queue_files = app / "message_queue"
    try:
        wait_until(lambda: (queue_files / "mq-shard-0.db").exists(), timeout=30, what="queue file")
        with MessageQueue(str(queue_files)) as watcher:
            wait_until(lambda: watcher.stats()["totals"]["CALLBACKED"] >= 300, timeout=60,
                       what="300 callbacks")
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    with MessageQueue(str(queue_files)) as mq:
        totals = mq.stats()["totals"]
        records = mq.tasks(limit=1_000_000)
    callbacks = out.count("{'task_id': ")
    assert totals["RUNNING"] == 0
    # every send is accounted for: called back, or still queued for the next start
    assert callbacks == totals["CALLBACKED"] > 0
    assert totals["CALLBACKED"] + totals["NOT_STARTED"] + totals["FAILED"] == len(records)
    # each callback printed its own task's result (the original's bug printed another's)
    names = {r.task_id: r.task_name for r in records}
    printed = re.findall(r"\{'task_id': .*?'attempts': \d+\}", out)  # threads' prints interleave
    assert len(printed) == callbacks
    for text in printed:
        result = ast.literal_eval(text)  # the app prints the dict with print(x)
        if result["status"] == TaskStatus.FINISHED:
            assert result["result"] == names[result["task_id"]]
        else:  # a cache-mode task still queued at stop: its arguments die with the process
            assert names[result["task_id"]] == "test" and "ended before it ran" in result["result"]
    assert "hello world1" in out


def test_demo_command_summarizes(tmp_path):
    result = cli("demo", "--seconds", "2", "--dir", str(tmp_path / "d"), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: OK" in result.stdout and "throughput" in result.stdout and "p50" in result.stdout


def test_worker_refuses_unknown_package(tmp_path):
    result = cli("worker", "no_such_pkg_xyz", "--path", str(tmp_path / "q"), cwd=tmp_path)
    assert result.returncode == 2 and "no_such_pkg_xyz" in result.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_opens_its_own_connection(tmp_path):
    folder = str(tmp_path / "q")
    with MessageQueue(folder) as mq:
        mq.send("t", {})
        pid = os.fork()
        if pid == 0:  # child: must not reuse the parent's connection
            code = 1
            try:
                mq.send("t", {})
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert mq.stats()["totals"]["NOT_STARTED"] == 2


def test_the_original_example_app_runs_unmodified_on_postgres(tmp_path):
    """MQS_BROKER_URL moves the unmodified app to PostgreSQL."""
    from conftest import POSTGRES_DSN, drop_pg_schema, pg_url_with_fresh_schema

    if not POSTGRES_DSN:
        if os.environ.get("MQS_REQUIRE_POSTGRES"):
            pytest.fail("MQS_REQUIRE_POSTGRES is set but MQS_TEST_POSTGRES_DSN is not")
        pytest.skip("PostgreSQL tests need MQS_TEST_POSTGRES_DSN")
    url = pg_url_with_fresh_schema()
    app = write_seed_app(tmp_path / "demo")
    env = dict(subprocess_env(), MQS_BROKER_URL=url)
    child = subprocess.Popen([PY, "main.py"], cwd=app, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        def callbacked() -> int:
            try:
                with MessageQueue(config=Config(broker_url=url)) as watcher:
                    return watcher.stats()["totals"]["CALLBACKED"]
            except Exception:
                return 0  # the app has not created its schema yet

        wait_until(lambda: callbacked() >= 200, timeout=60, what="200 callbacks on PostgreSQL")
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert not (app / "message_queue").exists()  # no SQLite file was made
        with MessageQueue(config=Config(broker_url=url)) as mq:
            totals = mq.stats()["totals"]
        assert totals["RUNNING"] == 0 and out.count("{'task_id': ") == totals["CALLBACKED"], err
    finally:
        if child.poll() is None:
            child.kill()
        drop_pg_schema(url)


def test_a_running_worker_serves_shard_files_created_after_it_started(tmp_path):
    folder = str(tmp_path / "q")
    worker = _start_worker(tmp_path, folder)
    try:
        wait_until(lambda: (tmp_path / "q" / "mq-shard-0.db").exists(), timeout=30,
                   what="the worker to create its queue")
        with MessageQueue(folder, shards=3) as sender:
            handles = [sender.send("square", {"x": i}) for i in range(9)]
            assert {sender.engine.shard_of(h.task_id)[0] for h in handles} == {0, 1, 2}
            assert [h.result(timeout=30) for h in handles] == [i * i for i in range(9)]
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
