from message_queue_sqlite.core.registry import TaskDefinition, task_function

__all__ = ["TaskDefinition", "task_function"]
