"""Small helpers shared by the adapters (standard library only)."""

from __future__ import annotations

import os
import sqlite3
import threading

IDLE_POLL_S = 0.002  # how often adapters of systems without a wake-up poll when idle


def counter(paths: list[str], query):
    """A function that sums a count over the database files in ``paths``, through connections
    of its own; files that do not exist yet (or have no table yet) count 0. ``query``: SQL
    returning the count, or ``query(conn, path)`` returning it."""
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
                total += query(conn, path) if callable(query) else conn.execute(query).fetchone()[0]
            except sqlite3.OperationalError as exc:  # table not created yet, or a lock
                if "no such table" not in str(exc) and "locked" not in str(exc):
                    raise
        return total

    return count


def start_threads(q, threads: int, pass_index: bool = False) -> None:
    """Start ``threads`` daemon threads running ``q.work`` (given its thread number when
    ``pass_index``), remembered in ``q.threads``; ``q.stopping`` is cleared first."""
    q.stopping = False
    for k in range(threads):
        t = threading.Thread(target=q.work, args=(k,) if pass_index else (), daemon=True)
        t.start()
        q.threads.append(t)


def stop_threads(q) -> None:
    """Set ``q.stopping`` and wait for the threads ``start_threads`` started."""
    q.stopping = True
    for t in q.threads:
        t.join()
    q.threads.clear()
