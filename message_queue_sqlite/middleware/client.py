from message_queue_sqlite.api.compat import Client

__all__ = ["Client"]
