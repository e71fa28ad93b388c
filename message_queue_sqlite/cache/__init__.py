"""Cache mode, where the original package kept it.

The original held cached arguments in one process-wide dict. Here each queue object
keeps its own (``MessageQueue.engine.cache``), keyed by task id, so two queues in one
process never see each other's arguments. A task sent with ``use_cache=True`` (or
decorated so) stores no arguments in the queue file; only workers of the same queue
object may run it, and if that object closes or its process dies first, the task ends
FAILED with the reason.
"""
