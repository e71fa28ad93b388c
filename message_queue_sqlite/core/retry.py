"""When and how soon a failed task runs again."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field


def _exception_names(exc: BaseException) -> set[str]:
    names: set[str] = set()
    for cls in type(exc).__mro__:
        names.add(cls.__name__)
        names.add(f"{cls.__module__}.{cls.__qualname__}")
    return names


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with jitter, capped.

    ``retry_on`` names the exceptions that retry, as classes or as (qualified) class
    names; names are what survives storage when a policy is given per send.
    """

    max_retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 300.0
    jitter: bool = True
    retry_on: tuple[type[BaseException] | str, ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or (
            self.max_retries < 0
        ):
            raise ValueError(f"max_retries={self.max_retries!r} must be an integer >= 0")
        for name in ("backoff", "backoff_max"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}={value!r} must be a number of seconds >= 0")
        if not isinstance(self.retry_on, tuple):
            object.__setattr__(self, "retry_on", tuple(_as_iterable(self.retry_on)))
        for item in self.retry_on:
            if not (isinstance(item, str) or (isinstance(item, type) and issubclass(item, BaseException))):
                raise ValueError(f"retry_on item {item!r} must be an exception class or its name")

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """True when a task that raised ``exc`` on run number ``attempt`` runs again. Runs are
        counted 1-based among those that ended (the retries used so far + 1): a claim given
        back unfinished or lost with its worker uses none of the budget."""
        if attempt > self.max_retries:
            return False
        names = _exception_names(exc)
        for item in self.retry_on:
            if isinstance(item, str):
                if item in names:
                    return True
            elif isinstance(exc, item):
                return True
        return False

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: backoff * 2^(attempt-1), capped,
        then drawn from [half, full] of that when jitter is on (spreads a thundering herd)."""
        base = min(self.backoff_max, self.backoff * (2 ** max(0, attempt - 1)))
        if not self.jitter or base == 0:
            return base
        return (rng or random).uniform(base / 2, base)

    def to_json(self) -> str:
        names = [item if isinstance(item, str) else f"{item.__module__}.{item.__qualname__}"
                 for item in self.retry_on]
        return json.dumps({"max_retries": self.max_retries, "backoff": self.backoff,
                           "backoff_max": self.backoff_max, "jitter": self.jitter,
                           "retry_on": names})

    @classmethod
    def from_json(cls, text: str) -> RetryPolicy:
        data = json.loads(text)
        data["retry_on"] = tuple(data.get("retry_on", ["builtins.Exception"]))
        return cls(**data)


def _as_iterable(value: object) -> Iterable[object]:
    if isinstance(value, (list, set, frozenset)):
        return value
    return (value,)


NO_RETRY = RetryPolicy()
