"""Running one claimed task to its completion record: the same for every executor.

``TaskRunner.run`` is total: whatever the task does (raise anything, return a value that
cannot be stored, raise an exception whose message cannot be rendered), and whatever a
hook does, it returns a completion. An executor therefore never loses a claim to an
exception from the task, and the worker thread that ran it lives on.

It is two halves, for executors that watch a deadline: ``call`` runs the function (with the
task's context set, see ``context.py``) and returns the ``Run``; ``finish`` turns a run into
its completion (``after_run`` hooks, retry policy). An executor whose run went past its
timeout finishes it with ``timed_out`` instead, and drops the late ``Run`` if one comes.
``acall`` is ``call`` for an ``async def`` task, awaited on the event loop executor's loop.
``kind_of`` says which executor a claim needs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any

from message_queue_sqlite.backends.base import ClaimedTask, Completion
from message_queue_sqlite.core.errors import TaskCancelled, TaskTimeout
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.core.progress import TaskProgress
from message_queue_sqlite.core.registry import TaskDefinition, TaskRegistry
from message_queue_sqlite.core.status import TaskStatus
from message_queue_sqlite.engine import context
from message_queue_sqlite.engine.context import TaskContext
from message_queue_sqlite.engine.hooks import HookChain, Run, describe_exception
from message_queue_sqlite.serialization import dumps_result, loads_call, loads_result

log = logging.getLogger(__name__)

_PLAIN = (str, int, float, bool, type(None))


class TaskRunner:
    """Runs claims of one queue object: looks the task up, decodes its arguments (or takes
    them from the sender's memory in cache mode), calls it between the hooks' ``before_run``
    and ``after_run``, and builds the completion and, when the sender waits in this process
    (``node``), the outcome handed over in memory."""

    def __init__(self, registry: TaskRegistry, cache: dict[str, Any], hooks: HookChain,
                 node: Callable[[], str], clock: Callable[[], float],
                 default_timeout: float | None = None,
                 report_progress: Callable[[ClaimedTask, TaskProgress], None] | None = None):
        self._registry = registry
        self._cache = cache
        self._hooks = hooks
        self._node = node
        self._clock = clock
        self.clock = clock  # what runs are timed with (the engine's wall clock)
        self._default_timeout = default_timeout
        self._report_progress = report_progress
        self._timeouts: dict[str, float | None] = {}  # by task name, once looked up
        self._kinds: dict[str, str] = {}  # by task name, once looked up

    def run(self, claim: ClaimedTask) -> tuple[Completion, TaskOutcome | None]:
        return self.finish(claim, self.call(claim))

    def report_progress(self, claim: ClaimedTask, progress: TaskProgress) -> None:
        """A run's progress, reported from where it runs (the process executor's children)."""
        if self._report_progress is not None:
            self._report_progress(claim, progress)

    def timeout_of(self, claim: ClaimedTask) -> float | None:
        """Seconds this claim's run may take: its send's, else its task's, else the worker's
        ``Config.task_timeout``; None: no limit."""
        if claim.timeout is not None:
            return claim.timeout
        try:
            return self._timeouts[claim.task_name]  # a task's options never change once registered
        except KeyError:
            definition = self._registry.get(claim.task_name)
            seconds = definition.options.timeout if definition is not None else None
            seconds = self._default_timeout if seconds is None else seconds
            if definition is not None:
                self._timeouts[claim.task_name] = seconds
            return seconds

    def kind_of(self, claim: ClaimedTask) -> str:
        """Which executor runs this claim: ``"async"`` for an ``async def`` task, ``"process"``
        for one declared ``executor="process"``, else ``"thread"`` (an unknown task too: its
        run records that no such task is registered)."""
        try:
            return self._kinds[claim.task_name]
        except KeyError:
            definition = self._registry.get(claim.task_name)
            if definition is None:
                return "thread"
            kind = self._kinds[claim.task_name] = definition.kind
            return kind

    def begin(self, claim: ClaimedTask, started: float) -> TaskDefinition | Run:
        """The start shared by ``call``, ``acall`` and the process executor: the task looked up
        (or, when it is not registered here, a run that ended at once), ``before_run`` fired."""
        definition = self._registry.get(claim.task_name)
        if definition is None:
            error = LookupError(f"no task named {claim.task_name!r} is registered in this worker; "
                                f"known tasks: {self._registry.get_all_task_names()}")
            return Run(None, False, error, None, started, self._clock())
        hooks = self._hooks
        if hooks.before_run:
            hooks.fire(hooks.before_run, claim)
        return definition

    def call(self, claim: ClaimedTask, started: float | None = None) -> Run:
        """Run the task function, its context set and the ``before_run`` hooks fired first."""
        started = self._clock() if started is None else started
        definition = self.begin(claim, started)
        if isinstance(definition, Run):
            return definition
        token = None
        try:
            token = context.enter(lambda: self.context_of(claim, definition, started))
            args, kwargs = decode_args(claim, self._cache)
            value = definition.func(*args, **kwargs)
            return Run(definition, True, value, None, started, self._clock())
        except BaseException as exc:  # noqa: BLE001 - a task must never take its worker down
            return Run(definition, False, exc, _format_traceback(), started, self._clock())
        finally:
            if token is not None:
                context.leave(token)

    async def acall(self, claim: ClaimedTask, started: float | None = None) -> Run:
        """``call`` for an ``async def`` task, awaited in its own asyncio task (whose copy of
        the context holds ``current_task``). Its cancellation (a timeout, a cancel request, the
        worker giving it back) ends it with ``asyncio.CancelledError`` as the run's error, for
        the executor to name."""
        started = self._clock() if started is None else started
        definition = self.begin(claim, started)
        if isinstance(definition, Run):
            return definition
        token = None
        try:
            token = context.enter(lambda: self.context_of(claim, definition, started))
            args, kwargs = decode_args(claim, self._cache)
            value = definition.func(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            return Run(definition, True, value, None, started, self._clock())
        except asyncio.CancelledError as exc:
            return Run(definition, False, exc, None, started, self._clock())
        except BaseException as exc:  # noqa: BLE001 - a task must never take its worker down
            return Run(definition, False, exc, _format_traceback(), started, self._clock())
        finally:
            if token is not None:
                context.leave(token)

    def context_of(self, claim: ClaimedTask, definition: TaskDefinition, started: float) -> TaskContext:
        """What ``current_task`` shows the run (built when the task first reads it)."""
        schedule = definition.options.schedule
        timeout = self.timeout_of(claim)
        return TaskContext(
            claim.task_id, claim.task_name, claim.attempt, claim.retries, claim.max_retries, claim.queue,
            schedule.slot_datetime(claim.slot) if schedule is not None and claim.slot is not None else None,
            started + timeout if timeout is not None else None, started, claim, self._report_progress)

    def finish(self, claim: ClaimedTask, run: Run) -> tuple[Completion, TaskOutcome | None]:
        """The completion of a run: ``after_run`` hooks, then the result stored or the retry
        policy applied. Total: a failure here still gives a completion."""
        hooks = self._hooks
        if hooks.after_run and run.definition is not None:
            hooks.fire(hooks.after_run, claim, run)
        try:
            return self._complete(claim, run)
        except BaseException as exc:  # noqa: BLE001 - the completion itself must never be lost
            log.exception("recording the end of task %s (%s) failed", claim.task_name, claim.task_id)
            message = f"recording the task's end failed: {describe_exception(exc)}"
            return self._failed(claim, run, message, None), None

    def timed_out(self, claim: ClaimedTask, started: float, seconds: float,
                  stack: str | None) -> tuple[Completion, TaskOutcome | None]:
        """The completion of a run that went past its timeout (still running, maybe forever):
        failed with ``TaskTimeout``, retried per policy; ``stack`` shows where it was."""
        definition = self._registry.get(claim.task_name)
        where = f"the task was still running, at:\n{stack}" if stack else None
        return self.finish(claim, Run(definition, False, TaskTimeout(seconds), where, started, self._clock()))

    def _complete(self, claim: ClaimedTask, run: Run) -> tuple[Completion, TaskOutcome | None]:
        deliver = claim.sender == self._node()
        if run.ok:
            try:
                text = dumps_result(run.value)
            except BaseException as exc:  # noqa: BLE001 - e.g. RecursionError for a deep value
                run.ok, run.value, run.traceback = False, _unstorable(exc), None
            else:
                outcome = None
                if deliver:
                    value = run.value if type(run.value) in _PLAIN else loads_result(text)
                    outcome = TaskOutcome(claim.task_id, claim.task_name, TaskStatus.FINISHED, value,
                                          None, None, run.started, run.ended, claim.attempt)
                return Completion(claim.row_id, claim.attempt, TaskStatus.FINISHED, text, None,
                                  run.started, run.ended, 0.0, claim.callback_here), outcome
        message = describe_exception(run.value)
        if isinstance(run.value, TaskCancelled):
            return self.cancelled(claim, run.value.message, run.started, run.ended, run.traceback)
        if claim.cancel_requested:  # failed after its cancel was asked for: not retried
            return self.cancelled(claim, f"cancelled while running; it then failed: {message}",
                                  run.started, run.ended, run.traceback)
        hooks = self._hooks
        delay = hooks.first(hooks.retry_delay, claim, run) if hooks.retry_delay else None
        if delay is not None:
            if hooks.retry_scheduled:
                hooks.fire(hooks.retry_scheduled, claim, run, delay)
            return Completion(claim.row_id, claim.attempt, TaskStatus.SCHEDULED, message, run.traceback,
                              run.started, run.ended, float(delay)), None
        if hooks.failed:
            hooks.fire(hooks.failed, claim, run)
        outcome = TaskOutcome(claim.task_id, claim.task_name, TaskStatus.FAILED, None, message,
                              run.traceback, run.started, run.ended, claim.attempt) if deliver else None
        return self._failed(claim, run, message, run.traceback), outcome

    def cancelled(self, claim: ClaimedTask, message: str, started: float | None = None,
                  ended: float | None = None,
                  tb: str | None = None) -> tuple[Completion, TaskOutcome | None]:
        """The completion of a claim cancelled before it started, or of a run that stopped (or
        failed) after its cancel was asked for: CANCELLED, never retried."""
        now = self._clock()
        started = now if started is None else started
        ended = now if ended is None else ended
        outcome = (TaskOutcome(claim.task_id, claim.task_name, TaskStatus.CANCELLED, None, message, tb,
                               started, ended, claim.attempt) if claim.sender == self._node() else None)
        return Completion(claim.row_id, claim.attempt, TaskStatus.CANCELLED, message, tb, started, ended,
                          0.0, claim.callback_here), outcome

    @staticmethod
    def _failed(claim: ClaimedTask, run: Run, message: str, tb: str | None) -> Completion:
        return Completion(claim.row_id, claim.attempt, TaskStatus.FAILED, message, tb,
                          run.started, run.ended, 0.0, claim.callback_here)


def decode_args(claim: ClaimedTask, cache: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(positional, keywords)`` of a claim: from the sender's memory in cache mode, else
    from the stored JSON."""
    if claim.cache_owner is not None:
        call = cache.get(claim.args or "")
        if call is None:
            raise LookupError(f"the cached arguments of task {claim.task_id} are not in this "
                              "process's memory (cache-mode tasks run only in their sender)")
        return call
    return loads_call(claim.args or "{}")


def _unstorable(exc: BaseException) -> BaseException:
    if isinstance(exc, TypeError):
        return exc
    return TypeError(f"the task's return value cannot be stored as JSON: {describe_exception(exc)}")


def _format_traceback() -> str | None:
    try:
        return traceback.format_exc()
    except BaseException:  # noqa: BLE001 - e.g. a frame whose repr raises
        return None
