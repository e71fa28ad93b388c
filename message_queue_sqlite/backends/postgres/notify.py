"""The change feed: one dedicated connection LISTENs on the schema's channel.

Every statement or transaction that makes work ready or ends a task (enqueue,
completions, release, requeue, lease recovery, orphaned cache-mode tasks) calls
``pg_notify`` once; PostgreSQL delivers it at commit. Notifications sent by this queue
object's own writer session are skipped (its engine already rang its own bell) unless
their payload is ``*`` (a retry was scheduled: its idle workers must recompute their
wake-up time). The thread waits on the listening socket (and a pipe that ``close``
writes to) with ``poll``, so it costs nothing while idle; after PING_AFTER_S of silence it pings, and
a ping unanswered within PING_TIMEOUT_S breaks the connection (a dead server or network is
noticed within 10 s, even behind something that acknowledges TCP but never answers, and
logged). If the connection breaks it
reconnects with back-off, calling ``on_change`` after each attempt (a slow poll while
PostgreSQL is away) and once more when listening again, since notifications sent
meanwhile are lost.
"""

from __future__ import annotations

import logging
import os
import random
import select
import threading
from collections.abc import Callable, Collection

import psycopg
from psycopg import pq

from message_queue_sqlite.backends.postgres.connection import Target, connect

log = logging.getLogger(__name__)

PING_AFTER_S = 5.0  # a silent connection is checked this often (keepalives also watch it)
PING_TIMEOUT_S = 5.0  # a ping unanswered this long: the connection is dead (a blackhole ACKs, never answers)
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 5.0


class ChangeListener:
    """Calls ``on_change`` from its own daemon thread for each notification on the channel."""

    def __init__(self, target: Target, on_change: Callable[[], None],
                 own_sessions: Callable[[], Collection[int]] = frozenset):
        self._target = target
        self._on_change = on_change
        self._own_sessions = own_sessions
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self.pid = os.getpid()
        self.listening = threading.Event()  # set while LISTEN is active (tests wait on it)
        self._thread = threading.Thread(target=self._run, name="mqs-pg-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = BACKOFF_FIRST_S
        while not self._stop.is_set():
            conn: psycopg.Connection | None = None
            try:
                conn = connect(self._target)
                conn.io_timeout = PING_TIMEOUT_S
                conn.add_notify_handler(  # those read during a ping
                    lambda n: self._notify() if self._relevant(n.pid, n.payload) else None)
                conn.execute(f'LISTEN "{self._target.channel}"')
                delay = BACKOFF_FIRST_S
                self._notify()  # whatever was sent while we were not listening
                self.listening.set()
                self._listen(conn)
            except (psycopg.Error, OSError) as exc:
                if not self._stop.is_set():
                    log.warning("PostgreSQL change feed on %s lost (%s); reconnecting in %.2f s, "
                                "polling meanwhile", self._target.location, exc, delay)
            except Exception:  # never let the feed die: log, reconnect, carry on
                log.exception("PostgreSQL change feed on %s failed; reconnecting", self._target.location)
            finally:
                self.listening.clear()
                if conn is not None:
                    conn.close()
            if self._stop.is_set():
                break
            self._notify()  # fallback: let workers and waiters look for themselves
            self._stop.wait(random.uniform(delay / 2, delay))  # back-off before reconnecting
            delay = min(delay * 2, BACKOFF_MAX_S)
        os.close(self._wake_r)

    def _listen(self, conn: psycopg.Connection) -> None:
        pgconn = conn.pgconn
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            ready = poller.poll(PING_AFTER_S * 1000)
            if self._stop.is_set():
                return
            if not ready:
                conn.execute("SELECT 1")  # raises if the server went away silently
                continue
            pgconn.consume_input()
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError("the listening connection was closed by the server")
            got = False
            while (note := pgconn.notifies()) is not None:
                got = got or self._relevant(note.be_pid, note.extra.decode())
            if got:
                self._notify()

    def _relevant(self, session: int, payload: str) -> bool:
        """A payload of '' marks a change the writing process already knows about: skip it
        when one of our own sessions wrote it ('*' is for everyone)."""
        return payload == "*" or session not in self._own_sessions()

    def _notify(self) -> None:
        try:
            self._on_change()
        except Exception:  # a broken listener must not kill the feed
            log.exception("change listener failed")

    def close(self) -> None:
        if self._stop.is_set():
            return
        # The byte first, then the flag: the thread closes the read end once it sees the flag
        # (it may be between polls, connecting or backing off), and a write after that would
        # fail with EPIPE. Woken before the flag is set, it polls again, at once, until it is.
        os.write(self._wake_w, b"x")
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        os.close(self._wake_w)
