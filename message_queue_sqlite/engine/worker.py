"""The worker: claims in batches, hands claims to an executor, records outcomes in batches.

One claim round at a time (in ``ThreadExecutor``, whichever idle thread found the buffer
empty) records the completions that piled up and leases more, in one transaction per
shard. Batch size adapts to task length: short tasks are claimed by the hundred, long ones
one per idle slot, so a slow task never sits prefetched while another process is idle. A
completion is committed when the buffer runs dry, when enough pile up, or after a few
milliseconds, whichever comes first, so callbacks and results are prompt under any load.

Every lease goes into the claim ledger (``ledger.py``) as soon as the claim statement
returns, and leaves it only when committed or given back.

A worker serves a lane of named queues (``core/queues.py``): each claim statement takes from
one queue of one shard, and the worker goes round its (shard, queue) pairs, starting after the
pair that last gave it work, so a backlog in one queue never starves another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from message_queue_sqlite.backends.base import ClaimedTask
from message_queue_sqlite.core.queues import DEFAULT_QUEUE
from message_queue_sqlite.core.rates import Rate
from message_queue_sqlite.core.status import TaskStatus
from message_queue_sqlite.engine import cancellation
from message_queue_sqlite.engine.executors import Executor
from message_queue_sqlite.engine.ledger import ClaimLedger, Finished
from message_queue_sqlite.engine.running import TaskRunner

if TYPE_CHECKING:
    from message_queue_sqlite.engine.engine import Engine

log = logging.getLogger(__name__)

FLUSH_AFTER_S = 0.005  # oldest unrecorded completion waits at most this long (under load)
FLUSH_MAX = 256  # completions per transaction
TARGET_BATCH_S = 0.02  # a claim should hold about this much work per slot
SOURCES_FRESH_S = 1.0  # serving every queue: the stored list of queues is read this often


class Worker:
    def __init__(self, engine: Engine, executor: Executor, runner: TaskRunner,
                 queues: tuple[str, ...] | None, rates: dict[str, Rate] | None = None):
        self._engine = engine
        self.executor = executor
        self.runner = runner
        self.queues = queues  # None: every stored queue (re-read when idle, at least every second)
        self.rates = rates or {}  # rate-limited tasks (core/rates.py): admitted before they run
        self._stored_sources: list[tuple[int, str]] = []
        self._sources_read_at = -SOURCES_FRESH_S
        self.ledger = ClaimLedger()
        self.stopping = False
        self._looked_empty_at = -1  # bell generation when a look last found storage drained
        self._next_source = 0  # where the next look starts in the rotation of (shard, queue)
        self._flush_lock = threading.Lock()
        self._hurry = threading.Event()
        self._failures = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self.executor.start(self)

    def stop(self, drain_timeout: float) -> None:
        """Stop claiming; give back what never started; wait for running tasks up to
        ``drain_timeout``; then give their leases back too (they run again elsewhere)."""
        self.stop_claiming()
        self.drain(time.monotonic() + drain_timeout, drain_timeout)

    def stop_claiming(self) -> None:
        """The first half of ``stop``: no more claims; what never started is given back."""
        self.stopping = True
        self._engine.bell.ring()
        self.give_back(self.executor.stop_claiming())

    def drain(self, deadline: float, drain_timeout: float) -> None:
        """The second half: wait for running tasks until the monotonic ``deadline`` (the stop's
        ``drain_timeout`` from its start), record their completions, give back what still runs."""
        finished = self.executor.wait(deadline, self._hurry)
        if not self._try_flush():
            log.error("%d completion(s) could not be recorded before stopping; those tasks "
                      "will run again once their leases expire", self.ledger.pending_count)
        left = self.executor.unfinished()
        if left and not finished:
            why = ("the stop was cut short by a second signal" if self._hurry.is_set()
                   else f"they were still running after the {drain_timeout:.1f} s drain timeout")
            log.warning("%d task(s) given back unfinished (%s); they will run again", len(left), why)
        self.give_back(left)

    @property
    def hurried(self) -> bool:
        return self._hurry.is_set()

    def hurry(self) -> None:
        """Cut the drain short (a second stop signal)."""
        self._hurry.set()

    def give_back(self, claims: Sequence[ClaimedTask]) -> None:
        """Release leases at once (they are ready again for any worker; a give-back uses no
        retry and counts as no crash). A release that fails leaves the lease to expire: the
        ledger stops renewing it either way."""
        if not claims:
            return
        engine = self._engine
        by_shard: dict[int, list[ClaimedTask]] = defaultdict(list)
        for claim in claims:
            by_shard[claim.shard].append(claim)
        try:
            for shard, items in by_shard.items():
                try:
                    engine.shards[shard].release(items, engine.node)
                except Exception as exc:  # noqa: BLE001
                    log.warning("giving back %d lease(s) on %s failed (%s); they expire and the "
                                "tasks are recovered", len(items), engine.shards[shard].name, exc)
        finally:
            self.ledger.released(claims)
            engine.dispatcher.released_locally(c.task_id for c in claims if c.sender == engine.node)

    def leases_lost(self, shard: int, row_ids: Sequence[int]) -> None:
        """Storage says these leases are no longer this worker's (they expired and another
        attempt took over): stop renewing them, and never start one still waiting here; a run
        in progress finishes and its completion is rejected by the fence."""
        lost = set(row_ids)
        claims = [c for c in self.ledger.leases().get(shard, ()) if c.row_id in lost]
        if claims:
            log.warning("%d lease(s) on %s were taken over after expiring; they are no longer "
                        "renewed here", len(claims), self._engine.shards[shard].name)
            self.ledger.released(claims)
            self.executor.discard(claims)

    def cancel_claims(self, claims: Sequence[ClaimedTask]) -> None:
        """Storage asks this worker to cancel these leased claims: the ones still waiting in the
        executor never start (recorded CANCELLED now); the running ones are flagged for their
        task (``current_task.cancelled``); then the requests are marked seen, which ends the
        canceller's wait."""
        if not claims:
            return
        unstarted = self.executor.cancel(list(claims))
        if unstarted:
            runner = self.runner
            self.record([Finished(c, *runner.cancelled(c, cancellation.NEVER_STARTED)) for c in unstarted],
                        flush_hint=True)
        left = set(map(id, unstarted))
        running = [c for c in claims if id(c) not in left]
        by_shard: dict[int, list[ClaimedTask]] = defaultdict(list)
        for claim in running:
            by_shard[claim.shard].append(claim)
        for shard, items in by_shard.items():
            self._engine.shards[shard].cancel_seen(self._engine.node, items)

    # -- claiming --------------------------------------------------------------------
    def wake_claimers(self) -> None:
        """End the storage wait of claim rounds in progress (an executor was handed claims
        while its own claimer waited): they look again, then hand over what they have."""
        self._engine.bell.ring()

    def claim_for(self, idle: int, avg_task_s: float | None,
                  handed_over: Callable[[], bool] | None = None) -> int:
        """Claim for this worker's executor (an executor that has ``idle`` slots free calls it)
        from the shards in rotation until something comes, else wait for a ring; returns how
        many claims it was given; 0 as soon as ``handed_over()`` is true (the executor was given
        claims another executor's round took: see ``wake_claimers``). On a storage error: log,
        back off, return 0 (the caller comes back)."""
        try:
            claims = self._claim_more(self._claim_limit(idle, avg_task_s), handed_over)
            self._failures = 0
        except Exception as exc:  # noqa: BLE001
            self._failures += 1
            delay = min(2.0, 0.01 * 2 ** self._failures)
            log.warning("claiming or recording tasks failed (%s); retrying in %.2f s", exc, delay)
            self._hurry.wait(delay)  # back-off; a stop cuts it short
            return 0
        if not claims:
            return 0
        if not self.executor.submit(claims):  # stop() began during the claim: these never start here
            self.give_back(claims)
            return 0
        return len(claims)

    def run_ready_now(self) -> int:
        """Claim and run, in this thread, everything ready on every shard until nothing is
        left (immediate mode); returns how many ran."""
        ran = 0
        limit = self._engine.config.prefetch
        self.queues_changed()  # what was just sent may be in a new queue
        while True:
            claims: list[ClaimedTask] = []
            for index, queue in self._sources():
                claims += self._exchange(index, limit, queue)
            if not claims:
                self._flush()
                return ran
            self._after_claim(claims)
            self.executor.submit(claims)
            ran += len(claims)

    def _claim_limit(self, idle: int, avg_task_s: float | None) -> int:
        """One claim per free slot; more per slot (a prefetch) only for tasks measured shorter
        than the target batch, so a fresh worker never takes work another process could start
        now (celery #4537's complaint)."""
        if avg_task_s is None:
            return max(1, min(self._engine.config.prefetch, idle))
        per_slot = max(1, int(TARGET_BATCH_S / max(avg_task_s, 1e-6)))
        return max(1, min(self._engine.config.prefetch, max(idle, 1) * per_slot))

    def _claim_more(self, limit: int, handed_over: Callable[[], bool] | None = None) -> list[ClaimedTask]:
        engine = self._engine
        while not self.stopping:
            if handed_over is not None and handed_over():
                return []
            seen = engine.bell.generation
            sources = self._sources()
            claims: list[ClaimedTask] = []
            if seen == self._looked_empty_at and not self.ledger.pending_count:
                # The last look left nothing claimable and nothing rang since (every way work
                # becomes ready rings the bell): wait without asking storage again. A wait that
                # times out (a scheduled task is due; the missed-event guard) looks next.
                if not engine.bell.wait(seen, engine.idle_wait_timeout()):
                    self._looked_empty_at = -1
                continue
            for step in range(len(sources)):
                position = (self._next_source + step) % len(sources)
                shard, queue = sources[position]
                claims = self._exchange(shard, limit, queue)
                if claims:
                    self._next_source = position + 1  # the next look starts at the next source
                    break
            if not claims:
                self.queues_changed()  # maybe: read the stored queues again before the next look
            if not claims or (len(claims) < limit and len(sources) == 1):
                self._looked_empty_at = seen  # this look took everything there was
            if claims:
                self._after_claim(claims)
                claims = self._admit(claims) if self.rates else claims
                if claims:
                    return claims
                continue  # every one of them waits for its rate window: look again
            self._flush()  # completions of shards not visited
            if not engine.bell.wait(seen, engine.idle_wait_timeout()):
                self._looked_empty_at = -1  # timed out: something may be due, look again
        return []

    def _after_claim(self, claims: list[ClaimedTask]) -> None:
        """The claims are in the ledger: nothing here may lose them, so each step logs its
        failure instead of raising."""
        engine = self._engine
        try:
            self._flush()  # completions of shards not visited
        except Exception as exc:  # noqa: BLE001 - kept pending, retried with the next exchange
            log.warning("recording %d completion(s) failed, will retry: %s", self.ledger.pending_count, exc)
        try:
            mine = [c.task_id for c in claims if c.sender == engine.node]
            if mine:
                callback_here = engine.dispatcher.claimed_locally(mine)
                if callback_here:
                    for claim in claims:
                        claim.callback_here = claim.task_id in callback_here
        except Exception:  # noqa: BLE001 - the outcome is then looked up in storage instead
            log.exception("noting locally claimed tasks failed")
        hooks = engine.hooks
        if hooks.claimed:
            hooks.fire(hooks.claimed, claims)

    def queues_changed(self) -> None:
        """A queue was stored since the list was read (by this process: other processes'
        show when a look finds nothing, or within a second)."""
        self._sources_read_at = -SOURCES_FRESH_S

    def _sources(self) -> list[tuple[int, str]]:
        """The (shard, queue) pairs this worker claims from, in rotation order. Serving every
        queue, the stored list is read again after a look found nothing, or a second passed."""
        shards = range(len(self._engine.shards))
        if self.queues is not None:
            return [(shard, queue) for queue in self.queues for shard in shards]
        now = time.monotonic()
        if now - self._sources_read_at >= SOURCES_FRESH_S:
            self._stored_sources = [(shard, queue) for shard in shards
                                    for queue in self._engine.shards[shard].list_queues()]
            self._sources_read_at = now
        return self._stored_sources

    def _admit(self, claims: list[ClaimedTask]) -> list[ClaimedTask]:
        """Claims of rate-limited tasks each take a place in their task's current window, or
        are deferred to the first window with room (SCHEDULED until then: they leave this
        worker); the others pass. A storage error lets the claim run (logged): a limit is
        never a reason to lose or stall a task."""
        engine = self._engine
        admitted: list[ClaimedTask] = []
        deferred: list[ClaimedTask] = []
        for claim in claims:
            rate = self.rates.get(claim.task_name)
            if rate is None:
                admitted.append(claim)
                continue
            try:
                until = engine.shards[claim.shard].take_rate(claim, engine.node, rate)
            except Exception as exc:  # noqa: BLE001
                log.warning("the rate limit of task %s (%s) could not be checked (%s); it runs",
                            claim.task_name, claim.task_id, exc)
                until = None
            (admitted if until is None else deferred).append(claim)
        if deferred:
            self.ledger.released(deferred)
            engine.dispatcher.released_locally(c.task_id for c in deferred if c.sender == engine.node)
            engine.bell.ring()  # an idle worker's wait must end when the first of them is due
        return admitted

    def _exchange(self, shard: int, limit: int, queue: str = DEFAULT_QUEUE) -> list[ClaimedTask]:
        """Record this shard's completions (and the callbacks that ran since) and claim up to
        ``limit`` from ``queue``, in one transaction. On a storage error all goes back, to be
        retried."""
        engine = self._engine
        dispatcher = engine.dispatcher
        with self._flush_lock:
            batch = self.ledger.take_pending(shard)
            marks = dispatcher.take_marks(shard)
            try:
                rejected, claims = engine.shards[shard].complete_and_claim(
                    [item.completion for item in batch], engine.node, limit,
                    engine.config.visibility_timeout, marks, queue)
            except BaseException:
                self.ledger.put_back(shard, batch)
                dispatcher.return_marks(shard, marks)
                raise
            self.ledger.claimed(claims)  # before anything else can raise
        if batch:
            self._after_commit(batch, rejected)
        return claims

    # -- recording completions -------------------------------------------------------
    def record(self, done: list[Finished], flush_hint: bool = False) -> None:
        """Runs that ended: kept in the ledger until committed; committed now when enough
        piled up, when the buffer ran dry (``flush_hint``) or the oldest waited long enough."""
        if not done:
            return
        count = self.ledger.finished(done)
        if count >= FLUSH_MAX or flush_hint or self.stopping or self.ledger.pending_age() > FLUSH_AFTER_S:
            self._try_flush()

    def _flush(self) -> None:
        for shard in self.ledger.pending_shards():
            self._exchange(shard, 0)

    def _try_flush(self) -> bool:
        try:
            self._flush()
            return True
        except Exception as exc:  # noqa: BLE001
            log.warning("recording %d completion(s) failed, will retry: %s", self.ledger.pending_count, exc)
            return False

    def _after_commit(self, batch: list[Finished], rejected: list[int]) -> None:
        engine = self._engine
        self.ledger.committed(batch)
        try:
            self._deliver(batch, rejected)
        except Exception:  # noqa: BLE001 - committed: the storage poll finds what was not handed over
            log.exception("handing over %d committed outcome(s) failed", len(batch))
        hooks = engine.hooks
        if hooks.after_commit:
            lost = set(rejected)
            hooks.fire(hooks.after_commit, [item.claim for item in batch if item.claim.row_id not in lost])

    def _deliver(self, batch: list[Finished], rejected: list[int]) -> None:
        engine = self._engine
        lost = set(rejected)
        if lost:
            log.warning("%d completion(s) discarded: their leases expired and the tasks were "
                        "taken over by another attempt", len(lost))
        delivered = []
        retries = False
        node = engine.node
        for item in batch:
            claim, completion, outcome = item.claim, item.completion, item.outcome
            if lost and completion.row_id in lost:
                if claim.sender == node:
                    engine.dispatcher.released_locally([claim.task_id])
                continue
            if completion.status == TaskStatus.SCHEDULED:
                retries = True
                if claim.sender == node:  # the retry may run in another process
                    engine.dispatcher.released_locally([claim.task_id])
            if claim.cache_owner is not None and completion.status != TaskStatus.SCHEDULED:
                engine.cache.pop(claim.args or "", None)
            if outcome is not None:
                delivered.append((outcome, claim.shard, claim.row_id))
        if delivered:
            engine.dispatcher.deliver(delivered)
        if retries:
            engine.bell.ring()  # an idle worker's wait must end when the retry is due
