"""Unique tasks: what a key is, how it is derived, and in which states it is held.

A unique key is held by at most one stored task at a time. The backends enforce it with a
partial UNIQUE index over the rows whose current state is in their ``unique_states``
bitmask (bit ``s`` set: the key is held while the task's state is ``s``, where an ended
task's state is its outcome, so a task keeps or frees its key whether or not its callback
ran). The check is made by the insert itself, in the send's transaction: no lock is taken
beforehand and none can be left behind (Oban's lock-based uniqueness raced: oban #1087/#1093).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from message_queue_sqlite.core.durations import positive_seconds
from message_queue_sqlite.core.status import TaskStatus

# The names users give states in ``unique_states=``, and the bit of each in the mask. An
# ended task's state is its outcome (FINISHED or FAILED), also once its callback ran.
STATE_BITS = {
    "queued": 1 << TaskStatus.NOT_STARTED,
    "scheduled": 1 << TaskStatus.SCHEDULED,
    "running": 1 << TaskStatus.RUNNING,
    "finished": 1 << TaskStatus.FINISHED,
    "failed": 1 << TaskStatus.FAILED,
}
# A live task moves among these three (a claim, a retry's back-off, a give-back, a lease
# recovered): a mask without one of them would let the task take its key back on such a
# move while another task holds it, and that move would then fail on the index.
ALIVE_STATES = ("queued", "scheduled", "running")
DEFAULT_STATES = ALIVE_STATES
DEFAULT_MASK = sum(STATE_BITS[name] for name in DEFAULT_STATES)
MAX_KEY_CHARS = 1000  # an index key; a longer one is surely an argument dump, not a key


def states_mask(states: Any, where: str = "unique_states") -> int:
    """The bitmask of ``states`` (state names, e.g. ``("queued", "scheduled", "running",
    "finished")``); ValueError/TypeError naming the value as typed and what would be right."""
    if isinstance(states, str) or not isinstance(states, Iterable):
        raise TypeError(f"{where}={states!r} must be a tuple of state names, e.g. "
                        f"{where}={DEFAULT_STATES + ('finished',)!r}; known: {sorted(STATE_BITS)}")
    names = list(states)
    unknown = [name for name in names if name not in STATE_BITS]
    if unknown:
        raise ValueError(f"{where}={states!r}: unknown state name(s) {unknown}; known: "
                         f"{sorted(STATE_BITS)}")
    missing = [name for name in ALIVE_STATES if name not in names]
    if missing:
        raise ValueError(f"{where}={states!r} must include {list(ALIVE_STATES)} (missing "
                         f"{missing}): a task moves among them while it is alive, so the key is "
                         "held in all of them; add 'finished' and/or 'failed' to hold it longer")
    mask = 0
    for name in names:
        mask |= STATE_BITS[name]
    return mask


def mask_states(mask: int) -> tuple[str, ...]:
    """The state names of a mask (for display)."""
    return tuple(name for name, bit in STATE_BITS.items() if mask & bit)


def check_key(key: Any) -> str:
    """An explicit ``unique_key=``: a non-empty str of at most ``MAX_KEY_CHARS`` characters."""
    if type(key) is not str and not isinstance(key, str):
        raise TypeError(f"unique_key={key!r} must be a non-empty str, e.g. unique_key='invoice-42' "
                        f"(got {type(key).__name__})")
    if not key:
        raise ValueError("unique_key='' must be a non-empty str, e.g. unique_key='invoice-42'")
    if "\x00" in key:
        raise ValueError(f"unique_key={key!r} contains a NUL character, which PostgreSQL text "
                         "cannot store; use printable text")
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"unique_key={key[:40]!r}... is {len(key)} characters; at most "
                         f"{MAX_KEY_CHARS} (hash long content first, or use unique=True)")
    return key


def check_unique_for(value: Any, where: str = "unique_for") -> float | None:
    """``unique_for=``: None (no expiry), or a positive finite number of seconds or timedelta."""
    return positive_seconds(value, where, "3600", "the key is held as long as the task is in its "
                            "unique states")


def check_unique_option(unique: Any) -> bool | tuple[str, ...]:
    """The decorator's ``unique=``: False, True (every argument), or argument names."""
    if unique is False or unique is True:
        return unique
    if isinstance(unique, str) or not isinstance(unique, (tuple, list)) or not unique \
            or not all(isinstance(name, str) and name for name in unique):
        raise TypeError(f"unique={unique!r} must be True (the key is the task's name and all its "
                        "arguments), False, or a tuple of argument names, e.g. "
                        "unique=('customer_id',)")
    return tuple(unique)


def check_fields(task_name: str, func: Callable[..., Any], fields: Sequence[str]) -> None:
    """At decoration: every name of ``unique=(...)`` is a parameter of the function."""
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return  # no signature to check against (a builtin): checked at send instead
    unknown = [name for name in fields if name not in parameters]
    if unknown:
        raise ValueError(f"unique={tuple(fields)!r} of task {task_name!r} names {unknown}, which "
                         f"{'is' if len(unknown) == 1 else 'are'} not among its parameters "
                         f"{list(parameters)}")


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False).encode


def derive_key(task_name: str, func: Callable[..., Any] | None, fields: bool | tuple[str, ...],
               args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The key of ``unique=True`` (name and every argument) or ``unique=(names...)`` (name and
    those arguments): a SHA-256 of the canonical JSON (sorted keys) of the name and the
    arguments bound to the function's parameters, defaults applied, so ``f(1)``, ``f(a=1)``
    and ``f(1, b=2)`` (b's default being 2) give one key, in every process and version."""
    bound: dict[str, Any]
    try:
        signature = inspect.signature(func) if func is not None else None
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        call = signature.bind(*args, **kwargs)  # already checked against the signature
        call.apply_defaults()
        bound = dict(call.arguments)
    else:
        bound = {"args": list(args), "kwargs": kwargs} if args else dict(kwargs)
    if fields is not True:
        missing = [name for name in fields if name not in bound]
        if missing:
            raise TypeError(f"task {task_name!r} is unique on {list(fields)}, but this send "
                            f"does not give {missing}")
        bound = {name: bound[name] for name in fields}
    try:
        text = _canonical([task_name, bound])
    except (TypeError, ValueError) as exc:
        raise TypeError(f"task {task_name!r} derives its unique key from its arguments as JSON, "
                        f"and one cannot be ({exc}); pass unique_key= yourself, or name JSON "
                        "arguments in unique=(...)") from None
    return f"{task_name}#{hashlib.sha256(text.encode('utf-8')).hexdigest()}"
