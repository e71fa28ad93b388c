"""Lifecycle hooks: one ordered list of hooks called at fixed points of a task's life.

A feature that watches or steers tasks (retries, metrics, rate limits, timeouts, tracing)
is a hook, not a branch in the worker loop. A hook subclasses ``Hook`` and overrides the
points it cares about; the chain calls only the hooks that override a point, so a point
nobody uses costs one attribute check per task. Every call is isolated: a hook that
raises is logged and skipped, and the task goes on as if that hook were absent.

The points, in a task's order:

- ``before_send(request)``: a send is about to be stored (may adjust the request).
- ``after_send(task_id, request)``: it is stored (committed).
- ``claimed(claims)``: a worker leased these tasks.
- ``before_run(claim)`` / ``after_run(claim, run)``: around the task function.
- ``retry_delay(claim, run)``: the run failed: seconds until it runs again, or None. The
  first hook that returns a number decides; the default chain's ``Retries`` hook applies
  the task's retry policy.
- ``retry_scheduled(claim, run, delay)`` / ``failed(claim, run)``: what was decided.
- ``after_commit(claims)``: these tasks' completions are committed.
- ``callback_ran(outcome)``: the sender's callback ran for this outcome.
- ``recovered(report)``: a housekeeping round found expired leases (a worker died): how many
  tasks it requeued, failed (crash limit) or cancelled (a cancel was pending).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from message_queue_sqlite.core.retry import RetryPolicy

if TYPE_CHECKING:
    from message_queue_sqlite.backends.base import ClaimedTask, RecoveryReport
    from message_queue_sqlite.core.outcome import TaskOutcome
    from message_queue_sqlite.core.registry import TaskDefinition

log = logging.getLogger(__name__)

POINTS = ("before_send", "after_send", "claimed", "before_run", "after_run", "retry_delay",
          "retry_scheduled", "failed", "after_commit", "callback_ran", "recovered")


@dataclass(slots=True)
class Run:
    """What one run of a task produced: the return value, or the exception and traceback."""

    definition: TaskDefinition | None  # None: no task of that name in this worker
    ok: bool
    value: Any  # the return value, or the exception
    traceback: str | None
    started: float
    ended: float

    @property
    def error(self) -> BaseException | None:
        return None if self.ok else self.value


class Hook:
    """Override the points you need; each default does nothing."""

    def before_send(self, request: Any) -> None: ...
    def after_send(self, task_id: str, request: Any) -> None: ...
    def claimed(self, claims: Sequence[ClaimedTask]) -> None: ...
    def before_run(self, claim: ClaimedTask) -> None: ...
    def after_run(self, claim: ClaimedTask, run: Run) -> None: ...
    def retry_delay(self, claim: ClaimedTask, run: Run) -> float | None: ...
    def retry_scheduled(self, claim: ClaimedTask, run: Run, delay: float) -> None: ...
    def failed(self, claim: ClaimedTask, run: Run) -> None: ...
    def after_commit(self, claims: Sequence[ClaimedTask]) -> None: ...
    def callback_ran(self, outcome: TaskOutcome) -> None: ...
    def recovered(self, report: RecoveryReport) -> None: ...


class Retries(Hook):
    """The task's retry policy (per send, else the task's own): exponential back-off with
    jitter, only for the exceptions it names, until ``max_retries`` are used. Retries used are
    counted on the row apart from the claim's attempt (the lease's fencing token, which a
    give-back or a crash also moves on)."""

    def retry_delay(self, claim: ClaimedTask, run: Run) -> float | None:
        if run.definition is None or run.ok:
            return None
        policy = policy_of(claim, run.definition.options.retry)
        attempt = claim.retries + 1  # the attempt number in the policy's terms: retries used + 1
        if not policy.should_retry(run.value, attempt):
            return None
        return policy.delay(attempt)


class RetriesNow(Retries):
    """Immediate mode's retries: the same decisions, with no back-off (a retry runs again at
    once, in the same send)."""

    def retry_delay(self, claim: ClaimedTask, run: Run) -> float | None:
        return None if super().retry_delay(claim, run) is None else 0.0


def policy_of(claim: ClaimedTask, default: RetryPolicy) -> RetryPolicy:
    """The policy a claim runs under: its per-send one if it has one, else the task's,
    with the retry budget stored on the row."""
    policy = RetryPolicy.from_json(claim.retry) if claim.retry else default
    if policy.max_retries != claim.max_retries:
        policy = dataclasses.replace(policy, max_retries=claim.max_retries)
    return policy


def require_hook(hook: object) -> Hook:
    if not isinstance(hook, Hook):
        raise TypeError(f"hook {hook!r} must be an instance of message_queue_sqlite.Hook "
                        "(subclass it and override the points you need)")
    return hook


def default_hooks(immediate: bool = False) -> list[Hook]:
    return [RetriesNow() if immediate else Retries()]


class HookChain:
    """The ordered hooks of one queue object, with a list per point of the hooks that
    override it (rebuilt when a hook is added)."""

    def __init__(self, hooks: Iterable[Hook] = ()):
        self._hooks: list[Hook] = []
        for point in POINTS:
            setattr(self, point, ())
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hook) -> None:
        self._hooks.append(require_hook(hook))
        for point in POINTS:
            setattr(self, point, tuple(
                getattr(h, point) for h in self._hooks
                if getattr(type(h), point) is not getattr(Hook, point)))

    def __iter__(self):
        return iter(self._hooks)

    def fire(self, methods: Sequence[Any], *args: Any) -> None:
        """Call each bound method of one point; an exception is logged, never raised."""
        for method in methods:
            try:
                method(*args)
            except BaseException as exc:  # noqa: BLE001 - a hook must never break a task
                _log_failure(method, exc)

    def first(self, methods: Sequence[Any], *args: Any) -> Any:
        """The first non-None answer of one point's hooks (hooks that raise are skipped)."""
        for method in methods:
            try:
                answer = method(*args)
            except BaseException as exc:  # noqa: BLE001
                _log_failure(method, exc)
                continue
            if answer is not None:
                return answer
        return None


def _log_failure(method: Any, exc: BaseException) -> None:
    owner = type(getattr(method, "__self__", method)).__name__
    try:
        log.error("hook %s.%s raised %s; ignored", owner, getattr(method, "__name__", "?"),
                  describe_exception(exc), exc_info=exc)
    except Exception:  # noqa: BLE001 - logging itself failed: nothing more to do
        pass


def describe_exception(exc: BaseException) -> str:
    """``"Type: message"``, even for an exception whose ``__str__`` raises or returns junk:
    describing a failure must never fail in its turn."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except BaseException as inner:  # noqa: BLE001
        try:
            return f"{name} (its message could not be read: {type(inner).__name__})"
        except BaseException:  # noqa: BLE001
            return "an exception whose message could not be read"
    if not isinstance(text, str):
        return name
    return f"{name}: {text}"
