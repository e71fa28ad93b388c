#!/usr/bin/env python3
"""The PostgreSQL benchmark: ours vs a raw psycopg loop vs pgqueuer and procrastinate.

    python3 bench/pg.py                  # make bench-pg (~3-5 min): writes bench/results/pg.{md,json}
    python3 bench/pg.py --reps 1 --systems raw,ours --only drain

Standard library only in this process. Every system runs in bench/.venvs/pg-peers (created
here from requirements-pg.txt; it holds psycopg, pgqueuer, procrastinate); our package comes
from the repository via PYTHONPATH. Every trial is this script (``--trial``) in a subprocess
of its own session with a time bound, on a fresh schema that is dropped afterwards; a trial
that does not finish is killed and reported with what it completed (its last progress line).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import log, read_lines, summarize  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
VENV = os.path.join(BENCH, ".venvs", "pg-peers")
REQUIREMENTS = os.path.join(BENCH, "requirements-pg.txt")
WORK = os.path.join(BENCH, ".work", "pg")
RESULTS = os.path.join(BENCH, "results")
URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
GRACE_S = 20.0  # beyond a workload's own bound, before a trial is killed
SYSTEMS = {  # name: (adapter module in bench/adapters, label)
    "raw": ("pg_raw", "raw psycopg loop (ceiling)"),
    "ours": ("pg_ours", "ours: MessageQueue"),
    "pgqueuer": ("pg_pgqueuer", "pgqueuer"),
    "procrastinate": ("pg_procrastinate", "procrastinate"),
}
DROPPED: dict[str, str] = {}  # system: why it is not measured (shown in the report)
SKIP = {  # (system, workload): why that one is not measured
    ("pgqueuer", "latency"): "round trips took ~3 s each (its worker is not woken at once for a "
    "single job here); not pursued in the time available",
}
WORKLOADS = {  # key: (trial, params, metrics [(field, label, unit, higher_better)])
    "drain": (
        "drain",
        {"n": 20000, "threads": 4, "bound": 15, "stall": 10},
        [("rate", "drain 20k pre-enqueued, 4 workers", "/s", True)],
    ),
    "enqueue": (
        "enqueue",
        {"n": 20000, "bound": 20},
        [("rate", "batch enqueue of 20k (one batch call)", "/s", True)],
    ),
    "latency": (
        "latency",
        {"n": 100, "gap": 0.01, "threads": 4, "bound": 20},
        [
            ("p50_ms", "idle round trip p50 (100 sequential)", "ms", False),
            ("p99_ms", "idle round trip p99", "ms", False),
        ],
    ),
}


# ------------------------------------------------------------------------- trial side
def load_adapter(system: str):
    path = os.path.join(BENCH, "adapters", SYSTEMS[system][0] + ".py")
    spec = importlib.util.spec_from_file_location("pg_adapter_" + system, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def percentile(values, q):
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def trial(system: str, workload: str, p: dict, schema: str, out_path: str) -> None:
    import psycopg

    out = open(out_path, "a", buffering=1)  # noqa: SIM115

    def emit(kind, **data):
        out.write(json.dumps({"kind": kind, **data}) + "\n")

    ad = load_adapter(system)
    emit("start", version=ad.version(), pid=os.getpid())
    workdir = os.path.join(WORK, schema)
    os.makedirs(workdir, exist_ok=True)
    drop_schema(schema)
    q = ad.open(URL, schema, workdir, threads=p.get("threads", 4))
    n, bound = p["n"], p["bound"]
    try:
        if workload == "enqueue":
            t0 = time.perf_counter()
            ad.enqueue_batch(q, 0, n)
            elapsed = time.perf_counter() - t0
            emit("result", done=n, n=n, elapsed=elapsed, rate=n / elapsed, stop="complete")
        elif workload == "drain":
            for start in range(0, n, 10_000):  # untimed
                ad.prefill(q, start, min(10_000, n - start))
            counter = psycopg.connect(URL, autocommit=True, options=f"-c search_path={schema},public")
            sql = ad.DONE_SQL.format(schema=schema, n=n)

            def count():
                return counter.execute(sql).fetchone()[0]

            last, last_change, last_progress = -1, time.perf_counter(), 0.0
            t0 = time.perf_counter()
            ad.start(q, p["threads"])
            while True:
                value = count()
                now = time.perf_counter()
                if value != last:
                    last, last_change = value, now
                if value >= n:
                    stop = "complete"
                    break
                if now - t0 > bound:
                    stop = "bound"
                    break
                if now - last_change > p["stall"]:
                    stop = "stall"
                    break
                if now - last_progress > 0.5:
                    last_progress = now
                    emit("progress", done=value, n=n, elapsed=now - t0)
                time.sleep(0.005)
            elapsed = (now if stop == "complete" else last_change) - t0
            rate = last / elapsed if elapsed else 0.0
            emit("result", done=last, n=n, elapsed=elapsed, rate=rate, stop=stop)
            counter.close()
        elif workload == "latency":
            ad.start(q, p["threads"])
            time.sleep(0.3)
            samples, stop = [], "complete"
            t0 = time.perf_counter()
            for i in range(-2, n):  # two warm-ups, not counted
                left = bound - (time.perf_counter() - t0)
                if left <= 0:
                    stop = "bound"
                    break
                time.sleep(p["gap"])
                s = time.perf_counter()
                try:
                    ad.roundtrip(q, i, max(0.05, left))
                except TimeoutError:
                    stop = "bound"
                    break
                if i >= 0:
                    samples.append(time.perf_counter() - s)
                    emit("progress", done=len(samples), n=n, p50_ms=statistics.median(samples) * 1e3)
            result = {"done": len(samples), "n": n, "stop": stop, "elapsed": time.perf_counter() - t0}
            if samples:
                result.update(
                    p50_ms=percentile(samples, 0.5) * 1e3,
                    p99_ms=percentile(samples, 0.99) * 1e3,
                    max_ms=max(samples) * 1e3,
                )
            emit("result", **result)
    finally:
        out.flush()
        try:
            ad.close(q)
        except Exception as exc:  # the result is already written
            emit("close_error", error=f"{type(exc).__name__}: {exc}")
        drop_schema(schema)
        out.flush()


def trial_main(argv: list[str]) -> None:
    system, workload, params, schema, out_path = argv
    try:
        trial(system, workload, json.loads(params), schema, out_path)
    except BaseException as exc:
        import traceback

        with open(out_path, "a") as f:
            f.write(json.dumps({"kind": "error", "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()}) + "\n")
        os._exit(1)
    os._exit(0)  # do not wait for peers' non-daemon threads


def info_main() -> None:
    import psycopg

    with psycopg.connect(URL, autocommit=True) as conn:
        print(json.dumps({"server_version": conn.execute("SHOW server_version").fetchone()[0]}))


# ------------------------------------------------------------------------- runner side
def ensure_venv() -> str:
    """Create bench/.venvs/pg-peers from requirements-pg.txt (again when that file changes)."""
    with open(REQUIREMENTS, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    python = os.path.join(VENV, "bin", "python")
    stamp = os.path.join(VENV, ".bench-requirements")
    if os.path.exists(stamp) and os.path.exists(python):
        with open(stamp) as f:
            if f.read() == digest:
                return python
    log(f"setting up {VENV} from requirements-pg.txt ...")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", REQUIREMENTS], check=True
    )
    with open(stamp, "w") as f:
        f.write(digest)
    return python


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO  # our package straight from the repository
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_trial(python: str, system: str, workload: str, rep: int) -> dict:
    kind, params, _ = WORKLOADS[workload]
    schema = f"bench_{system}_{workload}_{rep}_{os.getpid()}"
    out = os.path.join(WORK, schema + ".jsonl")
    logfile = os.path.join(WORK, schema + ".log")
    os.makedirs(WORK, exist_ok=True)
    if os.path.exists(out):
        os.remove(out)
    started = time.monotonic()
    with open(logfile, "w") as logf:
        proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "--trial", system, kind, json.dumps(params), schema, out],
            cwd=WORK,
            env=child_env(),
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        killed = False
        try:
            proc.wait(timeout=params["bound"] + GRACE_S)
        except subprocess.TimeoutExpired:
            killed = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    # the trial drops its schema; again here in case it was killed first
    subprocess.run([python, os.path.abspath(__file__), "--drop", schema], env=child_env(), timeout=30)
    lines = read_lines(out)
    record = {"system": system, "workload": workload, "rep": rep, "params": params,
              "wall": time.monotonic() - started}
    for line in lines:
        if line["kind"] == "start":
            record["version"] = line.get("version")
    final = next((ln for ln in reversed(lines) if ln["kind"] == "result"), None)
    partial = next((ln for ln in reversed(lines) if ln["kind"] == "progress"), None)
    error = next((ln for ln in lines if ln["kind"] == "error"), None)
    if final is not None:
        record.update({k: v for k, v in final.items() if k != "kind"})
        record["status"] = {"complete": "ok", "bound": "timeboxed", "stall": "stalled"}[final["stop"]]
    elif partial is not None:
        record.update({k: v for k, v in partial.items() if k != "kind"})
        if "rate" not in record and record.get("elapsed"):
            record["rate"] = record.get("done", 0) / record["elapsed"]
        record["status"] = "killed"
    else:
        record["status"] = "error"
    if error is not None and final is None:
        record["status"] = "error"
        record["error"] = error["error"]
    if killed:
        record["status"] = "killed" if final is None else record["status"]
    if record["status"] != "ok":
        try:
            with open(logfile) as f:
                record["log_tail"] = f.read()[-1500:]
        except OSError:
            pass
        if error is not None:
            record["log_tail"] = error.get("traceback", "")[-1500:]
    for path in (out, logfile):
        if record["status"] == "ok" and os.path.exists(path):
            os.remove(path)
    return record


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"


def status_note(records: list[dict]) -> str:
    notes = []
    for r in records:
        if r["status"] == "ok":
            continue
        what = f"{r.get('done', '?'):,}/{r.get('n', 0):,}" if r.get("done") is not None else "?"
        if r["status"] == "error":
            notes.append("error: " + r.get("error", "see log")[:160])
        else:
            notes.append(f"{r['status']}: {what} in {r['params'].get('bound')} s bound")
    unique = list(dict.fromkeys(notes))
    return "; ".join(unique[:2]) + (f" (+{len(unique) - 2} more)" if len(unique) > 2 else "")


def machine(pg_version: str) -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "postgresql": pg_version,
        "url": URL,
        "command": " ".join(shlex.quote(a) for a in ["python3", "bench/pg.py", *sys.argv[1:]]),
    }


def markdown(records: list[dict], info: dict, systems: list[str], loads: list[str], wall: float,
             notes: dict) -> str:
    def of(w, s):
        return [r for r in records if r["workload"] == w and r["system"] == s]

    def med(w, s, key):
        st = summarize(of(w, s), key)
        return st["median"] if st else None

    versions = {}
    for r in records:
        if r.get("version"):
            versions.setdefault(r["system"], [])
            if r["version"] not in versions[r["system"]]:
                versions[r["system"]].append(r["version"])
    lines = [
        "# message_queue_sqlite benchmark on PostgreSQL",
        "",
        f"- date: {info['date']}; wall time of the run: {wall / 60:.1f} min",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}",
        f"- PostgreSQL {info['postgresql']} at `{info['url']}` (same machine; server defaults)",
        f"- command: `{info['command']}` (via `make bench-pg`, also run by `make bench`)",
        "- every figure: median of the repetitions, [min–max]; `×raw` is the median divided by the raw "
        "psycopg loop's in the same run (throughput: higher is better; latency: lower is better). "
        "⚠ marks a system that did not finish every repetition (notes below). Every trial is a "
        "fresh process on a fresh schema, dropped afterwards. The task is a no-op.",
        "",
        "## Systems",
        "",
        "| system | version | how it is driven |",
        "|---|---|---|",
    ]
    for s in systems:
        lines.append(f"| {SYSTEMS[s][1]} | {' then '.join(versions.get(s, ['?']))} | {notes.get(s, '')} |")
    for s, why in DROPPED.items():
        lines.append(f"| {SYSTEMS[s][1]} | — | **dropped**: {why} |")

    rows = []
    if "drain" in loads:
        a, b = med("drain", "ours", "rate"), med("drain", "raw", "rate")
        v = None if a is None or not b else a / b
        rows.append(("drain 20k, 4 workers", "≥ 0.5× raw", v, None if v is None else f"{v:.2f}×",
                     None if v is None else v >= 0.5))
    if "latency" in loads:
        v = med("latency", "ours", "p50_ms")
        rows.append(("idle round trip p50", "≤ 2.5 ms", v, None if v is None else f"{v:.2f} ms",
                     None if v is None else v <= 2.5))
    lines += ["", "## Goals (our package on PostgreSQL)", "", "| goal | target | measured | |"]
    lines.append("|---|---|---|---|")
    mark = {True: "PASS", False: "**MISS**", None: "n/a"}
    for goal, target, _, text, ok in rows:
        lines.append(f"| {goal} | {target} | {text or '—'} | {mark[ok]} |")

    lines += [
        "",
        "## Figures (median [min–max], ×raw)",
        "",
        "| workload | " + " | ".join(SYSTEMS[s][1] for s in systems) + " |",
        "|---" * (len(systems) + 1) + "|",
    ]
    footnotes = []
    for w in loads:
        for key, label, unit, _ in WORKLOADS[w][2]:
            cells = []
            base = med(w, "raw", key)
            for s in systems:
                recs = of(w, s)
                st = summarize(recs, key)
                if st is None:
                    cells.append("— ⚠" if recs else "—")
                    if recs:
                        footnotes.append(f"{SYSTEMS[s][1]}, {label}: {status_note(recs)}")
                    continue
                cell = f"{fmt(st['median'], unit)} [{fmt(st['min'], unit)}–{fmt(st['max'], unit)}]"
                if s != "raw" and base:
                    cell += f" ({st['median'] / base:.2f}×)"
                if st["complete"] < st["runs"]:
                    cell += " ⚠"
                    footnotes.append(f"{SYSTEMS[s][1]}, {label}: {status_note(recs)}")
                cells.append(cell)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    footnotes += [f"{SYSTEMS[s][1]}, {w}: not measured: {why}" for (s, w), why in SKIP.items()
                  if s in systems and w in loads]
    if footnotes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in dict.fromkeys(footnotes)]
    lines += [
        "",
        "## How",
        "",
        "- **drain**: 20,000 no-op jobs enqueued untimed with the system's batch API, then its 4 "
        "workers start; jobs/s until all 20,000 are recorded done in PostgreSQL (counted by the trial "
        "over its own connection every 5 ms).",
        "- **batch enqueue**: 20,000 jobs in one batch call into an empty queue (ours `send_many`, raw "
        "one multi-row `INSERT … SELECT FROM unnest(…)`, pgqueuer `Queries.enqueue(lists)`, "
        "procrastinate `batch_defer_async`).",
        "- **idle round trip**: 100 sequential jobs 10 ms apart on an idle queue with 4 workers in the "
        "same process: send one, block until its result is back (after 2 warm-ups). Ours: "
        "`send().result()`; raw: LISTEN/NOTIFY wake-up of the worker and of the waiter; peers: the "
        "waiter polls the job's row every 0.2 ms (neither exposes a blocking result wait).",
        "- each trial has a time bound (15 s drain, 20 s enqueue and latency) plus 20 s grace before it is "
        "killed; a killed or time-boxed trial is reported from its last progress line.",
        "- caveats: the raw loop claims (one statement) and completes (another) per batch; ours "
        "completes the previous batch and claims the next in one statement, so it can come close to "
        "or pass it. raw's round trip wakes all 4 LISTENing workers per job (no tuning), so its "
        "latency is not a floor. procrastinate's drain is time-boxed at 15 s (~280 jobs/s: its rate "
        "in the bound).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--trial":
        trial_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--drop":
        drop_schema(sys.argv[2])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--info":
        info_main()
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--systems", default=",".join(s for s in SYSTEMS if s not in DROPPED))
    parser.add_argument("--only", default=",".join(WORKLOADS), help="workloads: " + ", ".join(WORKLOADS))
    parser.add_argument("--out", default=os.path.join(RESULTS, "pg"), help="path without .md/.json")
    args = parser.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    loads = [w for w in args.only.split(",") if w]
    t_start = time.monotonic()
    python = ensure_venv()
    got = subprocess.run([python, os.path.abspath(__file__), "--info"], env=child_env(),
                         capture_output=True, text=True, timeout=30)
    if got.returncode != 0:
        sys.exit(f"cannot reach PostgreSQL at {URL}:\n{got.stderr[-1000:]}")
    info = machine(json.loads(got.stdout)["server_version"])
    notes = {}
    for s in systems:
        code = f"import sys; sys.path.insert(0, {BENCH!r}); import pg; print(pg.load_adapter({s!r}).NOTES)"
        r = subprocess.run([python, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
        notes[s] = r.stdout.strip()
    records = []
    for w in loads:
        for rep in range(args.reps):
            for s in systems:  # interleaved, so drift hits every system alike
                if (s, w) in SKIP:
                    continue
                rec = run_trial(python, s, w, rep)
                records.append(rec)
                shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in rec.items()
                         if k in ("rate", "p50_ms", "p99_ms", "done", "status", "error")}
                log(f"{w:8} rep {rep + 1}/{args.reps} {s:14} {shown}")
    wall = time.monotonic() - t_start
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"info": info, "systems": systems, "dropped": DROPPED, "workloads": loads,
                   "records": records}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(records, info, systems, loads, wall, notes))
    log(f"wrote {args.out}.md and {args.out}.json in {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
