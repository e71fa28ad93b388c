"""The work every system's tasks do, so that all of them run identical code."""

from __future__ import annotations

import time


def spin(iters: int) -> int:
    """Pure-Python CPU work: ``iters`` rounds of integer arithmetic (holds the GIL)."""
    x = 0
    for k in range(iters):
        x = (x + k * k) % 1_000_003
    return x


def calibrate(target_s: float = 0.002, rounds: int = 7) -> dict:
    """The iteration count for which ``spin`` takes ``target_s`` here (median of ``rounds``)."""
    iters = 1000
    while True:  # grow until one call takes at least 20 ms, for a stable rate
        t = time.perf_counter()
        spin(iters)
        took = time.perf_counter() - t
        if took > 0.02:
            break
        iters *= 2
    per_iter = []
    for _ in range(rounds):
        t = time.perf_counter()
        spin(iters)
        per_iter.append((time.perf_counter() - t) / iters)
    per_iter.sort()
    per = per_iter[len(per_iter) // 2]
    n = max(1, round(target_s / per))
    t = time.perf_counter()
    spin(n)
    return {"iters": n, "target_ms": target_s * 1e3, "check_ms": (time.perf_counter() - t) * 1e3}


def sleep10(i: int = 0) -> int:
    time.sleep(0.01)
    return i


if __name__ == "__main__":
    import json

    print(json.dumps(calibrate()))
