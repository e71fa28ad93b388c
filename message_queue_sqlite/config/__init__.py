"""The original package's ``message_queue_sqlite.config.Config`` (same fields, more options)."""

from message_queue_sqlite.core.config import Config

__all__ = ["Config"]
