"""Immediate mode's executor: each claim runs in the thread that sends it.

An ``async def`` task runs there too, on an event loop of its own for the run (in a helper
thread when the sending thread is itself inside a running loop, as ``await mq.asend`` is).
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from message_queue_sqlite.backends.base import ClaimedTask, Completion
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.engine.executors.base import Executor
from message_queue_sqlite.engine.hooks import Run
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
                completion, outcome = self._run(worker, claim)
            except BaseException:  # (run is total; this is an interrupt such as Ctrl-C)
                worker.give_back(claims[index:])
                raise
            worker.record([Finished(claim, completion, outcome)], flush_hint=True)
        return True

    def free_slots(self) -> int:
        return 1

    @staticmethod
    def _run(worker: Worker, claim: ClaimedTask) -> tuple[Completion, TaskOutcome | None]:
        runner = worker.runner
        if runner.kind_of(claim) != "async":
            return runner.run(claim)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: the usual case
            return runner.finish(claim, asyncio.run(runner.acall(claim)))
        box: list[Run] = []
        helper = threading.Thread(target=lambda: box.append(asyncio.run(runner.acall(claim))),
                                  name="mqs-immediate-async")
        helper.start()
        helper.join()
        return runner.finish(claim, box[0])

    def stop_claiming(self) -> list[ClaimedTask]:
        return []

    def wait(self, deadline: float, hurry: threading.Event) -> bool:
        return True

    def unfinished(self) -> list[ClaimedTask]:
        return []

    def discard(self, claims: list[ClaimedTask]) -> None:
        """Nothing waits here: a claim runs as it is submitted."""
