"""Public task ids: the shard and the row, as ``"<shard>-<row>"``.

Row ids are the storage's own monotonic keys (never reused: SQLite's rowid is always
one past the largest, and the newest row is never purged), so an id needs no extra
unique index and finds its row by primary key.
"""

from __future__ import annotations


def format_task_id(shard: int, row_id: int) -> str:
    return f"{shard}-{row_id}"


def parse_task_id(task_id: str) -> tuple[int, int]:
    """``(shard, row_id)``; ValueError naming the id when it is not one of ours."""
    try:
        shard, row = task_id.split("-")
        parsed = int(shard), int(row)
    except (AttributeError, ValueError):
        raise ValueError(f"{task_id!r} is not a task id of this queue (expected '<shard>-<row>', "
                         "as send returns)") from None
    if parsed[0] < 0 or parsed[1] <= 0:
        raise ValueError(f"{task_id!r} is not a task id of this queue")
    return parsed
