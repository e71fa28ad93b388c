from message_queue_sqlite.core.registry import TaskRegistry

Tasks = TaskRegistry  # the original's name for the registry

__all__ = ["TaskRegistry", "Tasks"]
