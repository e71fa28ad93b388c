"""Trace each task from its send to its run with OpenTelemetry, in one small hook.

The sender's ``before_send`` puts its current trace context into the task's headers (stored
with the task); the worker's ``before_run`` starts the run's span as a child of it, in
whatever process runs it, and ``after_run`` ends it (marked as an error if the run failed).
Requires ``opentelemetry-api`` (and an SDK with an exporter to see the spans)::

    from message_queue_sqlite import MessageQueue
    from examples.opentelemetry_tracing import TracingHook

    mq = MessageQueue("queue_dir", hooks=[TracingHook()])   # in the senders and the workers
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from message_queue_sqlite import Hook


class TracingHook(Hook):
    def __init__(self, tracer: trace.Tracer | None = None):
        self.tracer = tracer or trace.get_tracer("message_queue_sqlite")
        self._spans: dict[int, trace.Span] = {}  # by claim, while it runs
        self._lock = threading.Lock()

    def before_send(self, request: Any) -> None:
        propagate.inject(request.headers)  # e.g. {"traceparent": "00-<trace>-<span>-01"}

    def before_run(self, claim: Any) -> None:
        parent = propagate.extract(claim.header_values())
        span = self.tracer.start_span(f"run {claim.task_name}", context=parent, kind=SpanKind.CONSUMER,
                                      attributes={"messaging.message.id": claim.task_id,
                                                  "messaging.destination.name": claim.queue,
                                                  "mqs.attempt": claim.attempt})
        with self._lock:
            self._spans[id(claim)] = span

    def after_run(self, claim: Any, run: Any) -> None:
        with self._lock:
            span = self._spans.pop(id(claim), None)
        if span is None:
            return
        if not run.ok:
            span.record_exception(run.value)
            span.set_status(Status(StatusCode.ERROR, type(run.value).__name__))
        span.end()
