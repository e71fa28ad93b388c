"""Named queues: which queue a task goes to, and which queues a worker serves.

A task belongs to one queue (``"default"`` unless its ``@task(queue=)`` or the send says
otherwise). A worker serves a set of queues, claiming from them in rotation (so a backlog in
one never starves another); priority orders tasks within a queue. What a worker serves is
given as ``queues=`` to ``start()`` or ``--queues`` to ``mqs worker``:

- nothing, or ``"*"``: every queue a task was ever sent to, as stored (re-read at least every
  second, and whenever a look found nothing to claim);
- names (``["emails", "reports"]``, ``"emails,reports"``): those, sharing the worker's threads;
- names with thread counts (``{"emails": 2, "reports": 8}``, ``"emails=2,reports=8"``): a lane
  per queue with threads of its own, so one queue's slow tasks never hold another's threads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_QUEUE = "default"
EVERY_QUEUE = "*"
MAX_NAME = 200
_NAME = re.compile(r"[A-Za-z0-9_.:@/-]+")


def check_queue_name(name: Any, where: str = "queue") -> str:
    """``name`` if it can name a queue: a non-empty string of letters, digits and ``_ . : @ / -``
    (no spaces, commas or ``=``, which the command line's ``--queues a=2,b`` uses)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise ValueError(f"{where}={name!r} is not a queue name: use up to {MAX_NAME} letters, digits "
                         "and _ . : @ / - (e.g. 'emails' or 'reports.daily')")
    return name


@dataclass(frozen=True, slots=True)
class Lane:
    """Queues served together by one worker with ``threads`` threads; ``queues`` is None for
    every stored queue."""

    queues: tuple[str, ...] | None
    threads: int


def plan_lanes(queues: Any, threads: int) -> list[Lane]:
    """The lanes of ``start(workers=threads, queues=queues)``."""
    if queues is None:
        return [Lane(None, threads)]
    if isinstance(queues, str):
        return parse_queues(queues, threads)
    if isinstance(queues, Mapping):
        if not queues:
            raise ValueError("queues={} names no queue; give names with thread counts, e.g. "
                             "{'emails': 2, 'reports': 8}")
        lanes = []
        for name, count in queues.items():
            if name == EVERY_QUEUE:
                raise ValueError("'*' (every queue) cannot have a lane of its own next to named "
                                 "queues; pass queues='*' alone")
            check_queue_name(name, "queues")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"queues={{{name!r}: {count!r}}}: the thread count of queue {name!r} "
                                 "must be an integer >= 1")
            lanes.append(Lane((name,), count))
        return lanes
    if isinstance(queues, Sequence):
        names = [check_queue_name(name, "queues") for name in queues]
        if not names:
            raise ValueError("queues=[] names no queue; leave it out to serve every queue, or name "
                             "some, e.g. ['emails']")
        return [Lane(tuple(dict.fromkeys(names)), threads)]
    raise TypeError(f"queues={queues!r} must be a list of queue names, a dict of names to thread "
                    "counts, a string such as 'emails,reports' or 'emails=2,reports=8', or '*'")


def parse_queues(spec: str, threads: int) -> list[Lane]:
    """``"a,b"`` (one lane, ``threads`` threads), ``"a=2,b=8"`` (a lane each) or ``"*"``."""
    text = spec.strip()
    if text == EVERY_QUEUE:
        return [Lane(None, threads)]
    parts = [part.strip() for part in text.split(",")]
    if not text or any(not part for part in parts):
        raise ValueError(f"queues {spec!r} has an empty name; write names separated by commas, "
                         "e.g. 'emails,reports', or with thread counts, 'emails=2,reports=8'")
    counted = ["=" in part for part in parts]
    if any(counted) and not all(counted):
        raise ValueError(f"queues {spec!r} gives thread counts for some queues only; give one for "
                         "each ('emails=2,reports=8') or for none ('emails,reports')")
    if not any(counted):
        return plan_lanes(parts, threads)
    lanes: dict[str, int] = {}
    for part in parts:
        name, _, count = part.partition("=")
        if not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"queues {spec!r}: {count.strip()!r} is not a thread count for queue "
                             f"{name.strip()!r}; it must be an integer >= 1, e.g. {name.strip()}=2")
        lanes[name.strip()] = int(count)
    return plan_lanes(lanes, threads)
