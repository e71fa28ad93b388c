"""Settings of one queue, shared by the seed-compatible and the modern API."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

BROKER_URL_ENV = "MQS_BROKER_URL"
DURABILITY_MODES = ("normal", "full")


def _default_broker_url() -> str | None:
    return os.environ.get(BROKER_URL_ENV) or None


@dataclass
class Config:
    """Where the queue lives and how its workers behave.

    The first three fields are the original package's (same names, same defaults); the
    rest are new, with defaults that are safe for a single machine.
    """

    middleware_path: str = "message_queue"
    """Folder holding the SQLite shard files (created if missing). Immediate mode keeps its
    tasks in memory instead and never looks at it (see ``immediate_use_memory``)."""
    max_workers: int = 5
    """Worker threads that run tasks in a process that starts the server."""
    async_concurrency: int = 100
    """``async def`` tasks one worker runs at once on its event loop (apart from its threads)."""
    processes: int | None = None
    """Child processes that run ``executor="process"`` tasks in one worker (started at the
    first such task); None: one per CPU core."""
    middleware_num: int = 1
    """Number of shard files tasks are spread over (SQLite); see the README for PostgreSQL."""
    visibility_timeout: float = 30.0
    """Seconds a claim (lease) lasts without renewal; a dead worker's tasks run again after it."""
    durability: str = "normal"
    """'normal' (WAL + synchronous=NORMAL: survives process crashes) or 'full' (fsync per commit)."""
    retention: float | None = 7 * 24 * 3600.0
    """Seconds ended tasks are kept before they are purged; None keeps them forever."""
    prefetch: int = 128
    """Most tasks one claim may lease at once; the worker adapts below this to task length."""
    drain_timeout: float = 30.0
    """Seconds a graceful stop waits for running tasks before giving their leases back."""
    crash_limit: int = 5
    """Lease expiries (worker deaths) after which a task is FAILED instead of run again."""
    max_pending_callbacks: int = 1_000_000
    """Callbacks one queue object may hold for tasks not ended yet; a send with a callback
    beyond it waits for room (back-pressure), and fails if none ends for 30 s."""
    task_timeout: float | None = None
    """Seconds a run may take when its task and its send set no ``timeout`` (None: no limit);
    a run past it fails with ``TaskTimeout`` (see the README's "Timeouts")."""
    immediate: bool = False
    """Run each task in the sending thread before ``send`` returns: for tests and scripts
    (huey's ``immediate``, Celery's ``task_always_eager``). Its tasks are kept in memory, no
    folder, no file, no database server (see ``immediate_use_memory``)."""
    database: str | None = None
    """An application's own SQLite database file to keep the queue in (its tables are named
    ``mqs_*``; one shard): then ``send(..., connection=conn)`` joins that application's
    transaction. Without it, another application's database is refused, untouched."""
    broker_url: str | None = field(default_factory=_default_broker_url)
    """A ``postgresql://`` URL selects PostgreSQL; None (default) uses SQLite files."""
    immediate_use_memory: bool = True
    """With ``immediate``: True (default) keeps the tasks in memory private to this queue
    object, freed when it closes; ``middleware_path`` and ``broker_url`` are accepted and
    ignored (nothing is created there). False stores them where those say, as without
    ``immediate`` (to look at them from another process or the CLI). Huey's option of the
    same name; without ``immediate`` it is not read."""

    def __post_init__(self) -> None:
        self.middleware_path = os.fspath(self.middleware_path)
        _require_int("max_workers", self.max_workers, minimum=1)
        _require_int("async_concurrency", self.async_concurrency, minimum=1)
        if self.processes is not None:
            _require_int("processes", self.processes, minimum=1)
        _require_int("middleware_num", self.middleware_num, minimum=1)
        _require_int("prefetch", self.prefetch, minimum=1)
        _require_int("crash_limit", self.crash_limit, minimum=1)
        _require_int("max_pending_callbacks", self.max_pending_callbacks, minimum=1)
        _require_positive("visibility_timeout", self.visibility_timeout)
        _require_positive("drain_timeout", self.drain_timeout, allow_zero=True)
        if self.retention is not None:
            _require_positive("retention", self.retention, allow_zero=True)
        if self.task_timeout is not None:
            _require_positive("task_timeout", self.task_timeout)
        for name in ("immediate", "immediate_use_memory"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"Config.{name}={value!r} is invalid; it must be True or False")
        if self.database is not None:
            self.database = os.fspath(self.database)
            if self.middleware_num != 1:
                raise ValueError(f"Config.database={self.database!r} keeps the queue in that one file: "
                                 f"middleware_num={self.middleware_num} shards cannot apply; leave it 1")
        if self.durability not in DURABILITY_MODES:
            raise ValueError(
                f"Config.durability={self.durability!r} is not a mode; use one of {DURABILITY_MODES}"
            )
        if self.broker_url is not None and not str(self.broker_url).startswith(
            ("postgresql://", "postgres://", "sqlite://")
        ):
            raise ValueError(
                f"Config.broker_url={self.broker_url!r} is not supported; use a "
                "'postgresql://user@host:port/db' URL, or leave it unset for SQLite files"
            )


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Config.{name}={value!r} is invalid; it must be an integer >= {minimum}")


def _require_positive(name: str, value: object, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0)  # type: ignore[operator]
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Config.{name}={value!r} is invalid; it must be a number of seconds {bound}")
