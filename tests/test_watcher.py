"""The SQLite change watcher degrades, it never stops: a failed inotify read turns it into
the ``PRAGMA data_version`` poller, a dropped-events overflow becomes a look at every shard,
and the poller follows shard files adopted after it started. Commits come from other
connections (another backend object, as another process would make them)."""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import wait_until

from message_queue_sqlite.backends.base import NewTask
from message_queue_sqlite.backends.sqlite import watch as watch_module
from message_queue_sqlite.backends.sqlite.backend import SHARD_EVENT_NAME, SQLiteBackend
from message_queue_sqlite.backends.sqlite.watch import ChangeWatcher

IN_MODIFY, IN_CREATE, IN_Q_OVERFLOW = 0x2, 0x100, 0x4000


def _new_task() -> NewTask:
    return NewTask("t", "{}", 0, "sender", False, None, 0, None, 0.0, time.time())


def _event(wd: int, mask: int, name: bytes = b"", cookie: int = 0) -> bytes:
    """One struct inotify_event as the kernel writes it: the name NUL-padded to 16 bytes."""
    field = name + b"\0" * (16 - len(name) % 16) if name else b""
    return struct.pack("@iIII", wd, mask, cookie, len(field)) + field


OVERFLOW = _event(-1, IN_Q_OVERFLOW)


def _on_inotify_read(monkeypatch: pytest.MonkeyPatch, watcher: ChangeWatcher,
                     action: Callable[[], bytes]) -> threading.Event:
    """``os.read`` is the os module's, shared by the whole process: the first read of the
    watcher's inotify descriptor is ``action()`` instead, every other read is the real one.
    The event returned is set once that read happened."""
    real_read = os.read
    fd = watcher._inotify_fd
    assert fd is not None
    done = threading.Event()

    def read(target: int, size: int) -> bytes:
        if target == fd and not done.is_set():
            done.set()
            return action()
        return real_read(target, size)

    monkeypatch.setattr(watch_module.os, "read", read)
    return done


def _each_reported(reported: threading.Event, commit: Callable[[], object], what: str) -> None:
    """Every one of a few commits is reported (``reported`` is cleared before each)."""
    for _ in range(3):
        reported.clear()
        commit()
        wait_until(reported.is_set, timeout=5, what=what)


@pytest.fixture
def pair(tmp_path) -> Iterator[tuple[SQLiteBackend, SQLiteBackend]]:
    """Our backend and another process's (its own connections) on a one-shard folder."""
    folder = str(tmp_path / "q")
    ours, theirs = SQLiteBackend(folder, 1), SQLiteBackend(folder, 1)
    yield ours, theirs
    ours.close()
    theirs.close()


def _raising(error: BaseException) -> Callable[[], bytes]:
    def read() -> bytes:
        raise error

    return read


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"),
                                   OSError(errno.EBADF, "Bad file descriptor"),
                                   RuntimeError("unexpected")],
                         ids=["EIO", "EBADF", "unexpected"])
def test_a_failed_inotify_read_degrades_to_polling(pair, monkeypatch, caplog, error):
    """The watcher thread used to end on any read error but EAGAIN, and from then on no
    other process's commit woke anyone until the callers' fallback polls. Now it logs once
    and polls: the commit whose event it failed to read is reported, and so are later ones,
    also after own writes (muting is off for good)."""
    ours, theirs = pair
    reported = threading.Event()
    with caplog.at_level(logging.WARNING, logger=watch_module.__name__):
        ours.watch(reported.set)
        watcher = ours._watcher
        failed = _on_inotify_read(monkeypatch, watcher, _raising(error))
        theirs.shards[0].enqueue([_new_task()])
        wait_until(failed.is_set, timeout=5, what="the failing read")
        wait_until(reported.is_set, timeout=5, what="the commit whose event was lost")

        def own_then_theirs() -> None:
            ours.shards[0].enqueue([_new_task()])  # mutes and unmutes: must not break it
            theirs.shards[0].enqueue([_new_task()])

        _each_reported(reported, own_then_theirs, "a later commit, seen by polling")
        assert watcher._thread.is_alive()
    warnings = [r for r in caplog.records if r.name == watch_module.__name__]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "polling" in warnings[0].getMessage()
    ours.close()
    assert not watcher._thread.is_alive()


def test_the_overflow_event_is_found_in_a_read():
    """struct inotify_event headers are read only when the read holds a 0xFF byte (the
    overflow event's watch is -1); then the headers decide, not a byte pattern."""
    watcher = ChangeWatcher.__new__(ChangeWatcher)  # the parsing alone: no thread, no watch
    watcher._event_name = SHARD_EVENT_NAME
    wal = _event(1, IN_MODIFY, b"mq-shard-0.db-wal")
    assert watcher._databases_written(wal + _event(1, IN_MODIFY, b"mq-shard-2.db")) == {
        "mq-shard-0.db", "mq-shard-2.db"}
    assert watcher._databases_written(wal + OVERFLOW) is None
    assert watcher._databases_written(OVERFLOW) is None
    assert watcher._databases_written(OVERFLOW + wal) is None  # events queued after it, read at once
    # 0xFF bytes that are no overflow: a rename's cookie; a file name that ends in the bytes of
    # watch -1, followed by an event of watch 64, which spell the overflow's mask after them
    odd = _event(1, IN_CREATE, b"x" * 11 + b"\xff" * 4, cookie=0xFFFFFFFF) + _event(64, IN_MODIFY, b"y")
    assert struct.pack("@iI", -1, IN_Q_OVERFLOW) in odd
    assert watcher._databases_written(odd + wal) == {"mq-shard-0.db"}


def test_an_inotify_queue_overflow_is_reported_as_a_look_at_every_shard(tmp_path, monkeypatch):
    """The kernel drops events once the watch's queue is full and says so with one overflow
    event; it used to be ignored (no shard name in it). Now every shard is looked at, at once
    and once the writes pause."""
    calls: list[tuple[frozenset[str] | None, bool]] = []
    watcher = ChangeWatcher(str(tmp_path), [], lambda names, trailing: calls.append(
        (None if names is None else frozenset(names), trailing)), SHARD_EVENT_NAME)
    real_read = os.read

    def overflowed() -> bytes:  # what the kernel had queued, then the overflow event
        return real_read(watcher._inotify_fd, 65536) + OVERFLOW

    try:
        read = _on_inotify_read(monkeypatch, watcher, overflowed)
        (tmp_path / "not-a-shard").write_bytes(b"")  # an event, so the watcher reads
        wait_until(read.is_set, timeout=5, what="the read")
        wait_until(lambda: (None, True) in calls, timeout=5, what="the look at every shard")
        assert calls[0] == (None, False), calls
    finally:
        watcher.close()


@pytest.mark.parametrize("inotify", ["unavailable", "failed"])
def test_polling_covers_shards_adopted_after_it_started(tmp_path, monkeypatch, inotify):
    """Where inotify is unavailable (or after it failed) the watcher polls ``PRAGMA
    data_version``: it used to poll only the shards open when it started, so commits to a
    shard file another process added later woke no one."""
    if inotify == "unavailable":
        monkeypatch.setattr(ChangeWatcher, "_open_inotify", lambda self: None)
    folder = str(tmp_path / "q")
    ours = SQLiteBackend(folder, 1)
    theirs = SQLiteBackend(folder, 2)  # another process raised middleware_num
    reported = threading.Event()
    try:
        ours.watch(reported.set)
        watcher = ours._watcher
        assert (watcher._inotify_fd is None) == (inotify == "unavailable")
        assert ours.adopt_new_shards()  # as its housekeeper or an idle worker would
        if inotify == "failed":
            failed = _on_inotify_read(monkeypatch, watcher, _raising(OSError(errno.EIO, "I/O error")))
            theirs.shards[0].enqueue([_new_task()])
            wait_until(failed.is_set, timeout=5, what="the failing read")
            wait_until(reported.is_set, timeout=5, what="the commit to shard 0")
            wait_until(lambda: watcher._inotify_fd is None, timeout=5, what="polling")
        _each_reported(reported, lambda: theirs.shards[1].enqueue([_new_task()]),
                       "a commit to the adopted shard")
    finally:
        ours.close()
        theirs.close()


def test_a_failing_poll_keeps_polling(pair, monkeypatch, caplog):
    """The poller's own errors (here its connection cannot be opened once) are logged once
    and retried; commits are reported afterwards."""
    monkeypatch.setattr(ChangeWatcher, "_open_inotify", lambda self: None)
    real_connect = watch_module.sqlite3.connect
    failures = []

    def connect(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "mqs-change-watcher" and not failures:
            failures.append(args)
            raise watch_module.sqlite3.OperationalError("unable to open database file")
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(watch_module.sqlite3, "connect", connect)
    ours, theirs = pair
    reported = threading.Event()
    with caplog.at_level(logging.WARNING, logger=watch_module.__name__):
        ours.watch(reported.set)
        wait_until(lambda: failures, timeout=5, what="the failing connection")
        _each_reported(reported, lambda: theirs.shards[0].enqueue([_new_task()]),
                       "a commit after the poll failed")
        assert ours._watcher._thread.is_alive()
    assert len([r for r in caplog.records if r.name == watch_module.__name__]) == 1
