"""The original package's result model."""

from message_queue_sqlite.model.task_result import TaskResult

__all__ = ["TaskResult"]
