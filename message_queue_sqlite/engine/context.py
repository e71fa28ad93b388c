"""The running task's view of itself: ``current_task``.

A task function reads its own id, attempt, queue, scheduled slot and deadline from
``current_task`` (as Celery's ``current_task`` or a bound task's ``self.request``), with no
extra parameter in its signature::

    from message_queue_sqlite import current_task

    @mq.task(retries=3)
    def charge(invoice):
        log.info("charging %s, attempt %d of task %s", invoice, current_task.attempt, current_task.task_id)

The context is set by the worker around the call, in the thread (or, for ``async def`` tasks
later, the asyncio task) that runs it, through a ``ContextVar``: two tasks running at once in
two threads each see their own, and code outside a task gets a clear error. A thread the task
starts itself does not inherit it unless started in a copy of the context
(``contextvars.copy_context().run``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from message_queue_sqlite.core.errors import TaskCancelled
from message_queue_sqlite.core.progress import TaskProgress, make_progress

if TYPE_CHECKING:
    from message_queue_sqlite.backends.base import ClaimedTask


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a running task knows about its own run."""

    task_id: str
    task_name: str
    attempt: int  # claims of this task so far, this one included (a crash or give-back counts)
    retries: int  # retries used before this run (failures that scheduled one)
    max_retries: int
    queue: str
    scheduled_at: datetime | None  # a periodic task's slot (in its schedule's time zone), else None
    deadline: float | None  # epoch seconds (the worker's clock) when its timeout ends, else None
    started_at: float  # epoch seconds, when this run began
    _claim: ClaimedTask | None = field(default=None, repr=False, compare=False)
    _report: Callable[[ClaimedTask, TaskProgress], None] | None = field(default=None, repr=False,
                                                                         compare=False)

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report how far the run is: a fraction (``progress(0.25)``), or a count
        (``progress(30, total=120)``; without a total, a count), with an optional message. Shown
        by ``handle.progress`` and the dashboard while it runs; stored a few times a second at
        most (batched), so calling it in a tight loop is cheap."""
        report = make_progress(done, total, message, time.time())
        if self._claim is not None and self._report is not None:
            self._report(self._claim, report)

    @property
    def cancelled(self) -> bool:
        """True once a cancel of this task was asked for (``mq.cancel``, ``mqs cancel``) and its
        worker saw it: the task should stop (``check_cancelled`` raises for it)."""
        return self._claim is not None and self._claim.cancel_requested

    def check_cancelled(self) -> None:
        """Raise ``TaskCancelled`` if this task's cancel was asked for: call it between steps
        of long work; the run then ends CANCELLED (never retried)."""
        if self.cancelled:
            raise TaskCancelled(self.task_id, self.task_name, "stopped when asked, while running")


class _Slot:
    """What the worker sets around a run: the context is built the first time the task reads
    it (most never do), so a run that does not look costs one small object."""

    __slots__ = ("_make", "_context")

    def __init__(self, make: Callable[[], TaskContext]):
        self._make = make
        self._context: TaskContext | None = None

    def get(self) -> TaskContext:
        if self._context is None:
            self._context = self._make()
        return self._context


_current: ContextVar[_Slot | None] = ContextVar("message_queue_sqlite_current_task", default=None)


def enter(make: Callable[[], TaskContext]) -> Token[_Slot | None]:
    """Make the context ``make()`` builds (when first read) the current task's: the worker
    calls this around the task."""
    return _current.set(_Slot(make))


def leave(token: Token[_Slot | None]) -> None:
    _current.reset(token)


def _context() -> TaskContext | None:
    slot = _current.get()
    return None if slot is None else slot.get()


class CurrentTask:
    """A proxy to the running task's ``TaskContext``: ``current_task.task_id`` and so on.
    ``bool(current_task)`` is False outside a task; reading a field there raises
    ``RuntimeError`` (so a task id is never silently None)."""

    __slots__ = ()

    def get(self) -> TaskContext | None:
        """The context, or None outside a task."""
        return _context()

    def __getattr__(self, name: str) -> Any:
        context = _context()
        if context is None:
            raise RuntimeError(f"current_task.{name} was read outside a running task: it is set only "
                               "while a worker runs a task function (in that function's thread)")
        return getattr(context, name)

    def __bool__(self) -> bool:
        return _current.get() is not None

    def __repr__(self) -> str:
        context = _context()
        return f"current_task({context!r})" if context is not None else "current_task(<no task running>)"


current_task = CurrentTask()
