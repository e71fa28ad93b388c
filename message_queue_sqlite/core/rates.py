"""Rate limits: ``@mq.task(rate="100/m")``, at most 100 runs of the task per minute window,
across every worker process of the queue.

Windows are fixed (multiples of the period since the epoch, by the backend's clock). The
storage keeps, per task, the window being filled and how many runs it holds; that window may
lie in the future. A run takes a place in the current window if it has room; otherwise the
task is deferred to the first window with room, and takes its place there at once, so a
backlog is spread over the coming windows in one pass: each task is deferred at most once,
and nothing polls or loops while it waits (it is SCHEDULED until its window starts).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([smhd])\s*")


@dataclass(frozen=True, slots=True)
class Rate:
    limit: int  # runs per window
    period: float  # the window's length, seconds

    def __str__(self) -> str:
        return f"{self.limit} per {self.period:g} s"


def parse_rate(value: Any) -> Rate | None:
    """``rate=``: None, or ``"N/s"``, ``"N/m"``, ``"N/h"``, ``"N/d"`` (also ``"N/10s"``)."""
    if value is None:
        return None
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) < 1 or (match.group(2) and float(match.group(2)) <= 0):
        raise ValueError(f"rate={value!r} is not a rate; write runs per window, e.g. rate='100/m', "
                         "'10/s', '5/h', '1000/d' or '20/10s'")
    span = float(match.group(2)) if match.group(2) else 1.0
    return Rate(int(match.group(1)), span * _UNITS[match.group(3)])


@dataclass(frozen=True, slots=True)
class Admission:
    """What a run may do: ``run_at`` None to run now, else the window start it was deferred
    to; and the window being filled afterwards, with the runs it holds (to store)."""

    run_at: float | None
    window: float
    used: int


def admit(rate: Rate, now: float, stored_window: float | None, stored_used: int,
          reserved: float | None) -> Admission | None:
    """Decide one run. ``reserved``: the window this task was deferred to earlier (its place is
    held: it runs if that window is the current one, and changes nothing stored). None when
    nothing needs storing (it runs on its reserved place)."""
    current = math.floor(now / rate.period) * rate.period
    if reserved is not None and abs(reserved - current) < 1e-6:
        return None  # its window has come: the place was taken when it was deferred
    window = current if stored_window is None or stored_window < current else stored_window
    used = stored_used if window == stored_window else 0
    if window == current and used < rate.limit:
        return Admission(None, window, used + 1)
    if used >= rate.limit:
        window, used = window + rate.period, 0
    return Admission(window, window, used + 1)
