"""Cancellation: the canceller's side (``cancel``) and the worker's (``CancelWatcher``).

A cancel is stored, so it survives every restart and reaches every process:

- A waiting task (ready or scheduled) is cancelled in place, in one transaction: no claim can
  take it afterwards, in any process.
- A RUNNING one (leased: running, or prefetched into its worker's buffer) gets a request on
  its row. Its worker's watcher finds the request (it looks whenever storage changed, on a
  small partial index) and answers under the executor's lock: a claim still in the buffer never
  starts and ends CANCELLED; a running one is flagged (``current_task.cancelled``,
  ``check_cancelled()``); then the request is marked seen. The canceller waits for that
  answer (up to ``wait`` seconds), so when ``cancel`` returns, no task it named can start.
- A worker that dies with a request pending: its lease expires and recovery ends the task
  CANCELLED instead of running it again.
- "Completes just as the cancel lands": the first commit wins. A task that ended is left
  alone; a running task that returns anyway ends FINISHED (it did the work); one that fails
  or stops after the request ends CANCELLED, never retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from message_queue_sqlite.core.status import TaskStatus

if TYPE_CHECKING:
    from message_queue_sqlite.engine.engine import Engine

log = logging.getLogger(__name__)

CANCELLED = "cancelled"  # it never started, and never will
STOPPING = "stopping"  # it was running: asked to stop (its worker saw the request, or will)
ENDED = "ended"  # it had ended already (or was not found): nothing was done
NEVER_STARTED = "cancelled before it started"  # the stored error of one (as the SQL writes it too)
LOOK_EVERY_S = 1.0  # the watcher looks at least this often (the change feed's missed-event guard)
MIN_GAP_S = 0.05  # and at most once per this, however often storage changes (a busy queue's
# every commit rings: the canceller's wait covers this gap, and a look costs the workers' threads)


def cancel(engine: Engine, task_ids: Sequence[str], wait: float) -> dict[str, str]:
    """Cancel tasks by id; returns each id's state: ``cancelled``, ``stopping`` or ``ended``.
    Waits up to ``wait`` seconds for the workers holding running ones to answer."""
    by_shard: dict[int, list[int]] = defaultdict(list)
    for task_id in task_ids:
        shard, row_id = engine.shard_of(task_id)
        by_shard[shard].append(row_id)
    states: dict[tuple[int, int], str] = {}
    asked: dict[int, list[int]] = {}
    for shard, row_ids in by_shard.items():
        cancelled, running = engine.shards[shard].cancel(row_ids)
        states.update({(shard, r): CANCELLED for r in cancelled})
        states.update({(shard, r): STOPPING for r in running})
        if running:
            asked[shard] = running
    engine.storage_changed()  # this process's watcher and callbacks (others hear the commit)
    _wait_until_seen(engine, asked, wait)
    for shard, rows in asked.items():  # a leased one its worker had not started: cancelled too
        for record in engine.shards[shard].get_tasks(rows):
            if (record.outcome or record.status) == TaskStatus.CANCELLED and record.result == NEVER_STARTED:
                states[(shard, record.row_id)] = CANCELLED
    return {task_id: states.get(engine.shard_of(task_id), ENDED) for task_id in task_ids}


def _wait_until_seen(engine: Engine, asked: dict[int, list[int]], wait: float) -> None:
    """Until every running task asked has been answered by its worker (or ended), or ``wait``
    passes; a worker that died answers by lease expiry instead (recovery cancels it)."""
    deadline = time.monotonic() + wait
    asked = dict(asked)
    while asked:
        seen = engine.bell.generation
        asked = {shard: left for shard, rows in asked.items()
                 if (left := engine.shards[shard].cancel_pending(rows))}
        left_s = deadline - time.monotonic()
        if not asked or left_s <= 0:
            if asked:
                log.warning("%d running task(s) were asked to stop, but their worker did not answer "
                            "within %.1f s; a dead worker's task ends CANCELLED when its lease "
                            "expires", sum(map(len, asked.values())), wait)
            return
        engine.bell.wait(seen, min(left_s, 0.05))  # the answer is a commit: it rings


class CancelWatcher:
    """One thread per process running workers: whenever storage changed (``Engine.storage_bell``:
    another process's commit or a cancel here; and at least every second), if its workers hold
    leases, it asks storage which of them have a cancel request and hands those to the worker
    holding them."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqs-cancels", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._engine.storage_bell.ring()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        bell = self._engine.storage_bell  # (a cancel request is a change of storage: no local send rings it)
        while not self._stop.is_set():
            seen = bell.generation
            try:
                self.look()
            except Exception as exc:  # noqa: BLE001 - storage down: looked at again on the next change
                log.warning("looking for cancel requests failed (%s); will look again", exc)
                self._stop.wait(LOOK_EVERY_S)
            bell.wait(seen, LOOK_EVERY_S)
            self._stop.wait(MIN_GAP_S)  # coalesce a burst of changes into one look

    def look(self) -> None:
        """One look: the cancel requests for this process's leases, handed to their workers."""
        engine = self._engine
        workers = [worker for worker in engine.active_workers() if len(worker.ledger)]
        if not workers:
            return
        for shard in engine.shards:  # one read each on a tiny index; the ledgers only if asked
            wanted = set(shard.cancel_requests(engine.node))
            if not wanted:
                continue
            for worker in workers:
                claims = [c for c in worker.ledger.leases().get(shard.index, ()) if c.row_id in wanted]
                if claims:
                    worker.cancel_claims(claims)
