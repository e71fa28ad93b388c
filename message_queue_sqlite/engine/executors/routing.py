"""One worker's claims, each to the executor its task needs.

A worker claims from storage without knowing what its tasks are; the claim round returns
plain functions, ``async def`` tasks and ``executor="process"`` tasks mixed. The router sends
each claim to the executor of its kind (``thread``, ``async``, ``process``: see
``TaskRunner.kind_of``) and answers the executor interface for all of them together, so the
worker, its ledger and its claim rounds stay the same whatever runs the tasks.

The thread executor always exists; the others are made the first time a claim needs one, so
a worker that never sees an ``async def`` task starts no event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from message_queue_sqlite.backends.base import ClaimedTask
from message_queue_sqlite.engine.executors.base import Executor
from message_queue_sqlite.engine.executors.threads import ThreadExecutor

if TYPE_CHECKING:
    from message_queue_sqlite.engine.worker import Worker

THREAD = "thread"


class RoutingExecutor(Executor):
    def __init__(self, threads: ThreadExecutor, kind_of: Callable[[ClaimedTask], str],
                 factories: dict[str, Callable[[], Executor]]):
        self.threads = threads
        self._kind_of = kind_of
        self._factories = factories
        self._executors: dict[str, Executor] = {THREAD: threads}
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        self._stopping = False

    @property
    def slots(self) -> int:  # type: ignore[override]
        return sum(executor.slots for executor in list(self._executors.values()))

    def of(self, kind: str) -> Executor | None:
        """The executor of one kind, if this worker made it (tests and logs read them)."""
        return self._executors.get(kind)

    # -- the executor interface ------------------------------------------------------
    def start(self, worker: Worker) -> None:
        self._worker = worker
        self.threads.start(worker)

    def submit(self, claims: list[ClaimedTask]) -> bool:
        if self._stopping:
            return False
        kind_of = self._kind_of
        groups: dict[str, list[ClaimedTask]] = {}
        for claim in claims:
            kind = kind_of(claim)
            group = groups.get(kind)
            if group is None:
                groups[kind] = group = []
            group.append(claim)
        refused: list[ClaimedTask] = []
        for kind, group in groups.items():
            executor = self._executor(kind)
            if executor is None or not executor.submit(group):
                refused += group
        if len(refused) == len(claims):
            return False
        if refused:  # (some were taken: the caller must not give those back too)
            assert self._worker is not None
            self._worker.give_back(refused)
        return True

    def free_slots(self) -> int:
        return sum(executor.free_slots() for executor in list(self._executors.values()))

    def stop_claiming(self) -> list[ClaimedTask]:
        with self._lock:
            self._stopping = True
        return [claim for executor in self._all() for claim in executor.stop_claiming()]

    def wait(self, deadline: float, hurry: threading.Event) -> bool:
        return all([executor.wait(deadline, hurry) for executor in self._all()])

    def unfinished(self) -> list[ClaimedTask]:
        return [claim for executor in self._all() for claim in executor.unfinished()]

    def discard(self, claims: list[ClaimedTask]) -> None:
        for executor in self._all():
            executor.discard(claims)

    def cancel(self, claims: list[ClaimedTask]) -> list[ClaimedTask]:
        return [claim for executor in self._all() for claim in executor.cancel(claims)]

    # -- executors of each kind ------------------------------------------------------
    def _all(self) -> list[Executor]:
        with self._lock:
            return list(self._executors.values())

    def _executor(self, kind: str) -> Executor | None:
        """The executor for ``kind``, made and started at its first claim; None when stopping."""
        executor = self._executors.get(kind)
        if executor is not None:
            return executor
        with self._lock:
            if self._stopping:
                return None
            executor = self._executors.get(kind)
            if executor is None:
                executor = self._factories[kind]()
                assert self._worker is not None
                executor.start(self._worker)
                self._executors[kind] = executor
            return executor
