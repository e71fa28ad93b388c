"""The work every system's tasks do, so that all of them run identical code."""

from __future__ import annotations

import time


def spin(iters: int) -> int:
    """Pure-Python CPU work: ``iters`` rounds of integer arithmetic (holds the GIL)."""
    x = 0
    for k in range(iters):
        x = (x + k * k) % 1_000_003
    return x


def calibrate(target_s: float = 0.002, rounds: int = 40) -> dict:
    """The iteration count for which ``spin`` costs ``target_s`` of CPU here. Measured in this
    process's CPU time (not wall time), and the least of ``rounds``: on a shared machine the
    wall clock also counts the time other processes had the core, which would make the count
    too small."""
    iters = 1000
    while True:  # grow until one call costs at least 5 ms (short: likelier to run undisturbed)
        t = time.process_time()
        spin(iters)
        took = time.process_time() - t
        if took > 0.005:
            break
        iters *= 2
    per_iter = []
    for _ in range(rounds):
        t = time.process_time()
        spin(iters)
        per_iter.append((time.process_time() - t) / iters)
    n = max(1, round(target_s / min(per_iter)))
    checks = []
    for _ in range(5):
        t = time.perf_counter()
        spin(n)
        checks.append(time.perf_counter() - t)
    return {"iters": n, "target_ms": target_s * 1e3, "check_ms": min(checks) * 1e3}


def sleep10(i: int = 0) -> int:
    time.sleep(0.01)
    return i


if __name__ == "__main__":
    import json

    print(json.dumps(calibrate()))
