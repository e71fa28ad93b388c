"""Executors: what runs the claims a worker leased.

The worker claims, leases and records; an executor only runs. The contract:

- ``start(worker)``, then ``submit(claims)`` for claims already in the worker's ledger;
- each submitted claim ends exactly once: ``worker.record([...])`` with its completion, or
  it comes back from ``stop_claiming()`` (never started) or ``unfinished()`` (still running
  at the end of a stop), for the worker to give back;
- ``free_slots()``: how many more claims it could start now, which bounds what the worker
  claims for it, so a task never sits prefetched here while another process is idle.

An executor whose own threads go idle may claim for itself (``ThreadExecutor`` does: the
idle thread that finds the buffer empty runs the claim round, so a task goes from the
claim to its run without a hand-off between threads). The completion is reported through
the worker rather than a Future object per task: one allocation and one lock less per task
on the hot path.

``ThreadExecutor`` is the first executor; an event-loop executor for ``async def`` tasks and a
process executor plug in here without touching claiming, leasing or completion.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from message_queue_sqlite.backends.base import ClaimedTask
from message_queue_sqlite.engine.ledger import Finished

if TYPE_CHECKING:
    from message_queue_sqlite.engine.worker import Worker

log = logging.getLogger(__name__)

SHORT_TASK_S = 0.0005  # tasks shorter than this are taken from the buffer a few at a time


def _run_order(claim: ClaimedTask) -> tuple[int, int, int]:
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


class ThreadExecutor(Executor):
    """N threads that run claims from one buffer, best priority first. A thread that finds
    the buffer empty claims more for all (one at a time); a thread that dies by a bug of
    ours is replaced, and the claims it held are recorded or given back."""

    def __init__(self, threads: int):
        self.slots = threads
        # entered through the lock itself: a with statement on a C lock releases it whatever
        # is raised (Condition.__enter__ is Python, and a Ctrl+C inside it could leak the lock)
        self._cv_mutex = threading.Lock()
        self._cv = threading.Condition(self._cv_mutex)
        self._buffer: list[ClaimedTask] = []  # submitted, not started: the next to run is last
        self._running: set[ClaimedTask] = set()
        self._claiming = False
        self._stopping = False
        self._avg_task_s = 0.01
        self._threads: list[threading.Thread] = []
        self._exited = 0
        self._numbers = 0
        self._worker: Worker | None = None
        self.replaced = 0  # threads replaced after dying (tests and logs read it)

    # -- the executor interface ------------------------------------------------------
    def start(self, worker: Worker) -> None:
        self._worker = worker
        for _ in range(self.slots):
            self._spawn()

    def submit(self, claims: list[ClaimedTask]) -> bool:
        with self._cv_mutex:
            if self._stopping:
                return False
            self._buffer.extend(claims)  # claims come in run order: sorting is one pass
            self._buffer.sort(key=_run_order, reverse=True)
            self._cv.notify(len(claims))
        return True

    def free_slots(self) -> int:
        return max(0, self.slots - len(self._running) - len(self._buffer))

    def stop_claiming(self) -> list[ClaimedTask]:
        with self._cv_mutex:
            self._stopping = True
            unstarted, self._buffer = self._buffer, []
            self._cv.notify_all()
        return unstarted

    def wait(self, deadline: float, hurry: threading.Event) -> bool:
        with self._cv_mutex:
            while self._exited < len(self._threads):
                left = deadline - time.monotonic()
                if left <= 0 or hurry.is_set():
                    return False
                self._cv.wait(min(left, 0.1))  # re-checks the hurry flag a signal handler may set
        return True

    def unfinished(self) -> list[ClaimedTask]:
        with self._cv_mutex:
            left = list(self._running) + self._buffer
            self._buffer = []
            return left

    def discard(self, claims: list[ClaimedTask]) -> None:
        gone = {id(claim) for claim in claims}
        with self._cv_mutex:
            self._buffer = [claim for claim in self._buffer if id(claim) not in gone]

    @property
    def alive(self) -> int:
        return sum(1 for thread in self._threads if thread.is_alive())

    # -- threads ---------------------------------------------------------------------
    def _spawn(self) -> None:
        number, self._numbers = self._numbers, self._numbers + 1
        thread = threading.Thread(target=self._work, name=f"mqs-worker-{number}", daemon=True)
        with self._cv_mutex:
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        taken: list[ClaimedTask] = []
        done: list[Finished] = []
        try:
            self._loop(taken, done)
        except BaseException:  # noqa: BLE001 - a bug of ours: salvage, replace the thread
            log.exception("worker thread %s died; replacing it", threading.current_thread().name)
            self._salvage(taken, done)
            with self._cv_mutex:
                replace = not self._stopping
                self.replaced += 1
            if replace:
                self._spawn()
        finally:
            with self._cv_mutex:
                self._exited += 1
                self._cv.notify_all()

    def _loop(self, taken: list[ClaimedTask], done: list[Finished]) -> None:
        worker = self._worker
        assert worker is not None
        run = worker.runner.run
        while True:
            taken[:] = self._next_claims(worker)
            if not taken:
                return
            started = time.perf_counter()
            done.clear()
            for claim in taken:
                if self._stopping and done:
                    break  # the rest never start: given back below
                completion, outcome = run(claim)
                done.append(Finished(claim, completion, outcome))
            took = (time.perf_counter() - started) / len(done)
            self._avg_task_s += (took - self._avg_task_s) * 0.05
            unstarted = taken[len(done):]
            with self._cv_mutex:
                running = self._running
                for claim in taken:
                    running.discard(claim)
                buffer_empty = not self._buffer
                claiming = self._claiming
            worker.record(done, flush_hint=self._stopping or (buffer_empty and claiming))
            done.clear()
            taken[:] = unstarted  # what is left to settle if giving back fails
            if unstarted:
                worker.give_back(unstarted)
            taken.clear()

    def _next_claims(self, worker: Worker) -> list[ClaimedTask]:
        """Some claims from the buffer: one when tasks are slow (spread them over threads),
        a few when they take microseconds (fewer lock round trips per task); with the
        buffer empty, this thread claims more for every thread, unless another one is."""
        while True:
            with self._cv_mutex:
                while True:
                    if self._stopping:
                        return []
                    if self._buffer:
                        take = 1
                        if self._avg_task_s < SHORT_TASK_S:
                            take = max(1, min(16, len(self._buffer) // self.slots))
                        buffer = self._buffer
                        claims = buffer[-take:]
                        del buffer[-take:]
                        claims.reverse()
                        self._running.update(claims)
                        return claims
                    if not self._claiming:
                        self._claiming = True
                        idle = self.slots - len(self._running)
                        break
                    self._cv.wait()
            got = 0
            try:
                got = worker.claim_for(self, idle, self._avg_task_s)
            finally:
                with self._cv_mutex:
                    self._claiming = False
                    # as many threads as there are new claims: one may become the next claimer
                    self._cv.notify(max(1, got))

    def _salvage(self, taken: list[ClaimedTask], done: list[Finished]) -> None:
        """What a dying thread held: completions it had are recorded, claims it had not run
        are given back; nothing stays leased to a thread that no longer exists."""
        worker = self._worker
        if worker is None:
            return
        ran = {id(item.claim) for item in done}
        with self._cv_mutex:
            for claim in taken:
                self._running.discard(claim)
        try:
            if done:
                worker.record(list(done), flush_hint=True)
            unstarted = [claim for claim in taken if id(claim) not in ran]
            if unstarted:
                worker.give_back(unstarted)
        except BaseException:  # noqa: BLE001
            log.exception("recording what a dead worker thread held failed; those leases expire "
                          "and the tasks are recovered")
            worker.ledger.released(taken)


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
