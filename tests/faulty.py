"""A fault-injecting shard for tests: wraps a real one and raises on the calls chosen.

Installed in place of a queue's shard (``install(mq, index)``), it delegates every call
to the real shard unless a rule matches; a rule raises its error before the call (nothing
happened in storage) or after it (the call took effect, then the error reached the caller,
as a connection lost during the reply would). No private attribute is patched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Rule:
    method: str
    error: Callable[[], BaseException]
    when: str = "before"  # or "after"
    matches: Callable[..., bool] = lambda *args, **kwargs: True
    times: int | None = None  # None: while the rule is installed
    fired: int = 0


class FaultyShard:
    def __init__(self, inner: Any):
        self.inner = inner
        self.index = inner.index
        self.name = inner.name
        self._rules: list[Rule] = []
        self._lock = threading.Lock()

    def fail(self, method: str, error: Callable[[], BaseException], *, when: str = "before",
             matches: Callable[..., bool] = lambda *a, **k: True, times: int | None = None) -> Rule:
        rule = Rule(method, error, when, matches, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules)

    def heal(self) -> None:
        with self._lock:
            self._rules.clear()

    def _rule_for(self, method: str, args: tuple, kwargs: dict) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.method == method and (rule.times is None or rule.fired < rule.times) \
                        and rule.matches(*args, **kwargs):
                    rule.fired += 1
                    return rule
        return None

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            rule = self._rule_for(name, args, kwargs)
            if rule is not None and rule.when == "before":
                raise rule.error()
            result = target(*args, **kwargs)
            if rule is not None:
                raise rule.error()
            return result

        return call


def install(mq: Any, index: int = 0) -> FaultyShard:
    """Put a FaultyShard in place of shard ``index`` of a MessageQueue; returns it."""
    shards = mq.engine.backend.shards
    faulty = FaultyShard(shards[index])
    shards[index] = faulty
    return faulty
