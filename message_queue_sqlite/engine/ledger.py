"""The claim ledger: every lease a worker holds, from its claim until it is settled.

A claim enters the ledger in the same breath as the statement that leased it returns,
before anything else can raise, and leaves it only one of two ways: its completion is
committed (``committed``) or its lease is given back (``released``). In between it is
buffered or running in an executor, then completed and waiting for its batch to commit.
Whatever raises in between (a storage error, a hook, a bug), the claim is still here,
so it is run, recorded or given back, never forgotten while its row stays RUNNING.

Lease renewal covers exactly the leases in the ledger. A lease the ledger no longer
holds (settled, or one the storage says was taken over) stops being renewed, so if its
row is somehow still RUNNING it expires and is recovered like a dead worker's.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from message_queue_sqlite.backends.base import ClaimedTask, Completion
from message_queue_sqlite.core.outcome import TaskOutcome


@dataclass(slots=True)
class Finished:
    """A run that ended, waiting for its completion to be committed."""

    claim: ClaimedTask
    completion: Completion
    outcome: TaskOutcome | None  # for the sender's callback, when it waits in this process


class ClaimLedger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[ClaimedTask] = set()  # compared by identity
        self._pending: dict[int, list[Finished]] = defaultdict(list)  # shard -> not committed yet
        self._pending_count = 0
        self._oldest_pending = 0.0

    # -- entering --------------------------------------------------------------------
    def claimed(self, claims: Iterable[ClaimedTask]) -> None:
        with self._lock:
            self._held.update(claims)

    # -- completions waiting for their commit ----------------------------------------
    def finished(self, items: Sequence[Finished]) -> int:
        """Runs that ended; returns how many completions now wait for a commit."""
        with self._lock:
            if not self._pending_count:
                self._oldest_pending = time.monotonic()
            pending = self._pending
            for item in items:
                pending[item.claim.shard].append(item)
            self._pending_count += len(items)
            return self._pending_count

    @property
    def pending_count(self) -> int:
        return self._pending_count

    def pending_age(self) -> float:
        """Seconds the oldest uncommitted completion has waited (0 with none)."""
        return time.monotonic() - self._oldest_pending if self._pending_count else 0.0

    def pending_shards(self) -> list[int]:
        with self._lock:
            return [shard for shard, items in self._pending.items() if items]

    def take_pending(self, shard: int) -> list[Finished]:
        """The completions of ``shard`` for one transaction; they stay held until ``committed``
        (or ``put_back`` when the transaction failed)."""
        with self._lock:
            batch = self._pending.pop(shard, [])
            self._pending_count -= len(batch)
            if self._pending_count:
                self._oldest_pending = time.monotonic()
            return batch

    def put_back(self, shard: int, batch: list[Finished]) -> None:
        if batch:
            with self._lock:
                if not self._pending_count:
                    self._oldest_pending = time.monotonic()
                self._pending[shard][:0] = batch
                self._pending_count += len(batch)

    # -- leaving ---------------------------------------------------------------------
    def committed(self, batch: Sequence[Finished]) -> None:
        """These completions are committed (or were rejected as stale: either way the lease
        is no longer ours)."""
        with self._lock:
            held = self._held
            for item in batch:
                held.discard(item.claim)

    def released(self, claims: Iterable[ClaimedTask]) -> None:
        """These leases were given back, or are abandoned to lease expiry: never renewed again."""
        with self._lock:
            self._held.difference_update(claims)

    # -- renewal ---------------------------------------------------------------------
    def leases(self) -> dict[int, list[ClaimedTask]]:
        """The held leases by shard, for renewal."""
        by_shard: dict[int, list[ClaimedTask]] = defaultdict(list)
        with self._lock:
            for claim in self._held:
                by_shard[claim.shard].append(claim)
        return by_shard

    def holds(self, claim: ClaimedTask) -> bool:
        return claim in self._held

    def __len__(self) -> int:
        return len(self._held)
