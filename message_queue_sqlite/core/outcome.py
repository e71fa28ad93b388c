"""What a sender learns when its task ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from message_queue_sqlite.core.status import TaskStatus


@dataclass(slots=True)
class TaskOutcome:
    task_id: str
    task_name: str
    status: int  # FINISHED or FAILED
    value: Any  # the return value (as stored: JSON round trip), None on failure
    error: str | None  # the error message on failure
    traceback: str | None
    start_time: float | None
    end_time: float | None
    attempts: int

    @property
    def ok(self) -> bool:
        return self.status == TaskStatus.FINISHED

    def as_callback_dict(self) -> dict[str, Any]:
        """The dict the original package's callbacks receive; ``result`` is the error
        message for a failed task, as it was there."""
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "status": int(self.status),
            "result": self.value if self.status == TaskStatus.FINISHED else self.error,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "traceback": self.traceback,
            "attempts": self.attempts,
        }
