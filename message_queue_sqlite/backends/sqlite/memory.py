"""Immediate mode's storage: the SQLite shards, kept in this process's memory.

The same ``SQLiteShard`` (same SQL, same migrations, same kept counts) on another
connection string: an in-memory database of SQLite's "memdb" VFS, named uniquely for each
backend object (``memory_database``), so two queue objects of one process never share one,
and freed when the backend closes its connections. No folder or file is created, nothing
is written to disk, and the queue's ``path`` is not looked at (huey's immediate mode
switches to its MemoryStorage the same way).

What differs from the files, and why nothing is lost by it: no WAL (a write transaction
holds the shard's reader off for its short length instead; the busy timeout covers it), no
change watcher (no other process can reach this memory, and this object's own writes ring
its engine's bell), no shards appearing from elsewhere. A child made by ``fork()`` works on
a copy of the parent's tasks, which the parent never sees.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from message_queue_sqlite.backends.base import Backend
from message_queue_sqlite.backends.sqlite.backend import SQLiteShard
from message_queue_sqlite.backends.sqlite.clock import Clock
from message_queue_sqlite.backends.sqlite.connection import check_sqlite_library, memory_database


class MemoryShard(SQLiteShard):
    """A shard in memory: an ``SQLiteShard`` whose connections open an in-memory database."""

    def __init__(self, database: str, index: int, durability: str, clock: Clock | None = None):
        super().__init__(memory_database(f"{database}-shard-{index}"), index, durability, clock)
        self.name = f"memory-shard-{index}"

    def maintain(self) -> None:
        """Nothing to do: there is no WAL file to truncate in memory."""


class MemoryBackend(Backend):
    """``shard_count`` shards in memory, private to this object; freed by ``close``."""

    def __init__(self, shard_count: int, durability: str = "normal", clock: Clock | None = None):
        check_sqlite_library()
        self.clock = clock or Clock()
        database = f"mqs-{uuid.uuid4().hex}"  # unique in the process: this object's own memory
        self.location = f"memory:{database}"
        self.shards: list[MemoryShard] = []
        try:
            for index in range(shard_count):
                self.shards.append(MemoryShard(database, index, durability, self.clock))
        except BaseException:
            self.close()
            raise

    def watch(self, on_change: Callable[[], None]) -> None:
        """Nothing to watch: only this object's connections reach its memory, and its own
        writes ring its engine's bell."""

    def close(self) -> None:
        """Close every connection: SQLite frees an in-memory database with its last one."""
        for shard in self.shards:
            shard.close()
