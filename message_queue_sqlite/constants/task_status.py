"""``TaskStatus`` where the original package kept it."""

from message_queue_sqlite.core.status import TaskStatus

__all__ = ["TaskStatus"]
