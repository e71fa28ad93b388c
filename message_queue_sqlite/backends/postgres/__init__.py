"""PostgreSQL backend (needs psycopg 3: ``pip install 'message_queue_sqlite[postgres]'``)."""

from message_queue_sqlite.backends.postgres.backend import PostgresBackend, PostgresShard
from message_queue_sqlite.backends.postgres.connection import DEFAULT_SCHEMA, SCHEMA_VERSION, Target

__all__ = ["DEFAULT_SCHEMA", "SCHEMA_VERSION", "PostgresBackend", "PostgresShard", "Target"]
