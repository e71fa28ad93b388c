#!/usr/bin/env python3
"""The benchmark: every system, every workload, side by side, in one run.

    python3 bench/run.py            # full (make bench): ~15 min, writes bench/results/
    python3 bench/run.py --quick    # seconds (make bench-quick): ours vs raw, regression guard

Standard library only. Peers are installed into virtualenvs under bench/.venvs/ (created
here on first use); our package runs from the repository via PYTHONPATH. Every trial is
a subprocess (trial.py) in a session of its own with a time bound; a trial that does not
finish is killed and reported with what it completed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
from adapters import BROKERS, SYSTEMS  # noqa: E402
from common import log, read_lines, summarize  # noqa: E402

VENVS = os.path.join(BENCH, ".venvs")
WORK = os.path.join(BENCH, ".work")
RESULTS = os.path.join(BENCH, "results")
REQUIREMENTS = {"peers": "requirements-peers.txt", "original": "requirements-original.txt"}
REQUIREMENTS |= {b: f"requirements-{b.replace('_', '-')}.txt" for b in BROKERS}  # one venv each
CAPS = {  # mirrors each adapter's CAPS, so this process needs none of the peers
    "raw": {"batch", "shards", "durability"},
    "ours": {"batch", "callbacks", "shards", "durability"},
    "ours_seed": {"callbacks"},
    "original": {"callbacks"},
    "huey": set(),
    "persistqueue": set(),
    "litequeue": {"batch"},
    # broker peers: "sync" / "async": the kinds of task their worker CLI runs (the work trial)
    "celery": {"sync"},
    "rq": {"sync"},
    "dramatiq": {"sync"},
    "huey_redis": {"sync"},
    "arq": {"async"},
    "saq": {"async"},
}
CAPS["ours"] |= {"sync", "async"}  # through `mqs worker` (adapters/ours_cli.py)
CAPS["huey"] |= {"sync"}  # through huey_consumer (adapters/huey_sqlite_cli.py)
FULL_SYSTEMS = ["raw", "ours", "ours_seed", "original", "huey", "persistqueue", "litequeue", *BROKERS]
BROKER_TODAY = {"enqueue_call", "drain_4", "processes", "lat_remote"}  # today's workloads they join
REDIS = ("127.0.0.1", 6379)
QUICK_SYSTEMS = ["raw", "ours"]
GRACE_S = 30.0  # beyond a workload's own bound, before a trial is killed


@dataclass
class Metric:
    key: str  # field of the trial's result
    label: str
    unit: str  # "/s", "ms", "%", "lost"
    higher_better: bool = True
    base_key: str | None = None  # raw's field to divide by (default: the same key)


@dataclass
class Workload:
    key: str
    section: str
    trial: str
    params: dict
    systems: list
    metrics: list
    needs: str | None = None  # a capability the system must have
    template: str | None = None  # starts from a copy of a prepared queue: "backlog" or "small"
    group: str = ""  # --only selects a workload by its key or its group (default: the key)
    brokers: bool = False  # the broker peers run it too
    ref: str | None = None  # worker-CLI workloads: the workload whose "ours" is the ×ours base

    def __post_init__(self):
        self.group = self.group or self.key


RATE = "/s"


def workloads(quick: bool, backlog_n: int | None, systems: list[str], small: bool = False) -> list[Workload]:
    found = today(quick, backlog_n, systems)
    for w in found:
        w.brokers = w.key in BROKER_TODAY
        if small and w.trial != "latency":
            w.params["n"] = max(500, w.params["n"] // 5)
    if quick:  # the guard stays seconds long: ours and raw in one process only
        return found
    return found + worker_cli(400 if small else 2000, systems)


def worker_cli(n: int, systems: list[str]) -> list[Workload]:
    """The workloads whose workers are each system's own CLI process(es): 10 ms sleeps,
    async sleeps, ~2 ms of CPU; ``iters`` (the CPU task's size) is set once per run."""
    def work(key, group, task, deploy, label, needs="sync", only=None, bound=60, ref=None, metrics=None):
        return Workload(
            key, "Worker processes", "work",
            {"n": n, "task": task, "deploy": deploy, "bound": bound, "stall": 10},
            [s for s in systems if only is None or s in only],
            metrics or [Metric("rate", label, RATE)], needs=needs, group=group, brokers=True, ref=ref,
        )

    def cpu(label):
        return [Metric("rate", label, RATE), Metric("seconds", label + ": seconds", "s", False)]

    return [
        work("io_10ms", "io_10ms", "sleep10", {"threads": 4, "huey_kind": "thread"},
             f"{n:,} × time.sleep(0.01), concurrency 4", ref="io_10ms"),
        work("io_10ms_rq_simple", "io_10ms", "sleep10", {"threads": 4, "rq_class": "rq.SimpleWorker"},
             f"{n:,} × time.sleep(0.01), 4 RQ SimpleWorkers (no fork per job)", only={"rq"}, ref="io_10ms"),
        work("async_sleep", "async_sleep", "asleep", {"async": 100},
             f"{n:,} × await asyncio.sleep(0.01), concurrency 100", needs="async", ref="async_sleep"),
        work("async_sleep_threads", "async_sleep", "sleep10", {"threads": 4},
             f"{n:,} × time.sleep(0.01) (sync), 4 threads", only={"ours"}, ref="async_sleep"),
        work("cpu_2ms_p2", "cpu_2ms", "cpu", {"processes": 2}, "", ref="cpu_2ms_p2",
             metrics=cpu(f"{n:,} × ~2 ms CPU, 2 processes")),
        work("cpu_2ms_p4", "cpu_2ms", "cpu", {"processes": 4}, "", only={"huey_redis", "huey", "dramatiq"},
             ref="cpu_2ms_p2", metrics=cpu(f"{n:,} × ~2 ms CPU, 4 processes")),
        work("cpu_2ms_t4", "cpu_2ms", "cpu", {"threads": 4}, "", only={"ours"}, ref="cpu_2ms_p2",
             metrics=cpu(f"{n:,} × ~2 ms CPU, 1 process × 4 threads")),
        work("cpu_2ms_exec", "cpu_2ms", "cpu_proc", {"threads": 4, "executor_processes": 2}, "",
             only={"ours"}, ref="cpu_2ms_p2",
             metrics=cpu(f'{n:,} × ~2 ms CPU, executor="process" task, 2 child processes')),
        work("cpu_2ms_rq_simple", "cpu_2ms", "cpu", {"processes": 2, "rq_class": "rq.SimpleWorker"}, "",
             only={"rq"}, ref="cpu_2ms_p2",
             metrics=cpu(f"{n:,} × ~2 ms CPU, 2 RQ SimpleWorkers (no fork per job)")),
    ]


def today(quick: bool, backlog_n: int | None, systems: list[str]) -> list[Workload]:
    both = [s for s in ("raw", "ours") if s in systems]
    if quick:
        return [
            Workload(
                "enqueue_call",
                "Enqueue",
                "enqueue",
                {"n": 3000, "mode": "call", "bound": 10},
                systems,
                [Metric("rate", "enqueue, 1 call per task", RATE)],
            ),
            Workload(
                "enqueue_batch",
                "Enqueue",
                "enqueue",
                {"n": 20000, "mode": "batch", "batch": 1000, "bound": 10},
                systems,
                [Metric("rate", "enqueue, batches of 1,000", RATE)],
                needs="batch",
            ),
            Workload(
                "drain_4",
                "Drain",
                "drain",
                {"n": 10000, "threads": 4, "callbacks": True, "bound": 10},
                systems,
                [
                    Metric("rate", "drain 10k, 4 threads: result recorded", RATE),
                    Metric("cb_rate", "drain 10k, 4 threads: callback ran", RATE, base_key="rate"),
                ],
            ),
            Workload(
                "processes",
                "Processes",
                "processes",
                {"n": 3000, "producers": 1, "workers": 1, "threads": 4, "bound": 10},
                systems,
                [Metric("rate", "1 producer + 1 worker process", RATE)],
            ),
            Workload(
                "lat_local",
                "Latency",
                "latency",
                {"n": 50, "gap": 0.01, "threads": 4, "remote": False, "bound": 10},
                systems,
                [
                    Metric("p50_ms", "round trip p50, one process", "ms", False),
                    Metric("p99_ms", "round trip p99, one process", "ms", False),
                ],
            ),
            Workload(
                "lat_remote",
                "Latency",
                "latency",
                {"n": 50, "gap": 0.01, "threads": 4, "remote": True, "bound": 10, "idle_s": 1.0},
                systems,
                [
                    Metric("p50_ms", "round trip p50, two processes", "ms", False),
                    Metric("p99_ms", "round trip p99, two processes", "ms", False),
                    Metric("idle_cpu_pct", "idle worker CPU", "%", False),
                ],
            ),
        ]
    found = [
        Workload(
            "enqueue_call",
            "Enqueue",
            "enqueue",
            {"n": 5000, "mode": "call", "bound": 10},
            systems,
            [Metric("rate", "enqueue, 1 call per task", RATE)],
        ),
        Workload(
            "enqueue_batch",
            "Enqueue",
            "enqueue",
            {"n": 50000, "mode": "batch", "batch": 1000, "bound": 10},
            systems,
            [Metric("rate", "enqueue, batches of 1,000", RATE)],
            needs="batch",
        ),
    ]
    for threads in (1, 4):
        found.append(
            Workload(
                f"drain_{threads}",
                "Drain",
                "drain",
                {"n": 20000, "threads": threads, "callbacks": True, "bound": 10, "stall": 5},
                systems,
                [
                    Metric(
                        "rate", f"drain 20k, {threads} thread{'s' * (threads > 1)}: result recorded", RATE
                    ),
                    Metric(
                        "cb_rate",
                        f"drain 20k, {threads} thread{'s' * (threads > 1)}: callback ran",
                        RATE,
                        base_key="rate",
                    ),
                ],
            )
        )
    found += [
        Workload(
            "complete",
            "Drain",
            "drain",
            {"n": 1000, "threads": 4, "callbacks": True, "bound": 30, "stall": 5},
            systems,
            [Metric("lost", "drain 1k, 4 threads: tasks never done", "lost", False)],
        ),
        Workload(
            "processes",
            "Processes",
            "processes",
            {"n": 10000, "producers": 1, "workers": 1, "threads": 4, "bound": 10},
            systems,
            [Metric("rate", "1 producer + 1 worker process, one file", RATE)],
        ),
        Workload(
            "lat_local",
            "Latency",
            "latency",
            {"n": 200, "gap": 0.01, "threads": 4, "remote": False, "bound": 10},
            systems,
            [
                Metric("p50_ms", "idle round trip p50, one process", "ms", False),
                Metric("p99_ms", "idle round trip p99, one process", "ms", False),
            ],
        ),
        Workload(
            "lat_remote",
            "Latency",
            "latency",
            {"n": 200, "gap": 0.01, "threads": 4, "remote": True, "bound": 10, "idle_s": 2.0},
            systems,
            [
                Metric("p50_ms", "idle round trip p50, two processes", "ms", False),
                Metric("p99_ms", "idle round trip p99, two processes", "ms", False),
                Metric("idle_cpu_pct", "idle worker process CPU (% of a core)", "%", False),
            ],
        ),
    ]
    for shards in (1, 4):
        found.append(
            Workload(
                f"shards_{shards}",
                "Shards",
                "processes",
                {"n": 20000, "producers": 2, "workers": 2, "threads": 2, "shards": shards, "bound": 20},
                both,
                [
                    Metric(
                        "rate", f"2 producer + 2 worker processes, {shards} shard{'s' * (shards > 1)}", RATE
                    )
                ],
            )
        )
    if backlog_n:
        found += [
            Workload(
                "claim_empty",
                "Backlog",
                "drain",
                {"n": 20000, "threads": 4, "callbacks": False, "bound": 20},
                both,
                [Metric("rate", "claim+run 20k, 4 threads, only those 20k queued", RATE)],
                template="small",  # built by another process, like the backlog: like for like
            ),
            Workload(
                "claim_backlog",
                "Backlog",
                "drain",
                {"n": 20000, "threads": 4, "callbacks": False, "bound": 20},
                both,
                [Metric("rate", f"claim+run 20k, 4 threads, {backlog_n:,} queued", RATE)],
                template="backlog",
            ),
            Workload(
                "enqueue_backlog",
                "Backlog",
                "enqueue",
                {"n": 5000, "mode": "call", "bound": 10},
                both,
                [Metric("rate", f"enqueue, 1 call per task, {backlog_n:,} queued", RATE)],
                template="backlog",
            ),
        ]
    found += [
        Workload(
            "full_enqueue_call",
            "Durability full",
            "enqueue",
            {"n": 5000, "mode": "call", "bound": 10, "durability": "full"},
            both,
            [Metric("rate", "durability=full: enqueue, 1 call per task", RATE)],
        ),
        Workload(
            "full_enqueue_batch",
            "Durability full",
            "enqueue",
            {"n": 50000, "mode": "batch", "batch": 1000, "bound": 10, "durability": "full"},
            both,
            [Metric("rate", "durability=full: enqueue, batches of 1,000", RATE)],
        ),
        Workload(
            "full_drain_4",
            "Durability full",
            "drain",
            {"n": 20000, "threads": 4, "callbacks": True, "bound": 10, "durability": "full"},
            both,
            [
                Metric("rate", "durability=full: drain 20k, 4 threads: recorded", RATE),
                Metric(
                    "cb_rate", "durability=full: drain 20k, 4 threads: callback ran", RATE, base_key="rate"
                ),
            ],
        ),
    ]
    return found


# ------------------------------------------------------------------------- environment
def ensure_venv(name: str) -> str:
    """Create bench/.venvs/NAME with its requirements file installed (again if it changed)."""
    requirements = os.path.join(BENCH, REQUIREMENTS[name])
    with open(requirements, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    home = os.path.join(VENVS, name)
    python = os.path.join(home, "bin", "python")
    stamp = os.path.join(home, ".bench-requirements")
    if os.path.exists(stamp) and os.path.exists(python):
        with open(stamp) as f:
            if f.read() == digest:
                return python
    log(f"setting up {home} from {REQUIREMENTS[name]} ...")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", home], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", requirements], check=True
    )
    with open(stamp, "w") as f:
        f.write(digest)
    return python


def interpreter(system: str, venvs: dict) -> str:
    venv = SYSTEMS[system][1]
    return sys.executable if venv is None else venvs[venv]


def trial_env(system: str) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    if SYSTEMS[system][1] is None:  # ours and raw: the package straight from the repo
        env["PYTHONPATH"] = os.environ.get("BENCH_PACKAGE_ROOT", REPO)  # or another checkout's
    return env


def machine() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "command": " ".join(shlex.quote(a) for a in ["python3", "bench/run.py", *sys.argv[1:]]),
    }


# ------------------------------------------------------------------------- trials
def run_trial(system: str, trial: str, params: dict, venvs: dict, tag: str) -> dict:
    workdir = os.path.join(WORK, tag)
    out = os.path.join(WORK, tag + ".jsonl")
    logfile = os.path.join(WORK, "logs", tag + ".log")
    shutil.rmtree(workdir, ignore_errors=True)
    for path in (out,):
        if os.path.exists(path):
            os.remove(path)
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    limit = params.get("bound", 10) + GRACE_S + (60 if params.get("template") else 0)
    pids = os.path.join(WORK, tag + ".pids")  # sessions of worker CLIs the trial starts
    if system in BROKERS or trial == "work":
        limit += 90  # worker start-up and warm-up, and untimed prefills
    if os.path.exists(pids):
        os.remove(pids)
    env = trial_env(system)
    env["BENCH_PIDS"] = pids
    started = time.monotonic()
    with open(logfile, "w") as logf:
        proc = subprocess.Popen(
            [
                interpreter(system, venvs),
                os.path.join(BENCH, "trial.py"),
                system,
                trial,
                json.dumps(params),
                workdir,
                out,
            ],
            cwd=WORK,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        killed = False
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            killed = True
        try:  # the trial's session: the trial and any helper process it started
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    leftovers = kill_sessions(pids)
    lines = read_lines(out)
    record = {"system": system, "trial": trial, "params": params, "wall": time.monotonic() - started}
    for line in lines:
        if line["kind"] == "start":
            record["version"] = line.get("version")
    final = next((ln for ln in reversed(lines) if ln["kind"] == "result"), None)
    partial = next((ln for ln in reversed(lines) if ln["kind"] in ("partial", "progress")), None)
    error = next((ln for ln in lines if ln["kind"] == "error"), None)
    if leftovers:
        record["leftover_workers"] = leftovers
    if final is not None:
        record.update({k: v for k, v in final.items() if k != "kind"})
        stops = {final.get("stop", "complete"), final.get("cb_stop", "complete")}
        record["status"] = "stalled" if "stall" in stops else "timeboxed" if "bound" in stops else "ok"
        if "unsupported" in stops:
            record["status"] = "unsupported"
    elif partial is not None:
        record.update({k: v for k, v in partial.items() if k != "kind"})
        if "rate" not in record and record.get("elapsed"):
            record["rate"] = record.get("done", 0) / record["elapsed"]
        record["status"] = "killed"
    else:
        record["status"] = "error"
    if error is not None:
        record["status"] = "error"
        record["error"] = error["error"]
    if trial == "drain" and "done" in record:
        record["lost"] = (
            record["n"] - min(record["done"], record.get("cb_done", record["done"]))
            if "cb_done" in record
            else record["n"] - record["done"]
        )
    if record["status"] in ("error",) or killed:
        try:
            with open(logfile) as f:
                record["log_tail"] = f.read()[-1500:]
        except OSError:
            pass
    shutil.rmtree(workdir, ignore_errors=True)
    return record


def kill_sessions(pids_file: str) -> int:
    """SIGKILL the sessions of the worker CLIs a trial started (listed in ``pids_file``) that
    are still there: a trial stops its own, so this matters when it was killed or failed.
    Returns how many sessions had to be killed."""
    try:
        with open(pids_file) as f:
            sids = [int(line) for line in f if line.strip()]
    except OSError:
        return 0
    killed = 0
    for sid in sids:
        try:
            os.killpg(sid, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    os.remove(pids_file)
    return killed


def redis_up() -> bool:
    """Whether the local Redis answers PING (standard library: one RESP command)."""
    try:
        with socket.create_connection(REDIS, timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def calibrate() -> dict:
    """The iteration count of the CPU task's loop for ~2 ms on this machine, once per run."""
    out = subprocess.run(
        [sys.executable, os.path.join(BENCH, "broker_tasks", "work.py")],
        capture_output=True, text=True, check=True, timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_backlog(system: str, n: int, venvs: dict, name: str = "backlog") -> dict:
    """A queue of n tasks, once per system and run, with the API's batched enqueue (10,000 a
    call) from a process of its own; trials start from copies of it."""
    target = os.path.join(WORK, "backlog", f"{name}-{system}")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    code = (
        "import sys, time, json, os\n"
        f"sys.path.insert(0, {BENCH!r})\n"
        "import importlib\n"
        "from adapters import SYSTEMS\n"
        f"ad = importlib.import_module('adapters.' + SYSTEMS[{system!r}][0])\n"
        f"q = ad.open({target!r}, role='producer')\n"
        "t = time.perf_counter()\n"
        f"for s in range(0, {n}, 10000): ad.enqueue_batch(q, s, min(10000, {n} - s))\n"
        "took = time.perf_counter() - t\n"
        "ad.close(q)\n"
        f"size = sum(os.path.getsize(os.path.join({target!r}, f)) for f in os.listdir({target!r}))\n"
        "print(json.dumps({'seconds': took, 'bytes': size}))\n"
    )
    result = subprocess.run(
        [interpreter(system, venvs), "-c", code],
        env=trial_env(system),
        cwd=WORK,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the {system} backlog failed:\n{result.stderr[-2000:]}")
    info = json.loads(result.stdout.strip().splitlines()[-1])
    info.update(path=target, n=n, bytes_per_task=info["bytes"] / n, rate=n / info["seconds"])
    return info


# ------------------------------------------------------------------------- summaries
def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == RATE:
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "lost":
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.3g}"


def ratio_text(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    r = value / base
    return f"{r:.2f}×" if r >= 0.01 else f"{r:.4f}×"


def status_note(records: list[dict]) -> str:
    notes = []
    for r in records:
        if r["status"] == "ok":
            continue
        done, n = r.get("done"), r.get("n")
        what = f"{done:,}/{n:,}" if done is not None and n else "?"
        if r["status"] == "timeboxed":
            unit = "round trips" if r["trial"] == "latency" else "tasks"
            notes.append(f"time-boxed: {what} {unit} in {r['params'].get('bound')} s")
        elif r["status"] == "stalled":
            cb = f", callbacks {r['cb_done']:,}" if r.get("cb_done") is not None else ""
            notes.append(f"stalled: {what} done{cb}, no progress after")
        elif r["status"] == "killed":
            notes.append(f"killed at the time bound after {what}")
        elif r["status"] == "unsupported":
            notes.append("not supported by this build: " + r.get("unsupported", "?")[:160])
        else:
            notes.append("error: " + r.get("error", "see log")[:120])
    unique = []
    for note in notes:
        if note not in unique:
            unique.append(note)
    return "; ".join(unique[:2]) + (f" (+{len(unique) - 2} more)" if len(unique) > 2 else "")


class Results:
    def __init__(self, loads: list[Workload], records: list[dict], backlog: dict):
        self.loads = {w.key: w for w in loads}
        self.records = records
        self.backlog = backlog

    def of(self, workload: str, system: str) -> list[dict]:
        return [r for r in self.records if r["workload"] == workload and r["system"] == system]

    def stat(self, workload: str, system: str, key: str) -> dict | None:
        return summarize(self.of(workload, system), key)

    def median(self, workload: str, system: str, key: str) -> float | None:
        s = self.stat(workload, system, key)
        return s["median"] if s else None

    def base(self, workload: str, metric: Metric) -> float | None:
        return self.median(workload, "raw", metric.base_key or metric.key)


def goals(res: Results, system: str) -> list[tuple[str, str, str, bool | None]]:
    """(goal, target, measured, passed) for our package's API ``system``."""
    rows = []

    def ratio(workload, key, base_key="rate"):
        value, base = res.median(workload, system, key), res.median(workload, "raw", base_key)
        return None if value is None or not base else value / base

    def add(goal, target, value, ok, text=None):
        rows.append(
            (
                goal,
                target,
                "—" if value is None else (text or f"{value:.2f}×"),
                None if value is None else ok(value),
            )
        )

    add("drain, 4 threads, incl. callbacks", "≥ 0.5× raw", ratio("drain_4", "cb_rate"), lambda v: v >= 0.5)
    add("1 producer + 1 worker process", "≥ 0.5× raw", ratio("processes", "rate"), lambda v: v >= 0.5)
    add("enqueue, 1 call per task", "≥ 0.8× raw", ratio("enqueue_call", "rate"), lambda v: v >= 0.8)
    add("enqueue, batched", "≥ 0.5× raw", ratio("enqueue_batch", "rate"), lambda v: v >= 0.5)
    for key, goal, target, limit in (
        ("lat_local", "idle round trip p50, one process", "≤ 0.5 ms", 0.5),
        ("lat_remote", "idle round trip p50, two processes", "≤ 2 ms", 2.0),
    ):
        v = res.median(key, system, "p50_ms")
        add(goal, target, v, lambda x, lim=limit: x <= lim, None if v is None else f"{v:.2f} ms")
    for key, where in (("lat_local", "one process"), ("lat_remote", "two processes")):
        v = res.median(key, system, "p99_ms")
        add(
            f"idle round trip p99, {where}",
            "≤ 5 ms",
            v,
            lambda x: x <= 5.0,
            None if v is None else f"{v:.2f} ms",
        )
    v = res.median("lat_remote", system, "idle_cpu_pct")
    add("idle worker CPU", "< 2 % of a core", v, lambda x: x < 2.0, None if v is None else f"{v:.2f} %")
    if "claim_backlog" in res.loads:
        for key, empty, goal in (
            ("claim_backlog", "claim_empty", "1M backlog: claim rate vs empty"),
            ("enqueue_backlog", "enqueue_call", "1M backlog: enqueue rate vs empty"),
        ):
            a, b = res.median(key, system, "rate"), res.median(empty, system, "rate")
            v = None if a is None or not b else a / b
            add(goal, "within 20 % (≥ 0.8)", v, lambda x: x >= 0.8)
    return rows


def markdown(res: Results, info: dict, systems: list[str], quick: bool, wall: float) -> str:
    versions: dict[str, list[str]] = {}
    for r in res.records:  # a commit landing during the run shows as two versions
        if r.get("version") and r["version"] not in versions.setdefault(r["system"], []):
            versions[r["system"]].append(r["version"])
    lines = [
        f"# message_queue_sqlite benchmark{' (quick)' if quick else ''}",
        "",
        f"- date: {info['date']}; wall time of the run: {wall / 60:.1f} min",
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, "
        f"Python {info['python']}, SQLite {info['sqlite']}",
        f"- command: `{info['command']}` (via `make bench{'-quick' if quick else ''}`)",
        "- every figure: median of the repetitions, [min–max]; `×raw` is the figure divided by the "
        "raw stdlib-sqlite3 loop's in the same run (throughput: higher is better; latency and CPU: "
        "lower is better). ⚠ marks a system that did not finish every repetition (notes below the tables).",
    ]
    if info.get("calibration"):
        c = info["calibration"]
        lines.append(
            f"- CPU task (cpu_2ms): `spin({c['iters']:,})` (bench/broker_tasks/work.py), calibrated once "
            f"for this run to {c['target_ms']:.0f} ms of CPU on this machine (the fastest of 5 check "
            f"calls took {c['check_ms']:.2f} ms of wall time); every system runs that same count"
        )
    for s, why in (info.get("skipped") or {}).items():
        lines.append(f"- **skipped: {SYSTEMS[s][2]}**: {why}")
    lines += [
        "",
        "## Systems",
        "",
        "| system | version | how it is driven |",
        "|---|---|---|",
    ]
    notes = {}
    for s in systems:
        notes[s] = NOTES.get(s, "")
        lines.append(f"| {SYSTEMS[s][2]} | {' then '.join(versions.get(s, ['?']))} | {notes[s]} |")
    if "ours" in systems and any(w.trial == "work" for w in res.loads.values()):
        text = module_notes("ours_cli")
        lines.append(f"| ours: mqs worker (worker-process workloads) | as above | {text} |")
    sql = [s for s in systems if s not in BROKERS]  # the ×raw tables; broker peers have their own

    lines += [
        "",
        "## Goals (our package)",
        "",
        "| goal | target | MessageQueue | | seed API | |",
        "|---|---|---|---|---|---|",
    ]
    modern = goals(res, "ours")
    seed = goals(res, "ours_seed") if "ours_seed" in systems else [(g, t, "—", None) for g, t, _, _ in modern]
    for (goal, target, value, ok), (_, _, svalue, sok) in zip(modern, seed, strict=True):
        mark = {True: "PASS", False: "**MISS**", None: "n/a"}
        lines.append(f"| {goal} | {target} | {value} | {mark[ok]} | {svalue} | {mark[sok]} |")

    # The wide summary: one row per figure, one column per system.
    lines += [
        "",
        "## Figures (median, ×raw)",
        "",
        "| workload | " + " | ".join(SYSTEMS[s][2] for s in sql) + " |",
        "|---" * (len(sql) + 1) + "|",
    ]
    footnotes = []
    for w in res.loads.values():
        if w.trial == "work" or not set(w.systems) & set(sql):
            continue
        for m in w.metrics:
            cells = []
            for s in sql:
                st = res.stat(w.key, s, m.key)
                if s in w.systems and st is None and m.unit == "ms" and res.of(w.key, s):
                    waited = [r.get("waited_ms") or r.get("elapsed", 0) * 1e3 for r in res.of(w.key, s)]
                    cells.append(f"> {min(waited) / 1e3:.0f} s ⚠")
                    footnotes.append(
                        f"{SYSTEMS[s][2]}, {m.label}: not one round trip came back within "
                        f"the {w.params.get('bound')} s bound (warm-up included)"
                    )
                    continue
                if s not in w.systems or st is None:
                    cells.append("—")
                    continue
                cell = fmt(st["median"], m.unit)
                if s != "raw" and m.unit in (RATE, "ms"):
                    cell += f" ({ratio_text(st['median'], res.base(w.key, m))})"
                if st["complete"] < st["runs"]:
                    note = status_note(res.of(w.key, s))
                    footnotes.append(f"{SYSTEMS[s][2]}, {m.label}: {note}")
                    cell += " ⚠"
                cells.append(cell)
            lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    if res.backlog:
        cells = []
        for s in sql:
            b = res.backlog.get(s)
            if b is None:
                cells.append("—")
                continue
            cell = f"{b['bytes_per_task']:.0f} B"
            if s != "raw" and res.backlog.get("raw"):
                cell += f" ({b['bytes_per_task'] / res.backlog['raw']['bytes_per_task']:.2f}×)"
            cells.append(cell)
        n = next(iter(res.backlog.values()))["n"]
        lines.append(f"| file size per queued task ({n:,} queued) | " + " | ".join(cells) + " |")
    if footnotes:
        lines += ["", "⚠ " + "  \n⚠ ".join(dict.fromkeys(footnotes))]
    lines += broker_today(res, systems)
    lines += worker_tables(res, systems, info)

    # The long table: every figure with its spread.
    lines += [
        "",
        "## All figures with spread",
        "",
        "| section | workload | system | median | min–max | ×raw | runs complete |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in res.loads.values():
        for m in w.metrics:
            for s in systems:
                st = res.stat(w.key, s, m.key)
                if s not in w.systems or st is None:
                    continue
                spread = f"{fmt(st['min'], m.unit)} – {fmt(st['max'], m.unit)}"
                ratio = ratio_text(st["median"], res.base(w.key, m)) if m.unit in (RATE, "ms") else "—"
                if s in BROKERS or w.trial == "work":  # compared with ours, not the raw loop
                    base = res.median(w.ref or w.key, "ours", m.key)
                    ratio = (ratio_text(st["median"], base) + " ours") if base and m.unit != "%" else "—"
                lines.append(
                    f"| {w.section} | {m.label} | {SYSTEMS[s][2]} | {fmt(st['median'], m.unit)} | "
                    f"{spread} | {ratio} | {st['complete']}/{st['runs']} |"
                )
    if res.backlog:
        lines += [
            "",
            "Backlog build (batched enqueue, 10,000 per call): "
            + "; ".join(
                f"{SYSTEMS[s][2]}: {b['n']:,} in {b['seconds']:.1f} s ({b['rate']:,.0f}/s), "
                f"{b['bytes'] / 1e6:.0f} MB"
                for s, b in res.backlog.items()
            ),
        ]
    errors = [r for r in res.records if r["status"] == "error"]
    if errors:
        lines += ["", "## Errors", ""]
        for r in errors[:10]:
            lines.append(
                f"- {SYSTEMS[r['system']][2]} / {r['workload']} rep {r['rep']}: {r.get('error', '?')}"
            )
    lines += ["", "## Workloads", "", WORKLOAD_TEXT.strip(), ""]
    return "\n".join(lines)


NOTES: dict[str, str] = {}  # filled from the adapters' NOTES by a trial-free import (see main)
BROKER_TEXT = (
    "Broker peers run against the local Redis, which here keeps its data in memory only (no RDB "
    "snapshots, no AOF): a Redis restart loses every queued task and result. Ours commits each "
    "send to its SQLite file before send() returns. Each peer runs as its own deployment: its "
    "worker CLI in processes of its own, started by the trial and stopped (then killed, with "
    "their children) at its end. Enqueue: one call per task into an empty queue. Drain: 20,000 "
    "no-op tasks queued, then the peer's worker process with concurrency 4, timed from its first "
    "recorded result (start-up excluded); ours' figure is 4 threads in the sending process. "
    "Processes and latency: a worker process against a producer process, as for ours; a peer's "
    "idle CPU is read from /proc for all its worker's processes (10 ms ticks over 2 s: 0.5 % "
    "steps)."
)
FLOORS = {  # group: (seconds of each task, concurrency the ideal assumes, what bounds it)
    "io_10ms": (0.01, 4, "4-way concurrency"),
    "async_sleep": (0.01, 100, "concurrency 100"),
    "cpu_2ms": (0.002, 2, "2 cores"),
}
GROUP_TITLES = {
    "io_10ms": "io_10ms: tasks that sleep 10 ms (sync), concurrency 4",
    "async_sleep": "async_sleep: tasks that await asyncio.sleep(0.01), one worker process",
    "cpu_2ms": "cpu_2ms: ~2 ms of pure-Python CPU per task, on 2 cores",
}


def module_notes(module: str) -> str:
    return adapter_notes_of(os.path.join(BENCH, "adapters", module + ".py"))


def broker_today(res: Results, systems: list[str]) -> list[str]:
    """Today's workloads where the broker peers ran: their figures as ratios to ours."""
    peers = [s for s in systems if s in BROKERS]
    loads = [w for w in res.loads.values() if w.trial != "work" and set(w.systems) & set(peers)]
    if not loads:
        return []
    cols = (["ours"] if "ours" in systems else []) + peers
    lines = ["", "## Broker peers on today's workloads (median, ×ours)", "", BROKER_TEXT, "",
             "| workload | " + " | ".join(SYSTEMS[s][2] for s in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    footnotes = []
    for w in loads:
        for m in w.metrics:
            base = res.median(w.key, "ours", m.key)
            cells = []
            for s in cols:
                st = res.stat(w.key, s, m.key)
                if s not in w.systems or st is None:
                    recs = res.of(w.key, s)
                    if s not in w.systems or (m.key.startswith("cb_") and "callbacks" not in CAPS[s]):
                        cells.append("n/a")
                        continue
                    cells.append("— ⚠")
                    if recs and st is None:
                        footnotes.append(f"{SYSTEMS[s][2]}, {m.label}: {status_note(recs)}")
                    continue
                cell = fmt(st["median"], m.unit)
                if s != "ours" and m.unit in (RATE, "ms"):
                    cell += f" ({ratio_text(st['median'], base)})"
                if st["complete"] < st["runs"]:
                    footnotes.append(f"{SYSTEMS[s][2]}, {m.label}: {status_note(res.of(w.key, s))}")
                    cell += " ⚠"
                cells.append(cell)
            lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    starts = []
    for s in peers:
        values = [r["startup_s"] for r in res.records if r["system"] == s and r.get("startup_s") is not None
                  and r["workload"] == "drain_4"]
        if values:
            starts.append(f"{SYSTEMS[s][2]} {min(values):.1f}–{max(values):.1f} s")
    if starts:
        lines += ["", "Drain: worker start-up to its first result (not in the rate): " + "; ".join(starts)]
    if footnotes:
        lines += ["", "⚠ " + "  \n⚠ ".join(dict.fromkeys(footnotes))]
    return lines


def why_na(system: str, group: str) -> str:
    if system in ("arq", "saq"):
        return "asyncio-only queue (async_sleep only)"
    if system == "huey":
        return "no asyncio tasks in its worker"
    if system in BROKERS:
        return "no asyncio tasks in its worker" if group == "async_sleep" else "not this deployment"
    return "driven in-process by its adapter here (no worker CLI)"


def worker_tables(res: Results, systems: list[str], info: dict) -> list[str]:
    """The worker-process workloads: one table per group; every system in its own deployment
    (the command line shown), with the ideal (floor) and ours as references."""
    loads = [w for w in res.loads.values() if w.trial == "work"]
    if not loads:
        return []
    lines = ["", "## Worker processes: sleeping, async and CPU-bound tasks (median, ×ours)", "",
             "n tasks are queued (untimed), then each system's own worker process(es) start; tasks/s "
             "is counted from the first recorded result to the last (worker start-up shown apart). "
             "seconds = n / tasks/s; × floor = seconds over the ideal (n × task time / concurrency, "
             "or / 2 cores for CPU). " + BROKER_TEXT.split(" Each peer")[0]]
    for group in dict.fromkeys(w.group for w in loads):
        members = [w for w in loads if w.group == group]
        n = members[0].params["n"]
        per, conc, what = FLOORS[group]
        floor = n * per / conc
        ref_key, base = members[0].ref or group, None
        for key in (ref_key, *(w.key for w in members)):
            base = res.median(key, "ours", "rate")
            if base:
                ref_key = key
                break
        ref_text = next((r.get("deploy") for r in res.of(ref_key, "ours") if r.get("deploy")), "ours")
        against = f"`{ref_text}`"
        meant = members[0].ref or group
        if ref_key != meant:
            wanted = next((r.get("deploy") for r in res.of(meant, "ours") if r.get("deploy")), meant)
            against += f" (ours' `{wanted}` did not run in this build)"
        lines += ["", f"### {GROUP_TITLES[group]}", "",
                  f"n = {n:,}; floor = {floor:.2f} s ({what}); ×ours: against {against}.", "",
                  "| system | deployment | tasks/s | min–max | seconds | × floor | ×ours | worker start-up "
                  "| runs complete |", "|---|---|---|---|---|---|---|---|---|"]
        footnotes, ran = [], set()
        for w in members:
            for s in w.systems:
                recs = res.of(w.key, s)
                if not recs:
                    continue
                ran.add(s)
                deploy = next((r["deploy"] for r in recs if r.get("deploy")), "?")
                if all(r["status"] == "unsupported" for r in recs):
                    lines.append(f"| {SYSTEMS[s][2]} | `{deploy}` | not supported by this build | | | | | | "
                                 f"0/{len(recs)} |")
                    footnotes.append(f"{SYSTEMS[s][2]}, `{deploy}`: {status_note(recs)}")
                    continue
                st = res.stat(w.key, s, "rate")
                if st is None:
                    lines.append(f"| {SYSTEMS[s][2]} | `{deploy}` | — ⚠ | | | | | | 0/{len(recs)} |")
                    footnotes.append(f"{SYSTEMS[s][2]}, `{deploy}`: {status_note(recs)}")
                    continue
                seconds = n / st["median"] if st["median"] else None
                starts = [r["startup_s"] for r in recs if r.get("startup_s") is not None]
                mark = ""
                if st["complete"] < st["runs"]:
                    mark = " ⚠"
                    footnotes.append(f"{SYSTEMS[s][2]}, `{deploy}`: {status_note(recs)}")
                ratio = "1.00× (ref.)" if (w.key, s) == (ref_key, "ours") else ratio_text(st["median"], base)
                lines.append(
                    f"| {SYSTEMS[s][2]} | `{deploy}` | {fmt(st['median'], RATE)}{mark} | "
                    f"{fmt(st['min'], RATE)} – {fmt(st['max'], RATE)} | {fmt(seconds, 's')} | "
                    f"{seconds / floor:.2f}× | {ratio} | "
                    f"{statistics_median(starts):.2f} s | {st['complete']}/{st['runs']} |"
                )
        na = [s for s in systems if s not in ran and s != "raw"]
        if na:
            lines += ["", "n/a: " + "; ".join(f"{SYSTEMS[s][2]} ({why_na(s, group)})" for s in na) + "."]
        if footnotes:
            lines += ["", "⚠ " + "  \n⚠ ".join(dict.fromkeys(footnotes))]
    return lines


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values) if values else float("nan")

WORKLOAD_TEXT = """
- **enqueue**: n tasks into an empty queue, one API call per task (each call durable when it
  returns), or batches of 1,000 per call where the API has a batch call.
- **drain**: 20,000 no-op tasks already queued (put in untimed, in one transaction); start 1 or
  4 worker threads in the same process; time until every result is recorded in storage
  (polled every 2 ms; 2.0.1: every 100 ms, because its rollback-journal readers block its
  writers). With callbacks (ours, seed API, 2.0.1) also until every callback ran in the
  sending process. "drain 1k ... never done": tasks still not done when nothing moved for 5 s.
- **processes**: a worker process (4 threads) waits on an empty queue; a producer process
  sends 10,000 tasks one call each; time from its go signal until all results are recorded.
- **shards**: the same with 2 producer processes (10,000 tasks each) and 2 worker processes
  (2 threads each), with 1 or 4 shard files.
- **latency**: 200 sequential round trips on an idle queue (10 ms apart): send one task and
  block until its result is back, with the worker threads in the same process or in another
  one; p50 / p99. Then the worker process's CPU use while idle (getrusage over 2 s).
- **backlog**: 1,000,000 tasks queued with batched enqueues by another process; from a copy of
  that file, claim and run 20,000 (4 threads) and enqueue 5,000 (1 call each); compared with
  claiming from a queue of just those 20,000 (built the same way) and with enqueueing into an
  empty queue (flat = within 20 %); file size per queued task.
- **durability=full**: our package (and raw) with synchronous=FULL.
- **broker peers** (Redis, in memory only here): enqueue per call; drain 20k with their worker
  process at concurrency 4 (timed from its first result); processes; latency across processes.
- **io_10ms**: 2,000 tasks that time.sleep(0.01), one worker deployment at concurrency 4.
- **async_sleep**: 2,000 tasks that await asyncio.sleep(0.01), one worker process at
  concurrency 100 (ours --async-concurrency 100, arq, SAQ); ours with a sync sleep on 4 threads.
- **cpu_2ms**: 2,000 tasks of ~2 ms pure-Python CPU (one calibrated loop count for all), 2 and
  4 worker processes, and ours' 4 threads; floor 2.0 s on 2 cores.
"""


# ------------------------------------------------------------------------- quick guard
GUARDS = [  # (workload, key, kind): ratio = ours/raw must not fall; latency/cpu absolute
    ("enqueue_call", "rate", "ratio"),
    ("enqueue_batch", "rate", "ratio"),
    ("drain_4", "cb_rate", "ratio"),
    ("processes", "rate", "ratio"),
    ("lat_local", "p50_ms", "ms"),
    ("lat_remote", "p50_ms", "ms"),
    ("lat_remote", "idle_cpu_pct", "cpu"),
]
BASELINE = os.path.join(RESULTS, "quick-baseline.json")


def guard_values(res: Results) -> dict:
    values = {}
    for workload, key, kind in GUARDS:
        v = res.median(workload, "ours", key)
        if v is None:
            continue
        if kind == "ratio":
            base = res.median(workload, "raw", "rate")
            v = v / base if base else None
        values[f"{workload}.{key}"] = v
    return values


def check_guard(values: dict, baseline: dict) -> list[str]:
    failures = []
    for workload, key, kind in GUARDS:
        name = f"{workload}.{key}"
        now, then = values.get(name), baseline.get(name)
        if now is None or then is None:
            continue
        if kind == "ratio" and now < then * 0.5:
            failures.append(f"{name}: ratio to raw {now:.2f} < 50 % of the baseline {then:.2f}")
        elif kind == "ms" and now > then * 2.0 + 0.5:
            failures.append(f"{name}: {now:.2f} ms > 2 × baseline {then:.2f} ms + 0.5 ms")
        elif kind == "cpu" and now > max(2.0, then * 3):
            failures.append(f"{name}: {now:.2f} % > max(2 %, 3 × baseline {then:.2f} %)")
    return failures


# ------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="seconds: ours + raw only, small sizes, guard")
    parser.add_argument("--reps", type=int, help="repetitions per workload (default 3; quick: 1)")
    parser.add_argument("--systems", help="comma-separated subset of: " + ", ".join(SYSTEMS))
    parser.add_argument("--only", help="comma-separated workload keys to run (for a partial look)")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="backlog size (0: skip that workload)")
    parser.add_argument("--no-backlog", action="store_true", help="skip the 1M backlog workload")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument(
        "--brokers", action="store_true",
        help="just ours and the broker peers on Redis (Celery, RQ, dramatiq, huey RedisHuey, arq, SAQ)",
    )
    parser.add_argument("--no-brokers", action="store_true", help="skip the broker peers (no Redis needed)")
    parser.add_argument("--small", action="store_true", help="small sizes (a look, not a measurement)")
    parser.add_argument("--save-baseline", action="store_true", help="quick: store these ratios as the guard")
    parser.add_argument(
        "--out",
        default=None,
        help="Markdown report path (default results/latest.md; quick: .work/quick.md)",
    )
    args = parser.parse_args()
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    if args.systems:
        systems = args.systems.split(",")
    elif args.brokers:
        systems = ["ours", *BROKERS]
    else:
        systems = QUICK_SYSTEMS if quick else FULL_SYSTEMS
    for s in systems:
        if s not in SYSTEMS:
            parser.error(f"unknown system {s!r}")
    if args.no_brokers:
        systems = [s for s in systems if s not in BROKERS]
    skipped = {}
    if any(s in BROKERS for s in systems) and not redis_up():
        for s in systems:
            if s in BROKERS:
                skipped[s] = f"Redis at {REDIS[0]}:{REDIS[1]} does not answer PING: not run"
        log(f"NOTE: Redis at {REDIS[0]}:{REDIS[1]} is not reachable: skipping " + ", ".join(skipped))
        systems = [s for s in systems if s not in skipped]
    systems = [s for s in SYSTEMS if s in systems]  # report order
    backlog_n = 0 if (quick or args.no_backlog) else args.backlog
    loads = workloads(quick, backlog_n, systems, args.small)
    if args.only:
        keep = set(args.only.split(","))
        loads = [w for w in loads if w.key in keep or w.group in keep]
    elif args.brokers:
        loads = [w for w in loads if w.brokers]
    for w in loads:
        w.systems = [
            s for s in w.systems
            if s in systems and (w.needs is None or w.needs in CAPS[s]) and (s not in BROKERS or w.brokers)
        ]
    loads = [w for w in loads if w.systems]
    calibration = None
    if any(w.params.get("task") in ("cpu", "cpu_proc") for w in loads):
        calibration = calibrate()
        log(f"CPU task: spin({calibration['iters']:,}) ≈ {calibration['target_ms']:.0f} ms here "
            f"(a check call: {calibration['check_ms']:.2f} ms)")
        for w in loads:
            if w.params.get("task") in ("cpu", "cpu_proc"):
                w.params["iters"] = calibration["iters"]

    started = time.monotonic()
    os.makedirs(WORK, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    venvs = {}
    for s in systems:
        venv = SYSTEMS[s][1]
        if venv and venv not in venvs:
            try:
                venvs[venv] = ensure_venv(venv)
            except subprocess.CalledProcessError as exc:
                if s not in BROKERS:
                    raise
                skipped[s] = f"its virtualenv could not be installed ({exc}): not run"
                log(f"NOTE: {skipped[s]}")
    systems = [s for s in systems if s not in skipped]
    for w in loads:
        w.systems = [s for s in w.systems if s not in skipped]
    if not quick and not args.no_chart and "peers" not in venvs:
        venvs["peers"] = ensure_venv("peers")
    for s in systems:  # adapter notes (cheap: read the module's NOTES without importing peers)
        NOTES[s] = adapter_notes(s)
    info = machine()
    info["calibration"] = calibration
    info["skipped"] = skipped
    log(
        f"{'quick' if quick else 'full'} benchmark: {len(systems)} systems, {len(loads)} workloads, "
        f"{reps} repetition(s); {info['nproc']} CPUs, Python {info['python']}, SQLite {info['sqlite']}"
    )

    backlog, small = {}, {}
    if any(w.template for w in loads):
        for s in [s for s in ("raw", "ours") if s in systems]:
            log(f"building a {backlog_n:,}-task backlog for {SYSTEMS[s][2]} ...")
            backlog[s] = build_backlog(s, backlog_n, venvs)
            log(f"  {backlog[s]['seconds']:.1f} s, {backlog[s]['bytes_per_task']:.0f} bytes per task")
            small[s] = build_backlog(s, 20000, venvs, "small")
    templates = {"backlog": backlog, "small": small}

    records = []
    for rep in range(reps):
        for w in loads:
            for s in w.systems:
                params = dict(w.params)
                if w.template:
                    params["template"] = templates[w.template][s]["path"]
                tag = f"{w.key}-{s}-{rep}"
                record = run_trial(s, w.trial, params, venvs, tag)
                record.update(workload=w.key, rep=rep)
                records.append(record)
                shown = ", ".join(f"{m.key}={fmt(record.get(m.key), m.unit)}" for m in w.metrics)
                flag = "" if record["status"] == "ok" else f"  [{record['status']}: {status_note([record])}]"
                log(
                    f"[{time.monotonic() - started:6.0f} s] rep {rep + 1}/{reps} {w.key:<18} "
                    f"{SYSTEMS[s][2]:<28} {shown}{flag}"
                )
    for path in [b["path"] for b in (*backlog.values(), *small.values())]:
        shutil.rmtree(path, ignore_errors=True)

    res = Results(loads, records, backlog)
    wall = time.monotonic() - started
    report = markdown(res, info, systems, quick, wall)
    out = args.out or (os.path.join(WORK, "quick.md") if quick else os.path.join(RESULTS, "latest.md"))
    with open(out, "w") as f:
        f.write(report)
    data = {
        "machine": info,
        "quick": quick,
        "reps": reps,
        "systems": systems,
        "records": records,
        "backlog": backlog,
        "labels": {s: SYSTEMS[s][2] for s in systems},
        "workloads": [
            {
                "key": w.key,
                "section": w.section,
                "systems": w.systems,
                "metrics": [m.__dict__ for m in w.metrics],
            }
            for w in loads
        ],
    }
    json_out = os.path.splitext(out)[0] + ".json"
    with open(json_out, "w") as f:
        json.dump(data, f, indent=1)
    log(f"\nwrote {os.path.relpath(out, REPO)} and {os.path.relpath(json_out, REPO)}")
    if not quick and not args.no_chart:
        png = os.path.splitext(out)[0] + ".png"
        subprocess.run([venvs["peers"], os.path.join(BENCH, "chart.py"), json_out, png], check=True)
        log(f"wrote {os.path.relpath(png, REPO)}")

    print_summary(res, systems)
    if quick:
        values = guard_values(res)
        if args.save_baseline:
            with open(BASELINE, "w") as f:
                json.dump(values, f, indent=1, sort_keys=True)
            log(f"saved the guard baseline to {os.path.relpath(BASELINE, REPO)}")
            return 0
        if os.path.exists(BASELINE):
            with open(BASELINE) as f:
                failures = check_guard(values, json.load(f))
            if failures:
                log("\nREGRESSION against bench/results/quick-baseline.json:\n  " + "\n  ".join(failures))
                return 1
            log("\nno regression against bench/results/quick-baseline.json")
    return 0


def adapter_notes(system: str) -> str:
    """An adapter's NOTES string, read from its source (its imports need its virtualenv)."""
    return adapter_notes_of(os.path.join(BENCH, "adapters", SYSTEMS[system][0] + ".py"))


def adapter_notes_of(path: str) -> str:
    import ast

    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NOTES" for t in node.targets):
            return ast.literal_eval(node.value)
    return ""


def print_summary(res: Results, systems: list[str]) -> None:
    log("\n" + f"{'figure':<52}" + "".join(f"{SYSTEMS[s][2][:22]:>24}" for s in systems))
    for w in res.loads.values():
        for m in w.metrics:
            row = f"{m.label[:52]:<52}"
            for s in systems:
                v = res.median(w.key, s, m.key) if s in w.systems else None
                text = fmt(v, m.unit)
                recs = res.of(w.key, s)
                if v is None and recs and all(r["status"] == "unsupported" for r in recs):
                    text = "unsupported"
                if s in BROKERS or w.trial == "work":
                    base = res.median(w.ref or w.key, "ours", m.key)
                    if v is not None and base and m.unit in (RATE, "ms", "s") and (w.ref or w.key, s) != (
                        w.key, "ours"
                    ):
                        text += f" {ratio_text(v, base)}o"
                elif v is not None and s != "raw" and m.unit in (RATE, "ms"):
                    text += f" {ratio_text(v, res.base(w.key, m))}"
                row += f"{text:>24}"
            log(row)
    log("(×…o: ratio to ours in the broker and worker-process rows; otherwise ×raw)")
    log("\ngoals (MessageQueue):")
    for goal, target, value, ok in goals(res, "ours"):
        log(f"  {'PASS' if ok else ('MISS' if ok is False else 'n/a '):<5} {goal:<40} {target:<22} {value}")


if __name__ == "__main__":
    sys.exit(main())
