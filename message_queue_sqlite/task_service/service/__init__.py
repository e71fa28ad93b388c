from message_queue_sqlite.task_service.service.services import OutcomeDispatcher

__all__ = ["OutcomeDispatcher"]
