"""Taking back the part of a multi-shard send that committed when another shard failed.

Each shard is a file (or a schema) of its own, and SQLite in WAL mode has no two-phase
commit across files, so a send touching several shards commits shard by shard. When one
fails after others committed, their rows are removed again if still waiting (one write
transaction each: a claim is one statement under the same write lock, so a row is either
removed or claimed, never both). What a worker claimed meanwhile cannot be taken back: it
stays sent, and the caller learns exactly which (``PartiallySentError``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from message_queue_sqlite.backends.base import NewTask
from message_queue_sqlite.core.errors import PartiallySentError
from message_queue_sqlite.core.ids import format_task_id

log = logging.getLogger(__name__)


def withdraw_partial_send(shards: Sequence[Any], by_shard: dict[int, list[NewTask]],
                          placed: Sequence[tuple[int, int]],
                          stored: dict[int, tuple[list[int], Any]],
                          cause: Exception) -> tuple[PartiallySentError | None, set[str]]:
    """Remove the rows ``stored`` (per shard: row ids and the positions that were duplicates,
    i.e. another task's row, never ours to remove) while they wait. Returns the error to
    raise when some stay (None: all were taken back, nothing was sent) and the cache keys of
    the cached-argument tasks that stay (their arguments must stay in memory)."""
    stays: dict[tuple[int, int], int] = {}  # (shard, position) -> row id
    for shard, (row_ids, duplicates) in stored.items():
        for position, row_id in enumerate(row_ids):
            if position in duplicates:
                continue
            try:
                removed = shards[shard].remove_waiting(row_id, None)
            except Exception as exc:  # noqa: BLE001 - it stays sent, and the caller is told
                log.warning("could not take back task %s of a failed send_many: %s",
                            format_task_id(shard, row_id), exc)
                removed = 0
            if not removed:
                stays[(shard, position)] = row_id
    if not stays:
        return None, set()
    sent = {index: format_task_id(shard, stays[(shard, position)])
            for index, (shard, position) in enumerate(placed) if (shard, position) in stays}
    failed = [index for index in range(len(placed)) if index not in sent]
    kept_cache = {by_shard[shard][position].args for shard, position in stays
                  if by_shard[shard][position].cache_owner is not None}
    return PartiallySentError(sent, failed, cause), kept_cache
