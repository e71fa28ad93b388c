"""Storage backends behind one interface (``base``). Only the API layer picks one."""

from __future__ import annotations

from message_queue_sqlite.backends.base import Backend
from message_queue_sqlite.core.config import Config
from message_queue_sqlite.core.errors import MissingDependencyError


def open_backend(config: Config, shard_count: int | None = None) -> Backend:
    """The backend ``config`` selects: in memory for immediate mode (unless
    ``immediate_use_memory=False``), PostgreSQL for a postgresql:// URL, else SQLite files."""
    if config.immediate and config.immediate_use_memory:  # before any path or URL is looked at
        from message_queue_sqlite.backends.sqlite.memory import MemoryBackend

        return MemoryBackend(shard_count or config.middleware_num, config.durability)
    url = config.broker_url
    if url and url.startswith(("postgresql://", "postgres://")):
        try:
            from message_queue_sqlite.backends.postgres import PostgresBackend
        except ImportError as exc:
            if (exc.name or "").startswith("message_queue_sqlite"):
                raise  # a bug of ours, not a missing dependency
            raise MissingDependencyError(
                "the PostgreSQL backend needs psycopg 3: pip install 'message_queue_sqlite[postgres]'"
                f" ({exc})") from exc
        return PostgresBackend(url, config)
    from message_queue_sqlite.backends.sqlite import SQLiteBackend

    if config.database is not None:
        if url:
            raise ValueError(f"Config.database={config.database!r} is an SQLite file: it cannot go with "
                             f"broker_url={url!r}; give one of them")
        return SQLiteBackend.in_database(config.database, config.durability)
    folder = url[len("sqlite://"):] if url and url.startswith("sqlite://") else config.middleware_path
    return SQLiteBackend(folder, shard_count or config.middleware_num, config.durability)
