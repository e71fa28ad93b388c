"""When a periodic task is due: its slots, and what to do about the ones nobody ran.

A schedule is pure arithmetic over epoch seconds on the backend's wall clock: the same
slots in every process, so no leader is needed. ``every=N`` slots are the multiples of N
seconds since the epoch (UTC; ``every=3600`` is on the hour); ``cron=`` slots come from
``cronsim`` (the ``cron`` extra), evaluated in ``tz``, with cron's own rules across DST
changes (a time in a spring-forward gap runs once, just after it; a time in an autumn
repeat runs once, at its first occurrence).

Which slots run is decided by ``plan`` (see ``SlotPlan``): slots that came due while a
scheduler was watching run, however late a busy machine got to them (up to
``LATE_LIMIT_S``); slots that came due while no scheduler ran are *missed*, and the
``missed=`` policy says which of those run: none (``"skip"``), the most recent one
(``"latest"``, the default, within ``max_delay`` if set), or every one within ``backfill``
seconds, oldest first (``"all"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

MISSED_POLICIES = ("skip", "latest", "all")
DEFAULT_BACKFILL_S = 24 * 3600.0  # missed="all" runs the missed slots of the last day by default
MAX_SLOTS_PER_PLAN = 10_000  # one decision enqueues at most this many catch-up runs
LATE_LIMIT_S = 60.0  # a slot a live scheduler reached later than this counts as missed (a suspend, a stall)
SLOT_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class CronUnavailable(ImportError):
    """``cron=`` needs the optional cron parser."""


def _cronsim() -> Any:
    try:
        import cronsim  # the `cron` extra
    except ImportError as exc:
        raise CronUnavailable(
            "cron= schedules need the cron parser: pip install 'message_queue_sqlite[cron]' "
            "(or use every=SECONDS, which needs nothing)") from exc
    return cronsim


def _zone(name: str) -> Any:
    if name in ("UTC", "utc"):
        return timezone.utc
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(name)
    except Exception as exc:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError, missing tzdata
        raise ValueError(f"tz={name!r} is not a time zone this machine knows; use an IANA name "
                         "such as 'UTC', 'Europe/Paris' or 'America/New_York'") from exc


@dataclass(frozen=True)
class Schedule:
    """A periodic task's timing and catch-up policy (validated at declaration)."""

    every: float | None = None
    cron: str | None = None
    tz: str = "UTC"
    missed: str = "latest"
    max_delay: float | None = None
    backfill: float = DEFAULT_BACKFILL_S
    skip_if_running: bool = False
    slot_arg: str | None = None
    priority: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ValueError("a periodic task needs exactly one of every=SECONDS (or a timedelta) "
                             f"or cron='M H DoM Mon DoW', got every={self.every!r}, cron={self.cron!r}")
        if self.every is not None:
            every = self.every
            if isinstance(every, timedelta):
                every = every.total_seconds()
            if (isinstance(every, bool) or not isinstance(every, (int, float)) or not math.isfinite(every)
                    or every < 0.001):
                raise ValueError(f"every={self.every!r} is invalid; it must be a number of seconds "
                                 ">= 0.001 or a timedelta, e.g. every=30 or every=timedelta(minutes=5)")
            object.__setattr__(self, "every", float(every))
        if self.missed not in MISSED_POLICIES:
            raise ValueError(f"missed={self.missed!r} is not a policy; use one of {MISSED_POLICIES}")
        for name in ("max_delay", "backfill"):
            value = getattr(self, name)
            if isinstance(value, timedelta):
                value = value.total_seconds()
                object.__setattr__(self, name, value)
            if value is None and name == "max_delay":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; it must be a number "
                                 "of seconds >= 0 (or a timedelta)")
        if not isinstance(self.skip_if_running, bool):
            raise ValueError(f"skip_if_running={self.skip_if_running!r} must be True or False")
        if self.slot_arg is not None and (not isinstance(self.slot_arg, str)
                                          or not SLOT_ARG_NAME.match(self.slot_arg)):
            raise ValueError(f"slot_arg={self.slot_arg!r} must be the name of a keyword parameter "
                             "of the task, e.g. slot_arg='scheduled_at'")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ValueError(f"priority={self.priority!r} must be an int (higher runs first)")
        if not isinstance(self.kwargs, dict):
            raise TypeError(f"kwargs={self.kwargs!r} must be a dict of the task's keyword arguments")
        if not isinstance(self.tz, str):
            raise ValueError(f"tz={self.tz!r} must be a time zone name such as 'UTC' or 'Europe/Paris'")
        object.__setattr__(self, "_zone", _zone(self.tz))
        if self.cron is not None:
            cronsim = _cronsim()
            if not isinstance(self.cron, str):
                raise ValueError(f"cron={self.cron!r} must be a cron expression string such as '*/5 * * * *'")
            try:
                cronsim.CronSim(self.cron, datetime.now(timezone.utc))
            except cronsim.CronSimError as exc:
                raise ValueError(f"cron={self.cron!r} is not a valid cron expression ({exc}); "
                                 "five fields: minute hour day-of-month month day-of-week, "
                                 "e.g. '*/5 * * * *' or '0 9 * * mon-fri'") from None

    @property
    def expression(self) -> str:
        """How the schedule is shown and stored: ``every 30s`` or ``cron */5 * * * * (UTC)``."""
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"cron {self.cron} ({self.tz})"

    # -- slots -----------------------------------------------------------------------
    def next_after(self, t: float) -> float:
        """The first slot strictly after ``t``."""
        if self.every is not None:
            return (math.floor(t / self.every) + 1) * self.every
        return next(self._cron_iter(t, reverse=False))

    def newest_at_or_before(self, t: float) -> float:
        """The latest slot at or before ``t``."""
        if self.every is not None:
            return math.floor(t / self.every) * self.every
        start = datetime.fromtimestamp(t, timezone.utc).astimezone(self._zone)  # type: ignore[attr-defined]
        found = self._cron_iter(t + 1e-6 if start.microsecond == 0 else t, reverse=True)
        return next(found)

    def slots_between(self, after: float, until: float) -> Iterator[float]:
        """Slots ``s`` with ``after < s <= until``, oldest first."""
        slot = self.next_after(after)
        while slot <= until:
            yield slot
            slot = self.next_after(slot)

    def _cron_iter(self, t: float, reverse: bool) -> Iterator[float]:
        cronsim = _cronsim()
        start = datetime.fromtimestamp(t, timezone.utc).astimezone(self._zone)  # type: ignore[attr-defined]
        if reverse and start.microsecond:  # CronSim's reverse walk is inclusive of whole seconds
            start = start.replace(microsecond=0) + timedelta(seconds=1)
        for moment in cronsim.CronSim(self.cron, start, reverse=reverse):
            stamp = moment.timestamp()
            if (stamp < t if reverse else stamp > t):
                yield stamp

    def slot_datetime(self, slot: float) -> datetime:
        """A slot as an aware datetime in the schedule's time zone."""
        return datetime.fromtimestamp(slot, timezone.utc).astimezone(self._zone)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SlotPlan:
    """One decision about a schedule: the slots to enqueue now (oldest first) and the newest
    slot decided (run or skipped), which the schedule's stored ``last_slot`` becomes."""

    run: tuple[float, ...]
    decided: float
    skipped: int


def plan(schedule: Schedule, last_slot: float, now: float, watching_since: float) -> SlotPlan | None:
    """What to do with the slots after ``last_slot`` up to ``now`` (None: nothing is due).

    ``watching_since`` is when this process's scheduler began (backend time): a slot at or
    after it came due while this scheduler was alive, so it runs however late the scheduler
    gets to it, up to ``LATE_LIMIT_S``; an older slot that is still undecided came due while
    no scheduler ran (every other live one would have decided it), so it is missed and the
    policy applies."""
    on_time_from = max(watching_since, now - LATE_LIMIT_S)
    newest = schedule.newest_at_or_before(now)
    if newest <= last_slot:
        return None
    on_time = [s for s in _take(schedule.slots_between(max(last_slot, on_time_from - 1e-9), now))
               if s >= on_time_from]
    missed_until = on_time[0] if on_time else newest + 1e-9  # missed: last_slot < s < missed_until
    missed = _missed_to_run(schedule, last_slot, missed_until, now)
    skipped = _count_missed(schedule, last_slot, missed_until) - len(missed)
    return SlotPlan(tuple(missed + on_time), newest, max(0, skipped))


def _missed_to_run(schedule: Schedule, last_slot: float, until: float, now: float) -> list[float]:
    if schedule.missed == "skip":
        return []
    if schedule.missed == "latest":
        slot = schedule.newest_at_or_before(until - 1e-9)
        if slot <= last_slot:
            return []
        if schedule.max_delay is not None and now - slot > schedule.max_delay:
            return []
        return [slot]
    oldest = max(last_slot, now - schedule.backfill - 1e-9)
    return [s for s in _take(schedule.slots_between(oldest, until - 1e-9))]


def _count_missed(schedule: Schedule, last_slot: float, until: float) -> int:
    """How many slots were missed (for the log), counted arithmetically where possible."""
    if schedule.every is not None:
        first = schedule.next_after(last_slot)
        if first >= until:
            return 0
        return int((until - 1e-9 - first) // schedule.every) + 1
    return sum(1 for _ in _take(schedule.slots_between(last_slot, until - 1e-9)))


def _take(slots: Iterator[float]) -> Iterator[float]:
    for count, slot in enumerate(slots):
        if count >= MAX_SLOTS_PER_PLAN:
            return
        yield slot


SCHEDULE_OPTIONS = frozenset(f for f in Schedule.__dataclass_fields__)
"""The keywords of a task declaration that make it periodic (``every=``, ``cron=``, ...)."""
