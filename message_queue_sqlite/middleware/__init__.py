"""The original package's middleware: the server (workers) and client (sender) objects."""

from message_queue_sqlite.middleware.client import Client
from message_queue_sqlite.middleware.server import Server

__all__ = ["Client", "Server"]
