from message_queue_sqlite.task_service.task.discover import discover_and_mount_ts
from message_queue_sqlite.task_service.task.task_base import task_function
from message_queue_sqlite.task_service.task.tasks import TaskRegistry

__all__ = ["TaskRegistry", "discover_and_mount_ts", "task_function"]
