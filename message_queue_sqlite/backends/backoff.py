"""Retrying storage that is busy or unreachable: jittered exponential back-off with a deadline.

One shape for every backend (a locked SQLite file, a lost PostgreSQL connection): waits
grow from ``first`` to ``cap``, each drawn from [half, full] so that contending processes
spread out, until the deadline passes.
"""

from __future__ import annotations

import random
import time


class Backoff:
    def __init__(self, first: float, cap: float, deadline_s: float):
        self.delay = first
        self._cap = cap
        self._deadline = time.monotonic() + deadline_s

    @property
    def expired(self) -> bool:
        """True when the next wait would end past the deadline: give up now."""
        return time.monotonic() + self.delay > self._deadline

    def wait(self) -> None:
        time.sleep(random.uniform(self.delay / 2, self.delay))  # a back-off, not a poll
        self.delay = min(self.delay * 2, self._cap)
