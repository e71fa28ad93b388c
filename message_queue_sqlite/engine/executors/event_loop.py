"""The event loop executor: ``async def`` tasks, many at once, on an event loop the worker owns.

Three threads: the loop (``mqs-event-loop``), which runs up to ``concurrency`` tasks at once,
each in its own asyncio task; a claimer, which runs the worker's claim round whenever the
loop has room and nothing buffered (a claim may block on storage, never on the loop); and a
recorder, which hands the runs that ended to the worker (committing may block on storage
too). The loop thread itself never touches storage.

A run's timeout, a cancel asked for while it runs, and a stop that gives it back all reach
the task as ``asyncio.CancelledError`` at its current ``await``; the run then ends as
``TaskTimeout`` (retried per policy) or CANCELLED, or is dropped (given back). A task that
catches the cancellation and goes on still ends as its timeout said. A task that blocks the
loop (``time.sleep`` in an ``async def``) blocks every async task of this worker: such work
belongs in a plain function.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from message_queue_sqlite.backends.base import ClaimedTask
from message_queue_sqlite.core.errors import TaskCancelled, TaskTimeout
from message_queue_sqlite.engine.executors.base import Executor, run_order
from message_queue_sqlite.engine.hooks import Run
from message_queue_sqlite.engine.ledger import Finished

if TYPE_CHECKING:
    from message_queue_sqlite.engine.worker import Worker

log = logging.getLogger(__name__)

UNWIND_S = 1.0  # given back at a stop: how long cancelled tasks get to unwind before the loop stops
TIMED_OUT = "timed out"
GIVEN_BACK = "given back"


class EventLoopExecutor(Executor):
    def __init__(self, concurrency: int):
        self.slots = concurrency
        self._mutex = threading.Lock()
        self._cv = threading.Condition(self._mutex)  # claimer, recorder and waiters
        self._buffer: list[ClaimedTask] = []  # submitted, not started: the next to run is last
        self._running: dict[ClaimedTask, asyncio.Task[None]] = {}
        self._why: dict[ClaimedTask, str] = {}  # why the executor cancelled a running one
        self._ended: list[Finished] = []  # runs that ended, for the recorder
        self._recording = 0  # runs the recorder took and is handing to the worker
        self._stopping = False
        self._abandoned = False  # given back after the drain: late ends are dropped
        self._loop = asyncio.new_event_loop()
        self._threads: list[threading.Thread] = []
        self._worker: Worker | None = None
        self.timed_out = 0  # runs ended by their timeout (tests and logs read it)

    # -- the executor interface ------------------------------------------------------
    def start(self, worker: Worker) -> None:
        self._worker = worker
        for target, name in ((self._run_loop, "mqs-event-loop"), (self._claim, "mqs-async-claimer"),
                             (self._record, "mqs-async-recorder")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def submit(self, claims: list[ClaimedTask]) -> bool:
        with self._mutex:
            if self._stopping:
                return False
            self._buffer.extend(claims)
            self._buffer.sort(key=run_order, reverse=True)
        self._call_soon(self._start_more)
        return True

    def free_slots(self) -> int:
        return max(0, self.slots - len(self._running) - len(self._buffer))

    def stop_claiming(self) -> list[ClaimedTask]:
        with self._mutex:
            self._stopping = True
            unstarted, self._buffer = self._buffer, []
            self._cv.notify_all()
        return unstarted

    def wait(self, deadline: float, hurry: threading.Event) -> bool:
        with self._mutex:
            while self._running or self._ended or self._recording:
                left = deadline - time.monotonic()
                if left <= 0 or hurry.is_set():
                    return False
                self._cv.wait(min(left, 0.1))  # re-checks the hurry flag a signal handler may set
        self._shut_down()
        return True

    def unfinished(self) -> list[ClaimedTask]:
        with self._mutex:
            self._abandoned = True
            left = list(self._running) + self._buffer
            self._buffer = []
            for claim in self._running:
                self._why[claim] = GIVEN_BACK
        self._shut_down(cancel=True)
        return left

    def discard(self, claims: list[ClaimedTask]) -> None:
        gone = {id(claim) for claim in claims}
        with self._mutex:
            self._buffer = [claim for claim in self._buffer if id(claim) not in gone]

    def cancel(self, claims: list[ClaimedTask]) -> list[ClaimedTask]:
        wanted = {id(claim) for claim in claims}
        with self._mutex:  # the loop takes a claim from the buffer under this lock: decided here
            unstarted = [claim for claim in self._buffer if id(claim) in wanted]
            if unstarted:
                self._buffer = [claim for claim in self._buffer if id(claim) not in wanted]
            tasks = []
            for claim in claims:
                claim.cancel_requested = True
                task = self._running.get(claim)
                if task is not None:
                    tasks.append(task)
        for task in tasks:
            self._call_soon(task.cancel)
        return unstarted

    # -- the loop --------------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _call_soon(self, callback: Callable[[], object]) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop was closed by a stop: nothing runs there any more
            pass

    def _shut_down(self, cancel: bool = False) -> None:
        """Stop the loop: at once when nothing runs on it; after cancelling what runs (given
        back), with a second for those tasks to unwind."""
        self._call_soon(lambda: self._loop.create_task(self._close(cancel)))

    async def _close(self, cancel: bool) -> None:
        tasks = [task for task in asyncio.all_tasks(self._loop) if task is not asyncio.current_task()]
        if cancel:
            for task in tasks:
                task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=UNWIND_S)
        self._loop.stop()

    def _start_more(self) -> None:
        """On the loop: start buffered claims while there is room."""
        worker = self._worker
        assert worker is not None
        with self._mutex:
            while self._buffer and len(self._running) < self.slots and not self._abandoned:
                claim = self._buffer.pop()
                self._running[claim] = self._loop.create_task(self._run(worker, claim))

    async def _run(self, worker: Worker, claim: ClaimedTask) -> None:
        runner = worker.runner
        seconds = runner.timeout_of(claim)
        timer = None
        if seconds is not None:
            timer = self._loop.call_later(seconds, self._time_out, claim)
        run = await runner.acall(claim)
        if timer is not None:
            timer.cancel()
        with self._mutex:
            why = self._why.pop(claim, None)
            del self._running[claim]
            if self._buffer:
                self._loop.call_soon(self._start_more)
        if why == GIVEN_BACK:
            return
        finished = Finished(claim, *runner.finish(claim, self._named(claim, run, why, seconds)))
        with self._mutex:
            if self._abandoned and why is None:
                return  # ended after the stop gave it back: it runs again elsewhere
            self._ended.append(finished)
            self._cv.notify_all()

    def _named(self, claim: ClaimedTask, run: Run, why: str | None, seconds: float | None) -> Run:
        """A run the executor cancelled gets its real error: its timeout (whatever the task did
        after the cancellation), or the cancel that was asked for."""
        if why == TIMED_OUT and seconds is not None:
            self.timed_out += 1
            log.warning("task %s (%s) timed out after %.1f s; it was cancelled", claim.task_name,
                        claim.task_id, seconds)
            run.ok, run.value = False, TaskTimeout(seconds)
        elif not run.ok and isinstance(run.value, asyncio.CancelledError) and claim.cancel_requested:
            run.value = TaskCancelled(claim.task_id, claim.task_name, "cancelled while running")
        return run

    def _time_out(self, claim: ClaimedTask) -> None:
        """On the loop, at a run's deadline: cancel it (the run records ``TaskTimeout``)."""
        with self._mutex:
            task = self._running.get(claim)
            if task is None or claim in self._why:
                return
            self._why[claim] = TIMED_OUT
        task.cancel()

    # -- storage, off the loop -------------------------------------------------------
    def _claim(self) -> None:
        """Claim while the loop has room and nothing is buffered (the claims of every kind go to
        the worker's executor); stop with the stop."""
        worker = self._worker
        assert worker is not None
        while True:
            with self._mutex:
                while not self._stopping and (self._buffer or len(self._running) >= self.slots):
                    self._cv.wait()
                if self._stopping:
                    return
                idle = self.slots - len(self._running)
            try:
                worker.claim_for(idle, None)  # (no prefetch beyond the free slots: there are many)
            except Exception:  # noqa: BLE001 - a bug of ours: logged; the next round goes on
                log.exception("the event loop executor's claim round failed")

    def _record(self) -> None:
        """Hand the runs that ended to the worker, a batch at a time."""
        worker = self._worker
        assert worker is not None
        while True:
            with self._mutex:
                while not self._ended and not (self._stopping and not self._running):
                    self._cv.wait()
                ended, self._ended = self._ended, []
                self._recording = len(ended)
                self._cv.notify_all()  # room on the loop, for the claimer
            if not ended:
                return  # stopping, and nothing runs any more
            try:
                worker.record(ended, flush_hint=True)
            except Exception:  # noqa: BLE001 - kept in the ledger: the next exchange retries it
                log.exception("recording %d async run(s) failed", len(ended))
            finally:
                with self._mutex:
                    self._recording = 0
                    self._cv.notify_all()
