"""Helpers shared by the SQLite benchmark (run.py) and the PostgreSQL one (pg.py)."""

from __future__ import annotations

import json
import statistics


def log(message: str) -> None:
    print(message, flush=True)


def read_lines(path: str) -> list[dict]:
    """The complete JSON lines a trial wrote so far (a half-written last line is skipped)."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except (OSError, ValueError):
        return []


def summarize(records: list[dict], key: str) -> dict | None:
    """Median, min and max of ``key`` over the repetitions that produced it."""
    values = [r[key] for r in records if r.get(key) is not None and r["status"] != "error"]
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "complete": sum(1 for r in records if r["status"] == "ok"),
        "runs": len(records),
    }
