"""RQ's jobs (Redis db 10); enqueued by reference, so the worker imports this module."""

from __future__ import annotations

from work import sleep10 as _sleep10
from work import spin


def noop(i=0):
    return i


def sleep10(i=0):
    return _sleep10(i)


def cpu(iters=0):
    return spin(iters)
