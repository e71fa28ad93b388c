"""Celery's tasks: Redis broker (db 8) and Redis result backend (db 9)."""

from __future__ import annotations

from celery import Celery
from work import sleep10 as _sleep10
from work import spin

app = Celery("bench", broker="redis://127.0.0.1:6379/8", backend="redis://127.0.0.1:6379/9")
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="noop")
def noop(i=0):
    return i


@app.task(name="sleep10")
def sleep10(i=0):
    return _sleep10(i)


@app.task(name="cpu")
def cpu(iters=0):
    return spin(iters)
