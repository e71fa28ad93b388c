"""Writing running tasks' progress: rate-limited and batched.

``current_task.progress(...)`` only notes the newest report of its run here (no storage call
in the task's thread). One thread per queue object writes what was noted since its last
write, the newest report of each run, in one transaction per shard, at most every
``WRITE_EVERY_S``: a task reporting in a tight loop costs a few writes a second, not one
per call. A report is fenced by owner and attempt, so one that arrives after its run ended
(or its lease was lost) changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import TYPE_CHECKING

from message_queue_sqlite.core.progress import TaskProgress

if TYPE_CHECKING:
    from message_queue_sqlite.backends.base import ClaimedTask
    from message_queue_sqlite.engine.engine import Engine

log = logging.getLogger(__name__)

WRITE_EVERY_S = 0.25


class ProgressWriter:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._lock = threading.Lock()
        self._noted: dict[tuple[int, int, int], str] = {}  # (shard, row, attempt) -> newest JSON
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0  # transactions written (tests and logs read it)

    def note(self, claim: ClaimedTask, progress: TaskProgress) -> None:
        with self._lock:
            self._noted[(claim.shard, claim.row_id, claim.attempt)] = progress.to_json()
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="mqs-progress", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            self.flush()
            self._stop.wait(WRITE_EVERY_S)  # the rate limit: reports meanwhile are coalesced

    def flush(self) -> None:
        """Write what was noted since the last write, now (newest report of each run)."""
        with self._lock:
            noted, self._noted = self._noted, {}
        if not noted:
            return
        by_shard: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
        for (shard, row_id, attempt), text in noted.items():
            by_shard[shard].append((row_id, attempt, text))
        for shard, items in by_shard.items():
            try:
                self._engine.shards[shard].record_progress(self._engine.node, items)
                self.writes += 1
            except Exception as exc:  # noqa: BLE001 - progress is advisory: the next report retries
                log.warning("recording the progress of %d task(s) failed: %s", len(items), exc)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        self.flush()
