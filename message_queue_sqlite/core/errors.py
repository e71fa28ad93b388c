"""Exceptions the package raises on purpose, each naming what was wrong."""

from __future__ import annotations


class MessageQueueError(Exception):
    """Base class of this package's own errors."""


class QueueStorageError(MessageQueueError):
    """The queue's storage cannot be used: not creatable, not writable, or not ours."""


class TaskFailedError(MessageQueueError):
    """Raised by ``TaskHandle.result()`` when the task ended FAILED.

    Carries the task's error message and the traceback recorded by the worker, so the
    sender sees what went wrong in the worker process.
    """

    def __init__(self, task_id: str, task_name: str, message: str, traceback: str | None):
        super().__init__(f"task {task_name!r} ({task_id}) failed: {message}")
        self.task_id = task_id
        self.task_name = task_name
        self.message = message
        self.traceback = traceback


class TaskCancelled(MessageQueueError):
    """Raised by ``TaskHandle.result()`` when the task was cancelled, and by
    ``current_task.check_cancelled()`` inside a task whose cancel was asked for (the worker
    then records it CANCELLED, never retried)."""

    def __init__(self, task_id: str = "", task_name: str = "", message: str = "cancelled"):
        super().__init__(f"task {task_name!r} ({task_id}) was cancelled: {message}" if task_id else message)
        self.task_id = task_id
        self.task_name = task_name
        self.message = message


class MissingDependencyError(MessageQueueError, ImportError):
    """An optional extra is needed for the chosen feature."""


class TaskTimeout(MessageQueueError, TimeoutError):
    """A run went past its timeout (``@mq.task(timeout=)``, ``send(timeout=)`` or
    ``Config.task_timeout``): recorded as its failure, retried like any other unless the task's
    ``retry_on`` excludes it, and raised inside the task's thread as a best effort."""

    def __init__(self, seconds: float | None = None):  # (raised in a thread as a bare class)
        super().__init__("timed out" if seconds is None else f"timed out after {seconds:.1f} s")
        self.seconds = seconds
