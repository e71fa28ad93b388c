"""The original package's constants module."""

from message_queue_sqlite.constants.task_status import TaskStatus

__all__ = ["TaskStatus"]
