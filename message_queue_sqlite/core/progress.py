"""A running task's progress, as it reports it with ``current_task.progress(...)``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 1000  # characters of a progress message kept


@dataclass(frozen=True, slots=True)
class TaskProgress:
    """``done`` of ``total`` (or, with no total, a fraction when ``done`` is a float in 0..1,
    else a count), an optional ``message``, and when it was reported (``at``, epoch seconds)."""

    done: float
    total: float | None
    message: str | None
    at: float

    @property
    def fraction(self) -> float | None:
        """0..1 when the task gave a total or a fraction; None for a bare count."""
        if self.total is not None:
            return min(1.0, self.done / self.total)
        if isinstance(self.done, float) and 0.0 <= self.done <= 1.0:
            return self.done
        return None

    def to_json(self) -> str:
        return json.dumps({"done": self.done, "total": self.total, "message": self.message, "at": self.at})

    @classmethod
    def from_json(cls, text: str | None) -> TaskProgress | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(data["done"], data.get("total"), data.get("message"), data.get("at", 0.0))


def make_progress(done: Any, total: Any, message: Any, at: float) -> TaskProgress:
    """Validated: ``done`` a finite number >= 0, ``total`` None or a number > 0 (and >= done),
    ``message`` None or text (kept to its first 1,000 characters)."""
    if isinstance(done, bool) or not isinstance(done, (int, float)) or not math.isfinite(done) or done < 0:
        raise ValueError(f"progress(done={done!r}) must be a finite number >= 0: a fraction such as "
                         "0.25, or a count with total=, e.g. progress(30, total=120)")
    if total is not None and (isinstance(total, bool) or not isinstance(total, (int, float))
                              or not math.isfinite(total) or total <= 0):
        raise ValueError(f"progress(total={total!r}) must be a number > 0 (or left out)")
    if total is not None and done > total:
        raise ValueError(f"progress(done={done!r}, total={total!r}): done is more than the total")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"progress(message={message!r}) must be a str (or left out)")
    return TaskProgress(done, total, None if message is None else message[:MAX_MESSAGE], at)
