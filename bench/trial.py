#!/usr/bin/env python3
"""One trial: one workload on one system, in this process (and helper processes it starts).

    trial.py SYSTEM WORKLOAD PARAMS_JSON WORKDIR OUT_JSONL

``run.py`` starts it in a session of its own with a time bound and reads OUT_JSONL: a
``progress`` line now and then, and a ``result`` line at the end. If the bound passes
first, run.py kills the session and reports the last progress (what was completed).
Helper roles (``_worker``, ``_producer``) are this same script, driven over stdin.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
POLL_S = 0.002  # how often a trial looks at the done count
PROGRESS_S = 0.5  # how often it writes progress


class Out:
    def __init__(self, path: str):
        self.file = open(path, "a", buffering=1)  # noqa: SIM115
        self.last = 0.0

    def emit(self, kind: str, **data) -> None:
        self.file.write(json.dumps({"kind": kind, **data}) + "\n")

    def progress(self, force: bool = False, **data) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_S:
            self.last = now
            self.emit("progress", **data)


def adapter(system: str, workload: str = ""):
    sys.path.insert(0, HERE)
    from adapters import CLI_MODULES, SYSTEMS

    if workload == "work" and system in CLI_MODULES:
        return importlib.import_module("adapters." + CLI_MODULES[system])
    return importlib.import_module("adapters." + SYSTEMS[system][0])


def first_result(ad, q, recorded, bound: float):
    """For a system whose worker is a CLI process of its own (``ad.SPAWNS``): wait for its
    first recorded result, so that timing starts once the worker runs, not at its start-up.
    Returns (count then, time then)."""
    t = time.perf_counter()
    while True:
        value = recorded()
        if value:
            return value, time.perf_counter()
        ad.check(q)
        if time.perf_counter() - t > bound:
            raise TimeoutError(f"the worker recorded no result within {bound:.0f} s of its start")
        time.sleep(POLL_S)


def opts(p: dict) -> dict:
    return {"shards": p.get("shards", 1), "durability": p.get("durability", "normal")}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare(workdir: str, p: dict) -> None:
    """Start from a copy of a prepared queue (the 1M backlog) when the trial names one."""
    if p.get("template"):
        shutil.copytree(p["template"], workdir, dirs_exist_ok=True)
        # Write the copy out now: otherwise the kernel flushes its ~80 MB of dirty pages
        # during the timed phase, and that I/O, not the backlog, slows the trial down.
        for name in os.listdir(workdir):
            fd = os.open(os.path.join(workdir, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    else:
        os.makedirs(workdir, exist_ok=True)


def watch(
    count, target: int, bound: float, stall: float, out: Out, t0: float, extra=None, poll: float = POLL_S
):
    """Poll ``count()`` until it reaches ``target``; give up ``bound`` seconds after ``t0``, or
    when it has not moved for ``stall`` seconds. Returns (count, seconds, stop): seconds is when
    the target was reached or the count last moved; stop is "complete", "bound" or "stall".
    A count that costs c seconds is polled at most every 20 c (<= 5 % of a core, capped at
    50 ms between polls), so watching never competes much with the system it measures."""
    last_value, last_change = -1, time.perf_counter()
    while True:
        before = time.perf_counter()
        value = count()
        now = time.perf_counter()
        if value != last_value:
            last_value, last_change = value, now
        if value >= target:
            return value, now - t0, "complete"
        if now - t0 > bound:
            return value, last_change - t0, "bound"
        if now - last_change > stall:
            return value, last_change - t0, "stall"
        out.progress(done=value, n=target, elapsed=now - t0, **(extra or {}))
        time.sleep(max(poll, min(0.05, 20 * (now - before))))


# --------------------------------------------------------------------------- workloads
def w_enqueue(ad, p, workdir, out):
    """Enqueue n tasks, one call each (mode=call) or ``batch`` per call (mode=batch)."""
    prepare(workdir, p)
    q = ad.open(workdir, role="producer", **opts(p))
    n, bound = p["n"], p["bound"]
    done = 0
    t0 = time.perf_counter()
    if p["mode"] == "call":
        enqueue = ad.enqueue
        for i in range(n):
            enqueue(q, i)
            done += 1
            if not i & 63:
                now = time.perf_counter()
                if now - t0 > bound:
                    break
                out.progress(done=done, n=n, elapsed=now - t0)
    else:
        size = p["batch"]
        for start in range(0, n, size):
            count = min(size, n - start)
            ad.enqueue_batch(q, start, count)
            done += count
            now = time.perf_counter()
            if now - t0 > bound:
                break
            out.progress(done=done, n=n, elapsed=now - t0)
    elapsed = time.perf_counter() - t0
    out.emit(
        "result",
        done=done,
        n=n,
        elapsed=elapsed,
        rate=done / elapsed,
        complete=done == n,
        stop="complete" if done == n else "bound",
    )
    ad.close(q)


def w_drain(ad, p, workdir, out):
    """n tasks already queued (prefilled, or the backlog template); start ``threads`` workers
    in this process; time until n results are recorded (and, where the API has callbacks and
    p["callbacks"], until n callbacks ran in this process)."""
    prepare(workdir, p)
    callbacks = bool(p.get("callbacks")) and ad.CAPS["callbacks"]
    q = ad.open(workdir, role="both", threads=p["threads"], callbacks=callbacks, **opts(p))
    if not p.get("template"):
        ad.prefill(q, p["n"])
    recorded = ad.done_counter(q, workdir, p.get("shards", 1))
    n, bound, stall = p["n"], p["bound"], p.get("stall", 10.0)
    base = recorded() if p.get("template") else 0
    t0 = time.perf_counter()
    ad.start(q, p["threads"])
    startup = None
    if getattr(ad, "SPAWNS", False):  # time from its first result: (n - first) tasks
        first, t1 = first_result(ad, q, recorded, p.get("startup", 60))
        startup, t0, base, n = t1 - t0, t1, base + first, n - first
    poll = getattr(ad, "POLL_S", POLL_S)
    done, elapsed, stop = watch(lambda: recorded() - base, n, bound, stall, out, t0, poll=poll)
    result = {"startup_s": startup} if startup is not None else {}
    result |= {
        "done": done,
        "n": n,
        "elapsed": elapsed,
        "rate": done / elapsed if elapsed else 0.0,
        "complete": stop == "complete",
        "stop": stop,
    }
    if callbacks:  # callbacks get the same bound, counted from the same start
        cb_done, cb_elapsed, cb_stop = watch(
            lambda: ad.callbacks(q), n, max(bound, elapsed + 1.0), stall, out, t0, {"phase": "callbacks"}
        )
        result.update(
            cb_done=cb_done,
            cb_elapsed=cb_elapsed,
            cb_complete=cb_stop == "complete",
            cb_stop=cb_stop,
            cb_rate=cb_done / cb_elapsed if cb_elapsed else 0.0,
        )
    out.emit("result", **result)
    ad.close(q)


class Helper:
    """A helper process (this script in a role), driven by lines on its stdin."""

    def __init__(self, system, role, params, workdir, out_path):
        self.out_path = out_path
        open(out_path, "w").close()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), system, role, json.dumps(params), workdir, out_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=workdir,
        )
        self.seen = 0

    def lines(self):
        with open(self.out_path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]

    def wait_for(self, kind, timeout=90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines()[self.seen :]:
                self.seen += 1
                if line["kind"] == kind:
                    return line
                if line["kind"] == "error":
                    raise RuntimeError("helper failed: " + line["error"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"helper exited with {self.proc.returncode} before '{kind}'")
            time.sleep(0.001)
        raise TimeoutError(f"helper gave no '{kind}' within {timeout} s")

    def send(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout=5.0):
        try:
            self.send("stop")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def r_worker(ad, p, workdir, out):
    q = ad.open(workdir, role="worker", threads=p["threads"], **opts(p))
    ad.start(q, p["threads"])
    if hasattr(ad, "ready"):  # a worker CLI process: wait until it runs tasks
        ad.ready(q)
    out.emit("ready", pid=os.getpid())
    for line in sys.stdin:
        command = line.strip()
        if command == "cpu":
            cpu = ad.cpu_seconds(q) if hasattr(ad, "cpu_seconds") else cpu_seconds()
            out.emit("cpu", cpu=cpu, t=time.perf_counter())
        elif command == "stop":
            break
    ad.stop(q)
    ad.close(q)
    out.emit("stopped")


def r_producer(ad, p, workdir, out):
    q = ad.open(workdir, role="producer", **opts(p))
    out.emit("ready", pid=os.getpid())
    for line in sys.stdin:
        if line.strip() == "go":
            break
    first, n = p["first"], p["n"]
    t0 = time.perf_counter()
    for i in range(first, first + n):
        ad.enqueue(q, i)
    out.emit("sent", n=n, elapsed=time.perf_counter() - t0)
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    ad.close(q)
    out.emit("stopped")


def w_processes(ad, p, workdir, out):
    """``producers`` processes each send n/producers tasks (one call each) while ``workers``
    processes run them: time from the go signal until all n results are recorded."""
    prepare(workdir, p)
    n, nprod, nwork = p["n"], p["producers"], p["workers"]
    # Create the queue files once, so helpers do not race to create the schema.
    q = ad.open(workdir, role="producer", **opts(p))
    ad.close(q)
    helpers = []
    try:
        for k in range(nwork):
            helpers.append(
                Helper(
                    p["system"],
                    "_worker",
                    {**p, "threads": p["threads"]},
                    workdir,
                    os.path.join(workdir, f"worker-{k}.jsonl"),
                )
            )
        for h in helpers:
            h.wait_for("ready")
        producers = []
        share = n // nprod
        for k in range(nprod):
            producers.append(
                Helper(
                    p["system"],
                    "_producer",
                    {**p, "first": k * share, "n": share},
                    workdir,
                    os.path.join(workdir, f"producer-{k}.jsonl"),
                )
            )
        helpers += producers
        for h in producers:
            h.wait_for("ready")
        recorded = ad.done_counter(None, workdir, p.get("shards", 1))
        t0 = time.perf_counter()
        for h in producers:
            h.send("go")
        done, elapsed, stop = watch(
            recorded,
            share * nprod,
            p["bound"],
            p.get("stall", 10.0),
            out,
            t0,
            poll=getattr(ad, "POLL_S", POLL_S),
        )
        sent = []
        for h in producers:
            try:
                sent.append(h.wait_for("sent", timeout=0.5)["elapsed"])
            except (TimeoutError, RuntimeError):
                pass
        out.emit(
            "result",
            done=done,
            n=share * nprod,
            elapsed=elapsed,
            rate=done / elapsed if elapsed else 0.0,
            complete=stop == "complete",
            stop=stop,
            send_elapsed=max(sent) if len(sent) == nprod else None,
        )
    finally:
        for h in helpers:
            h.finish()


def percentile(values, q):
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def w_latency(ad, p, workdir, out):
    """``n`` sequential round trips on an idle queue (``gap`` seconds apart): send one task,
    block until its result is back. ``remote``: the worker is another process; then also
    the worker's CPU use over ``idle_s`` seconds of idleness."""
    prepare(workdir, p)
    n, bound, gap = p["n"], p["bound"], p["gap"]
    helper = None
    try:
        if p["remote"]:
            q = ad.open(workdir, role="producer", **opts(p))
            helper = Helper(p["system"], "_worker", p, workdir, os.path.join(workdir, "worker.jsonl"))
            helper.wait_for("ready")
        else:
            q = ad.open(workdir, role="both", threads=p["threads"], **opts(p))
            ad.start(q, p["threads"])
        time.sleep(0.3)
        samples = []
        waited = None  # a round trip that did not come back within the bound
        t0 = time.perf_counter()
        for i in range(-p.get("warmup", 2), n):  # negative i: warm-up, not counted
            left = bound - (time.perf_counter() - t0)
            if left <= 0:
                break
            time.sleep(gap)
            start = time.perf_counter()
            try:
                ad.roundtrip(q, i, max(0.05, left))
            except TimeoutError:
                waited = time.perf_counter() - start
                break
            if i >= 0:
                samples.append(time.perf_counter() - start)
                out.progress(
                    done=len(samples),
                    n=n,
                    elapsed=time.perf_counter() - t0,
                    p50_ms=statistics.median(samples) * 1e3,
                )
        result = {
            "done": len(samples),
            "n": n,
            "complete": len(samples) == n,
            "stop": "complete" if len(samples) == n else "bound",
            "elapsed": time.perf_counter() - t0,
        }
        if samples:
            result.update(
                p50_ms=percentile(samples, 0.5) * 1e3,
                p99_ms=percentile(samples, 0.99) * 1e3,
                max_ms=max(samples) * 1e3,
            )
        if waited is not None:
            result["waited_ms"] = waited * 1e3  # the unfinished one: a lower bound
        if helper is not None and p.get("idle_s"):
            out.emit("partial", **result)  # if the CPU reading hangs, the latencies survive
            time.sleep(1.0)
            helper.send("cpu")
            a = helper.wait_for("cpu")
            time.sleep(p["idle_s"])
            helper.send("cpu")
            b = helper.wait_for("cpu")
            result["idle_cpu_pct"] = 100.0 * (b["cpu"] - a["cpu"]) / (b["t"] - a["t"])
        out.emit("result", **result)
        ad.close(q)
    finally:
        if helper is not None:
            helper.finish()


def w_work(ad, p, workdir, out):
    """The worker-CLI workloads: n tasks of one kind (``sleep10``: time.sleep(0.01);
    ``asleep``: await asyncio.sleep(0.01); ``cpu``: ``spin(iters)``) queued untimed; then the
    system's own worker process(es) as ``p["deploy"]`` says (threads, processes or an async
    concurrency); tasks/s from the first recorded result to the last (so worker start-up,
    reported apart, is not counted). A flag the worker CLI refuses: "unsupported"."""
    from adapters._spawn import Unsupported

    prepare(workdir, p)
    n, bound, spec = p["n"], p["bound"], p["deploy"]
    q = ad.open(workdir, role="producer")
    deploy = q.describe(spec)
    try:
        t = time.perf_counter()
        ad.prefill_kind(q, n, p["task"], p.get("iters"))
        prefill_s = time.perf_counter() - t
        recorded = ad.done_counter(q, workdir, 1)
        t_spawn = time.perf_counter()
        ad.spawn(q, spec)
        first, t0 = first_result(ad, q, recorded, p.get("startup", 60))
        done, elapsed, stop = watch(
            lambda: recorded() - first, n - first, bound, p.get("stall", 10.0), out, t0, {"deploy": deploy}
        )
        rate = done / elapsed if elapsed else 0.0
        result = {
            "done": done + first,
            "n": n,
            "elapsed": elapsed,
            "rate": rate,
            "seconds": n / rate if rate else None,  # for all n at that rate
            "startup_s": t0 - t_spawn,
            "prefill_s": prefill_s,
            "complete": stop == "complete",
            "stop": stop,
            "deploy": deploy,
        }
        if hasattr(ad, "failed"):
            result["failed"] = ad.failed(q)
        out.emit("result", **result)
    except Unsupported as exc:
        out.emit("result", n=n, done=0, stop="unsupported", unsupported=str(exc), deploy=deploy)
    finally:
        ad.stop(q)
        ad.close(q)


WORKLOADS = {
    "work": w_work,
    "enqueue": w_enqueue,
    "drain": w_drain,
    "processes": w_processes,
    "latency": w_latency,
    "_worker": r_worker,
    "_producer": r_producer,
}


def main() -> None:
    system, workload, params, workdir, out_path = sys.argv[1:6]
    workdir, out_path = os.path.abspath(workdir), os.path.abspath(out_path)
    out = Out(out_path)
    p = json.loads(params)
    p["system"] = system
    try:
        ad = adapter(system, workload)
        if not workload.startswith("_"):
            if hasattr(ad, "reset"):  # a broker peer: flush its own Redis databases
                ad.reset(workdir)
            out.emit("start", version=ad.version(), pid=os.getpid())
        WORKLOADS[workload](ad, p, workdir, out)
    except BaseException as exc:
        import traceback

        out.emit("error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        out.file.flush()
        os._exit(1)
    out.file.flush()
    sys.stdout.flush()
    os._exit(0)  # do not wait for a peer's non-daemon threads (2.0.1's pools) at exit


if __name__ == "__main__":
    main()
