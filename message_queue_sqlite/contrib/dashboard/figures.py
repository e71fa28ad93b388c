"""The overview's figures, computed from stored end times (never from worker memory): tasks
ended per minute over the last hour, the failure rate, latency percentiles, and the geometry
of the chart, drawn as inline SVG by the template (no charting library, nothing to fetch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from message_queue_sqlite.core.status import TaskStatus

HOUR = 3600.0
BUCKETS = 60  # one bar per minute
CHART_WIDTH, CHART_HEIGHT = 600, 120


@dataclass(frozen=True, slots=True)
class Bar:
    """One minute of the chart: counts, and the two stacked rectangles' geometry."""

    start: float  # epoch seconds
    finished: int
    failed: int
    x: float
    width: float
    finished_y: float
    finished_height: float
    failed_y: float
    failed_height: float


@dataclass(frozen=True, slots=True)
class Figures:
    since: float
    now: float
    finished: int
    failed: int
    wait_p50: float | None  # queue wait: created -> started (of the last attempt), seconds
    wait_p99: float | None
    run_p50: float | None  # run time: started -> ended, seconds
    run_p99: float | None
    sampled: bool  # the storage returned its limit: the figures cover the newest ends only
    peak: int  # the tallest bar's count (the chart's scale)
    bars: list[Bar] = field(default_factory=list)
    # The failure rate of each minute in which tasks ended, as (x, y) on the chart's own scale
    # (0 % at the bottom, 100 % at the top), drawn as a line over the bars.
    rate_points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def ended(self) -> int:
        return self.finished + self.failed

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.ended if self.ended else None

    @property
    def per_minute(self) -> float:
        return self.ended / (HOUR / 60)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def compute(ends: Sequence[tuple[float, float | None, float, int]], now: float, limit: int) -> Figures:
    """Figures of the last hour before ``now`` from ``(created, started, ended, outcome)`` rows
    (``limit``: what the storage was asked for per shard; reaching it means sampled)."""
    since = now - HOUR
    span = HOUR / BUCKETS
    finished = [0] * BUCKETS
    failed = [0] * BUCKETS
    waits: list[float] = []
    runs: list[float] = []
    for created, started, ended, outcome in ends:
        if not since <= ended <= now + span:  # a worker's clock slightly ahead still counts as now
            continue
        slot = min(BUCKETS - 1, int((ended - since) / span))
        if outcome == TaskStatus.FAILED:
            failed[slot] += 1
        else:
            finished[slot] += 1
        if started is not None:
            waits.append(max(0.0, started - created))
            runs.append(max(0.0, ended - started))
    peak = max((f + g for f, g in zip(finished, failed, strict=True)), default=0)
    scale = CHART_HEIGHT / peak if peak else 0.0
    width = CHART_WIDTH / BUCKETS
    bars = []
    for i in range(BUCKETS):
        ok_h, bad_h = finished[i] * scale, failed[i] * scale
        bars.append(Bar(since + i * span, finished[i], failed[i], round(i * width + 0.5, 2),
                        round(width - 1, 2), round(CHART_HEIGHT - ok_h, 2), round(ok_h, 2),
                        round(CHART_HEIGHT - ok_h - bad_h, 2), round(bad_h, 2)))
    rates = [(round(i * width + width / 2, 2),
              round(CHART_HEIGHT * (1 - failed[i] / (finished[i] + failed[i])), 2))
             for i in range(BUCKETS) if finished[i] + failed[i]]
    return Figures(since, now, sum(finished), sum(failed), percentile(waits, 50), percentile(waits, 99),
                   percentile(runs, 50), percentile(runs, 99), len(ends) >= limit, peak, bars, rates)
