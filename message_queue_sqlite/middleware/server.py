from message_queue_sqlite.api.compat import Server

__all__ = ["Server"]
