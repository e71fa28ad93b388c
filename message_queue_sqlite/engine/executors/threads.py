"""The thread executor: N threads run plain functions from one buffer, best priority first.

The idle thread that finds the buffer empty runs the worker's claim round, so a task goes
from the claim to its run without a hand-off between threads.

Timeouts (``ThreadExecutor``): a run with a timeout is watched by one watchdog thread per
executor. At the deadline the watchdog records the run as failed with ``TaskTimeout`` (retried
per policy), so its lease ends with it; the thread that runs it is *abandoned*: a new thread
takes its slot at once, ``TaskTimeout`` is raised inside the old one as a best effort (Python
delivers it at the thread's next bytecode: never inside a blocking C call), and whatever the
old thread does later is dropped (its late result, any exception) before it exits. Which of
the two wins, the run's end or its deadline, is decided under the executor's lock: exactly one
completion is recorded.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from message_queue_sqlite.backends.base import ClaimedTask, Completion
from message_queue_sqlite.core.errors import TaskTimeout
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.engine.executors.base import Executor, run_order
from message_queue_sqlite.engine.ledger import Finished

if TYPE_CHECKING:
    from message_queue_sqlite.engine.worker import Worker

log = logging.getLogger(__name__)

SHORT_TASK_S = 0.0005  # tasks shorter than this are taken from the buffer a few at a time


@dataclass(slots=True)
class _Watched:
    """A run with a timeout, as the watchdog sees it."""

    deadline: float  # monotonic
    started: float  # the runner's clock, for the record
    seconds: float
    thread: threading.Thread


WITHDRAWN = Finished(None, None, None)  # type: ignore[arg-type]  # a run withdrawn before it started


def _interrupt(thread: threading.Thread) -> None:
    """Raise ``TaskTimeout`` in ``thread`` at its next bytecode (best effort: a thread blocked
    in C code gets it only when it returns to Python)."""
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                   ctypes.py_object(TaskTimeout))


def _stack_of(thread: threading.Thread) -> str | None:
    frame = sys._current_frames().get(thread.ident or -1)
    return "".join(traceback.format_stack(frame)) if frame is not None else None


class ThreadExecutor(Executor):
    """N threads that run claims from one buffer, best priority first. A thread that finds
    the buffer empty claims more for all (one at a time); a thread that dies by a bug of
    ours is replaced, and the claims it held are recorded or given back."""

    thread_name = "mqs-worker"
    watches_timeouts = True  # a run with a timeout is watched (the subclass ProcessExecutor stops its own)

    def __init__(self, threads: int):
        self.slots = threads
        # entered through the lock itself: a with statement on a C lock releases it whatever
        # is raised (Condition.__enter__ is Python, and a Ctrl+C inside it could leak the lock)
        self._cv_mutex = threading.Lock()
        self._cv = threading.Condition(self._cv_mutex)
        self._buffer: list[ClaimedTask] = []  # submitted, not started: the next to run is last
        self._running: set[ClaimedTask] = set()  # taken by a thread (a batch of them, maybe)
        self._taken: set[ClaimedTask] = set()  # of those, not started yet
        self._claiming = False
        self._claimer: threading.Thread | None = None  # the thread in the claim round, while one is
        self._stopping = False
        self._avg_task_s: float | None = None  # a run's length, once measured
        self._threads: list[threading.Thread] = []
        self._exited = 0
        self._numbers = 0
        self._worker: Worker | None = None
        self.replaced = 0  # threads replaced after dying (tests and logs read it)
        # timeouts: runs with a deadline, threads left behind by one, and the watchdog
        self._watched: dict[ClaimedTask, _Watched] = {}
        self._abandoned: set[threading.Thread] = set()
        self._watchdog: threading.Thread | None = None
        self._watch_cv = threading.Condition(self._cv_mutex)
        self.timed_out = 0  # runs ended by their timeout (tests and logs read it)

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
            self._buffer.sort(key=run_order, reverse=True)
            self._cv.notify(len(claims))
            # claimed by another executor's claim round (the worker routes by kind) while this
            # one's claimer waits for storage: with every thread claiming or busy, wake it
            foreign = self._claiming and self._claimer is not threading.current_thread()
        if foreign and self._worker is not None:
            self._worker.wake_claimers()
        return True

    def free_slots(self) -> int:
        return max(0, self.slots - len(self._running) - len(self._buffer))

    def stop_claiming(self) -> list[ClaimedTask]:
        with self._cv_mutex:
            self._stopping = True
            unstarted, self._buffer = self._buffer, []
            self._cv.notify_all()
            self._watch_cv.notify()
        return unstarted

    def wait(self, deadline: float, hurry: threading.Event) -> bool:
        with self._cv_mutex:  # (a thread abandoned by a timeout is waited for no more)
            while self._exited + len(self._abandoned) < len(self._threads):
                left = deadline - time.monotonic()
                if left <= 0 or hurry.is_set():
                    return False
                self._cv.wait(min(left, 0.1))  # re-checks the hurry flag a signal handler may set
        return True

    def unfinished(self) -> list[ClaimedTask]:
        with self._cv_mutex:
            left = list(self._running) + self._buffer
            self._buffer = []
            self._taken.clear()  # given back: a batch's claims not started yet never start here
            self._watched.clear()  # given back: no timeout is recorded for them any more
            self._watch_cv.notify()
            return left

    def discard(self, claims: list[ClaimedTask]) -> None:
        gone = {id(claim) for claim in claims}
        with self._cv_mutex:
            self._buffer = [claim for claim in self._buffer if id(claim) not in gone]
            self._taken.difference_update(claims)

    def cancel(self, claims: list[ClaimedTask]) -> list[ClaimedTask]:
        wanted = {id(claim) for claim in claims}
        with self._cv_mutex:  # a thread starts a claim under this lock: decided here
            unstarted = [claim for claim in self._buffer if id(claim) in wanted]
            if unstarted:
                self._buffer = [claim for claim in self._buffer if id(claim) not in wanted]
            withdrawn = [claim for claim in claims if claim in self._taken]  # in a thread's batch
            self._taken.difference_update(withdrawn)
            for claim in claims:
                claim.cancel_requested = True
        return unstarted + withdrawn

    @property
    def alive(self) -> int:
        return sum(1 for thread in self._threads if thread.is_alive())

    # -- threads ---------------------------------------------------------------------
    def _spawn(self) -> None:
        number, self._numbers = self._numbers, self._numbers + 1
        thread = threading.Thread(target=self._guarded_work, name=f"{self.thread_name}-{number}", daemon=True)
        with self._cv_mutex:
            self._threads.append(thread)
        thread.start()

    def _guarded_work(self) -> None:
        try:
            self._work()
        except TaskTimeout:  # a late one, in a thread left behind by a timeout, as it exits
            pass

    def _work(self) -> None:
        taken: list[ClaimedTask] = []
        done: list[Finished] = []
        me = threading.current_thread()
        try:
            self._loop(taken, done)
        except BaseException:  # noqa: BLE001 - a bug of ours: salvage, replace the thread
            if me in self._abandoned:
                return  # left behind by a timeout (a late TaskTimeout lands anywhere): nothing to save
            log.exception("worker thread %s died; replacing it", me.name)
            self._salvage(taken, done)
            with self._cv_mutex:
                replace = not self._stopping
                self.replaced += 1
            if replace:
                self._spawn()
        finally:
            with self._cv_mutex:
                self._exited += 1
                self._abandoned.discard(me)
                self._cv.notify_all()
                self._watch_cv.notify()

    def _loop(self, taken: list[ClaimedTask], done: list[Finished]) -> None:
        worker = self._worker
        assert worker is not None
        run = self._run_function(worker)
        while True:
            taken[:] = self._next_claims(worker)
            if not taken:
                return
            started = time.perf_counter()
            done.clear()
            if self.watches_timeouts and len(taken) == 1 and worker.runner.timeout_of(taken[0]) is not None:
                finished = self._run_watched(worker, taken[0])
                if finished is None:
                    return  # its deadline passed first: recorded by the watchdog; this thread is replaced
                if finished is not WITHDRAWN:
                    done.append(finished)
                stop_at = 1
            else:
                stop_at = self._run_batch(worker, run, taken, done)
            took = (time.perf_counter() - started) / max(1, len(done))
            avg = self._avg_task_s
            self._avg_task_s = took if avg is None else avg + (took - avg) * 0.05
            unstarted = taken[stop_at:]
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

    def _run_batch(self, worker: Worker, run: Callable[[ClaimedTask], tuple[Completion, TaskOutcome | None]],
                   taken: list[ClaimedTask], done: list[Finished]) -> int:
        """Run the claims of a batch this thread took, in order; returns where it stopped (the
        rest never start: a stop began). A claim is checked just before it starts, as in the
        buffer: one whose lease was taken over never starts here, one whose cancel was asked
        for ends CANCELLED without starting."""
        taken_not_started = self._taken
        for position in range(len(done), len(taken)):
            claim = taken[position]
            with self._cv_mutex:  # (cancel and discard decide under it too: one of them wins)
                if self._stopping and done:
                    for rest in taken[position:]:
                        taken_not_started.discard(rest)
                    return position
                if claim not in taken_not_started:
                    continue  # withdrawn: cancelled (recorded by the worker) or its lease was lost
                taken_not_started.discard(claim)
            completion, outcome = run(claim)
            done.append(Finished(claim, completion, outcome))
        return len(taken)

    def _run_function(self, worker: Worker) -> Callable[[ClaimedTask], tuple[Completion, TaskOutcome | None]]:
        """What this thread runs each claim with (``ProcessExecutor``: in this thread's child)."""
        return worker.runner.run

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
                        if self._avg_task_s is not None and self._avg_task_s < SHORT_TASK_S:
                            take = max(1, min(16, len(self._buffer) // self.slots))
                        buffer = self._buffer
                        claims = buffer[-take:]
                        del buffer[-take:]
                        claims.reverse()
                        claims = self._watch_first(worker, claims)
                        self._running.update(claims)
                        self._taken.update(claims)
                        return claims
                    if not self._claiming:
                        self._claiming = True
                        self._claimer = threading.current_thread()
                        idle = self.slots - len(self._running)
                        break
                    self._cv.wait()
            got = 0
            try:
                got = worker.claim_for(idle, self._avg_task_s, self._has_buffered)
            finally:
                with self._cv_mutex:
                    self._claiming = False
                    # as many threads as there are new claims: one may become the next claimer
                    self._cv.notify(max(1, got))

    def _has_buffered(self) -> bool:
        return bool(self._buffer)

    # -- timeouts --------------------------------------------------------------------
    def _watch_first(self, worker: Worker, claims: list[ClaimedTask]) -> list[ClaimedTask]:
        """Of claims just taken from the buffer (under the lock): a run with a timeout goes
        alone, under watch from now; the others, up to the first such, go as a batch (the
        rest return to the buffer)."""
        if not self.watches_timeouts:
            return claims
        timeout_of = worker.runner.timeout_of
        for position, claim in enumerate(claims):
            seconds = timeout_of(claim)
            if seconds is None:
                continue
            if position:  # the batch ends before it
                self._buffer.extend(reversed(claims[position:]))
                return claims[:position]
            self._buffer.extend(reversed(claims[1:]))
            self._watched[claim] = _Watched(time.monotonic() + seconds, worker.runner.clock(), seconds,
                                            threading.current_thread())
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="mqs-timeouts", daemon=True)
                self._watchdog.start()
            self._watch_cv.notify()  # its next deadline may be this one
            return [claim]
        return claims

    def _run_watched(self, worker: Worker, claim: ClaimedTask) -> Finished | None:
        """Run a claim that has a deadline; None if the deadline won (the watchdog recorded it)."""
        with self._cv_mutex:
            watched = self._watched.get(claim)
            if watched is None:  # its deadline passed before it started (the watchdog recorded it)
                return None
            if claim not in self._taken:  # withdrawn before it started (see _run_batch)
                del self._watched[claim]
                return WITHDRAWN
            self._taken.discard(claim)
        run = worker.runner.call(claim, watched.started)
        with self._cv_mutex:
            if self._watched.pop(claim, None) is None:
                return None
        return Finished(claim, *worker.runner.finish(claim, run))

    def _watch(self) -> None:
        """The watchdog: sleeps until the nearest deadline; ends each run that passes its own."""
        worker = self._worker
        assert worker is not None
        while True:
            expired: list[tuple[ClaimedTask, _Watched, str | None]] = []
            with self._cv_mutex:
                now = time.monotonic()
                for claim, watched in list(self._watched.items()):
                    if watched.deadline <= now:
                        del self._watched[claim]
                        self._running.discard(claim)
                        self._abandoned.add(watched.thread)
                        expired.append((claim, watched, _stack_of(watched.thread)))
                        _interrupt(watched.thread)
                if not expired:
                    if self._stopping and self._exited + len(self._abandoned) >= len(self._threads):
                        self._watchdog = None
                        return
                    nearest = min((w.deadline for w in self._watched.values()), default=None)
                    self._watch_cv.wait(None if nearest is None else max(0.001, nearest - now))
                    continue
                replace = not self._stopping
                self.timed_out += len(expired)
            for claim, watched, stack in expired:
                log.warning("task %s (%s) timed out after %.1f s; its thread is left behind and "
                            "replaced", claim.task_name, claim.task_id, watched.seconds)
                completion, outcome = worker.runner.timed_out(claim, watched.started, watched.seconds, stack)
                worker.record([Finished(claim, completion, outcome)], flush_hint=True)
                if replace:
                    self._spawn()

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
                self._taken.discard(claim)
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
