"""Executors: what runs the claims a worker leased (the interface is in base.py)."""

from message_queue_sqlite.engine.executors.base import Executor
from message_queue_sqlite.engine.executors.inline import InlineExecutor
from message_queue_sqlite.engine.executors.threads import ThreadExecutor

__all__ = ["Executor", "InlineExecutor", "ThreadExecutor"]
