"""SQLite backend: the embedded default, standard library only."""

from message_queue_sqlite.backends.sqlite.backend import (
    SQLiteBackend,
    SQLiteShard,
    existing_shard_count,
    folder_mistake,
    shard_path,
)

__all__ = ["SQLiteBackend", "SQLiteShard", "existing_shard_count", "folder_mistake", "shard_path"]
