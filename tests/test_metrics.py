"""Prometheus metrics: counters fed by the lifecycle hooks as tasks run (never a scan), the
stored queue's gauges at scrape time on both backends, a CLI worker's --metrics-port, and the
dashboard's /metrics."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest
from conftest import subprocess_env, wait_until

pytest.importorskip("prometheus_client")

from message_queue_sqlite import MessageQueue, current_task  # noqa: E402
from message_queue_sqlite.contrib.metrics import QueueMetrics, StoredQueueCollector  # noqa: E402


def value(text: str, name: str, **labels: str) -> float:
    """A sample's value from the text format (0 if absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # (exported sorted by name)
    pattern = rf"^{re.escape(name)}" + (rf"\{{{re.escape(wanted)}\}}" if labels else "") + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_counters_follow_the_runs_and_gauges_read_storage(make_queue):
    metrics = QueueMetrics()
    mq = make_queue(hooks=[metrics])
    metrics.registry.register(StoredQueueCollector(mq))  # (made before the queue it reads)
    release = threading.Event()

    @mq.task(queue="mail")
    def ok(n):
        return n

    @mq.task(retries=1, retry_backoff=0.01)
    def boom():
        raise ValueError("no")

    @mq.task
    def stops():
        release.wait(10)
        current_task.check_cancelled()

    waiting = mq.send(ok, {"n": 0}, delay=3600)
    with mq.running():
        for n in range(3):
            mq.send(ok, {"n": n}, callback=lambda _: None).result(timeout=10)
        with pytest.raises(Exception, match="no"):
            mq.send(boom).result(timeout=10)
        stopping = mq.send(stops)
        wait_until(lambda: value(metrics.exposition().decode(), "mqs_tasks_started_total",
                                 task="stops", queue="default") == 1, what="the stopping task to start")
        assert stopping.cancel() == "stopping"
        release.set()
        with pytest.raises(Exception, match="cancelled"):
            stopping.result(timeout=10)
        wait_until(lambda: value(metrics.exposition().decode(), "mqs_callback_delay_seconds_count",
                                 task="ok") == 3, what="the three callbacks")
    text = metrics.exposition().decode()
    assert value(text, "mqs_tasks_started_total", task="ok", queue="mail") == 3
    assert value(text, "mqs_tasks_finished_total", task="ok", queue="mail") == 3
    assert value(text, "mqs_tasks_started_total", task="boom", queue="default") == 2
    assert value(text, "mqs_tasks_retried_total", task="boom", queue="default") == 1
    assert value(text, "mqs_tasks_failed_total", task="boom", queue="default") == 1
    assert value(text, "mqs_tasks_cancelled_total", task="stops", queue="default") == 1
    assert value(text, "mqs_task_run_seconds_count", task="ok", queue="mail") == 3
    assert value(text, "mqs_task_queue_wait_seconds_count", task="ok", queue="mail") == 3
    # the stored queue, read at this scrape
    assert value(text, "mqs_tasks", status="finished") == 3
    assert value(text, "mqs_tasks", status="failed") == 1
    assert value(text, "mqs_tasks", status="cancelled") == 1
    assert value(text, "mqs_tasks", status="scheduled") == 1
    assert value(text, "mqs_queue_depth", queue="mail", status="scheduled") == 1
    assert waiting.cancel() == "cancelled"
    assert value(metrics.exposition().decode(), "mqs_tasks", status="cancelled") == 2


def test_two_metrics_objects_keep_their_own_counts(make_queue):
    first, second = QueueMetrics(), QueueMetrics()
    mq = make_queue(hooks=[first])

    @mq.task
    def job():
        return 1

    with mq.running():
        mq.send(job).result(timeout=10)
    assert value(first.exposition().decode(), "mqs_tasks_finished_total", task="job", queue="default") == 1
    assert value(second.exposition().decode(), "mqs_tasks_finished_total", task="job", queue="default") == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


APP = '''
import os
from message_queue_sqlite import MessageQueue

mq = MessageQueue(os.environ["METRICS_DIR"], workers=2)


@mq.task
def job(n):
    return n
'''


def test_a_cli_worker_serves_its_metrics_on_a_port(tmp_path):
    (tmp_path / "metrics_app.py").write_text(APP)
    port = _free_port()
    env = subprocess_env()
    env["METRICS_DIR"] = str(tmp_path / "q")
    worker = subprocess.Popen([sys.executable, "-m", "message_queue_sqlite", "worker", "metrics_app:mq",
                               "--metrics-port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        banner = worker.stdout.readline()
        assert f"metrics on http://127.0.0.1:{port}/metrics" in banner, banner
        with MessageQueue(str(tmp_path / "q")) as sender:
            for n in range(4):
                sender.send("job", {"n": n}).result(timeout=30)

        def scraped() -> str | None:
            """The page once it counts the 4 runs (the completions commit in a batch)."""
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
            return text if value(text, "mqs_tasks_finished_total", task="job", queue="default") == 4 else None

        text = wait_until(scraped, what="the worker's counters to show 4 finished runs")
        assert value(text, "mqs_tasks", status="finished") == 4
    finally:
        worker.terminate()
        worker.communicate(timeout=60)


def test_the_cli_refuses_a_bad_metrics_port(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "message_queue_sqlite", "worker", "app:mq", "--metrics-port",
                          "70000"], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--metrics-port" in bad.stderr and "65535" in bad.stderr


def test_the_dashboard_serves_the_stored_queue_s_gauges(make_queue):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    mq = make_queue()
    mq.send("anything", {}, queue="reports")
    answer = TestClient(mq.dashboard()).get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert value(answer.text, "mqs_queue_depth", queue="reports", status="queued") == 1
    assert value(answer.text, "mqs_tasks", status="queued") == 1


def test_lease_recoveries_are_counted_by_the_recovered_hook_point(make_queue):
    metrics = QueueMetrics()
    mq = make_queue(hooks=[metrics])
    mq.send("orphan", {})
    _, claims = mq.engine.shards[0].complete_and_claim([], "a-dead-worker", 1, 0.05)  # a 50 ms lease
    assert len(claims) == 1

    def recovered() -> bool:
        mq.housekeeping()
        return value(metrics.exposition().decode(), "mqs_lease_recoveries_total", outcome="requeued") == 1

    wait_until(recovered, what="the expired lease to be recovered and counted")
