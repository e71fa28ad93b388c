#!/usr/bin/env python3
"""Storage-fault runner: the queue on a small tmpfs that fills up, and shard files whose writes
fail with EIO or EROFS for a while, while senders and CLI workers run; then the same check as
``scripts/faults.py`` (from the files themselves) plus ``PRAGMA integrity_check`` per shard.

    python scripts/storage_faults.py --short     # < 60 s: 1 and 3 shards, one window of each fault
    python scripts/storage_faults.py             # long mode: about 3 minutes
    python scripts/storage_faults.py --windows 12 --tasks 3000

Needs root (to mount the tmpfs) and a C compiler (``cc``/``gcc``, to build the LD_PRELOAD shim
``storage_fault_shim.c`` that fails writes with EIO/EROFS); without either it says why and
exits 77 (the tests skip with that reason). The mount is removed at the end, also when the run
is interrupted (SIGINT/SIGTERM/SIGHUP end it through the same ``finally``).

Faults come in windows, one kind at a time, with calm between them:

* ``full``: a filler file takes every free byte of the tmpfs; removed after the window;
* ``eio``/``erofs``: the shim makes write()/pwrite()/writev()/fsync()/fdatasync()/ftruncate()
  on the shard files (database, -wal, -shm) of every worker and sender fail with EIO or EROFS
  (for EROFS, statvfs also reports the file system read-only, as a real remount would).

Senders (``faults.py _sender --storage-errors``) treat a QueueStorageError as "not accepted",
write its message to ``state/storage-errors-N.txt``, back off and send the task again under a
new key; a storage error that does not name the file and the condition (disk full, read-only
file system, I/O error) counts as an error, as does any other exception. Workers must ride the
faults out without exiting. The verdict line::

    storage_faults: sent=N accepted=N lost=0 stuck=0 duplicate_executions=N unexplained_duplicates=0
        integrity=ok,ok,... clear_errors=full:N,eio:N,erofs:N unclear_errors=0 ... verdict=PASS

PASS needs lost 0, stuck 0, unexplained 0, no bad outcome or error, every shard ``ok``, no
unclear storage error, and each fault kind seen by a sender or worker at least once (a fault
window that nothing noticed proves nothing).
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import faults  # noqa: E402 - the fault runner beside this file

SHIM_SOURCE = SCRIPTS / "storage_fault_shim.c"
SKIP_EXIT = 77


def build_shim(out_dir: str) -> tuple[str | None, str]:
    """Compile the LD_PRELOAD shim with the system C compiler: (its path, "") or (None, why)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc or gcc) on PATH to build the LD_PRELOAD shim"
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "mqs_storage_fault_shim.so")
    done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", out, str(SHIM_SOURCE), "-ldl"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None, f"{compiler} could not build {SHIM_SOURCE.name}: {done.stderr.strip()[-600:]}"
    return out, ""


# ---------------------------------------------------------------------------------------
# The tmpfs the queue lives on
# ---------------------------------------------------------------------------------------

class Tmpfs:
    """A tmpfs of ``size_mib`` mounted on ``path`` for the run; unmounted on the way out,
    whatever ends the run (lazily if a process still holds it)."""

    def __init__(self, path: str, size_mib: int):
        self.path = path
        self.size_mib = size_mib
        self.mounted = False

    def mount(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m,mode=0755",
                               "mqs-storage-faults", self.path], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise CannotRun(f"mount -t tmpfs on {self.path} failed: {done.stderr.strip() or done.returncode}")
        self.mounted = True

    def unmount(self) -> None:
        if not self.mounted:
            return
        done = subprocess.run(["umount", self.path], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:  # a process still has it open: detach now, freed when it ends
            subprocess.run(["umount", "-l", self.path], capture_output=True, text=True, timeout=30)
        self.mounted = False


class CannotRun(Exception):
    """The run cannot happen here (not root, no mount, no compiler): the reason."""


def fill(folder: str) -> tuple[str, int]:
    """Take every free byte of the file system of ``folder`` with a filler file (big writes,
    then small ones until ENOSPC): (its path, bytes written)."""
    path = os.path.join(folder, "filler.bin")
    written = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1 << 9):
            block = b"\0" * chunk
            while True:
                try:
                    written += f.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return path, written


# ---------------------------------------------------------------------------------------
# The scenario: faults.py's, with storage faults in windows instead of (most) kills
# ---------------------------------------------------------------------------------------

FAULT_KINDS = ("full", "eio", "erofs")
# what a worker logs when its graceful stop leaves leases to expire (engine/worker.py, engine.py)
LEFT_TO_EXPIRE = ("could not be recorded before stopping", "they expire and the tasks are recovered")
STORAGE_WORDS = ("disk I/O error", "is full", "readonly")  # SQLite's words for the faults injected


class StorageScenario(faults.Scenario):
    def __init__(self, settings: faults.Settings, shards: int, folder: str, rng: random.Random,
                 shim: str, windows: int, window_s: float, calm_s: float, tmpfs_mib: int):
        super().__init__(settings, shards, folder, rng)
        self.shim = shim
        self.windows = windows
        self.window_s = window_s
        self.calm_s = calm_s
        self.control = os.path.join(folder, "fault-control")
        Path(self.control).write_text("off")
        self.tmpfs = Tmpfs(self.queue, tmpfs_mib)
        self.sender_extra = ["--storage-errors"]
        # storage errors are logged as errors, with tracebacks, by design: what must never
        # appear is a lock error, a corrupt file, an I/O error mistaken for a foreign file
        self.log_markers = ("database is locked", "CRITICAL", "malformed", "not a queue file")
        self.windows_done: Counter[str] = Counter()
        self.integrity: list[str] = []
        self.clear: Counter[str] = Counter()
        self.unclear: list[str] = []
        self.refused_starts = 0  # workers that exited at start with a clear storage error
        self.left_to_expire = 0  # leases a graceful stop could not give back during a fault
        self.ending_log: str | None = None  # the log of the process being judged

    def env(self) -> dict[str, str]:
        env = super().env()
        env["LD_PRELOAD"] = self.shim
        env["MQS_FAULT_CONTROL"] = self.control
        return env

    def ended(self, proc: faults.Proc, code: int, now: float) -> None:
        """A worker (re)started during a fault may fail its first write (registering itself):
        the CLI then exits 2 with the storage error, which must name the condition; that is
        the documented refusal, not a failure of the run: it is restarted as usual."""
        if proc.role == "worker" and code == 2 and not proc.killed and not proc.terms:
            text = Path(proc.log_path).read_text(errors="replace").strip()
            last = text.splitlines()[-1] if text else ""
            if faults.storage_error_kind(last) != "unclear" and "error:" in last:
                self.refused_starts += 1
                self.log(f"worker-{proc.index} pid={proc.popen.pid} refused to start: {last[:200]}")
                if self.chaos or self.finishing:
                    self.pending_restarts.append((now + self.rng.uniform(0.05, 0.3), proc.role, proc.index))
                return
        self.ending_log = proc.log_path
        try:
            super().ended(proc, code, now)
        finally:
            self.ending_log = None

    def leases_left_by(self, pid: int) -> int:
        """A graceful stop during a fault can neither give its prefetched leases back nor record
        what it finished (both are writes): the worker logs so, and those leases expire and
        the tasks run again (the check then finds them ended, and the repeats explained).
        Counted, not an error; a lease left behind without that said still is one."""
        left = super().leases_left_by(pid)
        log_text = Path(self.ending_log).read_text(errors="replace") if self.ending_log else ""
        if left and any(said in log_text for said in LEFT_TO_EXPIRE):
            self.left_to_expire += left
            self.log(f"pid={pid} left {left} lease(s) to expire: its give-back failed during a fault")
            return 0
        return left

    def pass_time(self, seconds: float) -> None:
        """Supervise (reap, restart, inject kills when due) for ``seconds``."""
        deadline = time.monotonic() + seconds
        tick = threading.Event()
        while time.monotonic() < deadline:
            self.reap()
            if self.s.kills and self.result.kills < self.s.kills and self.rng.random() < self.kill_chance:
                self.inject()
            tick.wait(faults.TICK_S)

    def chaos_phase(self) -> None:
        ticks = self.windows * (self.window_s + self.calm_s) / faults.TICK_S
        self.kill_chance = self.s.kills / max(1.0, ticks)
        for number in range(self.windows):
            kind = FAULT_KINDS[number % len(FAULT_KINDS)]
            self.pass_time(self.rng.uniform(0.5, 1.5) * self.calm_s)
            filler = None
            self.log(f"fault window {number}: {kind} for {self.window_s:.1f} s")
            if kind == "full":
                filler, written = fill(self.queue)
                self.log(f"filler took {written} bytes")
            else:
                Path(self.control).write_text(kind.upper())
            try:
                self.pass_time(self.window_s)
            finally:
                if filler is not None:
                    os.unlink(filler)
                Path(self.control).write_text("off")
            self.windows_done[kind] += 1
            self.log(f"fault window {number}: {kind} over")

    def check(self) -> None:
        super().check()
        for path in self.store.paths():
            try:
                conn = sqlite3.connect(path, timeout=30)
                try:
                    self.integrity.append(";".join(r[0] for r in conn.execute("PRAGMA integrity_check")))
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                self.integrity.append(f"unreadable ({exc})")
        for name in sorted(os.listdir(self.state)):
            if name.startswith("storage-errors-"):
                for line in Path(self.state, name).read_text(errors="replace").splitlines():
                    kind, _, message = line.partition("\t")
                    self.count_error(kind, f"{name}: {message}")
        for name in sorted(os.listdir(self.proc_logs)):
            if name.startswith("worker-"):
                for line in Path(self.proc_logs, name).read_text(errors="replace").splitlines():
                    if "mq-shard-" in line and any(w in line for w in STORAGE_WORDS):
                        self.count_error(faults.storage_error_kind(line), f"{name}: {line}")
        r = self.result
        if any(result != "ok" for result in self.integrity):
            r.bad_outcomes += 1
            r.note(f"BAD integrity_check: {self.integrity}")
        if self.unclear:
            r.errors += len(self.unclear)
            r.note(f"{len(self.unclear)} storage error(s) without the condition, "
                   f"e.g. {self.unclear[0][:300]}")
        for kind in FAULT_KINDS:
            if self.windows_done[kind] and not self.clear[kind]:
                r.errors += 1
                r.note(f"no sender or worker noticed the {kind} window(s): they proved nothing")

    def count_error(self, kind: str, where: str) -> None:
        if kind == "unclear":
            self.unclear.append(where)
        else:
            self.clear[kind] += 1

    def line(self) -> str:
        return (f"{super().line()} integrity={','.join(self.integrity)} clear_errors="
                f"{','.join(f'{k}:{self.clear[k]}' for k in FAULT_KINDS)} unclear_errors={len(self.unclear)} "
                f"refused_starts={self.refused_starts} left_to_expire={self.left_to_expire}")


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

SHORT = {"shards": "1,3", "workers": 3, "threads": 2, "senders": 3, "tasks": 300, "kills": 3,
         "windows": 3, "window_seconds": 2.5, "calm_seconds": 2.0, "finish_timeout": 20.0}
LONG = {"shards": "1,4", "workers": 4, "threads": 3, "senders": 4, "tasks": 3000, "kills": 30,
        "windows": 15, "window_seconds": 3.0, "calm_seconds": 3.0, "finish_timeout": 90.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the quick run the tests use (< 60 s)")
    parser.add_argument("--shards", help="shard counts, one scenario each (short 1,3; long 1,4)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--threads", type=int, help="worker threads per worker process")
    parser.add_argument("--senders", type=int)
    parser.add_argument("--tasks", type=int, help="tasks per scenario")
    parser.add_argument("--kills", type=int, help="SIGKILL/SIGTERM/SIGSTOP faults mixed in per scenario")
    parser.add_argument("--windows", type=int, help="storage fault windows per scenario (full, eio, erofs, "
                        "full, ...)")
    parser.add_argument("--window-seconds", type=float, help="how long each fault lasts")
    parser.add_argument("--calm-seconds", type=float, help="about how long the calm between faults lasts")
    parser.add_argument("--finish-timeout", type=float)
    parser.add_argument("--tmpfs-mib", type=int, default=64, help="size of the queue's tmpfs")
    parser.add_argument("--visibility-timeout", type=float, default=1.5)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--dir", help="parent folder of the run folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder even when it passes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base = SHORT if args.short else LONG

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return base[name] if value is None else value

    shards = [int(x) for x in str(pick("shards")).split(",") if x.strip()]
    windows, window_s, calm_s = pick("windows"), pick("window_seconds"), pick("calm_seconds")
    settings = faults.Settings(
        shards=shards, workers=pick("workers"), threads=pick("threads"), senders=pick("senders"),
        tasks=pick("tasks"), kills=pick("kills"), chaos_seconds=windows * (window_s + calm_s),
        visibility_timeout=args.visibility_timeout, drain_timeout=1.0, finish_timeout=pick("finish_timeout"),
        sigterm_share=0.15, sigstop_share=0.0, cold_start=False,
        seed=args.seed if args.seed is not None else random.randrange(1 << 30), keep=args.keep, root=args.dir)
    sys.path.insert(0, str(faults.REPO))
    folder = tempfile.mkdtemp(prefix="mqs-storage-faults-", dir=settings.root)
    mounts: list[Tmpfs] = []

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    for signum in (signal.SIGTERM, signal.SIGHUP):  # SIGINT already raises KeyboardInterrupt
        signal.signal(signum, interrupted)
    started = time.monotonic()
    results: list[StorageScenario] = []
    try:
        if os.geteuid() != 0:
            raise CannotRun("not root: mounting the queue's tmpfs needs root")
        shim, why = build_shim(os.path.join(folder, "shim"))
        if shim is None:
            raise CannotRun(why)
        print(f"storage_faults: run folder {folder}, seed {settings.seed}", flush=True)
        for number, count in enumerate(shards):
            scenario = StorageScenario(settings, count, os.path.join(folder, f"shards-{count}-{number}"),
                                       random.Random(settings.seed * 31 + number), shim, windows, window_s,
                                       calm_s, args.tmpfs_mib)
            mounts.append(scenario.tmpfs)
            try:
                scenario.tmpfs.mount()
                scenario.run()
            finally:
                for proc in scenario.procs:
                    if proc.popen.poll() is None:
                        proc.popen.kill()
                        proc.popen.wait()
                scenario.store.close()
                if not scenario.result.ok or settings.keep:  # the evidence outlives the mount
                    shutil.copytree(scenario.queue, scenario.queue + "-kept", dirs_exist_ok=True)
                scenario.tmpfs.unmount()
            results.append(scenario)
            print(scenario.line(), flush=True)
            for note in scenario.result.notes:
                print(f"  {note}", flush=True)
    except CannotRun as exc:
        print(f"storage_faults: cannot run here: {exc}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        return SKIP_EXIT
    finally:
        for mount in mounts:
            mount.unmount()
    total = faults.total_of([scenario.result for scenario in results])
    clear: Counter[str] = Counter()
    for scenario in results:
        clear.update(scenario.clear)
    integrity = [value for scenario in results for value in scenario.integrity]
    passed = bool(results) and all(s.result.ok for s in results)
    print(f"storage_faults: {faults.verdict_counts(total)} integrity={','.join(integrity)} "
          f"windows={sum(s.windows for s in results)} "
          f"clear_errors={','.join(f'{k}:{clear[k]}' for k in FAULT_KINDS)} "
          f"unclear_errors={sum(len(s.unclear) for s in results)} "
          f"refused_starts={sum(s.refused_starts for s in results)} "
          f"left_to_expire={sum(s.left_to_expire for s in results)} kills={total.kills} "
          f"shards={','.join(str(s) for s in shards)} stored={total.stored} "
          f"bad_outcomes={total.bad_outcomes} "
          f"errors={total.errors} seconds={time.monotonic() - started:.1f} "
          f"verdict={'PASS' if passed else 'FAIL'}", flush=True)
    return faults.finish_run(folder, passed, settings.keep, "storage_faults")


if __name__ == "__main__":
    sys.exit(main())
