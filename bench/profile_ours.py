#!/usr/bin/env python3
"""Profile our package on a bench workload with cProfile on every thread (standard library).

    PYTHONPATH=. python3 bench/profile_ours.py drain [--n 50000] [--threads 4] [--no-callbacks]
    PYTHONPATH=. python3 bench/profile_ours.py roundtrip [--n 500]

The main thread is profiled during the measured phase only (not a drain's prefill). Prints the functions
with the most own time summed over all threads (worker threads, the callback dispatcher,
the change watcher, the housekeeper and the main thread), and each thread's total. Times
inside SQLite's C calls (``execute``/``executemany``/``commit``) count as their caller's.
cProfile roughly doubles Python-level costs; read the shares, not the absolute rate.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

_profiles: list[tuple[str, cProfile.Profile]] = []
_lock = threading.Lock()
_original_run = threading.Thread.run


def _profiled_run(self):
    profile = cProfile.Profile()
    with _lock:
        _profiles.append((self.name, profile))
    profile.enable()
    try:
        _original_run(self)
    finally:
        profile.disable()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workload", choices=["drain", "roundtrip"])
    parser.add_argument("--n", type=int)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--no-callbacks", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    from adapters import ours

    folder = tempfile.mkdtemp(
        prefix="mqs-profile-",
        dir=os.path.join(HERE, ".work") if os.path.isdir(os.path.join(HERE, ".work")) else None,
    )
    try:
        callbacks = args.workload == "drain" and not args.no_callbacks
        threading.Thread.run = _profiled_run  # every thread the queue starts is profiled
        q = ours.open(folder, threads=args.threads, callbacks=callbacks)
        n = args.n or (50_000 if args.workload == "drain" else 500)
        if args.workload == "drain":
            ours.prefill(q, n)
        main_profile = cProfile.Profile()
        _profiles.append(("MainThread", main_profile))
        main_profile.enable()
        t0 = time.perf_counter()
        if args.workload == "drain":
            count = ours.done_counter(q, folder)
            ours.start(q, args.threads)
            while (q.calls if callbacks else count()) < n:
                time.sleep(0.002)
        else:
            ours.start(q, args.threads)
            time.sleep(0.2)
            t0 = time.perf_counter()
            for i in range(n):
                time.sleep(0.01)
                ours.roundtrip(q, i)
        elapsed = time.perf_counter() - t0
        main_profile.disable()
        ours.close(q)  # stops and joins the profiled threads
    finally:
        threading.Thread.run = _original_run
        shutil.rmtree(folder, ignore_errors=True)

    what = (
        f"drain {n:,} tasks, {args.threads} threads, callbacks {'on' if callbacks else 'off'}"
        if args.workload == "drain"
        else f"{n} idle round trips (10 ms apart), {args.threads} threads"
    )
    rate = (
        f"{n / elapsed:,.0f} tasks/s"
        if args.workload == "drain"
        else f"{(elapsed - n * 0.01) / n * 1e3:.2f} ms per round trip beyond the gap"
    )
    print(f"{what}: {elapsed:.2f} s under the profiler ({rate})\n")
    stats = None
    print("per thread (profiled seconds, incl. waits):")
    for name, profile in _profiles:
        s = pstats.Stats(profile)
        print(f"  {name:<22} {s.total_tt:8.2f} s")
        if stats is None:
            stats = pstats.Stats(profile, stream=io.StringIO())
        else:
            stats.add(profile)
    out = io.StringIO()
    stats.stream = out
    stats.sort_stats("tottime").print_stats(args.top)
    text = out.getvalue()
    text = text.replace(os.path.dirname(HERE) + "/", "").replace(os.path.dirname(os.__file__) + "/", "")
    print(text[text.index("   ncalls") :] if "   ncalls" in text else text)


if __name__ == "__main__":
    main()
