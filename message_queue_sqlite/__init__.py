"""message_queue_sqlite: a durable task queue on SQLite that moves to PostgreSQL unchanged.

The original package's API (``task_function``, ``discover_and_mount_ts``, ``init_server``,
``start_server``, ``stop_server``) and the modern ``MessageQueue`` run on one engine.
"""

from message_queue_sqlite.api.compat import (
    Client,
    Server,
    discover_and_mount_ts,
    init_server,
    start_server,
    stop_server,
)
from message_queue_sqlite.api.queue import Hook, MessageQueue, TaskHandle
from message_queue_sqlite.core.config import Config
from message_queue_sqlite.core.errors import (
    MessageQueueError,
    PartiallySentError,
    QueueStorageError,
    TaskCancelled,
    TaskFailedError,
    TaskTimeout,
)
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.core.registry import TaskRegistry, task_function
from message_queue_sqlite.core.retry import RetryPolicy
from message_queue_sqlite.core.status import TaskStatus
from message_queue_sqlite.engine.context import TaskContext, current_task

__version__ = "3.0.0"

__all__ = [
    "Client", "Config", "Hook", "MessageQueue", "MessageQueueError", "PartiallySentError",
    "QueueStorageError", "RetryPolicy", "Server", "TaskCancelled", "TaskContext", "TaskFailedError",
    "TaskHandle", "TaskOutcome", "TaskRegistry", "TaskStatus", "TaskTimeout", "current_task",
    "discover_and_mount_ts", "init_server", "start_server", "stop_server", "task_function",
]
