"""Small helpers shared by the adapters (standard library only)."""

from __future__ import annotations

import os
import sqlite3

IDLE_POLL_S = 0.002  # how often adapters of systems without a wake-up poll when idle


def counter(paths: list[str], sql: str):
    """A function that sums ``sql`` (a count) over the database files in ``paths``,
    through connections of its own; files that do not exist yet count 0."""
    conns: dict[str, sqlite3.Connection] = {}

    def count() -> int:
        total = 0
        for path in paths:
            conn = conns.get(path)
            if conn is None:
                if not os.path.exists(path):
                    continue
                conn = conns[path] = sqlite3.connect(path, timeout=30, check_same_thread=False)
            try:
                total += conn.execute(sql).fetchone()[0]
            except sqlite3.OperationalError as exc:  # table not created yet, or a lock
                if "no such table" not in str(exc) and "locked" not in str(exc):
                    raise
        return total

    return count
