"""The Django app that brings the ``mqs_worker`` management command."""

from __future__ import annotations

from django.apps import AppConfig


class MessageQueueConfig(AppConfig):
    """Labelled ``message_queue_sqlite``: the package's last name, ``django``, would be a
    confusing app label."""

    name = "message_queue_sqlite.contrib.django"
    label = "message_queue_sqlite"
    verbose_name = "message_queue_sqlite tasks"

    def ready(self) -> None:
        """A backend whose queue lives in a Django database (OPTIONS ``DATABASE``) opens it now,
        at start-up: opened later inside ``transaction.atomic()``, creating its tables would
        wait for the write lock that very transaction holds (SQLite)."""
        from django.tasks import task_backends

        from message_queue_sqlite.contrib.django.backend import TaskBackend

        for backend in task_backends.all():
            if isinstance(backend, TaskBackend) and backend.options.get("DATABASE") is not None:
                backend.queue  # noqa: B018 - opened (and migrated) here
