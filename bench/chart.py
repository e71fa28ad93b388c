#!/usr/bin/env python3
"""Draw results/latest.png from results/latest.json (runs in bench/.venvs/peers: matplotlib)."""

from __future__ import annotations

import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

THROUGHPUT = [
    ("enqueue_call", "rate", "enqueue\n1 call/task"),
    ("enqueue_batch", "rate", "enqueue\nbatched"),
    ("drain_1", "rate", "drain 20k\n1 thread"),
    ("drain_4", "rate", "drain 20k\n4 threads"),
    ("drain_4", "cb_rate", "drain 4 thr.\ncallbacks"),
    ("processes", "rate", "producer +\nworker procs"),
]
LATENCY = [
    ("lat_local", "p50_ms", "p50\n1 process"),
    ("lat_local", "p99_ms", "p99\n1 process"),
    ("lat_remote", "p50_ms", "p50\n2 processes"),
    ("lat_remote", "p99_ms", "p99\n2 processes"),
]
COLORS = {
    "raw": "#888888",
    "ours": "#1f77b4",
    "ours_seed": "#6baed6",
    "original": "#d62728",
    "huey": "#2ca02c",
    "persistqueue": "#9467bd",
    "litequeue": "#ff7f0e",
    "celery": "#8c564b",
    "rq": "#e377c2",
    "dramatiq": "#7f7f7f",
    "huey_redis": "#bcbd22",
    "arq": "#17becf",
    "saq": "#393b79",
}


def median(records, workload, system, key):
    values = [
        r[key]
        for r in records
        if r["workload"] == workload
        and r["system"] == system
        and r.get(key) is not None
        and r["status"] != "error"
    ]
    return statistics.median(values) if values else None


def incomplete(records, workload, system):
    return any(r["status"] != "ok" for r in records if r["workload"] == workload and r["system"] == system)


def grouped(ax, data, groups, systems, labels, ratio, ylabel, title):
    width = 0.8 / len(systems)
    for k, system in enumerate(systems):
        xs, ys, hatches = [], [], []
        for g, (workload, key, _) in enumerate(groups):
            value = median(data, workload, system, key)
            if value is None:
                continue
            if ratio:
                base = median(data, workload, "raw", "rate")
                if not base:
                    continue
                value /= base
            xs.append(g + (k - (len(systems) - 1) / 2) * width)
            ys.append(value)
            hatches.append("//" if incomplete(data, workload, system) else "")
        bars = ax.bar(xs, ys, width, label=labels[system], color=COLORS.get(system))
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
    ax.set_xticks(range(len(groups)), [g[2] for g in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)


def main() -> None:
    source, target = sys.argv[1:3]
    with open(source) as f:
        data = json.load(f)
    records, systems, labels = data["records"], data["systems"], data["labels"]
    present = {r["workload"] for r in records}
    fig, axes = plt.subplots(2, 1, figsize=(12, 9))
    groups = [g for g in THROUGHPUT if g[0] in present]
    grouped(
        axes[0],
        records,
        groups,
        systems,
        labels,
        True,
        "× raw sqlite3 loop (log)",
        "Throughput relative to the raw stdlib-sqlite3 ceiling (higher is better; hatched: did not finish)",
    )
    axes[0].axhline(1.0, color="black", linewidth=0.8)
    groups = [g for g in LATENCY if g[0] in present]
    grouped(
        axes[1],
        records,
        groups,
        systems,
        labels,
        False,
        "milliseconds (log)",
        "Idle round trip: send one task, wait for its result (lower is better)",
    )
    axes[1].legend(fontsize=8, loc="upper left", ncol=4)
    m = data["machine"]
    fig.suptitle(
        f"message_queue_sqlite benchmark, {m['date']} — {m['nproc']} CPUs ({m['cpu']}), "
        f"Python {m['python']}, SQLite {m['sqlite']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
