"""Choosing the shard a new task goes to: the one with the fewest tasks waiting."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Sequence

from message_queue_sqlite.backends.base import Shard

REFRESH_COST_SHARE = 0.01  # counting may take at most ~1% of the sender's time


class ShardBalancer:
    """Estimates each shard's backlog as (last count) + (sent here since) and picks the
    smallest, rotating among ties. Counts are refreshed from storage, so other senders
    and workers are seen; how often is bounded by what a count costs (a count over a
    million-row backlog is not repeated on every send)."""

    def __init__(self, shards: Sequence[Shard], count: int):
        self._shards = list(shards[:count])  # sends use the configured shards; workers serve all
        self._lock = threading.Lock()
        self._estimate = [0] * len(self._shards)
        self.single = len(self._shards) == 1
        self._next_refresh = 0.0
        self._rotation = 0

    def route(self, unique_key: str) -> int:
        """The shard of a unique key: the same in every process that agrees on the shard count
        (crc32, not Python's per-process salted hash()), so one shard's index sees every send
        of the key. Load plays no part: a key that moved with the load could be held twice."""
        return zlib.crc32(unique_key.encode("utf-8")) % len(self._shards)

    def pick(self) -> int:
        count = len(self._shards)
        if count == 1:
            return 0
        with self._lock:
            now = time.monotonic()
            if now >= self._next_refresh:
                self._refresh(now)
            self._rotation = (self._rotation + 1) % count
            order = [(self._estimate[i], (i - self._rotation) % count) for i in range(count)]
            best = min(range(count), key=lambda i: order[i])
            self._estimate[best] += 1
            return best

    def _refresh(self, started: float) -> None:
        self._estimate = [shard.count_waiting() for shard in self._shards]
        took = time.monotonic() - started
        self._next_refresh = time.monotonic() + max(0.05, took / REFRESH_COST_SHARE)
