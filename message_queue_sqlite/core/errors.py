"""Exceptions the package raises on purpose, each naming what was wrong."""

from __future__ import annotations

from typing import Any


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


class PartiallySentError(QueueStorageError):
    """A ``send_many`` over several shards failed on one shard after others had committed
    their part, and some of that part could not be taken back (a worker had claimed it
    already, or the storage failed the withdrawal too): those tasks stay sent and run.

    The shards are separate SQLite files, so no one transaction spans them; the send takes
    back what it stored, if still waiting, and raises the original error when everything
    was taken back (then nothing was sent). This error is raised only when something stays:
    ``sent`` maps the request's index to the stored task's id (``handles``, from
    ``MessageQueue.send_many``, to its handle; their callbacks run as for any send),
    ``failed`` lists the indexes not stored (resend exactly those), ``cause`` is the original
    error."""

    def __init__(self, sent: dict[int, str], failed: list[int], cause: BaseException):
        self.sent = sent
        self.failed = failed
        self.cause = cause
        self.handles: dict[int, Any] = {}  # index -> TaskHandle, set by MessageQueue.send_many
        total = len(sent) + len(failed)
        super().__init__(
            f"send_many stored {len(sent)} of {total} tasks and could not take them back (claimed "
            f"already, or the storage failed the withdrawal too): ids by request index "
            f"{dict(list(sent.items())[:10])}"
            f"{' ...' if len(sent) > 10 else ''}; the other {len(failed)} (indexes "
            f"{failed[:20]}{' ...' if len(failed) > 20 else ''}) were not stored: {cause}. Resend only "
            "the indexes in .failed; the ids in .sent will run")
