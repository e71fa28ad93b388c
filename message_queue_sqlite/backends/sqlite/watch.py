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
wakes meanwhile). During a burst of own writes (each within ``BURST_S`` of the one before,
as a sender's loop makes them) the watch stays muted between them, and is unmuted by that
timer once they pause: changing the mask costs two system calls (a path lookup each), about
a tenth of a one-row send, and between writes so close together another process's commit is
seen by the next write's own look, or by the timer's, within ``TRAILING_NOTIFY_MS``.
Other processes' writes are reported at once, except in a stream of them (many reports in a
few milliseconds): then at most every ``NOTIFY_GAP_S`` (the writes in between together).

The watcher degrades, it never stops: if the inotify loop fails (a read error, anything
unexpected), the thread logs it once and polls ``PRAGMA data_version`` from then on, as it
does where inotify is unavailable. An inotify queue overflow (the kernel dropped events)
is reported as a change of every shard.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import select
import sqlite3
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000  # the kernel's queue was full: events were dropped
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WATCHED = IN_MODIFY | IN_CREATE | IN_MOVED_TO
WATCHED_MUTED = IN_CREATE | IN_MOVED_TO  # new shard files are news even during own writes
CLOCK_MONOTONIC = 1
POLL_INTERVAL_S = 0.002  # fallback only
POLL_RETRY_S = 0.1  # after the fallback's own error, before it opens its connections again
TRAILING_NOTIFY_MS = 2  # after a burst of WAL writes, notify once more when it pauses this long
BURST_S = 0.0005  # an own write ending this soon after the previous one leaves the watch muted
# In a stream of other processes' commits (STREAM_NOTIFIES reports within STREAM_SPAN_S) they
# are reported at most every NOTIFY_GAP_S: a sender next door committing one task at a time
# woke idle workers once per commit, each claiming one task in a write transaction of its
# own. Otherwise each is reported at once: a round trip's few commits are never held (a
# commit's WAL writes are seen before it is visible, so its last read batch must not wait).
NOTIFY_GAP_S = 0.001
STREAM_NOTIFIES = 8
STREAM_SPAN_S = 0.004
EVENT_HEADER = struct.Struct("@iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class _TimerSpec(ctypes.Structure):  # struct itimerspec: interval, then first expiry
    _fields_ = [("interval_s", ctypes.c_long), ("interval_ns", ctypes.c_long),
                ("value_s", ctypes.c_long), ("value_ns", ctypes.c_long)]


class ChangeWatcher:
    """Calls ``on_change(names, trailing)`` from its own daemon thread when shard files are
    written: the base names of the databases whose WAL was written, or that appeared (None:
    look at every shard), and ``trailing`` for the one more call once a burst of writes
    pauses. Whose commit it was is for the caller to tell (the events do not say); writes
    this process makes between ``mute()`` and ``unmute()`` are not reported. Databases
    opened after the start are announced with ``add_database``."""

    def __init__(self, folder: str, db_paths: Sequence[str],
                 on_change: Callable[[set[str] | None, bool], None], event_name: re.Pattern[bytes]):
        self._folder = folder
        self._folder_bytes = os.fsencode(folder)
        self._db_paths = list(db_paths)  # only ever appended to: the polling loop reads it unlocked
        self._paths_lock = threading.Lock()
        self._on_change = on_change
        self._event_name = event_name  # group 1: the database's name in an event's name field
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._pid = os.getpid()
        self._libc: ctypes.CDLL | None = None
        self._wd = -1
        self._mute_lock = threading.Lock()
        self._muted = 0  # own writes in progress
        self._mask_muted = False  # the folder watch's mask leaves modifications out
        self._look_pending = False  # the timer is set for a look after own writes
        self._last_unmute = 0.0
        self._inotify_fd = self._open_inotify()
        self._timer_fd = self._open_timer() if self._inotify_fd is not None else None
        self._thread = threading.Thread(target=self._run, name="mqs-change-watcher", daemon=True)
        self._thread.start()

    def add_database(self, path: str) -> None:
        """A database opened after the start (a shard file another process added): the
        folder watch covers it already, the polling loop needs a connection to it."""
        with self._paths_lock:
            if path not in self._db_paths:
                self._db_paths.append(path)

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
            if not self._mask_muted and self._wd >= 0:
                self._mask_muted = True
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
            now = time.monotonic()
            if now - self._last_unmute >= BURST_S:  # not in a burst: report at once again
                self._mask_muted = False
                self._set_mask(WATCHED)
            self._last_unmute = now
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
            elif self._mask_muted and self._wd >= 0:  # a burst ended muted: before the last look
                self._mask_muted = False
                self._set_mask(WATCHED)
        # A look while own writes go on skips a shard whose lock a write holds (that write
        # looks when it ends, and if it fails, the next look comes): the watcher never makes
        # a busy writer wait. The last look, once the writes paused, waits for the lock.
        self._notify(None, trailing=not again)

    # -- the watcher thread ----------------------------------------------------------
    def _run(self) -> None:
        """The inotify loop while it works, then (or where inotify is unavailable) polling:
        a watcher thread that ended would leave other processes' commits unreported until
        the callers' own fallback polls (a second for an idle worker)."""
        if self._inotify_fd is not None:
            keep_descriptors = False
            try:
                self._run_inotify()
            except Exception as exc:
                # EBADF: a descriptor of ours was closed by someone else, and its number may
                # belong to another file by now (closing a database file's descriptor would
                # drop this process's locks on it): leave both open rather than guess.
                keep_descriptors = isinstance(exc, OSError) and exc.errno == errno.EBADF
                if not self._stop.is_set():
                    log.warning("change watcher of %s failed (%r); polling PRAGMA data_version "
                                "every %g ms from now on", self._folder, exc, POLL_INTERVAL_S * 1000,
                                exc_info=True)
            self._end_inotify(close=not keep_descriptors)
            if self._stop.is_set():
                return
        self._run_polling()

    def _end_inotify(self, close: bool) -> None:
        """No more mask changes or timers (muting is off for good), then the descriptors go."""
        with self._mute_lock:
            self._wd = -1
            self._look_pending = False
            fds, self._inotify_fd, self._timer_fd = (self._inotify_fd, self._timer_fd), None, None
        if close:
            for fd in fds:
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _run_inotify(self) -> None:
        fd, timer = self._inotify_fd, self._timer_fd
        assert fd is not None and timer is not None
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(timer, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        burst: set[str] = set()
        burst_everywhere = False  # events were dropped during this burst
        # Reported at most every NOTIFY_GAP_S: what came meanwhile waits for the gap's end
        held: set[str] = set()
        held_everywhere = False
        last_notify = -NOTIFY_GAP_S
        recent: collections.deque[float] = collections.deque(maxlen=STREAM_NOTIFIES)  # report times
        while not self._stop.is_set():
            # The WAL write is seen before its commit is visible to readers (the commit mark
            # lands in the shared-memory index, which inotify does not report): one more
            # notification once the writes pause lets a reader that looked too early see it.
            if held or held_everywhere:
                wait_ms: float | None = max(0.0, (last_notify + NOTIFY_GAP_S - time.monotonic()) * 1000)
            else:
                wait_ms = TRAILING_NOTIFY_MS if burst or burst_everywhere else None
            ready = poller.poll(wait_ms)
            if not ready:
                if held or held_everywhere:
                    self._notify(None if held_everywhere else held)
                    last_notify = time.monotonic()
                    recent.append(last_notify)
                    held, held_everywhere = set(), False
                    continue
                self._notify(None if burst_everywhere else burst, trailing=True)
                burst = set()
                burst_everywhere = False
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
            if names is None:  # events were dropped: any shard may have been written
                held_everywhere = burst_everywhere = True
            elif names:
                held |= names
                burst |= names
            else:
                continue
            now = time.monotonic()
            streaming = len(recent) == STREAM_NOTIFIES and now - recent[0] < STREAM_SPAN_S
            if not streaming or now - last_notify >= NOTIFY_GAP_S:
                self._notify(None if held_everywhere else held)
                last_notify = now
                recent.append(now)
                held, held_everywhere = set(), False

    def _databases_written(self, data: bytes) -> set[str] | None:
        """Base names of the shard databases whose WAL was written (a commit) or that appeared;
        None when the kernel's queue overflowed (events were dropped). A commit writes many
        pages, each an event: the names are picked out by one regular expression over the
        whole read, not event by event. The overflow event's watch is -1, so its header holds
        0xFF bytes, which the folder's other events seldom hold (small watch numbers, masks and
        lengths; only a rename's cookie or an odd file name might): one search for that byte
        decides whether the headers are read at all, so a normal read costs ~10 ns more."""
        if 0xFF in data and self._queue_overflowed(data):
            return None
        return {os.fsdecode(name) for name in self._event_name.findall(data)}

    @staticmethod
    def _queue_overflowed(data: bytes) -> bool:
        """Whether one of the events read is the queue overflow (its header says so)."""
        offset, end = 0, len(data) - EVENT_HEADER.size
        while offset <= end:
            _, mask, _, name_len = EVENT_HEADER.unpack_from(data, offset)
            if mask & IN_Q_OVERFLOW:
                return True
            offset += EVENT_HEADER.size + name_len
        return False

    def _run_polling(self) -> None:
        """Report the databases whose ``PRAGMA data_version`` changed, every 2 ms. An error
        here (a file replaced, an I/O error) must not end the thread either: it is logged
        once, every shard is looked at, and the connections are opened afresh."""
        failed = False
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception:
                if not failed:
                    failed = True
                    log.warning("change watcher of %s: polling failed; retrying every %g s",
                                self._folder, POLL_RETRY_S, exc_info=True)
                self._notify(None, trailing=True)  # cannot tell what changed meanwhile
                self._stop.wait(POLL_RETRY_S)

    def _poll(self) -> None:
        """Poll until stopped, picking up the databases added meanwhile. Each is looked at
        once when its polling begins: a commit made before its first reading would otherwise
        go unreported (after a failed inotify loop, or one made just after the shard was
        opened)."""
        conns: list[sqlite3.Connection] = []
        names: list[str] = []
        last: list[int] = []
        try:
            while True:
                if len(conns) < len(self._db_paths):
                    added = self._db_paths[len(conns):]
                    for path in added:
                        # mode=rw: a reopen must not bring back a shard file deleted meanwhile
                        conns.append(sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=rw",
                                                     uri=True, check_same_thread=False))
                        names.append(os.path.basename(path))
                        last.append(conns[-1].execute("PRAGMA data_version").fetchone()[0])
                    self._notify({os.path.basename(path) for path in added}, trailing=True)
                now = [c.execute("PRAGMA data_version").fetchone()[0] for c in conns]
                if now != last:
                    self._notify({name for name, a, b in zip(names, now, last, strict=True) if a != b},
                                 trailing=True)
                    last = now
                if self._stop.wait(POLL_INTERVAL_S):
                    return
        finally:
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
