"""A real Django project, written by the tests: settings, an app (``shop``) with tasks, views
and urls, and ``manage.py``. This process sets Django up with it once; each test points its
TASKS setting at the test's own store (a SQLite folder, or a PostgreSQL schema), and a worker
process (``manage.py mqs_worker``) is told the same store through MQS_DJANGO_QUEUE."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import subprocess_env

SETTINGS = '''
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tests-only"
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["message_queue_sqlite.contrib.django", "shop"]
ROOT_URLCONF = "proj.urls"
DATABASES = {}
USE_TZ = True
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}},
    "loggers": {"django.tasks": {"handlers": ["console"], "level": "DEBUG", "propagate": False}},
}


def tasks_setting(location, queues=("default", "emails"), **options):
    """TASKS for a store: a PostgreSQL URL, or a folder for SQLite files."""
    where = {"BROKER_URL": location} if location.startswith("postgresql") else {"PATH": location}
    return {
        "default": {
            "BACKEND": "message_queue_sqlite.contrib.django.TaskBackend",
            "QUEUES": list(queues),
            "OPTIONS": {
                **where,
                "WORKERS": 2,
                "SETTINGS": {"drain_timeout": 10},
                "TASK_OPTIONS": {"retries": 1, "retry_backoff": 0.05, "retry_jitter": False},
                **options,
            },
        }
    }


TASKS = tasks_setting(os.environ.get("MQS_DJANGO_QUEUE", str(BASE_DIR / "queue")))
'''

URLS = '''
from django.urls import path

from shop import views

urlpatterns = [
    path("add/", views.enqueue_add),
    path("result/<str:result_id>/", views.result),
]
'''

VIEWS = '''
from django.http import JsonResponse
from django.tasks import default_task_backend

from shop.tasks import add


def enqueue_add(request):
    result = add.enqueue(int(request.GET["a"]), b=int(request.GET["b"]))
    return JsonResponse({"id": result.id, "status": result.status})


def result(request, result_id):
    found = default_task_backend.get_result(result_id)
    value = found.return_value if found.status == "SUCCESSFUL" else None
    return JsonResponse({"status": found.status, "return_value": value})
'''

# The tasks of Django's own tests (tests/tasks/tasks.py), and the project's.
TASKS = '''
import asyncio

from django.tasks import TaskContext, task


@task()
def add(a, b):
    return a + b


@task()
def record(log_path, label):
    """Append ``label`` to a log: the order tasks ran in."""
    with open(log_path, "a") as out:
        out.write(f"{label}\\n")
    return label


@task()
def fail(message):
    raise ValueError(message)


@task(takes_context=True)
def flaky(context):
    """Fails its first attempt; the retry (TASK_OPTIONS retries=1) returns what it was told."""
    if context.attempt == 1:
        raise RuntimeError("the first attempt fails")
    result = context.task_result
    return {"attempt": context.attempt, "id": result.id, "status": result.status,
            "workers": result.worker_ids}


@task(queue_name="emails")
def send_email(to):
    return f"sent to {to}"


@task()
async def double(x):
    await asyncio.sleep(0)
    return 2 * x


@task()
def wait_for_file(path, seconds):
    """Runs until ``path`` exists (or ``seconds`` passed): a task that is running when told."""
    import os
    import time

    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


@task()
def noop_task(*args, **kwargs):
    return None


@task
def noop_task_from_bare_decorator(*args, **kwargs):
    return None


@task()
async def noop_task_async(*args, **kwargs):
    return None


@task()
def calculate_meaning_of_life():
    return 42


@task()
def failing_task_value_error():
    raise ValueError("This Task failed due to ValueError")


@task()
def failing_task_system_exit():
    raise SystemExit("This Task failed due to SystemExit")


@task()
def complex_exception():
    raise ValueError(ValueError("This task failed"))


@task()
def complex_return_value():
    # Return something which isn't JSON serializable nor picklable.
    return lambda: True


@task(takes_context=True)
def get_task_id(context):
    return context.task_result.id


@task(takes_context=True)
def check_context(context, attempt):
    assert isinstance(context, TaskContext)
    assert context.attempt == attempt
'''

MANAGE = '''
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
'''


def write_project(root: Path) -> Path:
    files = {
        "manage.py": MANAGE, "proj/__init__.py": "", "proj/settings.py": SETTINGS, "proj/urls.py": URLS,
        "shop/__init__.py": "", "shop/tasks.py": TASKS, "shop/views.py": VIEWS,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def setup_django(root: Path) -> None:
    """Django set up in this process with the project at ``root`` (once per process)."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    sys.path.insert(0, str(root))
    os.environ["DJANGO_SETTINGS_MODULE"] = "proj.settings"
    django.setup()


def start_worker(root: Path, log_dir: Path, location: str, *args: str) -> subprocess.Popen:
    """``manage.py mqs_worker ARGS`` run in the project at ``root``, on the store at
    ``location``; its output in ``log_dir/worker-N.log`` (shown by ``logs``)."""
    env = subprocess_env()
    env["MQS_DJANGO_QUEUE"] = location
    env["PYTHONUNBUFFERED"] = "1"
    number = len(list(log_dir.glob("worker-*.log")))
    with open(log_dir / f"worker-{number}.log", "w") as out:
        return subprocess.Popen([sys.executable, "manage.py", "mqs_worker", *args], cwd=root, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def logs(log_dir: Path, tail: int | None = 4000) -> str:
    """The workers' output (the last ``tail`` characters of each; None: all)."""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-tail if tail else 0:]}"
                     for p in sorted(log_dir.glob("worker-*.log")))


def settings_for(location: str, **kwargs: Any) -> dict[str, Any]:
    from proj.settings import tasks_setting

    return tasks_setting(location, **kwargs)


# -- fixtures (imported by the test modules under these names; used as project, location, dj)
@pytest.fixture(scope="session", name="project")
def project_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_project(tmp_path_factory.mktemp("djproject"))
    setup_django(root)
    return root


@pytest.fixture(name="location")
def location_fixture(backend: str, broker_url: str | None, tmp_path: Path) -> str:
    return broker_url if broker_url is not None else str(tmp_path / "queue")


@pytest.fixture(name="dj")
def dj_fixture(project: Path, location: str) -> Iterator[SimpleNamespace]:
    """Django's TASKS pointed at this test's store; the store closed before it is dropped."""
    from django.tasks import default_task_backend
    from django.test import override_settings

    from message_queue_sqlite.contrib.django.backend import close_all

    with override_settings(TASKS=settings_for(location)):
        import shop.tasks

        yield SimpleNamespace(tasks=shop.tasks, backend=default_task_backend)
        close_all()
