"""Immediate mode's executor: each claim runs in the thread that sends it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from message_queue_sqlite.backends.base import ClaimedTask
from message_queue_sqlite.engine.executors.base import Executor
from message_queue_sqlite.engine.ledger import Finished

if TYPE_CHECKING:
    from message_queue_sqlite.engine.worker import Worker


class InlineExecutor(Executor):
    """Runs each claim at once in the thread that submits it: immediate mode (``immediate=True``),
    where a send runs its task before it returns, with the same outcomes, callbacks and errors
    as a worker's, for tests and scripts."""

    slots = 1

    def __init__(self) -> None:
        self._worker: Worker | None = None

    def start(self, worker: Worker) -> None:
        self._worker = worker

    def submit(self, claims: list[ClaimedTask]) -> bool:
        worker = self._worker
        assert worker is not None
        for index, claim in enumerate(claims):
            try:
                completion, outcome = worker.runner.run(claim)
            except BaseException:  # (run is total; this is an interrupt such as Ctrl-C)
                worker.give_back(claims[index:])
                raise
            worker.record([Finished(claim, completion, outcome)], flush_hint=True)
        return True

    def free_slots(self) -> int:
        return 1

    def stop_claiming(self) -> list[ClaimedTask]:
        return []

    def wait(self, deadline: float, hurry: threading.Event) -> bool:
        return True

    def unfinished(self) -> list[ClaimedTask]:
        return []

    def discard(self, claims: list[ClaimedTask]) -> None:
        """Nothing waits here: a claim runs as it is submitted."""
