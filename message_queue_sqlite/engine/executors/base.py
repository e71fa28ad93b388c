"""The executor interface: what runs the claims a worker leased.

The worker claims, leases and records; an executor only runs. The contract:

- ``start(worker)``, then ``submit(claims)`` for claims already in the worker's ledger;
- each submitted claim ends exactly once: ``worker.record([...])`` with its completion, or
  it comes back from ``stop_claiming()`` (never started) or ``unfinished()`` (still running
  at the end of a stop), for the worker to give back;
- ``free_slots()``: how many more claims it could start now, which bounds what the worker
  claims for it, so a task never sits prefetched here while another process is idle.

An executor whose own threads go idle may claim for the worker (``worker.claim_for``; the
claims go to the worker's executor, which may route them to another). The completion is
reported through the worker rather than a Future object per task: one allocation and one
lock less per task on the hot path.

The executors: ``ThreadExecutor`` (threads.py: plain functions), ``EventLoopExecutor``
(event_loop.py: ``async def`` tasks on an event loop the worker owns), ``ProcessExecutor``
(processes.py: ``executor="process"`` tasks in child processes), ``InlineExecutor``
(inline.py: immediate mode) and ``RoutingExecutor`` (routing.py: one worker's claims, each to
the executor its task needs).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from message_queue_sqlite.backends.base import ClaimedTask

if TYPE_CHECKING:
    from message_queue_sqlite.engine.worker import Worker


def run_order(claim: ClaimedTask) -> tuple[int, int, int]:
    """Best priority first, then send order (the buffer is sorted on the reverse of this)."""
    return (-claim.priority, claim.shard, claim.row_id)


class Executor(ABC):
    slots: int

    @abstractmethod
    def start(self, worker: Worker) -> None:
        ...

    @abstractmethod
    def submit(self, claims: list[ClaimedTask]) -> bool:
        """Queue claims to run; False (nothing taken) when stopping: the caller gives them back."""

    @abstractmethod
    def free_slots(self) -> int:
        ...

    @abstractmethod
    def stop_claiming(self) -> list[ClaimedTask]:
        """Start no more claims; return those submitted that never started."""

    @abstractmethod
    def wait(self, deadline: float, hurry: threading.Event) -> bool:
        """Wait until every run ended (True), the monotonic ``deadline`` passed or ``hurry`` is
        set (False)."""

    @abstractmethod
    def unfinished(self) -> list[ClaimedTask]:
        """Claims still running (after ``wait`` gave up): the worker gives their leases back."""

    @abstractmethod
    def discard(self, claims: list[ClaimedTask]) -> None:
        """Never start these (their leases were lost); one already running runs on."""

    def cancel(self, claims: list[ClaimedTask]) -> list[ClaimedTask]:
        """Their cancel was asked for: the ones not started never start and are returned (the
        worker records them CANCELLED); the running ones are flagged, for the task to see."""
        for claim in claims:
            claim.cancel_requested = True
        return []
