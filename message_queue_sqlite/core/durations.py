"""Durations the user types: a positive number of seconds, or a ``timedelta``."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any


def positive_seconds(value: Any, where: str, example: str, none_means: str) -> float | None:
    """``value`` as seconds: None stays None (``none_means`` says what that is); otherwise a
    positive finite number of seconds or a ``timedelta``, else a ValueError naming ``where``
    as the user typed it and an ``example`` of a right value."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds) or seconds <= 0):
        raise ValueError(f"{where}={value!r} must be a positive number of seconds (or a "
                         f"timedelta), e.g. {where}={example}; None: {none_means}")
    return float(seconds)


def check_timeout(value: Any, where: str = "timeout") -> float | None:
    """``timeout=`` of a task, a send or ``Config.task_timeout``."""
    return positive_seconds(value, where, "30", "no limit")
