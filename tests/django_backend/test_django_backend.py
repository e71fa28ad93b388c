"""Django's Tasks framework on this queue, end to end, on SQLite and on PostgreSQL: a view
enqueues, a worker process (``manage.py mqs_worker``) runs, and the results come back
through Django's own API (``get_result``/``aget_result``). Runs in the Django venv
(``make test-django``); skipped where Django 6 is not installed (the main suite's 3.11)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("django", minversion="6.0", reason="the Django backend's tests need Django 6 "
                    "(Python >= 3.12): run them with `make test-django`")

from conftest import stop_processes, wait_until  # noqa: E402
from djproject import dj_fixture, location_fixture, logs, project_fixture, start_worker  # noqa: E402, F401


def test_view_enqueues_a_worker_process_runs_django_reads_back(dj: SimpleNamespace, project: Path,
                                                                location: str, tmp_path: Path) -> None:
    from django.tasks import TaskResultStatus
    from django.test import Client
    from django.utils import timezone

    tasks, get = dj.tasks, dj.backend.get_result
    client = Client()
    # Everything is sent before the one-thread worker starts, so the priorities decide the order.
    response = client.get("/add/", {"a": 2, "b": 3})
    assert response.status_code == 200, response.content
    added = response.json()
    assert added["status"] == "READY"
    order_log = tmp_path / "order.log"
    for priority in (-100, 0, 50, 100):
        tasks.record.using(priority=priority).enqueue(str(order_log), priority)
    run_after = timezone.now() + timedelta(seconds=2)
    deferred = tasks.record.using(run_after=run_after).enqueue(str(tmp_path / "deferred.log"), "deferred")
    failing = tasks.fail.enqueue("boom")
    flaky = tasks.flaky.enqueue()
    email = tasks.send_email.enqueue("ada@example.com")

    async def send_async() -> str:
        return (await tasks.double.aenqueue(21)).id

    doubled_id = asyncio.run(send_async())
    assert get(added["id"]).status == TaskResultStatus.READY
    assert get(deferred.id).task.run_after is not None

    worker = start_worker(project, tmp_path, location, "--workers", "1")
    try:
        ids = [added["id"], failing.id, flaky.id, email.id, doubled_id]
        ended = (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
        wait_until(lambda: all(get(i).status in ended for i in ids), timeout=30,
                   what=lambda: f"the tasks to end; worker log:\n{logs(tmp_path)}")
        if timezone.now() < run_after:  # everything else ran while the deferred one waited
            assert get(deferred.id).status == TaskResultStatus.READY

        # the view's task, read back through a view and through the API
        assert client.get(f"/result/{added['id']}/").json() == {"status": "SUCCESSFUL", "return_value": 5}
        result = get(added["id"])
        assert result.return_value == 5 and result.args == [2] and result.kwargs == {"b": 3}
        assert result.enqueued_at <= result.started_at <= result.finished_at
        assert result.attempts == 1 and result.is_finished and not result.errors
        assert result.task == tasks.add

        # a failing task: FAILED with its error (after the one retry of TASK_OPTIONS)
        failed = tasks.fail.get_result(failing.id)
        assert failed.status == TaskResultStatus.FAILED and failed.attempts == 2
        assert failed.errors[-1].exception_class is ValueError
        assert failed.errors[-1].traceback.endswith("ValueError: boom\n"), failed.errors[-1].traceback
        with pytest.raises(ValueError, match="Task failed"):
            _ = failed.return_value

        # takes_context: the context's attempt and result, on the retry
        retried = get(flaky.id)
        assert retried.status == TaskResultStatus.SUCCESSFUL, retried.errors
        context = retried.return_value
        assert {k: context[k] for k in ("attempt", "id", "status")} == {"attempt": 2, "id": flaky.id,
                                                                       "status": "RUNNING"}
        # one worker id per attempt: the running one's is known (its lease), the earlier one's not
        assert context["workers"][0] == "unknown", context
        assert context["workers"][1] not in ("unknown", "") and len(context["workers"]) == 2, context
        assert retried.attempts == 2

        # a named queue, and an async task sent and read with the async API
        assert get(email.id).return_value == "sent to ada@example.com"
        assert get(email.id).task.queue_name == "emails"

        async def read_async() -> object:
            return await tasks.double.aget_result(doubled_id)

        doubled = asyncio.run(read_async())
        assert doubled.status == TaskResultStatus.SUCCESSFUL and doubled.return_value == 42

        # priorities: higher first
        assert order_log.read_text().split() == ["100", "50", "0", "-100"]

        # run_after: not started before its time
        wait_until(lambda: get(deferred.id).status == TaskResultStatus.SUCCESSFUL, timeout=20,
                   what=lambda: f"the deferred task; worker log:\n{logs(tmp_path)}")
        assert get(deferred.id).started_at >= run_after
        assert get(deferred.id).task == tasks.record  # run_after is kept only while it waits

        # Django's task signals fired in the worker (its LOGGING shows django.tasks)
        text = logs(tmp_path, tail=None)
        assert f"Task id={added['id']} path=shop.tasks.add state=RUNNING" in text
        assert f"Task id={added['id']} path=shop.tasks.add state=SUCCESSFUL" in text
        assert f"Task id={failing.id} path=shop.tasks.fail state=FAILED" in text
    finally:
        stop_processes([worker])
    assert worker.returncode == 0, logs(tmp_path)
    assert "mqs_worker: stopped" in logs(tmp_path)


def test_worker_serves_only_the_queues_it_is_told(dj: SimpleNamespace, project: Path, location: str,
                                                  tmp_path: Path) -> None:
    """``--queues emails`` runs the emails queue's task and leaves the default one waiting."""
    from django.tasks import TaskResultStatus

    waiting = dj.tasks.add.enqueue(1, 2)
    email = dj.tasks.send_email.enqueue("grace@example.com")
    worker = start_worker(project, tmp_path, location, "--queues", "emails")
    try:
        wait_until(lambda: dj.backend.get_result(email.id).status == TaskResultStatus.SUCCESSFUL, timeout=20,
                   what=lambda: f"the email task; worker log:\n{logs(tmp_path)}")
        assert dj.backend.get_result(waiting.id).status == TaskResultStatus.READY
        wait_until(lambda: "serving emails (2 threads)" in logs(tmp_path), timeout=10,
                   what=lambda: f"the worker's banner; worker log:\n{logs(tmp_path)}")
    finally:
        stop_processes([worker])
    assert worker.returncode == 0, logs(tmp_path)


def test_sigterm_lets_the_running_task_finish_a_second_gives_it_back(dj: SimpleNamespace, project: Path,
                                                                      location: str, tmp_path: Path) -> None:
    from django.tasks import TaskResultStatus

    get = dj.backend.get_result
    release = tmp_path / "release"
    running = dj.tasks.wait_for_file.enqueue(str(release), 60)
    worker = start_worker(project, tmp_path, location, "--workers", "1")
    try:
        wait_until(lambda: get(running.id).status == TaskResultStatus.RUNNING, timeout=20,
                   what=lambda: f"the task to run; worker log:\n{logs(tmp_path)}")
        worker.terminate()  # SIGTERM: no new claims; the running task may finish
        wait_until(lambda: "stopping gracefully" in logs(tmp_path), timeout=10, what=lambda: logs(tmp_path))
        release.write_text("go")
        assert worker.wait(timeout=20) == 0, logs(tmp_path)
        finished = get(running.id)
        assert finished.status == TaskResultStatus.SUCCESSFUL and finished.return_value is True

        release.unlink()
        again = dj.tasks.wait_for_file.enqueue(str(release), 60)
        worker = start_worker(project, tmp_path, location, "--workers", "1")
        wait_until(lambda: get(again.id).status == TaskResultStatus.RUNNING, timeout=20,
                   what=lambda: f"the second task to run; worker log:\n{logs(tmp_path)}")
        worker.terminate()
        wait_until(lambda: logs(tmp_path).count("stopping gracefully") == 2, timeout=10,
                   what=lambda: logs(tmp_path))
        worker.terminate()  # a second SIGTERM: the running task is given back, to run again
        # (well within the 10 s drain timeout of the settings: the second signal cut it short)
        assert worker.wait(timeout=5) == 3, logs(tmp_path)
        assert get(again.id).status == TaskResultStatus.READY, logs(tmp_path)
    finally:
        stop_processes([worker])
