"""Enqueuing periodic tasks: a scheduler in every process that runs workers, and no leader.

Every scheduler wakes when the next slot of one of its schedules is due (by the backend's
clock, the one all processes share), plans what to enqueue (``core/schedule.py``: the due
slot, and the missed ones its policy runs) and asks storage to enqueue it with a
compare-and-set on the schedule's ``last_slot``. However many processes try, one
transaction wins a slot; the others find ``last_slot`` moved and store nothing. A process
that dies mid-way leaves either both the task and the moved ``last_slot`` or neither (one
transaction), so a slot is neither run twice nor lost by a crash. Runs are at-least-once
like every task (a worker killed mid-run runs it again); *enqueued* is exactly once.

The scheduler's thread waits on an event with the time to the next slot as its timeout
(a deadline, not a poll), and re-declares its schedules every ``SEEN_EVERY_S`` so that a
schedule no live process declares any longer shows as orphaned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from message_queue_sqlite.backends.base import NewTask, Shard
from message_queue_sqlite.core.errors import QueueStorageError
from message_queue_sqlite.core.registry import TaskDefinition
from message_queue_sqlite.core.schedule import Schedule, plan

if TYPE_CHECKING:
    from message_queue_sqlite.engine.engine import SendRequest

log = logging.getLogger(__name__)

SEEN_EVERY_S = 60.0  # a live scheduler marks its schedules as seen this often
ORPHANED_AFTER_S = 1.5 * SEEN_EVERY_S  # unseen this much longer than the newest seen: orphaned
ERROR_BACKOFF_S = 1.0  # a storage error is retried after this long (then once a second)
MIN_WAIT_S = 0.001


class Scheduler:
    """The periodic tasks of one queue object, enqueued from this process."""

    def __init__(self, shard: Shard, definitions: Sequence[TaskDefinition],
                 prepare: Callable[[SendRequest], NewTask], make_request: Callable[..., SendRequest],
                 on_enqueued: Callable[[], None]):
        self._shard = shard  # the first shard holds schedules and their tasks
        self._schedules: dict[str, Schedule] = {
            d.name: d.options.schedule for d in definitions if d.options.schedule is not None}
        self._prepare = prepare
        self._make_request = make_request
        self._on_enqueued = on_enqueued
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watching_since = 0.0
        self._next_seen = 0.0

    @property
    def schedules(self) -> dict[str, Schedule]:
        return dict(self._schedules)

    def start(self) -> None:
        """Declare the schedules (so that they show at once) and start the thread; a storage
        error here is raised: a worker that cannot schedule should say so when it starts."""
        if not self._schedules or self._thread is not None:
            return
        now = self._shard.wall_now()
        self._watching_since = now
        self._declare(now)
        self._thread = threading.Thread(target=self._run, name="mqs-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _declare(self, now: float) -> None:
        rows = []
        for name, schedule in self._schedules.items():
            last = schedule.newest_at_or_before(now)
            rows.append((name, schedule.expression, last, schedule.next_after(last)))
        self._shard.declare_schedules(rows)
        self._next_seen = time.monotonic() + SEEN_EVERY_S

    def _run(self) -> None:
        outage = False  # storage is unreachable: said once, in one line, and again when it is back
        while not self._stop.is_set():
            try:
                wait = self.tick()
            except QueueStorageError as exc:  # a partition, a restart, a full disk: retried, never given up
                if not outage:
                    log.warning("periodic tasks: %s; retrying every %.0f s until storage answers",
                                exc, ERROR_BACKOFF_S)
                else:
                    log.debug("periodic tasks: still failing: %s", exc)
                outage, wait = True, ERROR_BACKOFF_S
            except Exception:  # noqa: BLE001 - a bug of ours: its traceback, then retry
                log.exception("periodic tasks: scheduling failed; retrying in %.0f s", ERROR_BACKOFF_S)
                wait = ERROR_BACKOFF_S
            else:
                if outage:
                    log.warning("periodic tasks: storage answers again; scheduling resumed")
                    outage = False
            self._stop.wait(wait)

    def tick(self) -> float:
        """Enqueue what is due now; returns the seconds until the next slot (or the next
        re-declaration, whichever comes first)."""
        now = self._shard.wall_now()
        if time.monotonic() >= self._next_seen:
            self._declare(now)
        stored = {record.name: record for record in self._shard.list_schedules()}
        soonest = SEEN_EVERY_S
        for name, schedule in self._schedules.items():
            record = stored.get(name)
            if record is None:  # removed (mqs schedules --prune) while declared here: back next round
                self._next_seen = 0.0
                continue
            last = record.last_slot
            decision = plan(schedule, last, now, self._watching_since)
            if decision is not None:
                won = self._enqueue(name, schedule, last, decision.decided, decision.run)
                if won and decision.skipped:
                    log.warning("periodic task %r: %d missed slot(s) not run (missed=%r)",
                                    name, decision.skipped, schedule.missed)
                last = max(last, decision.decided)
            soonest = min(soonest, schedule.next_after(max(last, now)) - now)
        return max(MIN_WAIT_S, soonest)

    def _enqueue(self, name: str, schedule: Schedule, last: float, decided: float,
                 slots: Sequence[float]) -> bool:
        runs = []
        for slot in slots:
            kwargs = dict(schedule.kwargs)
            if schedule.slot_arg is not None:
                kwargs[schedule.slot_arg] = schedule.slot_datetime(slot).isoformat()
            runs.append((slot, self._prepare(self._make_request(name, kwargs, schedule.priority))))
        stored = self._shard.enqueue_slots(name, last, decided, schedule.next_after(decided), runs,
                                           schedule.skip_if_running)
        if stored is None:
            return False  # another process decided these slots first
        if stored:
            self._on_enqueued()
        elif runs and schedule.skip_if_running:
            log.info("periodic task %r: slot skipped, the previous run is still waiting or running", name)
        return True
