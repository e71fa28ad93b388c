"""Worker threads: claim in batches, run, record outcomes in batches.

One thread at a time claims (and in the same transaction records the completions that
piled up); the others take work from the local buffer. Batch size adapts to task
length: short tasks are claimed by the hundred, long ones one per idle thread, so a
slow task never sits prefetched while another process is idle. A completion is
committed when the buffer runs dry, when enough pile up, or after a few milliseconds,
whichever comes first, so callbacks and results are prompt under any load.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from message_queue_sqlite.backends.base import ClaimedTask, Completion
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.core.retry import RetryPolicy
from message_queue_sqlite.core.status import TaskStatus
from message_queue_sqlite.serialization import dumps_result, loads_args, loads_result

if TYPE_CHECKING:
    from message_queue_sqlite.engine.engine import Engine

log = logging.getLogger(__name__)

FLUSH_AFTER_S = 0.005  # oldest unrecorded completion waits at most this long (under load)
FLUSH_MAX = 256  # completions per transaction
TARGET_BATCH_S = 0.02  # a claim should hold about this much work per thread
_PLAIN = (str, int, float, bool, type(None))


def _run_order(claim: ClaimedTask) -> tuple[int, int, int]:
    """Best priority first, then send order (the buffer is sorted on the reverse of this)."""
    return (-claim.priority, claim.shard, claim.row_id)


class WorkerPool:
    def __init__(self, engine: Engine, threads: int):
        self._engine = engine
        self._threads_wanted = threads
        self._cv = threading.Condition(threading.Lock())
        self._buffer: list[ClaimedTask] = []  # claimed, not started: the next to run is last
        self._running: set[ClaimedTask] = set()
        self._pending: dict[int, list[tuple[Completion, TaskOutcome | None, ClaimedTask]]] = (
            defaultdict(list))
        self._pending_count = 0
        self._oldest_pending = 0.0
        self._claiming = False
        self._looked_empty_at = -1  # bell generation when a look last found storage drained
        self._stopping = False
        self._avg_task_s = 0.01
        self._next_shard = 0
        self._flush_lock = threading.Lock()
        self._hurry = threading.Event()
        self._give_back_later: list[ClaimedTask] = []
        self._failures = 0
        self._exited = 0
        self._stopped = False  # stop() returned: whatever it could not give back is left to expire
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        for number in range(self._threads_wanted):
            thread = threading.Thread(target=self._work, name=f"mqs-worker-{number}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, drain_timeout: float) -> None:
        """Stop claiming; give back what never started; wait for running tasks up to
        ``drain_timeout``; then give their leases back too (they run again elsewhere)."""
        with self._cv:
            self._stopping = True
            unstarted = self._buffer
            self._buffer = []
            self._cv.notify_all()
        self._engine.bell.ring()
        self._give_back(unstarted, started=False)
        deadline = time.monotonic() + drain_timeout
        with self._cv:
            while self._exited < len(self._threads) and not self._hurry.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(min(left, 0.1))  # re-checks the hurry flag a signal handler may set
        if not self._try_flush():
            log.error("%d completion(s) could not be recorded before stopping; those tasks "
                      "will run again once their leases expire", self._pending_count)
        with self._cv:
            left = list(self._running)
            unstarted = self._buffer + self._give_back_later
            self._buffer = []
            self._give_back_later = []
        self._give_back(unstarted, started=False)
        if left:
            log.warning("%d task(s) still running after the %.1f s drain timeout; their leases "
                        "are given back and they will run again", len(left), drain_timeout)
            self._give_back(left, started=True)
        self._stopped = True

    def held_leases(self, into: dict[int, list[tuple[int, int]]]) -> None:
        """Add the ``(row_id, attempt)`` leases this pool holds, by shard: claimed and not given
        back, completion not recorded yet (nothing once stopped)."""
        with self._cv:
            if self._stopped:
                return
            claims = [*self._buffer, *self._running, *self._give_back_later]
            claims.extend(item[2] for batch in self._pending.values() for item in batch)
        for claim in claims:
            into.setdefault(claim.shard, []).append((claim.row_id, claim.attempt))

    def hurry(self) -> None:
        """Cut the drain short (a second stop signal)."""
        self._hurry.set()

    def _give_back(self, claims: list[ClaimedTask], started: bool) -> None:
        by_shard: dict[int, list[ClaimedTask]] = defaultdict(list)
        for claim in claims:
            by_shard[claim.shard].append(claim)
        for shard, items in by_shard.items():
            self._engine.shards[shard].release(items, self._engine.node)
        self._engine.dispatcher.released_locally(c.task_id for c in claims if c.sender == self._engine.node)

    # -- the loop --------------------------------------------------------------------
    def _work(self) -> None:
        try:
            self._loop()
        finally:
            with self._cv:
                self._exited += 1
                self._cv.notify_all()

    def _loop(self) -> None:
        run_claim = self._engine.run_claim
        while True:
            claims = self._next_claims()
            if not claims:
                return
            started = time.perf_counter()
            done = []
            for claim in claims:
                if self._stopping and done:
                    break  # the rest never started: stop() gives them back
                done.append((claim, *run_claim(claim)))
            took = (time.perf_counter() - started) / len(done)
            self._avg_task_s += (took - self._avg_task_s) * 0.05
            self._record(done, claims[len(done):])

    def _next_claims(self) -> list[ClaimedTask]:
        """Some claims from the buffer: one when tasks are slow (spread them over threads),
        a few when they take microseconds (fewer lock round trips per task)."""
        while True:
            with self._cv:
                while True:
                    if self._stopping:
                        return []
                    if self._buffer:
                        take = 1
                        if self._avg_task_s < 0.0005:
                            take = max(1, min(16, len(self._buffer) // self._threads_wanted))
                        buffer = self._buffer
                        claims = buffer[-take:]
                        del buffer[-take:]
                        claims.reverse()
                        self._running.update(claims)
                        return claims
                    if not self._claiming:
                        self._claiming = True
                        idle = self._threads_wanted - len(self._running)
                        break
                    self._cv.wait()
            wake = self._threads_wanted
            try:
                # as many threads as there are new claims: one may become the next claimer
                wake = max(1, self._claim_more(idle))
                self._failures = 0
            except Exception as exc:
                self._failures += 1
                delay = min(2.0, 0.01 * 2 ** self._failures)
                log.warning("claiming or recording tasks failed (%s); retrying in %.2f s", exc, delay)
                self._hurry.wait(delay)  # back-off; a stop cuts it short
            finally:
                with self._cv:
                    self._claiming = False
                    self._cv.notify(wake)

    def _claim_limit(self, idle: int) -> int:
        per_thread = max(1, int(TARGET_BATCH_S / max(self._avg_task_s, 1e-6)))
        return max(1, min(self._engine.config.prefetch, max(idle, 1) * per_thread))

    def _claim_more(self, idle: int) -> int:
        """Claim from the shards in rotation until something comes, else wait for a ring.
        Returns how many claims went into the buffer."""
        engine = self._engine
        while not self._stopping:
            seen = engine.bell.generation
            shards = engine.shards
            limit = self._claim_limit(idle)
            claims: list[ClaimedTask] = []
            if seen == self._looked_empty_at and not self._pending_count:
                # The last look left nothing claimable and nothing rang since (every way work
                # becomes ready rings the bell): wait without asking storage again. A wait that
                # times out (a scheduled task is due; the missed-event guard) looks next.
                if not engine.bell.wait(seen, engine.idle_wait_timeout()):
                    self._looked_empty_at = -1
                continue
            for step in range(len(shards)):
                index = (self._next_shard + step) % len(shards)
                claims = self._exchange(index, limit)
                if claims:
                    self._next_shard = (index + 1) % len(shards)
                    break
            self._flush()  # completions of shards not visited
            if not claims or (len(claims) < limit and len(shards) == 1):
                self._looked_empty_at = seen  # this look took everything there was
            if claims:
                mine = [c.task_id for c in claims if c.sender == engine.node]
                if mine:
                    callback_here = engine.dispatcher.claimed_locally(mine)
                    if callback_here:
                        for claim in claims:
                            claim.callback_here = claim.task_id in callback_here
                with self._cv:
                    stopping = self._stopping
                    if not stopping:
                        self._buffer.extend(claims)  # already in claim order: sorting is a pass
                        self._buffer.sort(key=_run_order, reverse=True)
                if stopping:  # stop() began during the claim: these never start here
                    self._give_back(claims, started=False)
                    return 0
                return len(claims)
            if not engine.bell.wait(seen, engine.idle_wait_timeout()):
                self._looked_empty_at = -1  # timed out: something may be due, look again
        return 0

    def _exchange(self, shard: int, limit: int) -> list[ClaimedTask]:
        """Record this shard's completions (and the callbacks that ran since) and claim up to
        ``limit``, in one transaction. On a storage error all goes back, to be retried."""
        dispatcher = self._engine.dispatcher
        with self._flush_lock:
            batch = self._take_pending(shard)
            marks = dispatcher.take_marks(shard)
            try:
                rejected, claims = self._engine.shards[shard].complete_and_claim(
                    [item[0] for item in batch], self._engine.node, limit,
                    self._engine.config.visibility_timeout, marks)
            except BaseException:
                self._put_back(shard, batch)
                dispatcher.return_marks(shard, marks)
                raise
        self._after_commit(batch, rejected)
        return claims

    def _put_back(self, shard: int, batch: list[tuple[Completion, TaskOutcome | None, ClaimedTask]]) -> None:
        if batch:
            with self._cv:
                self._pending[shard][:0] = batch
                self._pending_count += len(batch)

    # -- recording completions -------------------------------------------------------
    def _record(self, done: list[tuple[ClaimedTask, Completion, TaskOutcome | None]],
                not_started: list[ClaimedTask]) -> None:
        with self._cv:
            if not self._pending_count:
                self._oldest_pending = time.monotonic()
            for claim, completion, outcome in done:
                self._running.discard(claim)
                self._pending[claim.shard].append((completion, outcome, claim))
            self._pending_count += len(done)
            if not_started:
                self._running.difference_update(not_started)
                self._give_back_later.extend(not_started)
            flush_now = (
                self._pending_count >= FLUSH_MAX
                or self._stopping
                or (not self._buffer and self._claiming)
                or time.monotonic() - self._oldest_pending > FLUSH_AFTER_S
            )
        if flush_now:
            self._try_flush()

    def _take_pending(self, shard: int) -> list[tuple[Completion, TaskOutcome | None, ClaimedTask]]:
        with self._cv:
            batch = self._pending.pop(shard, [])
            self._pending_count -= len(batch)
            if self._pending_count:
                self._oldest_pending = time.monotonic()
            return batch

    def _flush(self) -> None:
        for shard in list(self._pending):
            if self._pending.get(shard):
                self._exchange(shard, 0)

    def _try_flush(self) -> bool:
        try:
            self._flush()
            return True
        except Exception as exc:
            log.warning("recording %d completion(s) failed, will retry: %s", self._pending_count, exc)
            return False

    def _after_commit(self, batch: list[tuple[Completion, TaskOutcome | None, ClaimedTask]],
                      rejected: list[int]) -> None:
        if not batch:
            return
        engine = self._engine
        lost = set(rejected)
        if lost:
            log.warning("%d completion(s) discarded: their leases expired and the tasks were "
                        "taken over by another attempt", len(lost))
        delivered = []
        retries = False
        for completion, outcome, claim in batch:
            if lost and completion.row_id in lost:
                if claim.sender == engine.node:
                    engine.dispatcher.released_locally([claim.task_id])
                continue
            if completion.status == TaskStatus.SCHEDULED:
                retries = True
                if claim.sender == engine.node:  # the retry may run in another process
                    engine.dispatcher.released_locally([claim.task_id])
            if claim.cache_owner is not None and completion.status != TaskStatus.SCHEDULED:
                engine.cache.pop(claim.args or "", None)
            if outcome is not None:
                delivered.append((outcome, claim.shard, claim.row_id))
        if delivered:
            engine.dispatcher.deliver(delivered)
        if retries:
            engine.bell.ring()  # an idle worker's wait must end when the retry is due


def execute(func: Callable[..., Any], args: dict[str, Any]) -> tuple[bool, Any, str | None]:
    """Run a task function; (ok, value or exception, traceback text)."""
    try:
        return True, func(**args), None
    except BaseException as exc:  # a task must never take its worker thread down
        return False, exc, traceback.format_exc()


def build_completion(claim: ClaimedTask, policy: RetryPolicy, ok: bool, value: Any,
                     tb: str | None, started: float, ended: float,
                     deliver: bool) -> tuple[Completion, TaskOutcome | None]:
    """Turn what a run produced into the stored completion and, when the task ended and its
    sender is this queue object (``deliver``), the outcome to hand over in memory."""
    if ok:
        try:
            text = dumps_result(value)
        except TypeError as exc:
            ok, value, tb = False, exc, None
        else:
            outcome = None
            if deliver:
                stored = value if type(value) in _PLAIN else loads_result(text)
                outcome = TaskOutcome(claim.task_id, claim.task_name, TaskStatus.FINISHED, stored,
                                      None, None, started, ended, claim.attempt)
            return Completion(claim.row_id, claim.attempt, TaskStatus.FINISHED, text, None,
                              started, ended, 0.0, claim.callback_here), outcome
    message = f"{type(value).__name__}: {value}"
    run = claim.retries + 1  # the retry budget counts runs that ended, not claims (give-backs, crashes)
    if policy.should_retry(value, run):
        return Completion(claim.row_id, claim.attempt, TaskStatus.SCHEDULED, message, tb,
                          started, ended, policy.delay(run)), None
    outcome = TaskOutcome(claim.task_id, claim.task_name, TaskStatus.FAILED, None, message, tb,
                          started, ended, claim.attempt) if deliver else None
    return Completion(claim.row_id, claim.attempt, TaskStatus.FAILED, message, tb,
                      started, ended, 0.0, claim.callback_here), outcome


def decode_args(claim: ClaimedTask, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if claim.cache_owner is not None:
        args = cache.get(claim.args or "")
        if args is None:
            raise LookupError(f"the cached arguments of task {claim.task_id} are not in this "
                              "process's memory (cache-mode tasks run only in their sender)")
        return args
    return loads_args(claim.args or "{}")
