"""Delivering outcomes to the process that sent the tasks: callbacks and waiting handles.

Outcomes arrive two ways: in memory from this queue object's own workers (no storage
round trip), or from storage when another process ran the task. Storage is only polled
while some awaited task is not being run here, and then only when the change feed
says something changed (with a slow fallback poll). Each task's own callback is kept
under its own task id, and popped when it runs, so it runs once.

That a callback ran is recorded (CALLBACKED) in the write transaction the workers of this
object commit next anyway, when they run: a write of its own would queue behind theirs on
the shard's single writer and rewrite the pages they just wrote. Marks no worker picked up
within ``MARK_LATEST_S`` (the workers went idle, or none run here) are written directly, in
one transaction per shard for all of them: a sender whose tasks run in another process
gets its callbacks in many small batches, and a write per batch competed with its own
sends (and the worker's commits) for the shard's single writer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from message_queue_sqlite.backends.base import Shard, TaskRecord
from message_queue_sqlite.core.errors import MessageQueueError
from message_queue_sqlite.core.ids import format_task_id, parse_task_id
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.core.status import TaskStatus
from message_queue_sqlite.engine.hooks import HookChain
from message_queue_sqlite.serialization import loads_result

log = logging.getLogger(__name__)

Callback = Callable[[dict[str, Any]], Any]
FALLBACK_POLL_S = 0.1
MIN_POLL_INTERVAL_S = 0.0001  # a burst of change events costs one storage poll
MAX_POLL_INTERVAL_S = 0.005  # while polls only find what local workers already deliver
# While each poll finds outcomes of other processes within STREAM_WINDOW_S of the last that
# did (a stream of them, e.g. a sender whose worker is another process), polls come at most
# every STREAM_POLL_S: a poll per commit of that worker (one or two outcomes each) cost the
# sender more interpreter time than its sends did, and took the lock from its sending thread.
# An outcome after a quiet spell (a round trip) is still polled for at once.
STREAM_POLL_S = 0.002
STREAM_WINDOW_S = 0.005
FETCH_LIMIT = 1000  # ended rows' ids a poll reads per shard (the rest come with the next poll)
MARK_LATEST_S = 0.02  # a CALLBACKED mark waits at most this long for a worker's transaction


def outcome_from_record(record: TaskRecord) -> TaskOutcome:
    status = record.outcome or record.status
    ok = status == TaskStatus.FINISHED
    return TaskOutcome(record.task_id, record.task_name, status,
                       loads_result(record.result) if ok else None,
                       None if ok else record.result, record.traceback,
                       record.started_at, record.ended_at, record.attempts)


class Waiter(Protocol):
    """What a wait registers: ``set()`` is called once, under the dispatcher's lock, when the
    outcome is there (a ``threading.Event``; an async wait's resolves its future in its loop)."""

    def set(self) -> None: ...


@dataclass(slots=True)
class _Pending:
    """One awaited task: a sender may have millions of these in flight, so it is small."""

    callback: Callback | None = None
    waiters: list[Waiter] | None = None  # allocated by the first wait
    outcome: TaskOutcome | None = None
    local: bool = False  # a worker of this queue object holds it now


class OutcomeDispatcher:
    def __init__(self, node: str, shards: Sequence[Shard], on_remote_interest: Callable[[], None],
                 hooks: HookChain | None = None):
        self._node = node
        self._hooks = hooks
        self._shards = shards
        self._on_remote_interest = on_remote_interest
        self._marks: dict[int, list[int]] = defaultdict(list)  # shard -> rows whose callback ran
        self._marks_since = 0.0
        # entered through the lock itself: a with statement on a C lock releases it whatever
        # is raised (Condition.__enter__ is Python, and a Ctrl+C inside it could leak the lock)
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)
        self._pending: dict[str, _Pending] = {}
        self._remote = 0  # awaited tasks not held by a local worker
        self._callbacks_pending = 0  # registered callbacks not run yet
        self._blocked = 0  # senders waiting for room (back-pressure)
        self._inbox: deque[tuple[TaskOutcome, int, int]] = deque()  # outcome, shard, row id
        self._changed = False
        self._busy = False
        self._closing = False
        self._last_poll = 0.0
        self._last_found = -STREAM_WINDOW_S  # when a poll last found outcomes
        # The last poll read a full page of ended rows: more may wait behind it (read at once,
        # not at the next change: the worker that ended them may have gone quiet), and the
        # rows delivered from it stay in the way until their CALLBACKED marks are written.
        self._page_full = False
        self._poll_interval = MIN_POLL_INTERVAL_S
        self._waited: set[str] = set()  # tasks someone waits on without a callback
        # Tasks of this object that its own workers hold (claimed, outcome not delivered yet)
        # and nobody waited for at claim time: a wait registered now needs no storage lookup.
        self._held_here: set[str] = set()
        # Bumped whenever an outcome may have become available that a wait registered later
        # would miss (a local delivery, another process's commit): a wait whose task was sent
        # at the same epoch skips the storage lookup, which would only compete with the worker
        # that is about to run it.
        self._epoch = 0
        self._thread: threading.Thread | None = None
        self._thread_running = False  # the delivery thread started and has not ended

    # -- registration (sender threads) ------------------------------------------------
    def make_room(self, count: int, limit: int, timeout: float) -> None:
        """Back-pressure: before ``count`` more callbacks are sent, wait while ``limit`` are
        already waiting here for their outcomes; raise once none ends within ``timeout``."""
        if self._callbacks_pending + count <= limit:
            return
        with self._mutex:
            self._blocked += 1
            try:
                deadline = time.monotonic() + timeout
                while self._callbacks_pending + count > limit:
                    before = self._callbacks_pending
                    if not self._lock.wait(max(0.0, deadline - time.monotonic())):
                        if self._callbacks_pending >= before:
                            raise MessageQueueError(
                                f"{self._callbacks_pending} callbacks of this queue object are waiting "
                                f"for their tasks to end (max_pending_callbacks={limit}) and none "
                                f"ended within {timeout:.0f} s; are workers running? Raise "
                                "max_pending_callbacks, or send without callbacks and wait on handles")
                        deadline = time.monotonic() + timeout  # progress: keep waiting
            finally:
                self._blocked -= 1

    def expect(self, callbacks: Iterable[tuple[str, Callback]]) -> None:
        """Register callbacks for stored tasks, by task id (an outcome may already be stored)."""
        with self._mutex:
            for task_id, callback in callbacks:
                self._pending[task_id] = _Pending(callback)
                self._callbacks_pending += 1
                self._remote += 1
            self._ensure_thread()
        self._on_remote_interest()

    def expect_one(self, task_id: str, callback: Callback) -> None:
        """``expect`` for one send (the seed API's every call): the same, without the loop."""
        with self._mutex:
            self._pending[task_id] = _Pending(callback)
            self._callbacks_pending += 1
            self._remote += 1
            self._ensure_thread()
        self._on_remote_interest()

    @property
    def epoch(self) -> int:
        return self._epoch

    def wait(self, task_id: str, timeout: float | None,
             lookup: Callable[[], TaskRecord | None], since: int | None = None) -> TaskOutcome | None:
        """Block until ``task_id`` ends; None on timeout. ``lookup`` reads storage once after
        registering, for a task that ended before anyone waited, unless nothing could have
        ended since epoch ``since`` (taken before the task was sent, while watching storage).
        Should that miss an outcome, the poll every ``FALLBACK_POLL_S`` finds it."""
        event = threading.Event()
        entry, outcome, look = self.add_waiter(task_id, event, since)
        if outcome is not None:
            return outcome
        if look:
            outcome = self.found_in_storage(task_id, entry, lookup())
            if outcome is not None:
                return outcome
        if not event.wait(timeout):
            self.remove_waiter(task_id, entry, event)
        return entry.outcome

    def add_waiter(self, task_id: str, waiter: Waiter,
                   since: int | None = None) -> tuple[_Pending, TaskOutcome | None, bool]:
        """Register ``waiter`` for ``task_id``'s outcome: ``(entry, outcome, look)``; the
        outcome if it is already here (nothing registered then), else whether storage must be
        read once (``found_in_storage``): not for a task this object's workers hold (it ends
        in memory, after this registration), nor when nothing ended since epoch ``since``."""
        with self._mutex:
            entry = self._pending.get(task_id)
            if entry is not None and entry.outcome is not None:
                return entry, entry.outcome, False
            if entry is None:
                entry = self._pending[task_id] = _Pending()
                self._remote += 1
            if entry.waiters is None:
                entry.waiters = []
            entry.waiters.append(waiter)
            self._waited.add(task_id)
            self._ensure_thread()
            held_here = task_id in self._held_here
            if held_here and not entry.local:
                entry.local = True
                self._remote -= 1
            unchanged = since is not None and since == self._epoch
        self._on_remote_interest()
        return entry, None, not (held_here or unchanged)

    def found_in_storage(self, task_id: str, entry: _Pending,
                         record: TaskRecord | None) -> TaskOutcome | None:
        """The lookup ``add_waiter`` asked for: an ended task's outcome wakes its waiters."""
        if record is None or not TaskStatus(record.status).is_terminal:
            return None
        outcome = outcome_from_record(record)
        with self._mutex:
            self._finish_waiter(task_id, entry, outcome)
        return outcome

    def remove_waiter(self, task_id: str, entry: _Pending, waiter: Waiter) -> None:
        """A wait gave up (timed out, or its coroutine was cancelled): forget its waiter, and
        the task with it when nobody else waits and no callback does."""
        with self._mutex:
            if entry.waiters and waiter in entry.waiters:
                entry.waiters.remove(waiter)
            if not entry.waiters and entry.callback is None and entry.outcome is None:
                self._waited.discard(task_id)  # nobody waits any more: stop looking for it
                if self._pending.get(task_id) is entry:
                    del self._pending[task_id]
                    if not entry.local:
                        self._remote -= 1

    def waiting_on(self, task_id: str) -> bool:
        """Whether anything here still waits for ``task_id`` (a handle or a callback)."""
        with self._mutex:
            return task_id in self._pending or task_id in self._waited

    def _finish_waiter(self, task_id: str, entry: _Pending, outcome: TaskOutcome) -> None:
        entry.outcome = outcome
        if entry.waiters:
            for event in entry.waiters:
                event.set()
            entry.waiters = None
        self._waited.discard(task_id)
        if entry.callback is None and self._pending.get(task_id) is entry:
            del self._pending[task_id]
            if not entry.local:
                self._remote -= 1

    # -- local workers ---------------------------------------------------------------
    def claimed_locally(self, task_ids: Iterable[str]) -> set[str]:
        """This object's workers hold these tasks now; returns those whose callback is
        registered here (their outcomes are handed over in memory, never looked up)."""
        with_callback = set()
        with self._mutex:
            for task_id in task_ids:
                entry = self._pending.get(task_id)
                if entry is None:
                    self._held_here.add(task_id)
                    continue
                if not entry.local:
                    entry.local = True
                    self._remote -= 1
                if entry.callback is not None:
                    with_callback.add(task_id)
        return with_callback

    def released_locally(self, task_ids: Iterable[str]) -> None:
        with self._mutex:
            for task_id in task_ids:
                self._held_here.discard(task_id)
                entry = self._pending.get(task_id)
                if entry is not None and entry.local:
                    entry.local = False
                    self._remote += 1

    def deliver(self, items: Iterable[tuple[TaskOutcome, int, int]]) -> None:
        """Outcomes recorded by this object's workers. Waiting handles are woken right here;
        callbacks run on the delivery thread, so a slow callback never holds a worker."""
        with self._mutex:
            self._epoch += 1
            queued = False
            held = self._held_here
            for item in items:
                outcome = item[0]
                if held:
                    held.discard(outcome.task_id)
                entry = self._pending.get(outcome.task_id)
                if entry is None:
                    continue  # nobody waits for it (yet): a later wait finds it in storage
                if entry.callback is None:
                    if entry.outcome is None:
                        self._finish_waiter(outcome.task_id, entry, outcome)
                else:
                    self._inbox.append(item)
                    queued = True
            if queued:
                self._lock.notify_all()

    def storage_changed(self) -> None:
        """Called by the change feed: another process committed (or this object made work
        ready or ended tasks outside the worker path)."""
        self._epoch += 1  # (a lost concurrent increment still moves it on)
        if self._remote and not self._changed:
            with self._mutex:
                self._changed = True
                if not self._busy:
                    self._lock.notify_all()

    # -- the delivery thread ---------------------------------------------------------
    def _ensure_thread(self) -> None:
        """Under the lock: the delivery thread runs (a flag, not ``is_alive()``: this is on
        every send with a callback)."""
        if not self._thread_running:
            self._thread = threading.Thread(target=self._run, name="mqs-callbacks", daemon=True)
            self._thread.start()
            self._thread_running = True

    def _run(self) -> None:
        try:
            self._deliver_until_closed()
        finally:
            with self._mutex:
                self._thread_running = False

    def _deliver_until_closed(self) -> None:
        while True:
            with self._mutex:
                timeout = FALLBACK_POLL_S
                if self._marks:
                    timeout = min(timeout, max(0.0, self._marks_since + MARK_LATEST_S - time.monotonic()))
                self._lock.wait_for(lambda: self._inbox or self._changed or self._page_full or self._closing,
                                    timeout)
                if self._closing and not self._inbox:
                    return
                overdue = bool(self._marks) and time.monotonic() - self._marks_since >= MARK_LATEST_S
                since = time.monotonic() - self._last_poll
                poll = self._remote > 0 and (self._changed or self._page_full or since >= FALLBACK_POLL_S)
                if poll and since < self._poll_interval and not self._inbox:
                    self._lock.wait(self._poll_interval - since)  # collapse a burst of events
                self._changed = False
                batch = list(self._inbox)
                self._inbox.clear()
                self._busy = True
            try:
                if poll:
                    batch.extend(self._poll_storage())
                if batch:
                    self._run_callbacks(batch)
                if overdue:
                    self.write_marks()
            except BaseException:  # noqa: BLE001 - the delivery thread must outlive any failure
                log.exception("delivering task outcomes failed; will retry")
            finally:
                with self._mutex:
                    self._busy = False
                    self._lock.notify_all()

    def _poll_storage(self) -> list[tuple[TaskOutcome, int, int]]:
        """Outcomes in storage of awaited tasks that no local worker holds. Only ids are read
        first, so tasks this object's workers ran (delivered in memory) cost next to nothing."""
        self._last_poll = time.monotonic()
        page_full, self._page_full = self._page_full, False  # (cleared first: a failed write below
        if page_full and self._marks:                       # is retried by a later poll, not at once)
            self.write_marks()  # the last page's delivered rows, out of the way of this one
        found: list[tuple[TaskOutcome, int, int]] = []
        wanted: dict[int, list[int]] = defaultdict(list)
        with self._mutex:
            for task_id in self._waited:
                entry = self._pending.get(task_id)
                if entry is not None and not entry.local and entry.outcome is None:
                    shard, row_id = parse_task_id(task_id)
                    wanted[shard].append(row_id)
        seen = useful = 0
        for shard in self._shards:
            # only callbacks need the scan for ended rows; a waited-for task is read by id
            ended = shard.outcome_row_ids(self._node, FETCH_LIMIT) if self._callbacks_pending else []
            seen += len(ended)
            with self._mutex:
                useful_here = 0
                for row_id in ended:
                    entry = self._pending.get(format_task_id(shard.index, row_id))
                    if entry is not None and not entry.local and entry.callback is not None:
                        wanted[shard.index].append(row_id)
                        useful_here += 1
                useful += useful_here
                # (a full page of nothing useful, with no marks to write, is no reason to hurry)
                if len(ended) >= FETCH_LIMIT and (useful_here or self._marks):
                    self._page_full = True
            ids = wanted.get(shard.index)
            if ids:
                for record in shard.get_tasks(ids):
                    if TaskStatus(record.status).is_terminal:
                        found.append((outcome_from_record(record), shard.index, record.row_id))
        # Rows our own workers ended (delivered in memory, marked soon) are all a poll found:
        # poll less often. Anything run elsewhere brings the interval straight back down.
        # A stream of outcomes from elsewhere: gather them for a few milliseconds a poll.
        if seen and not useful:
            self._poll_interval = min(MAX_POLL_INTERVAL_S, self._poll_interval * 2)
        elif found and self._last_poll - self._last_found < STREAM_WINDOW_S:
            self._poll_interval = STREAM_POLL_S
        else:
            self._poll_interval = MIN_POLL_INTERVAL_S
        if found:
            self._last_found = self._last_poll
        return found

    def _run_callbacks(self, batch: list[tuple[TaskOutcome, int, int]]) -> None:
        called: list[tuple[int, int]] = []
        todo = []
        with self._mutex:
            for outcome, shard, row_id in batch:
                entry = self._pending.get(outcome.task_id)
                if entry is None or entry.outcome is not None and entry.callback is None:
                    continue  # delivered already (in memory and again from storage)
                callback, entry.callback = entry.callback, None
                self._finish_waiter(outcome.task_id, entry, outcome)
                if callback is not None:
                    self._callbacks_pending -= 1
                    todo.append((callback, outcome, shard, row_id))
            if todo and self._blocked:
                self._lock.notify_all()
        hooks = self._hooks
        for callback, outcome, shard, row_id in todo:
            try:
                callback(outcome.as_callback_dict())
            except BaseException:  # noqa: BLE001 - even sys.exit() in one callback spares the rest
                log.exception("callback of task %s (%s) raised; its outcome stays recorded",
                              outcome.task_name, outcome.task_id)
            called.append((shard, row_id))
            if hooks is not None and hooks.callback_ran:
                hooks.fire(hooks.callback_ran, outcome)
        if called:
            with self._mutex:
                if not self._marks:
                    self._marks_since = time.monotonic()
                for shard, row_id in called:
                    self._marks[shard].append(row_id)

    # -- CALLBACKED marks ------------------------------------------------------------
    def take_marks(self, shard: int) -> list[int]:
        """The rows of ``shard`` whose callback ran, for a worker to mark in its transaction."""
        if not self._marks:
            return []
        with self._mutex:
            return self._marks.pop(shard, [])

    def return_marks(self, shard: int, row_ids: list[int]) -> None:
        """Marks a worker took but could not commit: kept for the next attempt."""
        if row_ids:
            with self._mutex:
                self._marks_since = time.monotonic()  # retried MARK_LATEST_S from now
                self._marks[shard][:0] = row_ids

    def write_marks(self) -> None:
        """Record the pending marks now, one transaction per shard."""
        for shard in list(self._marks):
            row_ids = self.take_marks(shard)
            try:
                self._shards[shard].mark_callbacked(row_ids)
            except BaseException:
                self.return_marks(shard, row_ids)
                raise

    # -- stopping --------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every outcome delivered so far has had its callback run and recorded
        (called from a callback itself, it cannot wait for its own thread: no wait)."""
        with self._mutex:
            if self._thread is None or self._thread is threading.current_thread():
                return True
            self._lock.notify_all()
            if not self._lock.wait_for(lambda: not self._inbox and not self._busy, timeout):
                return False
        try:
            self.write_marks()
        except Exception:
            log.exception("recording that callbacks ran failed; those tasks stay FINISHED/FAILED")
            return False
        return True

    def close(self, timeout: float = 10.0, final_poll: bool = False) -> None:
        """Deliver what arrived; with ``final_poll``, also what storage holds for us now."""
        self.flush(timeout)
        if final_poll and self._remote > 0:
            try:
                self._run_callbacks(self._poll_storage())
                self.write_marks()
            except Exception:
                log.exception("final delivery of task outcomes failed")
        with self._mutex:
            self._closing = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
