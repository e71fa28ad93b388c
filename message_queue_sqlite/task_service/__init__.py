"""The original package's task service modules."""

from message_queue_sqlite.task_service.task import TaskRegistry, discover_and_mount_ts, task_function

__all__ = ["TaskRegistry", "discover_and_mount_ts", "task_function"]
