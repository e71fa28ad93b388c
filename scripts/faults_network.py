#!/usr/bin/env python3
"""Network fault runner (issue 17, "Proof at scale"): several worker and sender "hosts" share
one PostgreSQL server across a network that partitions, loses packets and lags, while
workers are SIGKILLed and SIGSTOPped and the server restarts (fast and immediate).

    python scripts/faults_network.py --short      # under a minute: what the tests run
    python scripts/faults_network.py              # long mode: about 3 minutes
    python scripts/faults_network.py --seed 7 --keep

The network: every host (each worker index and each sender index, across its restarts)
reaches the server through a userspace TCP proxy of its own on loopback (``netproxy.py``),
which the runner switches: a partition blackholes it (connections accepted, nothing
forwarded either way: the client's TCP sees no error, the worst case, so only the client's
own timeouts notice), packet loss and latency stall and delay its chunks. Network
namespaces with veth pairs and ``tc netem`` would cut at the kernel instead; the proxy needs
no privileges, cuts the same statements mid-flight, and its blackhole is harsher than a
dropped route (which TCP's user timeout notices).

The server: a PostgreSQL instance of the runner's own, made with the machine's ``initdb``
and ``pg_ctl`` (/usr/lib/postgresql/*/bin) in a temporary folder, as the ``postgres`` user
when run as root, on a free port; ``pg_ctl restart -m fast`` and ``-m immediate`` restart
it. The machine's shared server is never touched. It is stopped and removed at the end,
also when the run is interrupted (SIGINT/SIGTERM; the processes run in their own process
groups and are killed by group).

Faults, at random moments (``faults.py`` supplies the processes, the SIGKILL/SIGTERM/SIGSTOP
faults and the check): partitions of a worker host or of a sender host, some shorter than
the visibility timeout and some several times longer; loss/latency on a host; SIGKILL,
SIGTERM and SIGSTOP of workers and senders; fast and immediate server restarts; clock
steps of a host (faketime-style: the runner's ``sitecustomize`` makes a host's
``time.time`` run off by an offset that SIGUSR1 steps, hours ahead or behind, kept across
its restarts; monotonic clocks are untouched, as a real step leaves them). Leases must not
care: every expiry is read off the server's clock (queries.sql). The server's own clock is
not stepped: that needs the machine's clock (CAP_SYS_TIME), shared with other work here.

Senders and workers use durability="normal" (synchronous_commit off): an immediate restart
may lose the sends acknowledged in its last moments (the README's window: 3 x
wal_writer_delay, 0.6 s here, counted with a margin as ``lost_in_window``, apart from
``lost``); claims commit durably (finding 3), so no attempt number is handed out twice.
A send that fails (its host partitioned past the call's bound) is sent again under a new
key by its sender, as an application would.

One verdict line:
``faults-network: sent=N acknowledged=N lost=0 lost_in_window=N stuck=0 duplicates=N
unexplained_duplicates=0 longest_send_blocked=S longest_notice=S ... verdict=PASS``;
PASS needs lost, stuck, unexplained duplicates, bad outcomes and errors all 0, and every
partition longer than the notice bound noticed by its worker within it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import glob
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

import faults  # noqa: E402  (the process machinery and the check are faults.py's)
from netproxy import Proxy  # noqa: E402

TASK_NAME = faults.TASK_NAME
SENDER_ERROR_EXIT = faults.SENDER_ERROR_EXIT
DURABILITY_WINDOW_S = 0.6 + 0.4  # 3 x wal_writer_delay (200 ms), plus the sender's own write
NOTICE_BOUND_S = 15.0  # a partitioned worker must log the lost connection within this (README)
SEND_BOUND_S = 32.0 + 10.0  # a send's bound (CALL_BOUND_S) plus opening the queue when restarted
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
NOTICED = ("lost (", "unreachable", "cannot connect")
# Under partitions a process logs what it cannot do, and says why: a traceback ending in
# QueueStorageError (the engine's "could not unregister" at a stop), or one of these ERROR
# lines, is expected. Any other traceback or ERROR line is an error of the run.
faults.LOG_MARKERS = ("database is locked", "CRITICAL")
EXPECTED_ERRORS = ("could not unregister from", "could not be recorded before stopping")
STORAGE_ERROR = "message_queue_sqlite.core.errors.QueueStorageError: "


# ---------------------------------------------------------------------------------------
# The sender process of a host
# ---------------------------------------------------------------------------------------

def sender_main(argv: list[str]) -> int:
    """Like faults.py's sender, plus: each send's duration goes to ``sendtimes-N.txt`` and its
    acknowledgement time to ``acktimes-N.txt``; a send that raises QueueStorageError (the host
    is partitioned past the bound) is sent again later under a new key."""
    parser = argparse.ArgumentParser(prog="faults_network.py _sender")
    for name in ("--index", "--generation", "--first", "--count", "--seed"):
        parser.add_argument(name, type=int, required=True)
    for name in ("--state", "--log-dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--pace", type=float, default=0.0)
    args = parser.parse_args(argv)

    from message_queue_sqlite import MessageQueue
    from message_queue_sqlite.core.errors import QueueStorageError

    rng = random.Random(args.seed * 1000 + args.index * 100 + args.generation)
    accepted_path = os.path.join(args.state, f"accepted-{args.index}.txt")
    done = {int(parts[0]) for parts in faults.read_fields(accepted_path, 3)}
    todo = [seq for seq in range(args.first, args.first + args.count) if seq not in done]
    files = {name: os.open(os.path.join(args.state, f"{name}-{args.index}.txt"),
                           os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
             for name in ("accepted", "attempted", "sendtimes", "acktimes")}
    tries = 0
    mq = None
    position = 0
    try:
        while position < len(todo):
            began = time.monotonic()
            try:
                if mq is None:
                    mq = MessageQueue(broker_url=os.environ["MQS_BROKER_URL"])
                seq = todo[position]
                tries += 1
                key = f"s{args.index}.{seq}.g{args.generation}r{tries}"
                kwargs = faults._task_plan(rng, args.log_dir)
                kwargs["key"] = key
                faults._append(files["attempted"], f"{seq} {key}\n", sync=False)
                handle = mq.send(TASK_NAME, kwargs, retries=1 if kwargs["fail"] else None)
            except QueueStorageError as exc:
                took = time.monotonic() - began
                faults._append(files["sendtimes"], f"{took:.3f} error\n", sync=False)
                print(f"send failed after {took:.1f} s (sent again later): {exc}", flush=True)
                threading.Event().wait(rng.uniform(0.2, 1.0))  # a back-off before sending again
                continue
            took = time.monotonic() - began
            faults._append(files["accepted"], f"{seq} {key} {handle.task_id}\n", sync=True)
            # (the real time: this host's time.time may be stepped, see SITECUSTOMIZE)
            faults._append(files["acktimes"], f"{handle.task_id} {time.time_ns() / 1e9:.3f}\n", sync=False)
            faults._append(files["sendtimes"], f"{took:.3f} ok\n", sync=False)
            position += 1
            faults._pause(rng.uniform(0, 2 * args.pace))
    except Exception:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(SENDER_ERROR_EXIT)
    if mq is not None:
        mq.close()
    return 0


# ---------------------------------------------------------------------------------------
# The runner's own PostgreSQL instance
# ---------------------------------------------------------------------------------------

def find_pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgInstance:
    """A throwaway PostgreSQL server in a temporary folder (as ``postgres`` when root)."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="mqs-netpg-")
        self.data = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "server.log")
        self.user: pwd.struct_passwd | None = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.started = False

    def _demote(self) -> None:
        if self.user is not None:
            os.setgid(self.user.pw_gid)
            os.setuid(self.user.pw_uid)

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([os.path.join(self.bindir, args[0]), *args[1:]], preexec_fn=self._demote,
                              capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if done.returncode:
            log = Path(self.logfile)
            server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}"
                               f"{server_log}")

    def start(self) -> None:
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                   "-c max_connections=300 -c shared_buffers=64MB -c wal_writer_delay=200ms "
                   "-c fsync=on -c log_min_messages=warning")
        with open(os.path.join(self.dir, "options"), "w", encoding="utf-8") as f:
            f.write(options)
        self.options = options
        self._run("pg_ctl", "-D", self.data, "-l", self.logfile, "-o", options, "-w", "-t", "60", "start")
        self.started = True

    def restart(self, mode: str) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.logfile, "-o", self.options, "-m", mode, "-w",
                  "-t", "60", "restart")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def destroy(self) -> None:
        if self.started:
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop", timeout=40)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The store, resilient to the server restarting under the runner
# ---------------------------------------------------------------------------------------

class RestartingStore(faults.PostgresStore):
    """faults.py's PostgreSQL store whose reads ride out a server restart (reconnect, retry
    for up to 60 s), and whose processes reach the server through their host's proxy."""

    def __init__(self, broker_url: str, folder: str, scenario: NetworkScenario):
        super().__init__(broker_url, folder)
        self.scenario = scenario

    def host_url(self) -> str:
        proxy = self.scenario.proxy_of(self.scenario.spawning)
        return self.url.replace(f"127.0.0.1:{self.scenario.pg.port}", f"127.0.0.1:{proxy.port}")

    def worker_args(self) -> list[str]:
        return ["--path", self.folder, "--broker-url", self.host_url()]

    def process_env(self, env: dict[str, str]) -> None:
        env["MQS_BROKER_URL"] = self.host_url()

    def _retry(self, call: Any) -> Any:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                return call()
            except psycopg.OperationalError:
                self.close()
                if time.monotonic() > deadline:
                    raise
                threading.Event().wait(0.2)  # a back-off while the server restarts

    def ready(self) -> bool:
        def check() -> bool:
            if self.conn is None:
                self.conn = self.connect()
            return faults.PostgresStore.ready(self)

        return self._retry(check)

    def node_pids(self) -> list[tuple[str, int]]:
        return self._retry(lambda: (self.ready(), faults.PostgresStore.node_pids(self))[1])

    def waiting(self) -> int:
        return self._retry(lambda: (self.ready(), faults.PostgresStore.waiting(self))[1])

    def running_under(self, nodes: list[str]) -> int:
        return self._retry(lambda: (self.ready(), faults.PostgresStore.running_under(self, nodes))[1])


# ---------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------

class NetworkScenario(faults.Scenario):
    def __init__(self, settings: faults.Settings, folder: str, rng: random.Random, pg: PgInstance,
                 plan: list[str]):
        self.pg = pg
        self.proxies: dict[tuple[str, int], Proxy] = {}
        self.spawning: tuple[str, int] = ("worker", 0)
        super().__init__(settings, 1, folder, rng)
        self.store = RestartingStore(pg.url, self.queue, self)
        self.heals: list[tuple[float, tuple[str, int], str]] = []  # (when, host, what)
        self.partitions: list[dict[str, Any]] = []
        self.restarts: list[tuple[str, float]] = []  # (mode, wall time when it began)
        self.degradations = 0
        self.plan = list(plan)  # faults that come first, in this order
        self.exits: dict[int, float] = {}  # pid -> wall time it ended
        self.offsets: dict[tuple[str, int], float] = {}  # host -> seconds its wall clock is off
        self.steps = {"worker": 3600.0, "sender": -1800.0}  # one step of a host's clock, by role
        self.clock_dir = os.path.join(folder, "clock")
        os.makedirs(self.clock_dir, exist_ok=True)
        Path(self.clock_dir, "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        self.faults_seen: dict[str, int] = {}

    def proxy_of(self, host: tuple[str, int]) -> Proxy:
        if host not in self.proxies:
            self.proxies[host] = Proxy("127.0.0.1", self.pg.port, seed=self.rng.randrange(1 << 30))
        return self.proxies[host]

    def spawn(self, role: str, index: int) -> faults.Proc:
        self.spawning = (role, index)
        if role == "worker":
            return super().spawn(role, index)
        generation = self.generations[(role, index)]
        self.generations[(role, index)] += 1
        log_path = os.path.join(self.proc_logs, f"{role}-{index}-g{generation}.log")
        first, count = self.ranges[index]
        cmd = [sys.executable, str(Path(__file__).resolve()), "_sender", "--index", str(index),
               "--generation", str(generation), "--first", str(first), "--count", str(count),
               "--pace", f"{self.pace if self.chaos else 0.0:.5f}", "--state", self.state,
               "--log-dir", self.exec_dir, "--seed", str(self.s.seed)]
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(cmd, cwd=str(REPO), env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = faults.Proc(role, index, generation, popen, time.monotonic(), log_path)
        self.procs.append(proc)
        self.log(f"start {role}-{index} g{generation} pid={popen.pid}")
        return proc

    def count(self, what: str) -> None:
        self.faults_seen[what] = self.faults_seen.get(what, 0) + 1

    def inject(self) -> None:
        """One fault: the planned ones first (so even a short run has each kind), then at random."""
        if self.plan:
            kind = self.plan.pop(0)
        else:
            draw = self.rng.random()
            kind = ("partition" if draw < 0.30 else "degrade" if draw < 0.42
                    else "restart" if draw < 0.50 and len(self.restarts) < self.s.kills // 8 + 1
                    else "clock" if draw < 0.55 else "process")
        if kind == "clock":
            self.clock_step()
        elif kind.startswith(("partition", "worker_", "sender_")):
            self.partition(kind)
        elif kind == "degrade":  # loss and latency on one host
            role = "worker" if self.rng.random() < 0.6 else "sender"
            index = self.rng.randrange(self.s.workers if role == "worker" else self.s.senders)
            seconds = self.rng.uniform(1.0, 4.0)
            self.result.kills += 1
            self.proxy_of((role, index)).degrade(latency_s=self.rng.uniform(0.01, 0.15),
                                                 loss=self.rng.uniform(0.05, 0.3), loss_delay_s=0.3)
            self.heals.append((time.monotonic() + seconds, (role, index), "degrade"))
            self.count("loss_latency")
            self.log(f"loss/latency on {role}-{index} for {seconds:.1f} s")
        elif kind.startswith("restart"):  # a server restart, fast or immediate
            mode = kind.split("_")[1] if "_" in kind else ("immediate" if self.rng.random() < 0.5 else "fast")
            self.result.kills += 1
            self.log(f"server restart -m {mode}")
            began = time.time()
            self.pg.restart(mode)
            self.restarts.append((mode, began))
            self.count(f"restart_{mode}")
            self.log(f"server back after {time.time() - began:.1f} s")
        else:  # faults.py's: SIGKILL, SIGTERM or SIGSTOP of a process
            before = (self.result.sigkills, self.result.sigterms, self.result.sigstops)
            super().inject()
            after = (self.result.sigkills, self.result.sigterms, self.result.sigstops)
            for name, a, b in zip(("sigkill", "sigterm", "sigstop"), before, after, strict=True):
                if b > a:
                    self.count(name)

    def env(self) -> dict[str, str]:
        """faults.py's, plus the host's clock (offset and step) and the sitecustomize that applies it."""
        env = super().env()
        env["PYTHONPATH"] = os.pathsep.join([self.clock_dir, env["PYTHONPATH"]])
        env["MQS_FAULT_CLOCK_OFFSET"] = str(self.offsets.get(self.spawning, 0.0))
        env["MQS_FAULT_CLOCK_STEP"] = str(self.steps[self.spawning[0]])
        return env

    def clock_step(self) -> None:
        """Step the wall clock of one host (not a partitioned one: its log times measure the
        notice) whose process has run long enough to have its SIGUSR1 handler."""
        now = time.monotonic()
        hosts = [p for p in self.live() if p.paused_until is None and now - p.started > 3.0
                 and self.proxy_of((p.role, p.index)).mode != "blackhole"]
        if not hosts:
            return
        proc = self.rng.choice(hosts)
        host = (proc.role, proc.index)
        self.result.kills += 1
        self.offsets[host] = self.offsets.get(host, 0.0) + self.steps[proc.role]
        self.signal(proc, signal.SIGUSR1)
        self.count("clock_step")
        self.log(f"clock of {proc.role}-{proc.index} stepped by {self.steps[proc.role]:+.0f} s "
                 f"(now {self.offsets[host]:+.0f} s off)")

    def partition(self, kind: str) -> None:
        """Blackhole one host: ``worker_long``/``sender_long`` past the notice bound (many
        leases), ``sender_past_bound`` past a send's bound (its send fails and is sent again),
        ``partition``: a random host, shorter than a lease or (a third) long."""
        vt = self.s.visibility_timeout
        if kind == "partition":
            role = "worker" if self.rng.random() < 0.65 else "sender"
        else:
            role = kind.split("_")[0]
        free = [i for i in range(self.s.workers if role == "worker" else self.s.senders)
                if self.proxy_of((role, i)).mode != "blackhole"]
        if not free:
            return
        index = self.rng.choice(free)
        host = (role, index)
        proxy = self.proxy_of(host)
        if kind.endswith("past_bound"):
            seconds = self.rng.uniform(SEND_BOUND_S - 6, SEND_BOUND_S)
        elif kind.endswith("long") or (not kind.endswith("short") and self.rng.random() < 0.35):
            seconds = self.rng.uniform(NOTICE_BOUND_S + 2, NOTICE_BOUND_S + 8)
        else:
            seconds = self.rng.uniform(0.3, 0.9) * vt
        self.result.kills += 1
        proxy.blackhole()
        live = [p for p in self.live(role) if p.index == index]
        self.partitions.append({"host": host, "start": time.time(), "seconds": seconds,
                                "logs": [p.log_path for p in live], "pids": [p.popen.pid for p in live],
                                "healed": None, "offset": self.offsets.get(host, 0.0)})
        self.heals.append((time.monotonic() + seconds, host, "partition"))
        self.count(f"{role}_partition_{'long' if seconds > vt else 'short'}")
        self.log(f"partition {role}-{index} for {seconds:.1f} s")

    def reap(self) -> None:
        now = time.monotonic()
        for item in [h for h in self.heals if h[0] <= now or not self.chaos]:
            self.heals.remove(item)
            proxy = self.proxy_of(item[1])
            if item[2] == "partition":
                proxy.heal()
                for part in self.partitions:
                    if part["host"] == item[1] and part["healed"] is None:
                        part["healed"] = time.time()
                        part["seconds"] = part["healed"] - part["start"]  # as it lasted (the end cuts it)
            else:
                proxy.degrade()
            self.log(f"healed {item[2]} of {item[1][0]}-{item[1][1]}")
        super().reap()

    def ended(self, proc: faults.Proc, code: int, now: float) -> None:
        """A worker that could not reach the server when it started (its host partitioned, or
        the server restarting) exits with an error, as it should: the runner restarts it."""
        text = Path(proc.log_path).read_text(errors="replace") if os.path.exists(proc.log_path) else ""
        unreachable = "cannot connect to PostgreSQL" in text or "cannot use schema" in text
        if proc.role == "worker" and code not in (0, faults.WORKER_GAVE_BACK_EXIT, -9, -15) \
                and "worker: " not in text and unreachable:
            self.log(f"worker-{proc.index} pid={proc.popen.pid} could not reach the server at start; "
                     "restarted")
            proc.killed = True
            code = -signal.SIGKILL
        self.exits[proc.popen.pid] = time.time()
        unexpected = unexpected_log_lines(text)
        if unexpected:
            self.error(f"{proc.role}-{proc.index} pid={proc.popen.pid} logged: {unexpected[0]}", text)
        super().ended(proc, code, now)

    # -- the network figures ---------------------------------------------------------
    def state_fields(self, name: str, count: int) -> list[list[str]]:
        """The lines of every sender's ``name-N.txt`` state file."""
        return [parts for path in sorted(glob.glob(os.path.join(self.state, f"{name}-*.txt")))
                for parts in faults.read_fields(path, count)]

    def figures(self) -> dict[str, Any]:
        longest_send = max((float(took) for took, _ in self.state_fields("sendtimes", 2)), default=0.0)
        longest_notice = 0.0
        unnoticed = []
        for part in self.partitions:
            if part["host"][0] != "worker" or part["seconds"] < NOTICE_BOUND_S or not part["logs"]:
                continue
            seen = None
            for path in part["logs"]:
                at = first_notice(path, part["start"] + part["offset"])  # (its log's clock is off by that)
                seen = min(filter(None, [seen, at]), default=None)
            lived = all(self.exits.get(pid, float("inf")) >= part["start"] + NOTICE_BOUND_S
                        for pid in part["pids"])
            if seen is None and not lived:
                continue  # killed (a fault) before it was due to notice: nothing to measure
            if seen is None or seen > NOTICE_BOUND_S:
                unnoticed.append(part)
            else:
                longest_notice = max(longest_notice, seen)
        return {"longest_send": longest_send, "longest_notice": longest_notice, "unnoticed": unnoticed}

    def reclassify_window_losses(self) -> int:
        """Acknowledged sends an immediate restart took back within the durability window of
        durability="normal": moved from ``lost`` (or from a bad outcome, when the row id
        went to a later send) to ``lost_in_window``."""
        immediate = [t for mode, t in self.restarts if mode == "immediate"]
        if not immediate or not (self.result.lost or self.result.bad_outcomes):
            return 0
        acked = {task_id: float(at) for task_id, at in self.state_fields("acktimes", 2)}
        accepted = {task_id: key for _seq, key, task_id in self.state_fields("accepted", 3)}
        rows = {f"0-{row['id']}": row for row in self.store.read_rows()}
        moved = 0
        for task_id, key in accepted.items():
            at = acked.get(task_id)
            if at is None or not any(t - DURABILITY_WINDOW_S <= at <= t + 0.5 for t in immediate):
                continue
            row = rows.get(task_id)
            if row is None:
                self.result.lost -= 1
                moved += 1
                nearest = min(immediate, key=lambda t, at=at: abs(t - at))
                self.result.note(f"(task {task_id}, acknowledged {at - nearest:+.2f} s from the start of an "
                                 "immediate restart, counts in lost_in_window, not in lost)")
            elif json.loads(row["args"] or "{}").get("key") != key:
                self.result.bad_outcomes -= 1
                moved += 1
        return moved


SITECUSTOMIZE = '''"""Loaded by the network fault runner's processes (PYTHONPATH): this host's wall clock
(time.time) runs MQS_FAULT_CLOCK_OFFSET seconds off, and each SIGUSR1 steps it by
MQS_FAULT_CLOCK_STEP more, as a host whose clock is wrong and gets stepped. Monotonic clocks
are untouched, as a real step leaves them."""
import os
import signal
import time

_real = time.time
_offset = [float(os.environ.get("MQS_FAULT_CLOCK_OFFSET") or 0.0)]
_step = float(os.environ.get("MQS_FAULT_CLOCK_STEP") or 0.0)
time.time = lambda: _real() + _offset[0]


def _on_step(_signum, _frame):
    _offset[0] += _step


if _step:
    signal.signal(signal.SIGUSR1, _on_step)
'''


def unexpected_log_lines(text: str) -> list[str]:
    """ERROR lines and tracebacks in a process's log that a partition does not explain."""
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " ERROR " in line and not any(e in line for e in EXPECTED_ERRORS):
            found.append(line)
        elif line.startswith("Traceback (most recent call last)"):
            end = next((lines[j] for j in range(i + 1, len(lines))
                        if lines[j] and not lines[j][0].isspace()), "")
            if not end.startswith(STORAGE_ERROR) and "The above exception" not in end \
                    and "During handling" not in end:
                found.append(f"traceback ending {end[:200]!r}")
    return found


def first_notice(path: str, since: float) -> float | None:
    """Seconds from ``since`` (wall clock) to the first log line of a lost connection."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            match = LOG_TIME.match(line)
            if not match or not any(word in line for word in NOTICED):
                continue
            at = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
            if at >= since - 0.5:
                return max(0.0, at - since)
    return None


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

SHORT = {"workers": 3, "threads": 3, "senders": 2, "tasks": 150, "kills": 14, "chaos_seconds": 30.0,
         "finish_timeout": 30.0}
LONG = {"workers": 4, "threads": 3, "senders": 3, "tasks": 1500, "kills": 70, "chaos_seconds": 150.0,
        "finish_timeout": 90.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the quick run the tests use (< 60 s)")
    for name in ("workers", "threads", "senders", "tasks", "kills"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--chaos-seconds", type=float)
    parser.add_argument("--finish-timeout", type=float)
    parser.add_argument("--visibility-timeout", type=float, default=3.0, help="lease seconds")
    parser.add_argument("--drain-timeout", type=float, default=2.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--keep", action="store_true", help="keep the run folder even when it passes")
    return parser


def skip_reason() -> str | None:
    """Why this machine cannot run it (None: it can)."""
    if find_pg_bin() is None:
        return "no initdb under /usr/lib/postgresql/*/bin"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run initdb as"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_sender":
        return sender_main(argv[1:])
    args = build_parser().parse_args(argv)
    reason = skip_reason()
    if reason:
        print(f"faults-network: cannot run here: {reason}", flush=True)
        return 2
    base = SHORT if args.short else LONG
    pick = {name: base[name] if getattr(args, name) is None else getattr(args, name) for name in base}
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    settings = faults.Settings(shards=[1], workers=pick["workers"], threads=pick["threads"],
                               senders=pick["senders"], tasks=pick["tasks"], kills=pick["kills"],
                               chaos_seconds=pick["chaos_seconds"],
                               visibility_timeout=args.visibility_timeout,
                               drain_timeout=args.drain_timeout, finish_timeout=pick["finish_timeout"],
                               sigterm_share=0.2, sigstop_share=0.2, cold_start=True, seed=seed,
                               keep=args.keep, root=None, broker_url="postgresql://unused")
    folder = tempfile.mkdtemp(prefix="mqs-faults-net-")
    pg = PgInstance(find_pg_bin() or "")
    scenario: NetworkScenario | None = None

    def cleanup() -> None:
        if scenario is not None:
            for proc in scenario.procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGKILL) if proc.role == "sender" else proc.popen.kill()
                with contextlib.suppress(Exception):
                    proc.popen.wait(timeout=10)
            for proxy in scenario.proxies.values():
                proxy.close()
            scenario.store.close()
        pg.destroy()

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    atexit.register(cleanup)
    previous = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    try:
        pg.start()
        print(f"faults-network: run folder {folder}, PostgreSQL of its own on 127.0.0.1:{pg.port} "
              f"({pg.bindir}), seed {seed}", flush=True)
        rng = random.Random(seed)
        plan = ["worker_long", "restart_immediate", "clock", "sender_long", "worker_short", "clock",
                "restart_fast"]
        if not args.short:
            plan += ["sender_past_bound", "process", "worker_long", "restart_immediate"]
        scenario = NetworkScenario(settings, os.path.join(folder, "network"), rng, pg, plan)
        result = scenario.run()
        in_window = scenario.reclassify_window_losses()
        fig = scenario.figures()
        print(scenario.line(), flush=True)
        for note in result.notes:
            print(f"  {note}", flush=True)
        for part in fig["unnoticed"]:
            print(f"  UNNOTICED partition of {part['host'][0]}-{part['host'][1]} for {part['seconds']:.1f} s "
                  f"(no lost connection logged within {NOTICE_BOUND_S:g} s)", flush=True)
        seen = " ".join(f"{k}={v}" for k, v in sorted(scenario.faults_seen.items()))
        passed = (result.ok and not fig["unnoticed"] and fig["longest_send"] <= SEND_BOUND_S)
        print(f"faults-network: sent={result.sent} acknowledged={result.accepted} lost={result.lost} "
              f"lost_in_window={in_window} stuck={result.stuck} duplicates={result.duplicate_executions} "
              f"unexplained_duplicates={result.unexplained_duplicates} "
              f"longest_send_blocked={fig['longest_send']:.1f}s longest_notice={fig['longest_notice']:.1f}s "
              f"finished={result.finished} failed={result.failed} bad_outcomes={result.bad_outcomes} "
              f"errors={result.errors} faults={result.kills} {seen} "
              f"seconds={time.monotonic() - started:.1f} verdict={'PASS' if passed else 'FAIL'}", flush=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        cleanup()
        atexit.unregister(cleanup)
    if passed and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    elif not passed:
        print(f"faults-network: evidence kept in {folder}", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
