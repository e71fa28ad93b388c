"""A task's outcome; callbacks receive ``TaskResult.as_callback_dict()``."""

from message_queue_sqlite.core.outcome import TaskOutcome as TaskResult

__all__ = ["TaskResult"]
