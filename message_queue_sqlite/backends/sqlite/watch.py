"""Noticing that another process committed to a shard, without polling the database.

On Linux an inotify watch on the queue folder reports every write to a ``-wal`` file at
once and costs nothing while idle. The watch is on the folder, never on the database
files: opening and closing a descriptor on a database inode would drop this process's
POSIX locks on it (sqlite.org/howtocorrupt.html, section 2). Elsewhere a thread polls
``PRAGMA data_version`` (which changes only when another connection commits).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import select
import sqlite3
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
POLL_INTERVAL_S = 0.002  # fallback only
TRAILING_NOTIFY_MS = 2  # after a burst of WAL writes, notify once more when it pauses this long


class ChangeWatcher:
    """Calls ``on_change(names, trailing)`` from its own daemon thread when shard files are
    written: the base names of the databases whose WAL was written, or that appeared, and
    ``trailing`` for the one more call once a burst of writes pauses. Whose commit it was is
    for the caller to tell (the events do not say)."""

    def __init__(self, folder: str, db_paths: Sequence[str],
                 on_change: Callable[[set[str], bool], None], event_name: re.Pattern[bytes]):
        self._folder = folder
        self._db_paths = list(db_paths)
        self._on_change = on_change
        self._event_name = event_name  # group 1: the database's name in an event's name field
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._inotify_fd = self._open_inotify()
        target = self._run_inotify if self._inotify_fd is not None else self._run_polling
        self._thread = threading.Thread(target=target, name="mqs-change-watcher", daemon=True)
        self._thread.start()

    def _open_inotify(self) -> int | None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                return None
            wd = libc.inotify_add_watch(fd, os.fsencode(self._folder),
                                        IN_MODIFY | IN_CREATE | IN_MOVED_TO)
            if wd < 0:
                os.close(fd)
                return None
            return fd
        except (OSError, AttributeError):
            return None

    def _run_inotify(self) -> None:
        fd = self._inotify_fd
        assert fd is not None
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        burst: set[str] = set()
        while not self._stop.is_set():
            # The WAL write is seen before its commit is visible to readers (the commit mark
            # lands in the shared-memory index, which inotify does not report): one more
            # notification once the writes pause lets a reader that looked too early see it.
            if not poller.poll(TRAILING_NOTIFY_MS if burst else None):
                self._notify(burst, trailing=True)
                burst = set()
                continue
            if self._stop.is_set():
                break
            try:
                data = os.read(fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    continue
                raise
            names = self._databases_written(data)
            if names:
                self._notify(names)
                burst |= names
        os.close(fd)

    def _databases_written(self, data: bytes) -> set[str]:
        """Base names of the shard databases whose WAL was written (a commit) or that appeared.
        A commit writes many pages, each an event: the names are picked out by one regular
        expression over the whole read, not event by event."""
        return {os.fsdecode(name) for name in self._event_name.findall(data)}

    def _run_polling(self) -> None:
        conns = [sqlite3.connect(p, check_same_thread=False) for p in self._db_paths]
        names = [os.path.basename(p) for p in self._db_paths]
        last = [c.execute("PRAGMA data_version").fetchone()[0] for c in conns]
        while not self._stop.wait(POLL_INTERVAL_S):
            now = [c.execute("PRAGMA data_version").fetchone()[0] for c in conns]
            if now != last:
                self._notify({name for name, a, b in zip(names, now, last, strict=True) if a != b},
                             trailing=True)
                last = now
        for c in conns:
            c.close()

    def _notify(self, names: set[str], trailing: bool = False) -> None:
        try:
            self._on_change(names, trailing)
        except Exception:  # a broken listener must not kill the watcher
            log.exception("change listener failed")

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)
