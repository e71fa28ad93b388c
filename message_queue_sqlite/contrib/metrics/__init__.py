"""Prometheus metrics (the ``metrics`` extra: ``pip install 'message_queue_sqlite[metrics]'``).

Two kinds, from two sources, so nothing scans the tasks table:

- **Counters and histograms** of what this process's workers did, fed by the engine's
  lifecycle hooks as it happens (``QueueMetrics`` is a ``Hook``): tasks started, finished,
  failed, retried, cancelled and timed out by task and queue; run time and queue wait;
  callback delay; lease recoveries. Each worker process exports its own (Prometheus sums
  them over the processes it scrapes).
- **Gauges** of the queue as stored, read when scraped from the kept counts and the indexes:
  tasks per status, waiting and running tasks per queue, the oldest waiting task's age. Any
  process shows the same (the dashboard's ``/metrics`` exports these).

``mqs worker app:mq --metrics-port 9100`` serves both on ``http://127.0.0.1:9100/metrics``;
``MessageQueue(..., hooks=[QueueMetrics()])`` and ``QueueMetrics.serve(port)`` do it in code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
    from prometheus_client.core import GaugeMetricFamily
except ImportError as exc:  # pragma: no cover - the extra is missing
    from message_queue_sqlite.core.errors import MissingDependencyError

    raise MissingDependencyError("metrics need prometheus-client: "
                                 "pip install 'message_queue_sqlite[metrics]'") from exc

from message_queue_sqlite.api.queue import Hook
from message_queue_sqlite.core.errors import TaskCancelled, TaskTimeout

if TYPE_CHECKING:
    from message_queue_sqlite.api.queue import MessageQueue

SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0)


class QueueMetrics(Hook):
    """Counters of this process's task runs, from the lifecycle hooks, in a registry of its own
    (two queue objects, or two tests, never share one); with ``queue=``, also the stored
    queue's gauges, read at each scrape. (The counters' attributes end in ``_count`` or are
    named apart from the hook points, which are this object's methods.)"""

    def __init__(self, queue: MessageQueue | None = None, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("task", "queue")
        self.started_count = Counter("mqs_tasks_started", "Runs started", labels, registry=self.registry)
        self.finished_count = Counter("mqs_tasks_finished", "Runs that returned", labels,
                                      registry=self.registry)
        self.failed_count = Counter("mqs_tasks_failed", "Tasks that failed for good (after their retries)",
                              labels, registry=self.registry)
        self.retried_count = Counter("mqs_tasks_retried", "Failed runs that scheduled a retry", labels,
                               registry=self.registry)
        self.cancelled_count = Counter("mqs_tasks_cancelled", "Runs that stopped when cancelled", labels,
                                 registry=self.registry)
        self.timed_out_count = Counter("mqs_tasks_timed_out", "Runs ended by their timeout", labels,
                                 registry=self.registry)
        self.recoveries = Counter("mqs_lease_recoveries", "Tasks whose lease expired under a dead worker, "
                                 "by what recovery did", ("outcome",), registry=self.registry)
        self.run_seconds = Histogram("mqs_task_run_seconds", "Run time", labels, buckets=SECONDS,
                                     registry=self.registry)
        self.wait_seconds = Histogram("mqs_task_queue_wait_seconds", "From sent (or due) to claimed",
                                      labels, buckets=SECONDS, registry=self.registry)
        self.callback_delay = Histogram("mqs_callback_delay_seconds", "From a task's end to its callback",
                                        ("task",), buckets=SECONDS, registry=self.registry)
        if queue is not None:
            self.registry.register(StoredQueueCollector(queue))

    # -- the hook points -----------------------------------------------------------------
    def before_run(self, claim: Any) -> None:
        labels = (claim.task_name, claim.queue)
        self.started_count.labels(*labels).inc()
        self.wait_seconds.labels(*labels).observe(max(0.0, claim.started_at - claim.created_at))

    def after_run(self, claim: Any, run: Any) -> None:
        labels = (claim.task_name, claim.queue)
        self.run_seconds.labels(*labels).observe(max(0.0, run.ended - run.started))
        if run.ok:
            self.finished_count.labels(*labels).inc()
        elif isinstance(run.value, TaskCancelled):
            self.cancelled_count.labels(*labels).inc()
        elif isinstance(run.value, TaskTimeout):
            self.timed_out_count.labels(*labels).inc()

    def retry_scheduled(self, claim: Any, run: Any, delay: float) -> None:
        self.retried_count.labels(claim.task_name, claim.queue).inc()

    def failed(self, claim: Any, run: Any) -> None:
        self.failed_count.labels(claim.task_name, claim.queue).inc()

    def callback_ran(self, outcome: Any) -> None:
        if outcome.end_time is not None:
            self.callback_delay.labels(outcome.task_name).observe(max(0.0, time.time() - outcome.end_time))

    def recovered(self, report: Any) -> None:
        for outcome in ("requeued", "failed", "cancelled"):
            if getattr(report, outcome):
                self.recoveries.labels(outcome).inc(getattr(report, outcome))

    # -- exporting -------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` over HTTP from a background thread (prometheus-client's server)."""
        start_http_server(port, addr=host, registry=self.registry)


class StoredQueueCollector:
    """Gauges read from storage at each scrape: the kept counts, the per-queue depths (on the
    state indexes) and the oldest waiting task; never a scan of the tasks table."""

    def __init__(self, queue: MessageQueue):
        self._queue = queue

    def describe(self) -> Sequence[Any]:
        return []  # (collected at scrape time; nothing to check at registration)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._queue.stats()
        tasks = GaugeMetricFamily("mqs_tasks", "Stored tasks per status (an ended one by how it ended)",
                                  labels=("status",))
        for status, n in stats["outcomes"].items():
            if status != "callback_ran":
                tasks.add_metric((status,), n)
        yield tasks
        depth = GaugeMetricFamily("mqs_queue_depth", "Waiting and running tasks per queue",
                                  labels=("queue", "status"))
        for name, counts in stats["queues"].items():
            for status, n in counts.items():
                depth.add_metric((name, status), n)
        yield depth
        oldest = self._queue.oldest_waiting()
        yield GaugeMetricFamily("mqs_oldest_waiting_seconds", "Age of the oldest ready task (0: none)",
                                value=max(0.0, time.time() - oldest[2]) if oldest else 0.0)
