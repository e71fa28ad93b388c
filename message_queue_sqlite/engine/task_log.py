"""``TaskLog``: one log line per task event, the way a worker's console shows what it does.

A worker that runs thousands of tasks quietly is hard to trust and hard to debug: a failure
must be visible without turning anything on, and a user chasing a slow or stuck task wants
to see each start and end. So, on the ``message_queue_sqlite.tasks`` logger:

- WARNING: each final failure, with the task's id, name, attempt, duration and error;
- INFO: each scheduled retry (with its delay), and each start and successful end (with its
  duration), one line each, like huey's consumer.

The command line's ``worker`` installs it (``-v`` shows INFO); a program adds it with
``MessageQueue(..., hooks=[TaskLog()])``. Each call first asks ``isEnabledFor`` (a cached
level check), so at the default WARNING level a task's start and end cost two cheap calls
and no formatting.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from message_queue_sqlite.engine.hooks import Hook, Run, describe_exception

if TYPE_CHECKING:
    from message_queue_sqlite.backends.base import ClaimedTask

LOGGER_NAME = "message_queue_sqlite.tasks"


class TaskLog(Hook):
    """Logs task starts and ends (INFO), retries (INFO) and failures (WARNING)."""

    def __init__(self, logger: logging.Logger | None = None):
        self.log = logger or logging.getLogger(LOGGER_NAME)

    def before_run(self, claim: ClaimedTask) -> None:
        log = self.log
        if log.isEnabledFor(logging.INFO):
            log.info("start %s %s (attempt %d)", claim.task_name, claim.task_id, claim.attempt)

    def after_run(self, claim: ClaimedTask, run: Run) -> None:
        # A failed run is logged once, by ``failed`` or ``retry_scheduled``, with what was decided.
        log = self.log
        if run.ok and log.isEnabledFor(logging.INFO):
            log.info("done %s %s in %s", claim.task_name, claim.task_id, _duration(run))

    def retry_scheduled(self, claim: ClaimedTask, run: Run, delay: float) -> None:
        log = self.log
        if log.isEnabledFor(logging.INFO):
            log.info("retry %s %s in %.2f s (attempt %d of %d failed after %s: %s)",
                     claim.task_name, claim.task_id, delay, claim.attempt, claim.max_retries + 1,
                     _duration(run), describe_exception(run.value))

    def failed(self, claim: ClaimedTask, run: Run) -> None:
        log = self.log
        if log.isEnabledFor(logging.WARNING):
            log.warning("failed %s %s after %s (attempt %d): %s", claim.task_name, claim.task_id,
                        _duration(run), claim.attempt, describe_exception(run.value))


def _duration(run: Run) -> str:
    seconds = max(0.0, run.ended - run.started)
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
