"""Where the original ran callbacks: now the per-queue ``OutcomeDispatcher``."""

from message_queue_sqlite.engine.dispatcher import OutcomeDispatcher

__all__ = ["OutcomeDispatcher"]
