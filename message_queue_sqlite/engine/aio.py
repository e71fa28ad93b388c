"""Waiting for outcomes from asyncio code without a thread per wait.

An async wait registers a ``LoopWaiter`` with the dispatcher, as a sync wait registers a
``threading.Event``: the dispatcher's thread (or a worker's, delivering in memory) calls its
``set()``, which schedules the future's resolution on the waiting loop with
``call_soon_threadsafe``. So 10,000 coroutines awaiting results cost 10,000 futures, not
10,000 threads, and the loop is never blocked by the wait itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # (a wait that timed out or was cancelled has given up on it)
        future.set_result(None)


class LoopWaiter:
    """A dispatcher waiter whose ``set()`` resolves ``future`` in ``loop`` (from any thread)."""

    __slots__ = ("_loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        try:
            self._loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # the loop is closed: nobody awaits this any more
            pass


def is_async_connection(connection: Any) -> bool:
    """A driver connection whose statements are awaited (psycopg's ``AsyncConnection``)."""
    return asyncio.iscoroutinefunction(getattr(connection, "execute", None))


async def run_blocking(inline: bool, func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in this thread when ``inline`` (a statement on a local SQLite file takes
    tens of microseconds: less than handing it to a thread and back), else on a worker thread
    of the loop's default executor (a PostgreSQL round trip, a wait for workers). Inline, it
    then yields to the loop once: a coroutine sending in a loop would otherwise never let
    another run until it was done (an await that never suspends is a plain call)."""
    if inline:
        result = func(*args)
        await asyncio.sleep(0)
        return result
    return await asyncio.to_thread(func, *args)
