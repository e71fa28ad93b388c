"""Keeping leases alive and reclaiming the ones whose worker died.

A lease is the claim's expiry. While this queue object lives, its housekeeper renews
the leases its workers hold, exactly those (one they lost track of is left to expire), and
its liveness row (which cached arguments depend on), every third of the visibility
timeout, so a long task is never stolen from a live worker. It passes durations only:
the backend's clock decides when a lease runs out, so a queue object whose clock is off
can neither take a live lease nor shorten its own.
Every housekeeper also requeues tasks whose lease expired anywhere: recovery needs no
cron job and no manual call. Retention purges and WAL upkeep run here too, in small
batches, so they never hold the queue for long.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from message_queue_sqlite.backends.base import RecoveryReport, Shard
from message_queue_sqlite.core.errors import QueueStorageError

if TYPE_CHECKING:
    from message_queue_sqlite.engine.engine import Engine
    from message_queue_sqlite.engine.worker import Worker

log = logging.getLogger(__name__)

PURGE_EVERY_S = 60.0
PURGE_BATCH = 500  # rows per delete transaction: short, so workers' transactions interleave
PURGE_BUDGET_S = 0.05  # one round of purging at most this long
PURGE_DUTY = 0.1  # while behind, purging takes up to this share of the time (rounds come sooner)
MAINTAIN_EVERY_S = 10.0


class Housekeeper:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._stop = threading.Event()
        self._next_purge = 0.0
        self._purge_from = 0  # the shard a round starts with, rotated so none is starved
        self._next_maintain = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mqs-housekeeper", daemon=True)
            self._thread.start()

    @property
    def interval(self) -> float:
        return max(0.02, min(self._engine.config.visibility_timeout / 3.0, 5.0))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except QueueStorageError as exc:  # storage unreachable (a partition, a restart): said once a
                # round, in one line; leases it cannot renew expire and are recovered by a live worker
                log.warning("housekeeping: %s; retrying next round", exc)
            except Exception:
                log.exception("housekeeping failed; retrying next round")
            # the renewal period (sooner while retention purging is behind), not a poll for work
            self._stop.wait(max(0.0, min(self.interval, self._next_purge - time.monotonic())))

    def run_once(self) -> RecoveryReport:
        """Renew, recover, purge, maintain: one round (also called directly by tests and the CLI)."""
        engine = self._engine
        if engine.workers_running and engine.backend.adopt_new_shards():
            engine.bell.ring()
        lease = engine.config.visibility_timeout
        workers = engine.active_workers()
        pid, host = os.getpid(), socket.gethostname()
        report = RecoveryReport()
        for shard in engine.shards:  # durations only: the backend's clock decides every expiry
            shard.register_node(engine.node, pid, host, lease)
            self._renew(shard, workers, lease)
            report += shard.recover_expired(engine.config.crash_limit)
        if report.requeued or report.failed or report.cancelled:
            log.warning("lease recovery: %d task(s) requeued, %d failed, %d cancelled", report.requeued,
                        report.failed, report.cancelled)
            engine.storage_changed()  # requeued work for idle workers, outcomes for senders
            if engine.hooks.recovered:
                engine.hooks.fire(engine.hooks.recovered, report)
        mono = time.monotonic()
        retention = engine.config.retention
        if retention is not None and mono >= self._next_purge:
            if self._purge(retention):
                self._next_purge = mono + min(PURGE_EVERY_S, max(retention, self.interval))
            else:  # more ended than one round removes: come back soon, at the duty cycle
                spent = time.monotonic() - mono
                self._next_purge = time.monotonic() + spent * (1 - PURGE_DUTY) / PURGE_DUTY
        if mono >= self._next_maintain:
            self._next_maintain = mono + MAINTAIN_EVERY_S
            for shard in engine.shards:
                shard.maintain()
        return report

    def _renew(self, shard: Shard, workers: list[Worker], lease: float) -> None:
        """Renew exactly the leases the workers' ledgers hold on ``shard``; leases storage says
        are no longer theirs (taken over after an expiry) leave the ledgers."""
        held = [claim for worker in workers for claim in worker.ledger.leases().get(shard.index, ())]
        lost = shard.renew_leases(self._engine.node, [(c.row_id, c.attempt) for c in held], lease)
        if lost:
            for worker in workers:
                worker.leases_lost(shard.index, lost)

    def _purge(self, retention: float) -> bool:
        """Delete what ended ``retention`` seconds ago, batch by batch, for at most ``PURGE_BUDGET_S``;
        True when every shard is caught up. The rate follows the queue's: a queue that ends
        thousands of tasks a second is purged as fast, in short transactions."""
        shards = list(self._engine.shards)
        deadline = time.monotonic() + PURGE_BUDGET_S
        start, self._purge_from = self._purge_from, (self._purge_from + 1) % max(1, len(shards))
        for step in range(len(shards)):
            shard = shards[(start + step) % len(shards)]
            while shard.purge_ended(retention, PURGE_BATCH):
                if time.monotonic() >= deadline:
                    return False
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
