"""Reading a queue page by page, over every shard: what a dashboard shows.

Every read here is bounded whatever the number of stored tasks: a page reads at most a fixed
number of rows per shard on an index or a range of the primary key (keyset paging, never an
OFFSET), so the thousandth page of a million tasks costs what the first does. Filters that
no index serves (a task name, text in the arguments or the error) are applied to the rows a
page read, not pushed into a query that would then walk the table to fill its LIMIT: a page
with a sparse filter may come back short, with a cursor to read on from where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from message_queue_sqlite.backends.base import Shard, TaskRecord
from message_queue_sqlite.core.ids import format_task_id
from message_queue_sqlite.core.status import TaskStatus

# Filtering pages read this many rows per shard (a plain page reads its limit + 1).
FILTER_WINDOW = 2000
_FIRST_BELOW = 2**62  # above any row id: the first page of a newest-first view
_FIRST_PRIORITY = 2**62  # above any priority: the first page of the ready view
_FIRST_RUN_AFTER = -1.0  # before any due time: the first page of the scheduled view
PAGED_STATUSES = (TaskStatus.NOT_STARTED, TaskStatus.SCHEDULED, TaskStatus.RUNNING, TaskStatus.FINISHED,
                  TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of tasks: ``records`` in the view's order; ``next_cursor`` (None: nothing
    further) reads on after the last row examined; ``examined`` rows were read to make it."""

    records: list[TaskRecord]
    next_cursor: str | None
    examined: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live queue object, as the dashboard's nodes page lists it."""

    node_id: str
    host: str
    pid: int
    started_at: float
    lease_left: float  # seconds until its liveness lease runs out (it renews well before)
    running: int  # tasks it is running now, over every shard


def _sort_key(status: int | None, record: TaskRecord) -> tuple[float, ...]:
    """The view's order over every shard, ties broken by shard so the order is total."""
    if status == TaskStatus.NOT_STARTED:
        return (-record.priority, record.row_id, record.shard)
    if status == TaskStatus.SCHEDULED:
        return (record.run_after, record.row_id, record.shard)
    return (-record.row_id, record.shard)


def format_cursor(status: int | None, key: tuple[float, ...]) -> str:
    if status == TaskStatus.NOT_STARTED:
        return f"{-int(key[0])}:{int(key[1])}:{int(key[2])}"
    if status == TaskStatus.SCHEDULED:
        return f"{key[0]!r}:{int(key[1])}:{int(key[2])}"
    return f"{-int(key[0])}:{int(key[1])}"


def parse_cursor(status: int | None, cursor: str) -> tuple[float, int, int]:
    """``(first key, row id, shard)`` of a cursor made by ``format_cursor`` for this view;
    ValueError naming the bad value otherwise (it comes from a URL)."""
    parts = cursor.split(":")
    try:
        if status in (TaskStatus.NOT_STARTED, TaskStatus.SCHEDULED) and len(parts) == 3:
            first = int(parts[0]) if status == TaskStatus.NOT_STARTED else float(parts[0])
            return first, int(parts[1]), int(parts[2])
        if status not in (TaskStatus.NOT_STARTED, TaskStatus.SCHEDULED) and len(parts) == 2:
            return 0.0, int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise ValueError(f"bad page cursor {cursor!r} for this view (status {status!r}); "
                     "follow the page's own 'next' link")


def _shard_after(status: int | None, cursor: tuple[float, int, int] | None, shard: int) -> tuple[float, int]:
    """Where shard ``shard`` reads on from: strictly after the cursor in the view's order,
    where rows of the cursor's own key on a later shard than the cursor's come after it."""
    if status == TaskStatus.NOT_STARTED:
        if cursor is None:
            return (_FIRST_PRIORITY, 0)
        return (cursor[0], cursor[1] if shard <= cursor[2] else cursor[1] - 1)
    if status == TaskStatus.SCHEDULED:
        if cursor is None:
            return (_FIRST_RUN_AFTER, 0)
        return (cursor[0], cursor[1] if shard <= cursor[2] else cursor[1] - 1)
    if cursor is None:
        return (0.0, _FIRST_BELOW)
    return (0.0, cursor[1] if shard <= cursor[2] else cursor[1] + 1)


def matches(record: TaskRecord, task_name: str | None, text: str | None, queue: str | None = None) -> bool:
    """The filters no index serves: the exact task name and queue, and ``text`` (any case) in
    the stored arguments, result or error, or traceback."""
    if task_name is not None and record.task_name != task_name:
        return False
    if queue is not None and record.queue != queue:
        return False
    if text is None:
        return True
    needle = text.casefold()
    return any(needle in field.casefold() for field in (record.args, record.result, record.traceback)
               if field is not None)


def page_tasks(shards: Sequence[Shard], status: int | None, task_name: str | None = None,
               text: str | None = None, after: str | None = None, limit: int = 50,
               window: int = FILTER_WINDOW, queue: str | None = None) -> TaskPage:
    """One page of tasks of ``status`` (None: any) over every shard: ready ones in claim
    order, scheduled ones by due time, the others newest first (by row id). ``after`` is a
    page's ``next_cursor``. With a name or text filter, each shard reads ``window`` rows and
    the page holds the matches among the rows every shard has read up to (so no match can
    be skipped); the cursor then goes on from there."""
    if status is not None and status not in PAGED_STATUSES:
        raise ValueError(f"status {status!r} cannot be paged; one of {[s.name for s in PAGED_STATUSES]}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    cursor = parse_cursor(status, after) if after else None
    filtering = task_name is not None or text is not None or queue is not None
    per_shard = max(limit + 1, window) if filtering else limit + 1
    rows: list[TaskRecord] = []
    horizon: tuple[float, ...] | None = None  # the first row no shard read past
    for shard in shards:
        found = shard.page_tasks(status, _shard_after(status, cursor, shard.index), per_shard)
        rows.extend(found)
        if len(found) == per_shard:  # this shard has more: nothing after its last is known
            last = _sort_key(status, found[-1])
            horizon = last if horizon is None else min(horizon, last)
    rows.sort(key=lambda r: _sort_key(status, r))
    if horizon is not None:
        rows = [r for r in rows if _sort_key(status, r) <= horizon]
    kept = [r for r in rows if matches(r, task_name, text, queue)] if filtering else rows
    if len(kept) > limit:
        page = kept[:limit]
        return TaskPage(page, format_cursor(status, _sort_key(status, page[-1])), len(rows))
    next_cursor = format_cursor(status, horizon) if horizon is not None else None
    return TaskPage(kept, next_cursor, len(rows))


Ended = tuple[float, float | None, float, int]  # created, started, ended, outcome (3 or 4)


def recent_ends(shards: Sequence[Shard], since: float, limit: int) -> list[Ended]:
    """(created, started, ended, outcome) of the newest tasks ended since ``since``, every shard."""
    found: list[Ended] = []
    for shard in shards:
        found.extend(shard.recent_ends(since, limit))
    return found


def oldest_ready(shards: Sequence[Shard]) -> tuple[str, str, float] | None:
    """(task id, name, created_at) of the ready task sent first, over every shard."""
    found = [(row[2], format_task_id(shard.index, row[0]), row[1])
             for shard in shards if (row := shard.oldest_ready()) is not None]
    if not found:
        return None
    created, task_id, name = min(found)
    return task_id, name, created


def live_nodes(shards: Sequence[Shard]) -> list[NodeInfo]:
    """Live queue objects; a node registers on every shard, so its running tasks add up."""
    nodes: dict[str, dict[str, Any]] = {}
    for shard in shards:
        for record in shard.list_nodes():
            node = nodes.setdefault(record.node_id, {"node_id": record.node_id, "host": record.host,
                                                     "pid": record.pid, "started_at": record.started_at,
                                                     "lease_left": record.lease_left, "running": 0})
            node["running"] += record.running
            node["lease_left"] = min(node["lease_left"], record.lease_left)
    return [NodeInfo(**fields) for fields in nodes.values()]
