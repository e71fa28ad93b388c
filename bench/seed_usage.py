#!/usr/bin/env python3
"""The original package's own usage, measured against the raw sqlite3 loop (issue 14 part 3).

    python3 bench/seed_usage.py [--reps 3] [--quick] [--only enqueue,processes,drain_4,roundtrip]
                                [--against /path/to/other/checkout]

Every send is the seed API's ``send_message(name, args, callback, priority)`` with a callback
(``init_server`` / ``start_server``), and a task counts as done when its callback ran in
the sending process. The raw loop (``adapters/raw.py``) has no callbacks: its sender learns
of completion from the results table (in its own process it is woken by its workers; across
processes it polls the done count, as ``trial.py`` watches every system).

- **enqueue**: n sends, one call each, into an empty queue (no worker: durable when it returns).
- **processes**: this process sends n tasks one call each while a worker process (the seed
  API's ``start_server``, 4 threads) runs them; from the first send until every callback ran
  here (raw: until this process counted every result recorded).
- **drain_4**: n tasks sent beforehand (untimed), then ``start_server`` with 4 threads in this
  process: until every callback ran (raw: every result recorded).
- **roundtrip**: idle round trips 10 ms apart, worker threads in this process: send one task,
  wait for its callback (raw: for its row to be done). p50.

Each measurement runs in a fresh subprocess, the systems alternated (the order flipped every
repetition); the median of ``--reps`` is reported, with PASS/MISS per goal. ``--against``
also runs that checkout's package (e.g. a worktree of main) as "base", alternated with the
others, for a before/after from one run. Standard library and this repository only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WAIT_S = 60.0  # no measured wait lasts longer (a stuck system is reported, not waited on)

FULL = {
    "enqueue": {"n": 5000},
    "processes": {"n": 10000, "threads": 4},
    "drain_4": {"n": 20000, "threads": 4},
    "roundtrip": {"n": 200, "gap": 0.01, "threads": 4},
}
QUICK = {  # each system twice, ~20-30 s in all
    "enqueue": {"n": 3000},
    "processes": {"n": 5000, "threads": 4},
    "drain_4": {"n": 10000, "threads": 4},
    "roundtrip": {"n": 100, "gap": 0.01, "threads": 4},
}
# measurement: (figure, unit, goal text, passes(ours, raw))
GOALS = {
    "enqueue": ("rate", "tasks/s", ">= 0.8x raw", lambda o, r: o / r >= 0.8),
    "processes": ("rate", "tasks/s", ">= 0.5x raw", lambda o, r: o / r >= 0.5),
    "drain_4": ("rate", "tasks/s", ">= 0.5x raw", lambda o, r: o / r >= 0.5),
    "roundtrip": ("p50_ms", "ms", "p50 <= 0.5 ms", lambda o, r: o <= 0.5),
}


# ------------------------------------------------------------------- the two systems
class Done:
    """Counts completions; ``wait()`` returns once ``n`` came (or the deadline passed)."""

    def __init__(self, n: int):
        self.n = n
        self.count = 0
        self.event = threading.Event()

    def __call__(self, result: object = None) -> None:  # the seed callback (one delivery thread)
        self.count += 1
        if self.count >= self.n:
            self.event.set()

    def wait(self) -> bool:
        return self.event.wait(WAIT_S)


def ours_open(path: str, threads: int):
    sys.path.insert(0, HERE)  # bench/seed_tasks: the task package the seed API discovers
    from message_queue_sqlite import Config, discover_and_mount_ts, init_server

    tasks = discover_and_mount_ts("seed_tasks")
    return init_server(tasks, Config(middleware_path=path, max_workers=threads))


def ours_start(server, client) -> threading.Thread:
    from message_queue_sqlite import start_server

    thread = threading.Thread(target=start_server, args=(server, client), daemon=True)
    thread.start()
    return thread


def ours_close(server, client, thread: threading.Thread | None = None) -> None:
    from message_queue_sqlite import stop_server

    stop_server(server, client)
    if thread is not None:
        thread.join(WAIT_S)


def raw_module():
    sys.path.insert(0, HERE)
    from adapters import raw

    return raw


def raw_done_count(path: str):
    """The done count read through a connection of its own (what a raw sender can learn)."""
    import sqlite3

    conn = sqlite3.connect(os.path.join(path, "raw-0.db"), timeout=30, check_same_thread=False)
    return lambda: conn.execute("SELECT count(*) FROM tasks WHERE status = 2").fetchone()[0]


def m_enqueue(system: str, p: dict, path: str) -> dict:
    n = p["n"]
    if system == "raw":
        raw = raw_module()
        q = raw.open(path)
        t0 = time.perf_counter()
        for i in range(n):
            raw.enqueue(q, i)
        elapsed = time.perf_counter() - t0
        raw.close(q)
    else:
        server, client, send_message = ours_open(path, 4)
        done = Done(n)
        t0 = time.perf_counter()
        for i in range(n):
            send_message("noop", {"i": i}, done, 0)
        elapsed = time.perf_counter() - t0
        ours_close(server, client)
    return {"rate": n / elapsed, "elapsed": elapsed}


def m_drain(system: str, p: dict, path: str) -> dict:
    n, threads = p["n"], p["threads"]
    if system == "raw":
        raw = raw_module()
        q = raw.open(path)
        raw.prefill(q, n)
        t0 = time.perf_counter()
        raw.start(q, threads)
        with q.results:
            complete = q.results.wait_for(lambda: q.completed >= n, WAIT_S)
        elapsed = time.perf_counter() - t0
        raw.close(q)
    else:
        server, client, send_message = ours_open(path, threads)
        done = Done(n)
        for i in range(n):
            send_message("noop", {"i": i}, done, 0)
        t0 = time.perf_counter()
        thread = ours_start(server, client)
        complete = done.wait()
        elapsed = time.perf_counter() - t0
        ours_close(server, client, thread)
    return {"rate": n / elapsed, "elapsed": elapsed, "complete": complete}


def m_roundtrip(system: str, p: dict, path: str) -> dict:
    n, gap = p["n"], p["gap"]
    samples = []
    if system == "raw":
        raw = raw_module()
        q = raw.open(path)
        raw.start(q, p["threads"])

        def once(i: int) -> None:
            raw.roundtrip(q, i, WAIT_S)
    else:
        server, client, send_message = ours_open(path, p["threads"])
        thread = ours_start(server, client)

        def once(i: int) -> None:
            event = threading.Event()
            send_message("noop", {"i": i}, lambda result: event.set(), 0)
            if not event.wait(WAIT_S):
                raise TimeoutError(f"no callback within {WAIT_S} s")
    time.sleep(0.3)  # the workers settle (as trial.py's latency workload)
    for i in range(-2, n):  # two warm-up round trips
        time.sleep(gap)
        t0 = time.perf_counter()
        once(i)
        if i >= 0:
            samples.append(time.perf_counter() - t0)
    if system == "raw":
        raw.close(q)
    else:
        ours_close(server, client, thread)
    samples.sort()
    return {"p50_ms": statistics.median(samples) * 1e3,
            "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3}


def m_processes(system: str, p: dict, path: str) -> dict:
    n, threads = p["n"], p["threads"]
    if system == "raw":
        raw = raw_module()
        q = raw.open(path)  # creates the file before the worker opens it
    else:
        server, client, send_message = ours_open(path, threads)
    worker = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_worker", system,
                               json.dumps(p), path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=os.environ.copy())
    try:
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("the worker process did not start")
        if system == "raw":
            count = raw_done_count(path)
            t0 = time.perf_counter()
            for i in range(n):
                raw.enqueue(q, i)
            sent = time.perf_counter() - t0
            deadline = time.monotonic() + WAIT_S
            while True:  # polled as trial.py's watch polls a count: 2 ms, or 20x what it costs
                before = time.perf_counter()
                done = count()
                cost = time.perf_counter() - before
                if done >= n or time.monotonic() > deadline:
                    break
                time.sleep(max(0.002, min(0.05, 20 * cost)))
            complete = done >= n
        else:
            callbacks = Done(n)
            t0 = time.perf_counter()
            for i in range(n):
                send_message("noop", {"i": i}, callbacks, 0)
            sent = time.perf_counter() - t0
            complete = callbacks.wait()
        elapsed = time.perf_counter() - t0
    finally:
        worker.stdin.write("stop\n")
        worker.stdin.close()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    if system == "raw":
        raw.close(q)
    else:
        ours_close(server, client)
    return {"rate": n / elapsed, "elapsed": elapsed, "send_s": sent, "complete": complete}


def r_worker(system: str, p: dict, path: str) -> None:
    """The worker process of ``processes``: runs until told to stop on stdin."""
    if system == "raw":
        raw = raw_module()
        q = raw.open(path)
        raw.start(q, p["threads"])
    else:
        server, client, _ = ours_open(path, p["threads"])
        thread = ours_start(server, client)
    print("ready", flush=True)
    sys.stdin.readline()
    if system == "raw":
        raw.close(q)
    else:
        ours_close(server, client, thread)


MEASURES = {"enqueue": m_enqueue, "processes": m_processes, "drain_4": m_drain, "roundtrip": m_roundtrip}


# ------------------------------------------------------------------------ the runner
def trial(system: str, code: str, measure: str, p: dict) -> dict | None:
    """One measurement in a fresh subprocess importing the package from ``code``."""
    work = tempfile.mkdtemp(prefix=f"seed-usage-{measure}-")
    env = {**os.environ, "PYTHONPATH": code}
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "_trial",
                               "raw" if system == "raw" else "ours", measure, json.dumps(p), work],
                              capture_output=True, text=True, env=env, timeout=3 * WAIT_S)
    except subprocess.TimeoutExpired:
        print(f"  {system} {measure}: timed out", flush=True)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        print(f"  {system} {measure}: failed\n{proc.stderr[-2000:]}", flush=True)
        return None
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, two repetitions (~20-30 s)")
    parser.add_argument("--only", help="comma-separated: " + ",".join(MEASURES))
    parser.add_argument("--against", help="another checkout whose package runs too, as 'base'")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--markdown", help="write the table here (`make bench`: bench/results/seed_usage.md)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    reps = 2 if args.quick and args.reps == 3 else args.reps
    measures = args.only.split(",") if args.only else list(MEASURES)
    for name in measures:
        if name not in MEASURES:
            parser.error(f"unknown measurement {name!r}; known: {', '.join(MEASURES)}")
    systems = [("ours", REPO), ("raw", REPO)]
    if args.against:
        systems.insert(1, ("base", os.path.abspath(args.against)))
    figures: dict[str, dict[str, list[dict]]] = {m: {s: [] for s, _ in systems} for m in measures}
    started = time.perf_counter()
    for measure in measures:
        for rep in range(reps):
            order = systems if rep % 2 == 0 else systems[::-1]
            for system, code in order:
                result = trial(system, code, measure, sizes[measure])
                if result is not None:
                    figures[measure][system].append(result)
                    key = GOALS[measure][0]
                    print(f"  {measure:<10} {system:<5} rep {rep + 1}: {key} {result[key]:,.2f}"
                          + ("" if result.get("complete", True) else " (incomplete)"), flush=True)
    print(f"\nseed API usage, callback on every send; median of {reps}; "
          f"{time.perf_counter() - started:.0f} s\n")
    header = f"{'measurement':<12} {'system':<6} {'median':>12} {'min-max':>22} {'vs raw':>7}  goal"
    print(header)
    print("-" * len(header))
    summary: dict[str, dict] = {}
    rows: list[str] = []
    for measure in measures:
        key, unit, goal, passes = GOALS[measure]
        raw = [r[key] for r in figures[measure]["raw"]]
        raw_median = statistics.median(raw) if raw else None
        for system, _ in systems:
            values = [r[key] for r in figures[measure][system]]
            if not values:
                print(f"{measure:<12} {system:<6} {'no result':>12}")
                continue
            median = statistics.median(values)
            spread = f"{min(values):,.2f}-{max(values):,.2f}"
            ratio = median / raw_median if raw_median else None
            verdict = ""
            if system != "raw" and raw_median:
                verdict = f"{goal}: {'PASS' if passes(median, raw_median) else 'MISS'}"
            ratio_text = f"{ratio:.2f}x" if ratio is not None else "-"
            print(f"{measure:<12} {system:<6} {median:>12,.2f} {spread:>22} {ratio_text:>7}  {verdict}"
                  f"  ({unit})")
            rows.append(f"| {measure} | {system} | {median:,.2f} {unit} | {spread} | {ratio_text} | "
                        f"{verdict or '—'} |")
            summary.setdefault(measure, {})[system] = {"median": median, "values": values, "ratio": ratio}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sizes": sizes, "reps": reps, "figures": summary}, f, indent=2)
    if args.markdown:
        write_markdown(args.markdown, rows, sizes, reps, measures)


def write_markdown(path: str, rows: list[str], sizes: dict, reps: int, measures: list[str]) -> None:
    """The table as the README quotes it: when, where, the sizes, and how to run it again."""
    import platform
    import sqlite3

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# The seed's own usage: `send_message(name, args, callback, priority)`, a callback on every send",
        "",
        f"{when}; {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; "
        f"median of {reps} alternated repetitions, each in a fresh process. Done = the callback ran in "
        "the sender (raw: its sender counted every result recorded). Again: `python3 bench/seed_usage.py`.",
        "",
        "Sizes: " + "; ".join(f"{m} {sizes[m]}" for m in measures),
        "",
        "| measurement | system | median | min-max | vs raw | goal |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_trial":
        _, _, system, measure, params, path = sys.argv
        print(json.dumps(MEASURES[measure](system, json.loads(params), path)), flush=True)
        os._exit(0)  # leave no thread to wait for at exit
    elif len(sys.argv) > 1 and sys.argv[1] == "_worker":
        _, _, system, params, path = sys.argv
        r_worker(system, json.loads(params), path)
        os._exit(0)
    else:
        main()
