"""The framework's documented backend behaviours, ported from Django's own tests of its
backends (tests/tasks/ in Django's source: test_tasks.py, test_immediate_backend.py,
test_dummy_backend.py) where they apply to a backend that stores tasks and runs them in
workers; tasks run here by workers in this process (the worker process is the other module's).
On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
from collections.abc import Iterator
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("django", minversion="6.0", reason="the Django backend's tests need Django 6 "
                    "(Python >= 3.12): run them with `make test-django`")

from conftest import wait_until  # noqa: E402
from djproject import dj_fixture, location_fixture, project_fixture, settings_for  # noqa: E402, F401


@pytest.fixture
def run_tasks(dj: SimpleNamespace) -> Iterator[Any]:
    """``run_tasks(*results)``: start this process's workers, wait until those results ended,
    and return them as read back; the workers stop at the end of the test."""
    from django.tasks import TaskResultStatus

    queue = dj.backend.queue
    queue.start(workers=2)

    def run(*results: Any) -> list[Any]:
        ended = (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
        wait_until(lambda: all(dj.backend.get_result(r.id).status in ended for r in results), timeout=20,
                   what="the tasks to end")
        return [dj.backend.get_result(r.id) for r in results]

    yield run
    queue.stop()


def test_feature_flags(dj: SimpleNamespace) -> None:
    backend = dj.backend
    assert (backend.supports_defer, backend.supports_async_task, backend.supports_get_result,
            backend.supports_priority) == (True, True, True, True)


def test_enqueue_task(dj: SimpleNamespace) -> None:
    from django.tasks import TaskResultStatus

    for task in (dj.tasks.noop_task, dj.tasks.noop_task_async, dj.tasks.noop_task_from_bare_decorator):
        result = task.enqueue(1, two=3)
        assert result.status == TaskResultStatus.READY and not result.is_finished
        assert result.task == task and result.args == [1] and result.kwargs == {"two": 3}
        assert result.enqueued_at is not None and result.started_at is None and result.finished_at is None
        assert result.attempts == 0 and result.errors == [] and result.backend == "default"
        assert isinstance(result.id, str) and len(result.id) < 64
        with pytest.raises(ValueError, match="Task has not finished yet"):
            _ = result.return_value
        # read back as sent (test_get_result), and refresh changes nothing (test_refresh_result)
        assert task.get_result(result.id) == result
        before = dataclasses.asdict(result)
        result.refresh()
        assert dataclasses.asdict(result) == before
        asyncio.run(result.arefresh())
        assert dataclasses.asdict(result) == before


def test_enqueue_async_and_get_result_async(dj: SimpleNamespace) -> None:
    async def go() -> tuple[Any, Any]:
        result = await dj.tasks.noop_task.aenqueue()
        return result, await dj.tasks.noop_task.aget_result(result.id)

    result, again = asyncio.run(go())
    assert again == result and result.args == [] and result.kwargs == {}


def test_enqueue_with_invalid_argument_stores_nothing(dj: SimpleNamespace) -> None:
    with pytest.raises(TypeError, match="Unsupported type"):
        dj.tasks.noop_task.enqueue(datetime.now())
    with pytest.raises(TypeError, match="Unsupported type"):
        asyncio.run(dj.tasks.noop_task.aenqueue(datetime.now()))
    assert dj.backend.queue.stats()["outcomes"]["queued"] == 0


def test_arguments_are_checked_against_the_function_at_enqueue(dj: SimpleNamespace) -> None:
    """Ours, not the framework's: a call the function cannot take is refused at send."""
    with pytest.raises(TypeError, match=r"shop\.tasks\.add.*\(a, b\)"):
        dj.tasks.add.enqueue(1, 2, 3)
    with pytest.raises(TypeError, match="check_context"):  # the context is not an argument to send
        dj.tasks.check_context.enqueue(1, 2)


def test_validation(dj: SimpleNamespace, location: str) -> None:
    from django.tasks import task
    from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY
    from django.tasks.exceptions import InvalidTask
    from django.test import override_settings
    from django.utils import timezone

    noop = dj.tasks.noop_task
    message = f"priority must be a whole number between {TASK_MIN_PRIORITY} and {TASK_MAX_PRIORITY}."
    for priority in (-101, 101, 3.1):
        with pytest.raises(InvalidTask, match=message):
            noop.using(priority=priority)
    for priority in (-100, 0, 100):
        noop.using(priority=priority)
    with pytest.raises(InvalidTask, match="Queue 'queue-2' is not valid for backend."):
        noop.using(queue_name="queue-2")
    with pytest.raises(InvalidTask, match="run_after must be an aware datetime."):
        noop.using(run_after=datetime.now())
    with pytest.raises(TypeError, match="run_after cannot be defined statically"):
        task(run_after=timezone.now())(dj.tasks.calculate_meaning_of_life.func)
    without_context = "Task takes context but does not have a first argument of 'context'."
    with pytest.raises(InvalidTask, match=without_context):
        task(takes_context=True)(dj.tasks.calculate_meaning_of_life.func)

    def nested() -> None: ...

    with pytest.raises(InvalidTask, match="Task function must be defined at a module level."):
        task()(nested)
    with override_settings(TASKS=settings_for(location, queues=())):  # QUEUES = []: any queue name
        assert noop.using(queue_name="queue-2").queue_name == "queue-2"
        with pytest.raises(InvalidTask, match=r"queue_name='two words' is not a queue name"):
            noop.using(queue_name="two words")


def test_get_missing_or_mismatched_result(dj: SimpleNamespace) -> None:
    from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch

    for missing in ("123", "0-999999", "no such id", 123):
        with pytest.raises(TaskResultDoesNotExist):
            dj.tasks.noop_task.get_result(missing)
        with pytest.raises(TaskResultDoesNotExist):
            asyncio.run(dj.tasks.noop_task.aget_result(missing))
    other = dj.tasks.noop_task_async.enqueue()
    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        dj.tasks.noop_task.get_result(other.id)
    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        asyncio.run(dj.tasks.noop_task.aget_result(other.id))


def test_pickle_task_result(dj: SimpleNamespace) -> None:
    result = dj.tasks.noop_task.enqueue()
    assert pickle.loads(pickle.dumps(result)) == result


def test_enqueue_logs(dj: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="django.tasks"):
        result = dj.tasks.noop_task.enqueue()
    assert any("enqueued" in r.getMessage() and result.id in r.getMessage() for r in caplog.records)


def test_run_after_timedelta_and_priority_are_stored(dj: SimpleNamespace) -> None:
    """A timedelta run_after (the framework's reference documents it) is from now; the
    priority and due time read back as sent while the task waits."""
    from django.utils import timezone

    before = timezone.now()
    result = dj.tasks.noop_task.using(run_after=timedelta(minutes=5), priority=-7).enqueue()
    read = dj.backend.get_result(result.id)
    assert read.task.priority == -7
    assert before + timedelta(minutes=5) <= read.task.run_after <= timezone.now() + timedelta(minutes=5)


def test_tasks_run(dj: SimpleNamespace, run_tasks: Any) -> None:
    """test_enqueue_task, test_result, test_takes_context and test_context of the immediate
    backend's tests, with the tasks run by workers."""
    from django.tasks import TaskResultStatus

    t = dj.tasks
    sent = [t.noop_task.enqueue(1, two=3), t.noop_task_async.enqueue(), t.calculate_meaning_of_life.enqueue(),
            t.get_task_id.enqueue(), t.check_context.enqueue(1)]
    noop, noop_async, meaning, task_id, context = run_tasks(*sent)
    for result in (noop, noop_async):
        assert result.status == TaskResultStatus.SUCCESSFUL and result.is_finished
        assert result.enqueued_at <= result.started_at <= result.finished_at
        assert result.last_attempted_at is not None and result.attempts == 1
        assert result.return_value is None
    assert noop.args == [1] and noop.kwargs == {"two": 3} and noop.task == t.noop_task
    assert meaning.return_value == 42
    assert task_id.return_value == sent[3].id
    assert context.status == TaskResultStatus.SUCCESSFUL, context.errors


def test_failures(dj: SimpleNamespace, run_tasks: Any) -> None:
    """test_catches_exception, test_complex_exception and test_complex_return_value."""
    from django.tasks import TaskResultStatus

    t = dj.tasks
    value_error, system_exit, complex_exc, complex_return = run_tasks(
        t.failing_task_value_error.enqueue(), t.failing_task_system_exit.enqueue(),
        t.complex_exception.enqueue(), t.complex_return_value.enqueue())
    for result, exception, message in ((value_error, ValueError, "This Task failed due to ValueError"),
                                       (system_exit, SystemExit, "This Task failed due to SystemExit")):
        assert result.status == TaskResultStatus.FAILED and result.is_finished
        with pytest.raises(ValueError, match="Task failed"):
            _ = result.return_value
        assert result.enqueued_at <= result.started_at <= result.finished_at
        assert result.errors[0].exception_class is exception
        assert result.errors[0].traceback.endswith(f"{exception.__name__}: {message}\n")
    assert value_error.attempts == 2  # TASK_OPTIONS: one retry; SystemExit is not an Exception: none
    assert system_exit.attempts == 1
    assert complex_exc.errors[0].exception_class is ValueError
    assert 'ValueError(ValueError("This task failed"))' in complex_exc.errors[0].traceback
    assert complex_return.status == TaskResultStatus.FAILED
    assert complex_return.errors[0].exception_class is TypeError
    assert "Unsupported type" in complex_return.errors[0].traceback


def test_a_cancelled_task_reads_as_failed(dj: SimpleNamespace) -> None:
    from django.tasks import TaskResultStatus

    from message_queue_sqlite import TaskCancelled

    result = dj.tasks.noop_task.enqueue()
    assert dj.backend.queue.cancel(result.id) == {result.id: "cancelled"}
    read = dj.backend.get_result(result.id)
    assert read.status == TaskResultStatus.FAILED and read.finished_at is not None
    assert read.errors[0].exception_class is TaskCancelled


def test_bad_options_are_refused_naming_them(project: Any, location: str) -> None:
    from django.tasks import task_backends
    from django.tasks.exceptions import InvalidTaskBackend
    from django.test import override_settings

    def backend_with(**changes: Any) -> Any:
        setting = settings_for(location)
        setting["default"].update(changes)
        with override_settings(TASKS=setting):
            return task_backends["default"]

    options = settings_for(location)["default"]["OPTIONS"]
    cases = [
        ({"OPTIONS": {**options, "WROKERS": 2}}, r"unknown key\(s\) \['WROKERS'\]"),
        ({"OPTIONS": {"WORKERS": 2}}, "must give one of PATH"),
        ({"OPTIONS": {"PATH": "/tmp/q", "BROKER_URL": "postgresql://x/y"}}, "must give one of PATH"),
        ({"OPTIONS": {"BROKER_URL": "mysql://x/y"}}, r"'mysql://x/y' is not a postgresql:// URL"),
        ({"OPTIONS": {**options, "SETTINGS": {"visiblity_timeout": 3}}}, "visiblity_timeout"),
        ({"QUEUES": ["default", "two words"]}, r"QUEUES.*'two words' is not a queue name"),
        ({"OPTIONS": {**options, "TASK_OPTIONS": {"queue": "x"}}}, r"TASK_OPTIONS'\] cannot set \['queue'\]"),
        ({"OPTIONS": {**options, "TASK_OPTIONS": {"retries": 1, "concurrency": 0}}}, "concurrency=0"),
    ]
    for changes, message in cases:
        with pytest.raises(InvalidTaskBackend, match=message):
            backend_with(**changes)


def test_worker_command_refuses_what_it_cannot_serve(dj: SimpleNamespace, location: str) -> None:
    from django.core.management import CommandError, call_command
    from django.test import override_settings

    with pytest.raises(CommandError, match="--backend 'nope'"):
        call_command("mqs_worker", backend="nope")
    with pytest.raises(CommandError, match="--workers 0 is invalid"):
        call_command("mqs_worker", workers=0)
    with pytest.raises(CommandError, match=r"--queues 'a=x'.*thread count"):
        call_command("mqs_worker", queues="a=x")
    immediate = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
    with override_settings(TASKS=immediate), pytest.raises(CommandError, match="ImmediateBackend"):
        call_command("mqs_worker")


def test_system_check_warns_when_the_app_is_missing(dj: SimpleNamespace) -> None:
    from django.test import override_settings

    assert dj.backend.check() == []
    with override_settings(INSTALLED_APPS=["shop"]):
        found = dj.backend.check()
    assert [message.id for message in found] == ["message_queue_sqlite.W001"]
    assert "not in INSTALLED_APPS" in found[0].msg


def test_without_time_zones_times_are_naive_local(dj: SimpleNamespace) -> None:
    """USE_TZ = False: run_after may be naive (local time, as Django's times then are), and
    the result's times come back naive."""
    from django.test import override_settings

    with override_settings(USE_TZ=False):
        due = datetime.now() + timedelta(minutes=5)
        result = dj.tasks.noop_task.using(run_after=due).enqueue()
        read = dj.backend.get_result(result.id)
    assert read.enqueued_at.tzinfo is None and read.task.run_after.tzinfo is None
    assert abs(read.task.run_after - due) < timedelta(seconds=1)


def test_immediate_mode_runs_at_enqueue_and_keeps_the_results(project: Any, location: str) -> None:
    """SETTINGS {"immediate": True} (the queue's immediate mode, in memory): like Django's
    ImmediateBackend, each enqueue runs its task before it returns, and get_result works."""
    import shop.tasks
    from django.tasks import TaskResultStatus, default_task_backend
    from django.test import override_settings

    from message_queue_sqlite.contrib.django.backend import close_all

    setting = settings_for(location)
    setting["default"]["OPTIONS"]["SETTINGS"] = {"immediate": True}
    with override_settings(TASKS=setting):
        try:
            result = shop.tasks.add.enqueue(2, 3)
            assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
            failed = shop.tasks.fail.enqueue("at once")
            assert failed.status == TaskResultStatus.FAILED
            assert failed.errors[0].exception_class is ValueError
            assert default_task_backend.get_result(result.id) == result
        finally:
            close_all()
