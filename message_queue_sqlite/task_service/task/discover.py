from message_queue_sqlite.api.compat import discover_and_mount_ts

__all__ = ["discover_and_mount_ts"]
