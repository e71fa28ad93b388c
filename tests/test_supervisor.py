"""``mqs worker TARGET --processes N``, real processes on both backends: N worker processes run
tasks at once (a barrier only two processes together can pass); a child SIGKILLed mid-task
has its task recovered at once (long before its 300 s lease would expire) and run again, and
a new child takes its place; SIGTERM to the supervisor stops every child gracefully."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import start_cli_worker, stop_processes, subprocess_env, wait_until, worker_logs

from message_queue_sqlite import MessageQueue, TaskStatus

APP = '''
import os, signal, time
from pathlib import Path
from message_queue_sqlite import MessageQueue, current_task

mq = MessageQueue(os.environ["QUEUE_DIR"], broker_url=os.environ.get("BROKER") or None)
SEEN = Path(os.environ["SEEN_DIR"])

@mq.task
def meet(n):
    (SEEN / f"{os.getpid()}").write_text("here")
    for _ in range(2000):  # 20 s at most
        if len(list(SEEN.iterdir())) >= 2:
            return os.getpid()
        time.sleep(0.01)
    raise TimeoutError("only one worker process ever ran this task")

@mq.task(retries=0)
def dies_once(marker):
    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # the whole worker process dies mid-task
    return [os.getpid(), current_task.attempt]
'''


@pytest.fixture
def app(tmp_path, queue_dir, broker_url):
    app_dir = Path(tmp_path) / "app"
    app_dir.mkdir()
    (app_dir / "sup_app.py").write_text(APP)
    seen = Path(tmp_path) / "seen"
    seen.mkdir()
    env = {**subprocess_env(), "QUEUE_DIR": queue_dir, "BROKER": broker_url or "", "SEEN_DIR": str(seen)}
    sender = MessageQueue(queue_dir, broker_url=broker_url)
    for name in ("meet", "dies_once"):
        sender.task(name=name)(lambda **_: None)
    yield app_dir, env, sender
    sender.close()


def test_n_worker_processes_run_tasks_at_once(app):
    app_dir, env, sender = app
    handles = [sender.send("meet", {"n": n}) for n in range(2)]
    supervisor = start_cli_worker(app_dir, "sup_app:mq", env, "--processes", "2", "--workers", "1")
    try:
        pids = {h.result(timeout=60) for h in handles}
    finally:
        stop_processes([supervisor])
    logs = worker_logs(app_dir)
    assert len(pids) == 2 and supervisor.pid not in pids, logs
    assert supervisor.returncode == 0 and "supervisor: 2 worker processes" in logs, logs
    assert logs.count("worker: stopped (every running task finished)") == 2, logs


def test_a_worker_process_killed_mid_task_has_its_task_recovered_at_once_and_is_replaced(app, tmp_path):
    app_dir, env, sender = app
    marker = Path(tmp_path) / "died.pid"
    handle = sender.send("dies_once", {"marker": str(marker)})
    supervisor = start_cli_worker(app_dir, "sup_app:mq", env, "--processes", "2", "--workers", "1",
                                  "--visibility-timeout", "300")
    try:
        pid, attempt = handle.result(timeout=60)  # without the supervisor's recovery: 300 s
        wait_until(lambda: "worker process" in worker_logs(app_dir) and "died" in worker_logs(app_dir),
                   what="the supervisor to report the death")
    finally:
        stop_processes([supervisor])
    logs = worker_logs(app_dir)
    killed = int(marker.read_text())
    assert pid != killed and attempt == 2, logs
    assert f"worker process {killed} died (killed by signal SIGKILL); 1 of its task(s) were recovered" in logs
    record = sender.engine.find(handle.task_id)
    assert record.status in (TaskStatus.FINISHED, TaskStatus.CALLBACKED)
    assert supervisor.returncode == 0, logs


def test_sigterm_to_the_supervisor_stops_every_child(app):
    app_dir, env, _sender = app
    supervisor = start_cli_worker(app_dir, "sup_app:mq", env, "--processes", "2")
    wait_until(lambda: worker_logs(app_dir).count("serving every queue") == 2, timeout=60,
               what="both children to start")
    children = [int(line.rsplit("(pid ", 1)[1].rstrip(")")) for line in worker_logs(app_dir).splitlines()
                if line.startswith("worker: sup_app:mq")]
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=60) == 0, worker_logs(app_dir)
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
