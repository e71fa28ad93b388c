"""Django 6's Tasks framework (``django.tasks``) on this queue (the ``django`` extra).

``TASKS = {"default": {"BACKEND": "message_queue_sqlite.contrib.django.TaskBackend", ...}}``
sends Django's ``@task`` functions to a SQLite folder or a PostgreSQL schema, and
``python manage.py mqs_worker`` (with ``"message_queue_sqlite.contrib.django"`` in
``INSTALLED_APPS``) runs them; ``get_result`` reads them back from any process. See the
README's "Django" section for the options and which of the framework's features hold.

``TaskBackend`` is imported on first use, so that listing this package in ``INSTALLED_APPS``
does not import ``django.tasks`` while the app registry is still loading.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TaskBackend"]


def __getattr__(name: str) -> Any:
    if name == "TaskBackend":
        from message_queue_sqlite.contrib.django.backend import TaskBackend

        return TaskBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
