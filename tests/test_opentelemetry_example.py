"""The OpenTelemetry example hook (examples/opentelemetry_tracing.py): a run's span is a child
of the span that sent it, through the task's stored headers, also when a worker process that
is not the sender runs it."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402

from examples.opentelemetry_tracing import TracingHook  # noqa: E402


def test_a_run_span_is_the_child_of_the_send_span_across_queue_objects(make_queue):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    sender = make_queue(hooks=[TracingHook(tracer)])
    worker = make_queue(hooks=[TracingHook(tracer)])  # another object on the same storage: as a process

    @worker.task
    def ok(n):
        return n

    @worker.task
    def boom():
        raise ValueError("no")

    with tracer.start_as_current_span("handle request") as request_span:
        first = sender.send("ok", {"n": 1})
        second = sender.send("boom", {})
    with worker.running():
        assert first.result(timeout=10) == 1
        second.outcome(timeout=10)
    runs = {span.name: span for span in exporter.get_finished_spans() if span.name.startswith("run ")}
    assert set(runs) == {"run ok", "run boom"}
    for span in runs.values():
        assert span.context.trace_id == request_span.get_span_context().trace_id
        assert span.parent.span_id == request_span.get_span_context().span_id
    assert runs["run boom"].status.status_code == StatusCode.ERROR
    assert runs["run ok"].attributes["messaging.message.id"] == first.task_id
