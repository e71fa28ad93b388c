"""The Django app that brings the ``mqs_worker`` management command."""

from __future__ import annotations

from django.apps import AppConfig


class MessageQueueConfig(AppConfig):
    """Labelled ``message_queue_sqlite``: the package's last name, ``django``, would be a
    confusing app label."""

    name = "message_queue_sqlite.contrib.django"
    label = "message_queue_sqlite"
    verbose_name = "message_queue_sqlite tasks"
