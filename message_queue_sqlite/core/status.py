"""Task lifecycle states.

The integer values are stored in queue files and were fixed by the original package
(1..5); new states only ever get new numbers.
"""

from __future__ import annotations

from enum import IntEnum


class TaskStatus(IntEnum):
    NOT_STARTED = 1  # waiting in the queue, may be claimed now
    RUNNING = 2  # claimed by a worker holding a lease
    FINISHED = 3  # ran and returned a value
    FAILED = 4  # raised (after its retries), or could not run at all
    CALLBACKED = 5  # ended and the sender's callback has run
    SCHEDULED = 6  # waiting for its run-after time (a retry back-off or a delay)
    CANCELLED = 7  # cancelled: before it started, or it stopped when asked (never retried)

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.CALLBACKED,
                        TaskStatus.CANCELLED)

