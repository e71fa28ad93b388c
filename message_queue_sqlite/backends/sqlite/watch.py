"""Noticing that another process committed to a shard, without polling the database.

On Linux an inotify watch on the queue folder reports every write to a ``-wal`` file at
once and costs nothing while idle. The watch is on the folder, never on the database
files: opening and closing a descriptor on a database inode would drop this process's
POSIX locks on it (sqlite.org/howtocorrupt.html, section 2). Elsewhere a thread polls
``PRAGMA data_version`` (which changes only when another connection commits).

This process's own writes are muted (the watch stops reporting modifications while one is
in progress): each would otherwise wake the watcher thread in the middle of the next
step of the same round trip, and a woken thread competes for the interpreter lock. A
commit of another process that lands while muted is caught by the writer itself (it
looks at ``data_version`` when its write ends) or, for a commit still in flight then, by
one more look at every shard once this process's writes pause (a timer, so nothing
wakes meanwhile).
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
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WATCHED = IN_MODIFY | IN_CREATE | IN_MOVED_TO
WATCHED_MUTED = IN_CREATE | IN_MOVED_TO  # new shard files are news even during own writes
CLOCK_MONOTONIC = 1
POLL_INTERVAL_S = 0.002  # fallback only
TRAILING_NOTIFY_MS = 2  # after a burst of WAL writes, notify once more when it pauses this long


class _TimerSpec(ctypes.Structure):  # struct itimerspec: interval, then first expiry
    _fields_ = [("interval_s", ctypes.c_long), ("interval_ns", ctypes.c_long),
                ("value_s", ctypes.c_long), ("value_ns", ctypes.c_long)]


class ChangeWatcher:
    """Calls ``on_change(names, trailing)`` from its own daemon thread when shard files are
    written: the base names of the databases whose WAL was written, or that appeared (None:
    look at every shard), and ``trailing`` for the one more call once a burst of writes
    pauses. Whose commit it was is for the caller to tell (the events do not say); writes
    this process makes between ``mute()`` and ``unmute()`` are not reported."""

    def __init__(self, folder: str, db_paths: Sequence[str],
                 on_change: Callable[[set[str] | None, bool], None], event_name: re.Pattern[bytes]):
        self._folder = folder
        self._folder_bytes = os.fsencode(folder)
        self._db_paths = list(db_paths)
        self._on_change = on_change
        self._event_name = event_name  # group 1: the database's name in an event's name field
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._pid = os.getpid()
        self._libc: ctypes.CDLL | None = None
        self._wd = -1
        self._mute_lock = threading.Lock()
        self._muted = 0  # own writes in progress
        self._look_pending = False  # the timer is set for a look after own writes
        self._last_unmute = 0.0
        self._inotify_fd = self._open_inotify()
        self._timer_fd = self._open_timer() if self._inotify_fd is not None else None
        target = self._run_inotify if self._inotify_fd is not None else self._run_polling
        self._thread = threading.Thread(target=target, name="mqs-change-watcher", daemon=True)
        self._thread.start()

    def _open_inotify(self) -> int | None:
        try:
            # PyDLL: these calls return at once, so they keep the interpreter lock (a CDLL
            # call releases and re-takes it, a chance for another thread to cut in)
            libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                return None
            wd = libc.inotify_add_watch(fd, self._folder_bytes, WATCHED)
            if wd < 0:
                os.close(fd)
                return None
            self._libc, self._wd = libc, wd
            return fd
        except (OSError, AttributeError):
            return None

    def _open_timer(self) -> int | None:
        assert self._libc is not None
        try:
            fd = self._libc.timerfd_create(CLOCK_MONOTONIC, IN_NONBLOCK | IN_CLOEXEC)
        except AttributeError:
            fd = -1
        if fd < 0:
            self._wd = -1  # no timer for the look after own writes: never mute them
            return None
        return fd

    # -- muting this process's own writes --------------------------------------------
    def mute(self) -> None:
        """An own write begins: its file writes are not news (nested and concurrent calls
        count; the last ``unmute`` turns reporting back on)."""
        if self._wd < 0 or os.getpid() != self._pid:  # a forked child shares the watch
            return
        with self._mute_lock:
            self._muted += 1
            if self._muted == 1 and self._wd >= 0:
                self._set_mask(WATCHED_MUTED)

    def unmute(self) -> None:
        """An own write ended (committed or rolled back)."""
        if os.getpid() != self._pid:
            return
        with self._mute_lock:
            if self._muted:  # (a mute made while muting was off counted nothing)
                self._muted -= 1
            if self._muted or self._wd < 0:  # (muting off, or closed, meanwhile)
                return
            self._set_mask(WATCHED)
            self._last_unmute = time.monotonic()
            if not self._look_pending:
                self._look_pending = True
                self._set_timer(TRAILING_NOTIFY_MS / 1000)

    def _set_mask(self, mask: int) -> None:
        """Replace the folder watch's event mask (same watch, queued events kept)."""
        assert self._libc is not None
        wd = self._libc.inotify_add_watch(self._inotify_fd, self._folder_bytes, mask)
        if wd != self._wd:  # the folder was replaced, or the call failed: stop muting
            log.warning("queue folder %s: cannot mute own writes (watch %d, got %d); every "
                        "write is reported from now on", self._folder, self._wd, wd)
            self._wd = -1
            if wd >= 0:
                self._libc.inotify_add_watch(self._inotify_fd, self._folder_bytes, WATCHED)

    def _set_timer(self, seconds: float) -> None:
        assert self._libc is not None
        ns = max(1000, int(seconds * 1e9))  # zero would disarm it
        spec = _TimerSpec(0, 0, ns // 1_000_000_000, ns % 1_000_000_000)
        self._libc.timerfd_settime(self._timer_fd, 0, ctypes.byref(spec), None)

    def _timer_fired(self) -> None:
        """Look at every shard: a commit of another process that was in flight when an own
        write ended (its WAL written while muted) is visible now. While own writes go on, the
        look repeats, and the last comes at least the trailing delay after they paused."""
        try:
            os.read(self._timer_fd, 8)
        except BlockingIOError:
            pass
        pause = TRAILING_NOTIFY_MS / 1000
        with self._mute_lock:
            since = time.monotonic() - self._last_unmute
            again = self._wd >= 0 and (since < pause or self._muted > 0)
            self._look_pending = again
            if again:  # (a write still in progress: look again a full delay later)
                self._set_timer(pause - since if since < pause else pause)
        # A look while own writes go on skips a shard whose lock a write holds (that write
        # looks when it ends, and if it fails, the next look comes): the watcher never makes
        # a busy writer wait. The last look, once the writes paused, waits for the lock.
        self._notify(None, trailing=not again)

    # -- the watcher thread ----------------------------------------------------------
    def _run_inotify(self) -> None:
        fd, timer = self._inotify_fd, self._timer_fd
        assert fd is not None and timer is not None
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(timer, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        burst: set[str] = set()
        while not self._stop.is_set():
            # The WAL write is seen before its commit is visible to readers (the commit mark
            # lands in the shared-memory index, which inotify does not report): one more
            # notification once the writes pause lets a reader that looked too early see it.
            ready = poller.poll(TRAILING_NOTIFY_MS if burst else None)
            if not ready:
                self._notify(burst, trailing=True)
                burst = set()
                continue
            if self._stop.is_set():
                break
            if any(ready_fd == timer for ready_fd, _ in ready):
                self._timer_fired()
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
        os.close(timer)

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

    def _notify(self, names: set[str] | None, trailing: bool = False) -> None:
        try:
            self._on_change(names, trailing)
        except Exception:  # a broken listener must not kill the watcher
            log.exception("change listener failed")

    def close(self) -> None:
        with self._mute_lock:
            self._wd = -1  # the descriptors close with the thread: no more mask changes
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)
