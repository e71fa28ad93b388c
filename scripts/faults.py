#!/usr/bin/env python3
"""Fault-injection runner: SIGKILL, SIGTERM and SIGSTOP workers and senders at random
moments, then check from the queue files themselves that no accepted task was lost or left
stuck and that every repeated execution is explained by a lease expiry.

    python scripts/faults.py --short          # two scenarios (1 and 3 shards), < 60 s
    python scripts/faults.py                  # long mode: 1 and 4 shards, about 4 minutes
    python scripts/faults.py --shards 2 --workers 4 --senders 3 --tasks 2000 --kills 80
    python scripts/faults.py --short --backend postgres    # on $MQS_TEST_POSTGRES_DSN
    python scripts/faults.py --broker-url postgresql://postgres@127.0.0.1:5432/test

On PostgreSQL (``--broker-url URL``, or ``--backend postgres`` with the URL in
``MQS_TEST_POSTGRES_DSN``) the same faults run against one queue schema: shard counts do
not apply there (one scenario), each scenario gets a fresh schema ``mqs_faults_<random>``
(its processes create it, racing, as on a cold start), the workers get its URL through
``--broker-url`` and the senders through ``MQS_BROKER_URL``, and the check reads the rows
from PostgreSQL (and saves them in queue/rows.jsonl); the schema is dropped at the end
unless --keep.

Each scenario uses a fresh queue folder, starts worker processes (the package's CLI
``worker`` serving ``scripts/fault_tasks.py``, whose task appends ``KEY PID NONCE`` to a
per-process log, O_APPEND + fsync, before it returns) and sender processes (this script's
``_sender``: it writes each task id to its accepted file only after send returned, and
when restarted sends the rest under new keys). Faults come at random moments: SIGKILL of
any process (restarted after a random delay), SIGTERM of a worker (graceful stop,
sometimes a second signal), SIGSTOP of any process for 0.5-4 leases (then SIGCONT). With
one shard (or --cold-start) the processes create the queue file themselves. When the
faults stop, ended processes restart, the senders finish, the workers drain (deadline),
stop gracefully, and the check reads the shard files (or the schema) and the logs:

* lost: ids whose send returned that are not FINISHED/FAILED/CALLBACKED (or not stored);
* stuck: rows still NOT_STARTED / RUNNING / SCHEDULED at the end (any sender's);
* duplicate executions (beyond 1 per task, or 1 + retries for the always-failing ones),
  and unexplained ones: more executions than claims (``attempts``), or a repeat on a row
  with no lease expiry (``crashes = 0``) and no extra claim (``attempts <= expected``);
* bad outcomes: a recorded result that no logged execution produced, a task id whose row
  holds another task, an ok task FAILED other than by the crash limit, a failing task
  FINISHED;
* errors: a send that raised (e.g. "database is locked" reaching a user), a process that
  exited on its own or printed a traceback / ERROR, a graceful stop that hung or left
  tasks RUNNING under its lease.

It prints one line per scenario (and notes on what went wrong), then ONE verdict line:
``faults: sent=N accepted=N finished=N failed=N lost=0 stuck=0 duplicate_executions=N
unexplained_duplicates=0 kills=N shards=1,3 ... verdict=PASS``; it exits 1 unless the run
passed, keeping the run folder (events.log, logs/, exec/, state/, queue/) as evidence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
import traceback
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
TASK_PACKAGE = "fault_tasks"
TASK_NAME = "fault_work"
END_STATES = (3, 4, 5)  # FINISHED, FAILED, CALLBACKED
WAITING_STATES = (1, 2, 6)  # NOT_STARTED, RUNNING, SCHEDULED
STATUS_NAMES = {1: "NOT_STARTED", 2: "RUNNING", 3: "FINISHED", 4: "FAILED", 5: "CALLBACKED",
                6: "SCHEDULED"}
SENDER_ERROR_EXIT = 3
CRASH_LIMIT_TEXT = "crash limit reached"
TICK_S = 0.02  # how often the supervisor looks at its processes
MAX_FAILURES_IN_A_ROW = 5  # a process that fails this often in a row is not restarted again
MAX_NOTES = 25
WORKER_GAVE_BACK_EXIT = 3  # `worker` stopped with tasks given back unfinished
LOG_MARKERS = ("database is locked", "Traceback", " ERROR ", "CRITICAL")


def _pause(seconds: float) -> None:
    """A random delay (kill timing, pacing); never used to wait for work."""
    if seconds > 0:
        threading.Event().wait(seconds)


def wait_for(condition: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; True if it became true."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        event.wait(interval)


def read_fields(path: str, count: int) -> list[list[str]]:
    """The whole lines of a state file (a torn last line is skipped) with ``count`` fields."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [parts for line in f if line.endswith("\n") and len(parts := line.split()) == count]


def _append(fd: int, text: str, sync: bool) -> None:
    os.write(fd, text.encode())
    if sync:
        os.fsync(fd)


# ---------------------------------------------------------------------------------------
# The sender process
# ---------------------------------------------------------------------------------------

def sender_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faults.py _sender")
    parser.add_argument("--path", required=True)
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--generation", type=int, required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--pace", type=float, default=0.0, help="mean seconds between sends")
    parser.add_argument("--state", required=True, help="folder of the accepted/attempt files")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--storage-errors", action="store_true",
                        help="a QueueStorageError is no failure (storage_faults.py): record it, back off, "
                        "send the tasks not stored again under new keys")
    args = parser.parse_args(argv)

    from message_queue_sqlite import MessageQueue

    rng = random.Random(args.seed * 1000 + args.index * 100 + args.generation)
    accepted_path = os.path.join(args.state, f"accepted-{args.index}.txt")
    done = {int(parts[0]) for parts in read_fields(accepted_path, 3)}
    todo = [seq for seq in range(args.first, args.first + args.count) if seq not in done]
    accepted = os.open(accepted_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    attempted = os.open(os.path.join(args.state, f"attempted-{args.index}.txt"),
                        os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    errors = StorageErrorLog(os.path.join(args.state, f"storage-errors-{args.index}.txt"),
                             args.storage_errors)
    mq = errors.retry(lambda: MessageQueue(args.path, shards=args.shards))
    position = 0
    try:
        while position < len(todo):
            size = 1 if rng.random() < 0.8 else rng.randint(2, 8)
            batch = todo[position:position + size]
            plans = {seq: _task_plan(rng, args.log_dir) for seq in batch}
            while batch:  # (a storage error: what was not stored goes again, under new keys)
                tasks = [(seq, f"s{args.index}.{seq}.g{args.generation}{errors.key_suffix}", dict(plans[seq]))
                         for seq in batch]
                for _seq, key, kwargs in tasks:
                    kwargs["key"] = key
                _append(attempted, "".join(f"{seq} {key}\n" for seq, key, _ in tasks), sync=False)
                stored, batch = errors.attempt(mq, tasks)
                # Only now, after send returned (committed), is the task accepted.
                _append(accepted, "".join(f"{seq} {key} {task_id}\n" for seq, key, task_id in stored),
                        sync=True)
            position += size
            _pause(rng.uniform(0, 2 * args.pace))
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(SENDER_ERROR_EXIT)
    mq.close()
    return 0


def _send(mq: Any, tasks: list[tuple[int, str, dict[str, Any]]]) -> list[str]:
    """Send one batch (one task alone, or with a failing one, through ``send``): the ids."""
    if len(tasks) == 1 or any(kwargs["fail"] for _, _, kwargs in tasks):
        return [mq.send(TASK_NAME, kwargs, retries=1 if kwargs["fail"] else None).task_id
                for _, _, kwargs in tasks]
    return [h.task_id for h in mq.send_many([(TASK_NAME, kwargs) for _, _, kwargs in tasks])]


# what a clear storage error names (message_queue_sqlite.backends.sqlite.connection.storage_condition)
STORAGE_CONDITIONS = (("full", "the disk is full (ENOSPC"), ("full", "the database is full (SQLITE_FULL"),
                      ("erofs", "is read-only (EROFS"), ("eio", "an I/O error (EIO)"))


def storage_error_kind(message: str) -> str:
    """``full``, ``erofs``, ``eio`` for a storage error naming a shard file and its condition,
    else ``unclear`` (a bare SQLite message, or no file named)."""
    if "mq-shard-" not in message:
        return "unclear"
    return next((kind for kind, phrase in STORAGE_CONDITIONS if phrase in message), "unclear")


class StorageErrorLog:
    """A sender's handling of storage errors. Off (faults.py): any exception ends the sender.
    On (storage_faults.py): a QueueStorageError is recorded (kind and message, one line each),
    the sender backs off and sends again what was not stored; the ids of a PartiallySentError's
    stored part are accepted as they are."""

    def __init__(self, path: str, enabled: bool):
        self.path = path
        self.enabled = enabled
        self.retries = 0
        self._delay = 0.01

    @property
    def key_suffix(self) -> str:
        return f"r{self.retries}" if self.retries else ""

    def record(self, exc: BaseException) -> None:
        text = " ".join(str(exc).split())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{storage_error_kind(text)}\t{type(exc).__name__}: {text}\n")
        self.retries += 1
        _pause(random.uniform(0.5, 1.0) * self._delay)  # a back-off in a retry loop
        self._delay = min(0.5, self._delay * 2)

    def retry(self, action: Any) -> Any:
        """``action()`` until it raises no storage error (opening the queue during a fault)."""
        from message_queue_sqlite import QueueStorageError

        while True:
            try:
                return action()
            except QueueStorageError as exc:
                if not self.enabled:
                    raise
                self.record(exc)

    def attempt(self, mq: Any, tasks: list[tuple[int, str, dict[str, Any]]]
                ) -> tuple[list[tuple[int, str, str]], list[int]]:
        """Send ``tasks``: (the (seq, key, id) stored, the seqs to send again)."""
        from message_queue_sqlite import PartiallySentError, QueueStorageError

        try:
            ids = _send(mq, tasks)
        except PartiallySentError as exc:
            if not self.enabled:
                raise
            self.record(exc)
            return ([(tasks[i][0], tasks[i][1], task_id) for i, task_id in exc.sent.items()],
                    [tasks[i][0] for i in exc.failed])
        except QueueStorageError as exc:
            if not self.enabled:
                raise
            self.record(exc)
            return [], [seq for seq, _, _ in tasks]
        self._delay = 0.01
        return [(seq, key, task_id) for (seq, key, _), task_id in zip(tasks, ids, strict=True)], []


def _task_plan(rng: random.Random, log_dir: str) -> dict[str, Any]:
    draw = rng.random()
    if draw < 0.03:
        return {"seconds": rng.uniform(0.001, 0.02), "log_dir": log_dir, "fail": True}
    if draw < 0.08:  # longer than the lease: must be renewed, often killed mid-run
        seconds = rng.uniform(0.8, 2.5)
    elif draw < 0.23:
        seconds = rng.uniform(0.05, 0.4)
    else:
        seconds = rng.uniform(0.002, 0.03)
    plan = {"seconds": round(seconds, 4), "log_dir": log_dir, "fail": False}
    if rng.random() < 0.1:  # more work after the side effect: a kill then causes a duplicate
        plan["after"] = round(rng.uniform(0.05, 0.5), 4)
    return plan


# ---------------------------------------------------------------------------------------
# Where the queue lives: what the supervisor reads, one small class per backend
# ---------------------------------------------------------------------------------------

class SQLiteStore:
    """The queue as shard files ``mq-shard-N.db`` in a folder. The runner only reads them
    (autocommit readers), except ``create`` before a warm start."""

    backend = "sqlite"

    def __init__(self, folder: str, shards: int):
        self.folder = folder
        self.shards = shards
        self.conns: list[sqlite3.Connection] = []
        self.location = folder

    def paths(self) -> list[str]:
        return [os.path.join(self.folder, f"mq-shard-{i}.db") for i in range(self.shards)]

    def worker_args(self) -> list[str]:
        return ["--path", self.folder]

    def sender_args(self) -> list[str]:
        return ["--path", self.folder, "--shards", str(self.shards)]

    def process_env(self, env: dict[str, str]) -> None:
        env.pop("MQS_BROKER_URL", None)

    def create(self) -> None:
        from message_queue_sqlite import MessageQueue

        MessageQueue(self.folder, shards=self.shards).close()

    def ready(self) -> bool:
        """Open the read connections once every shard file exists and is migrated; never
        create a file here (on a cold start the workers and senders do)."""
        if self.conns:
            return True
        paths = self.paths()
        if not all(os.path.exists(p) and os.path.getsize(p) > 0 for p in paths):
            return False
        conns = [sqlite3.connect(p, timeout=30) for p in paths]
        try:
            for conn in conns:
                conn.execute("SELECT count(*) FROM mqs_tasks JOIN mqs_nodes ON 0").fetchone()
        except sqlite3.DatabaseError:  # still being created or migrated
            for conn in conns:
                conn.close()
            return False
        self.conns = conns
        return True

    def node_pids(self) -> list[tuple[str, int]]:
        return [row for conn in self.conns for row in conn.execute("SELECT node_id, pid FROM mqs_nodes")]

    def waiting(self) -> int:
        marks = ",".join("?" * len(WAITING_STATES))
        return sum(c.execute(f"SELECT count(*) FROM mqs_tasks WHERE status IN ({marks})",
                             WAITING_STATES).fetchone()[0] for c in self.conns)

    def running_under(self, nodes: list[str]) -> int:
        marks = ",".join("?" * len(nodes))
        return sum(c.execute(f"SELECT count(*) FROM mqs_tasks WHERE status = 2 AND lease_owner IN ({marks})",
                             nodes).fetchone()[0] for c in self.conns)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns = []

    def read_rows(self) -> list[dict[str, Any]]:
        """Every task row, each with its ``shard``; raises StoreMissing if a file is."""
        missing = [i for i, p in enumerate(self.paths()) if not os.path.exists(p)]
        if missing:
            raise StoreMissing(f"shard file(s) {missing} were never created")
        rows = []
        for shard, path in enumerate(self.paths()):
            conn = sqlite3.connect(path, timeout=30)
            try:
                conn.row_factory = sqlite3.Row
                rows.extend({**dict(row), "shard": shard} for row in conn.execute("SELECT * FROM mqs_tasks"))
            finally:
                conn.close()
        return rows

    def discard(self) -> str:
        self.close()
        return ""  # the files go with the run folder

    def kept_counts(self) -> dict[tuple[int, int], int]:
        """The counts the package keeps (what ``stats()`` reads), through the package."""
        from message_queue_sqlite import MessageQueue

        return _kept_counts(MessageQueue(self.folder, shards=self.shards))

    def lease_now(self) -> float:
        """Now on the clock the files' lease expiries are on (the host's boot clock)."""
        from message_queue_sqlite.backends.sqlite.clock import lease_now

        return lease_now()


def _kept_counts(queue: Any) -> dict[tuple[int, int], int]:
    try:
        total: Counter[tuple[int, int]] = Counter()
        for shard in queue.engine.shards:
            total.update(shard.count_tasks())
        return {key: n for key, n in total.items() if n}
    finally:
        queue.close()


class StoreMissing(Exception):
    """The queue's storage was never created."""


def split_broker_url(url: str) -> tuple[str, str | None]:
    """(the URL without its ``schema`` parameter, that schema or None)."""
    base, _, query_text = url.partition("?")
    query = parse_qsl(query_text, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    rest = [(key, value) for key, value in query if key != "schema"]
    return (f"{base}?{urlencode(rest)}" if rest else base), (schemas[-1] if schemas else None)


class PostgresStore:
    """The queue as one schema of its own, ``mqs_faults_<random>``, in a PostgreSQL database
    (one shard: ids ``0-<id>``). The runner reads it over its own autocommit connection
    (psycopg, not the package), and drops the schema in ``discard``."""

    backend = "postgres"
    shards = 1

    def __init__(self, broker_url: str, folder: str):
        self.dsn, _ = split_broker_url(broker_url)
        self.schema = f"mqs_faults_{uuid.uuid4().hex[:12]}"
        separator = "&" if "?" in self.dsn else "?"
        self.url = f"{self.dsn}{separator}schema={self.schema}"
        self.location = f"schema {self.schema}"
        self.folder = folder  # the workers' --path (unused there); evidence goes here
        self.tasks = f'"{self.schema}".mqs_tasks'
        self.nodes = f'"{self.schema}".mqs_nodes'
        self.conn: Any = None
        self.created = False

    def connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10,
                               application_name="mqs_faults_runner")
        conn.execute("SET statement_timeout = '30s'; SET lock_timeout = '10s'")
        return conn

    def worker_args(self) -> list[str]:
        return ["--path", self.folder, "--broker-url", self.url]

    def sender_args(self) -> list[str]:
        return ["--path", self.folder, "--shards", "1"]  # the URL comes from MQS_BROKER_URL

    def process_env(self, env: dict[str, str]) -> None:
        env["MQS_BROKER_URL"] = self.url

    def create(self) -> None:
        raise AssertionError("on PostgreSQL the processes create the schema themselves")

    def ready(self) -> bool:
        """True once the processes created (and committed) the schema's tables."""
        if self.created:
            return True
        if self.conn is None:
            self.conn = self.connect()
        self.created = bool(self.conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
            (self.tasks, self.nodes)).fetchone()[0])
        return self.created

    def node_pids(self) -> list[tuple[str, int]]:
        return self.conn.execute(f"SELECT node_id, pid FROM {self.nodes}").fetchall()

    def waiting(self) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {self.tasks} WHERE status = ANY(%s)",
                                 (list(WAITING_STATES),)).fetchone()[0]

    def running_under(self, nodes: list[str]) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {self.tasks} WHERE status = 2 AND "
                                 "lease_owner = ANY(%s)", (nodes,)).fetchone()[0]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def kept_counts(self) -> dict[tuple[int, int], int]:
        """The counts the package keeps (what ``stats()`` reads), through the package."""
        from message_queue_sqlite import MessageQueue

        return _kept_counts(MessageQueue(broker_url=self.url))

    def lease_now(self) -> float:
        """Now on the clock lease expiries are on (the server's)."""
        with self.connect() as conn:
            return conn.execute("SELECT date_part('epoch', clock_timestamp())").fetchone()[0]

    def read_rows(self) -> list[dict[str, Any]]:
        """Every task row (shard 0), also saved to queue/rows.jsonl as evidence."""
        from psycopg.rows import dict_row

        with self.connect() as conn:
            if conn.execute("SELECT to_regclass(%s)", (self.tasks,)).fetchone()[0] is None:
                raise StoreMissing(f"{self.tasks} was never created")
            cursor = conn.cursor(row_factory=dict_row)
            rows = [{**row, "shard": 0} for row in cursor.execute(f"SELECT * FROM {self.tasks} ORDER BY id")]
        with open(os.path.join(self.folder, "rows.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, default=str) + "\n" for row in rows)
        return rows

    def discard(self) -> str:
        """Drop the schema; returns a problem to report, or ''."""
        self.close()
        try:
            with self.connect() as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        except Exception as exc:
            return f"could not drop schema {self.schema}: {type(exc).__name__}: {exc}"
        return ""


Store = SQLiteStore | PostgresStore


# ---------------------------------------------------------------------------------------
# The supervisor
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Settings:
    shards: list[int]
    workers: int
    threads: int
    senders: int
    tasks: int
    kills: int
    chaos_seconds: float
    visibility_timeout: float
    drain_timeout: float
    finish_timeout: float
    sigterm_share: float
    sigstop_share: float
    cold_start: bool
    seed: int
    keep: bool
    root: str | None
    broker_url: str | None = None  # a postgresql:// URL: run on PostgreSQL (one shard)


@dataclasses.dataclass
class Proc:
    role: str  # "worker" or "sender"
    index: int
    generation: int
    popen: subprocess.Popen
    started: float
    log_path: str
    terms: int = 0
    term_deadline: float | None = None
    second_term_at: float | None = None
    paused_until: float | None = None
    killed: bool = False


@dataclasses.dataclass
class Result:
    shards: int
    backend: str = "sqlite"
    sent: int = 0
    accepted: int = 0
    stored: int = 0
    finished: int = 0
    failed: int = 0
    crash_failed: int = 0
    crash_failed_never_ran: int = 0
    lost: int = 0
    stuck: int = 0
    executions: int = 0
    duplicate_executions: int = 0
    unexplained_duplicates: int = 0
    bad_outcomes: int = 0
    errors: int = 0
    kills: int = 0
    sigkills: int = 0
    sigterms: int = 0
    sigstops: int = 0
    restarts: int = 0
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.stuck or self.unexplained_duplicates or self.bad_outcomes
                    or self.errors)

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)
        elif len(self.notes) == MAX_NOTES:
            self.notes.append("... (more in events.log)")


class Scenario:
    def __init__(self, settings: Settings, shards: int, folder: str, rng: random.Random):
        self.s = settings
        self.shards = shards
        self.folder = folder
        self.queue = os.path.join(folder, "queue")
        self.state = os.path.join(folder, "state")
        self.exec_dir = os.path.join(folder, "exec")
        self.proc_logs = os.path.join(folder, "logs")
        for path in (self.queue, self.state, self.exec_dir, self.proc_logs):
            os.makedirs(path, exist_ok=True)
        self.rng = rng
        self.store: Store = (PostgresStore(settings.broker_url, self.queue) if settings.broker_url
                             else SQLiteStore(self.queue, shards))
        # one shard (or --cold-start): every process races to create the queue files (schema)
        self.cold = shards == 1 or settings.cold_start
        self.result = Result(shards, self.store.backend)
        self.procs: list[Proc] = []
        self.pending_restarts: list[tuple[float, str, int]] = []
        self.generations: Counter[tuple[str, int]] = Counter()
        self.senders_done: set[int] = set()
        self.failures: Counter[tuple[str, int]] = Counter()  # failed runs in a row
        self.gave_up: set[tuple[str, int]] = set()
        self.nodes: dict[int, set[str]] = defaultdict(set)  # pid -> queue node ids (from mqs_nodes)
        self.next_node_poll = 0.0
        self.events = open(os.path.join(folder, "events.log"), "a", encoding="utf-8")  # noqa: SIM115
        self.t0 = time.monotonic()
        self.chaos = True  # phase 1: faults are injected, ended processes restart after a while
        self.finishing = False  # phase 2: ended processes restart at once
        shares = [settings.tasks // settings.senders] * settings.senders
        for i in range(settings.tasks % settings.senders):
            shares[i] += 1
        self.ranges = []
        first = 0
        for share in shares:
            self.ranges.append((first, share))
            first += share
        self.pace = max(0.0, 0.7 * settings.chaos_seconds * settings.senders / max(1, settings.tasks))
        self.log_markers = LOG_MARKERS  # what in a process's log is an error
        self.sender_extra: list[str] = []  # more arguments for the senders

    # -- processes -------------------------------------------------------------------
    def log(self, text: str) -> None:
        self.events.write(f"{time.monotonic() - self.t0:8.3f} {text}\n")
        self.events.flush()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [env.get("PYTHONPATH"), str(REPO)] if p)
        self.store.process_env(env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self, role: str, index: int) -> Proc:
        generation = self.generations[(role, index)]
        self.generations[(role, index)] += 1
        log_path = os.path.join(self.proc_logs, f"{role}-{index}-g{generation}.log")
        if role == "worker":
            cmd = [sys.executable, "-m", "message_queue_sqlite", "worker", TASK_PACKAGE,
                   *self.store.worker_args(), "--workers", str(self.s.threads),
                   "--visibility-timeout", str(self.s.visibility_timeout),
                   "--drain-timeout", str(self.s.drain_timeout)]
            cwd = str(SCRIPTS)
        else:
            first, count = self.ranges[index]
            pace = self.pace if self.chaos else 0.0
            cmd = [sys.executable, str(Path(__file__).resolve()), "_sender", *self.store.sender_args(),
                   "--index", str(index),
                   "--generation", str(generation), "--first", str(first), "--count", str(count),
                   "--pace", f"{pace:.5f}", "--state", self.state, "--log-dir", self.exec_dir,
                   "--seed", str(self.s.seed + self.shards), *self.sender_extra]
            cwd = str(REPO)
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(cmd, cwd=cwd, env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT)
        proc = Proc(role, index, generation, popen, time.monotonic(), log_path)
        self.procs.append(proc)
        self.log(f"start {role}-{index} g{generation} pid={popen.pid}")
        return proc

    def live(self, role: str | None = None) -> list[Proc]:
        return [p for p in self.procs if p.popen.poll() is None and (role is None or p.role == role)]

    def signal(self, proc: Proc, signum: int) -> None:
        try:
            os.kill(proc.popen.pid, signum)
        except ProcessLookupError:
            return
        self.log(f"signal {signal.Signals(signum).name} {proc.role}-{proc.index} pid={proc.popen.pid}")

    def inject(self) -> None:
        """One fault: SIGKILL a random process, SIGTERM a worker (sometimes twice), or freeze
        a process with SIGSTOP for a while (longer than a lease, maybe holding the write lock)."""
        candidates = [p for p in self.live() if p.paused_until is None]
        if not candidates:
            return
        weights = [3.0 if p.role == "worker" else 1.5 for p in candidates]
        victim = self.rng.choices(candidates, weights)[0]
        self.result.kills += 1
        draw = self.rng.random()
        if victim.role == "worker" and victim.terms == 0 and draw < self.s.sigterm_share:
            self.result.sigterms += 1
            victim.terms = 1
            self.signal(victim, signal.SIGTERM)
            victim.term_deadline = time.monotonic() + self.s.drain_timeout + 15.0
            if self.rng.random() < 0.3:  # a second signal: stop at once
                victim.second_term_at = time.monotonic() + self.rng.uniform(0.0, self.s.drain_timeout)
        elif draw > 1.0 - self.s.sigstop_share:
            self.result.sigstops += 1
            pause = self.rng.uniform(0.5, 4.0) * self.s.visibility_timeout
            victim.paused_until = time.monotonic() + pause
            if victim.term_deadline is not None:
                victim.term_deadline += pause
            self.signal(victim, signal.SIGSTOP)
        else:
            self.result.sigkills += 1
            victim.killed = True
            self.signal(victim, signal.SIGKILL)

    def resume(self, proc: Proc) -> None:
        proc.paused_until = None
        self.signal(proc, signal.SIGCONT)

    def poll_nodes(self) -> None:
        """Learn which queue node (lease owner) each worker process is, while it lives."""
        now = time.monotonic()
        if now < self.next_node_poll or not self.store.ready():
            return
        self.next_node_poll = now + 0.2
        for node, pid in self.store.node_pids():
            self.nodes[pid].add(node)

    def leases_left_by(self, pid: int) -> int:
        nodes = sorted(self.nodes.get(pid, ()))
        if not nodes or not self.store.ready():
            return 0
        return self.store.running_under(nodes)

    def reap(self) -> None:
        """Handle processes that ended; schedule restarts; enforce graceful-stop deadlines."""
        self.poll_nodes()
        now = time.monotonic()
        for proc in list(self.procs):
            code = proc.popen.poll()
            if code is None:
                if proc.paused_until is not None and (now >= proc.paused_until or not self.chaos):
                    self.resume(proc)
                if proc.second_term_at is not None and now >= proc.second_term_at:
                    proc.second_term_at = None
                    proc.terms += 1
                    self.signal(proc, signal.SIGTERM)
                if proc.term_deadline is not None and now > proc.term_deadline:
                    self.error(f"{proc.role}-{proc.index} pid={proc.popen.pid} did not stop within "
                               f"{self.s.drain_timeout + 15:.0f} s of SIGTERM (hung graceful stop); killed")
                    proc.term_deadline = None
                    proc.killed = True
                    self.signal(proc, signal.SIGKILL)
                continue
            self.procs.remove(proc)
            self.log(f"exit {proc.role}-{proc.index} pid={proc.popen.pid} code={code}")
            self.ended(proc, code, now)
        due = [r for r in self.pending_restarts if r[0] <= now]
        for item in due:
            self.pending_restarts.remove(item)
            self.result.restarts += 1
            self.spawn(item[1], item[2])

    def ended(self, proc: Proc, code: int, now: float) -> None:
        """Judge how a process ended (once, with its log's tail if wrong); restart it if due."""
        name = f"{proc.role}-{proc.index} pid={proc.popen.pid}"
        allowed = {0} if proc.role == "sender" or proc.terms else set()
        if proc.role == "worker" and proc.terms:
            allowed.add(WORKER_GAVE_BACK_EXIT)  # a second signal or the drain timeout gave tasks back
        if proc.terms:
            allowed.add(-signal.SIGTERM)  # a SIGTERM that came before the handler was set
        if proc.killed:
            allowed.add(-signal.SIGKILL)
        problems = []
        if code == SENDER_ERROR_EXIT and proc.role == "sender":
            problems.append("a send raised")
        elif code not in allowed:
            problems.append(f"exited with code {code}")
        text = Path(proc.log_path).read_text(errors="replace") if os.path.exists(proc.log_path) else ""
        marker = next((m for m in self.log_markers if m in text), None)
        if marker and not problems:
            problems.append(f"printed {marker.strip()!r}")
        if proc.role == "worker" and code == 0:
            left = self.leases_left_by(proc.popen.pid)
            if left:
                problems.append(f"stopped gracefully (exit 0) but left {left} task(s) RUNNING under its "
                                "lease (they wait for the lease to expire and count as a crash)")
        key = (proc.role, proc.index)
        if problems:
            self.failures[key] += 1
            self.error(f"{name} {'; '.join(problems)}", text)
        else:
            self.failures[key] = 0
        if proc.role == "sender" and code == 0:
            self.senders_done.add(proc.index)
            return
        if not (self.chaos or self.finishing):
            return
        if self.failures[key] >= MAX_FAILURES_IN_A_ROW:
            self.gave_up.add(key)
            self.result.note(f"gave up restarting {proc.role}-{proc.index} after "
                             f"{MAX_FAILURES_IN_A_ROW} failed runs in a row")
            return
        delay = self.rng.uniform(0.05, 0.6) if self.chaos else 0.0
        self.pending_restarts.append((now + delay, proc.role, proc.index))

    def error(self, text: str, log_text: str = "") -> None:
        self.result.errors += 1
        self.log("ERROR " + text)
        if log_text.strip():
            text += "\n      " + log_text.strip()[-900:].replace("\n", "\n      ")
        self.result.note("ERROR " + text)

    # -- the run ---------------------------------------------------------------------
    def run(self) -> Result:
        started = time.monotonic()
        if self.cold:
            self.log("cold start: workers and senders create the queue file themselves")
        else:  # a worker serves the shard files present when it starts: create them all first
            self.store.create()
        for index in range(self.s.workers):
            self.spawn("worker", index)
        if self.s.cold_start:  # workers first, as a deployment would: then the senders
            def banners() -> bool:
                return all(Path(p.log_path).exists() and b"worker:" in Path(p.log_path).read_bytes()
                           for p in self.live("worker"))

            if not wait_for(banners, 30.0):
                self.result.note("cold start: the workers did not all start within 30 s")
        for index in range(self.s.senders):
            self.spawn("sender", index)
        self.chaos_phase()
        self.chaos = False
        self.finishing = True
        self.log("faults stopped")
        for proc in self.live():
            if proc.paused_until is not None:
                self.resume(proc)
        # Phase 2: restart whatever is down, let the senders finish and the workers drain.
        restarts, self.pending_restarts = self.pending_restarts, []
        for _, role, index in restarts:
            self.result.restarts += 1
            self.spawn(role, index)
        def settled() -> bool:
            self.reap()
            # a sender given up on never sends the rest: the check reports it as an error
            gave_up = {i for role, i in self.gave_up if role == "sender"}
            if len(self.senders_done | gave_up) < self.s.senders:
                return False
            return self.store.ready() and self.store.waiting() == 0

        if not wait_for(settled, self.s.finish_timeout, TICK_S):
            waiting = self.store.waiting() if self.store.ready() else "?"
            self.result.note(f"the queue did not settle within {self.s.finish_timeout:.0f} s: "
                             f"{self.s.senders - len(self.senders_done)} sender(s) unfinished, "
                             f"{waiting} row(s) waiting")
        # Phase 3: graceful stop of every process, with a deadline.
        self.finishing = False
        self.log("stopping")
        for proc in self.live():
            if proc.role == "sender":
                proc.killed = True
                self.signal(proc, signal.SIGKILL)
            else:
                proc.terms = 1
                proc.term_deadline = time.monotonic() + self.s.drain_timeout + 15.0
                self.signal(proc, signal.SIGTERM)
        wait_for(lambda: (self.reap(), not self.procs)[1], self.s.drain_timeout + 20.0, TICK_S)
        for proc in list(self.procs):
            proc.killed = True
            self.signal(proc, signal.SIGKILL)
            proc.popen.wait()
        self.reap()
        self.store.close()
        # Phase 4: the verdict, from the files (or the schema).
        self.check()
        self.result.seconds = time.monotonic() - started
        self.events.close()
        return self.result

    def chaos_phase(self) -> None:
        """Phase 1: faults at random moments while tasks flow (storage_faults.py adds its own)."""
        gap = self.s.chaos_seconds / max(1, self.s.kills)
        next_fault = time.monotonic() + self.rng.uniform(0, 2 * gap)
        tick = threading.Event()
        while self.result.kills < self.s.kills:
            self.reap()
            if time.monotonic() >= next_fault:
                self.inject()
                next_fault = time.monotonic() + self.rng.uniform(0, 2 * gap)
            tick.wait(TICK_S)

    # -- checking --------------------------------------------------------------------
    def check(self) -> None:
        r = self.result
        rows: dict[str, dict[str, Any]] = {}
        try:
            records = self.store.read_rows()
            now = self.store.lease_now()  # the clock of lease expiries, for the notes on stuck rows
        except StoreMissing as exc:
            r.errors += 1
            r.note(str(exc))
            return
        records = [record for record in records if record["status"] != 0]  # tombstones: no task
        for record in records:
            # A task's public id is "<shard>-<row id>" (older schemas: a task_id column).
            task_id = record.get("task_id") or f"{record['shard']}-{record['id']}"
            if task_id in rows:
                r.bad_outcomes += 1
                r.note(f"task id {task_id} stored twice")
            rows[task_id] = record
        r.stored = len(rows)
        self.check_counts(records)

        # What the senders tried and what they were told was stored.
        accepted: dict[str, str] = {}  # task_id -> key
        for index in range(self.s.senders):
            r.sent += _count_lines(os.path.join(self.state, f"attempted-{index}.txt"))
            path = os.path.join(self.state, f"accepted-{index}.txt")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) == 3:
                            accepted[parts[2]] = parts[1]
        r.accepted = len(accepted)
        seqs_done = {key.rsplit(".", 1)[0] for key in accepted.values()}
        if len(seqs_done) != self.s.tasks:
            r.errors += 1
            r.note(f"senders accepted {len(seqs_done)} distinct tasks of {self.s.tasks}")

        # What the workers executed.
        executions: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for name in os.listdir(self.exec_dir):
            with open(os.path.join(self.exec_dir, name), encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) != 4 or not line.endswith("\n"):
                        r.note(f"torn execution log line in {name}: {line!r}")
                        continue
                    executions[parts[0]].append((parts[1], parts[2], parts[3]))
        r.executions = sum(len(v) for v in executions.values())

        keys_stored: set[str] = set()
        for task_id, row in rows.items():
            args = json.loads(row["args"] or "{}")
            key = args.get("key", "?")
            keys_stored.add(key)
            status = row["status"]
            ended = status in END_STATES
            outcome = row["outcome"] if status == 5 else status
            runs = executions.get(key, [])
            is_accepted = task_id in accepted
            where = (f"task {task_id} key={key} shard={row['shard']} status={STATUS_NAMES.get(status)} "
                     f"attempts={row['attempts']} crashes={row['crashes']} max_retries={row['max_retries']} "
                     f"executions={len(runs)}")
            if is_accepted and accepted[task_id] != key:
                r.bad_outcomes += 1
                r.note(f"{where}: the sender recorded key {accepted[task_id]}")
            if not ended:
                r.stuck += 1
                lease = ""
                if status == 2:
                    live = row["lease_expires"] is not None and row["lease_expires"] > now
                    owner_pid = [pid for pid, nodes in self.nodes.items() if row["lease_owner"] in nodes]
                    lease = (f" lease_owner={row['lease_owner']} (pid {owner_pid or '?'}) lease "
                             f"{'live' if live else 'expired'} ({(row['lease_expires'] or 0) - now:+.1f} s)")
                r.note(f"STUCK {where}{lease}{'' if is_accepted else ' (not accepted)'}")
                if is_accepted:
                    r.lost += 1
                continue
            if is_accepted:
                if outcome == 3:
                    r.finished += 1
                elif outcome == 4:
                    r.failed += 1
            crash_failed = outcome == 4 and CRASH_LIMIT_TEXT in (row["result"] or "")
            if crash_failed:
                r.crash_failed += 1
                if not runs:
                    r.crash_failed_never_ran += 1
            # Duplicates: executions beyond what the task legitimately needs.
            expected = row["max_retries"] + 1 if args.get("fail") else 1
            extra = max(0, len(runs) - expected)
            r.duplicate_executions += extra
            if len(runs) > row["attempts"]:
                r.unexplained_duplicates += len(runs) - row["attempts"]
                r.note(f"UNEXPLAINED {where}: more executions than claims")
            elif extra and row["crashes"] == 0 and row["attempts"] <= expected:
                r.unexplained_duplicates += extra
                r.note(f"UNEXPLAINED {where}: repeated with no lease expiry")
            # The one recorded outcome must be one that a logged execution produced.
            nonces = {nonce for _, nonce, _ in runs}
            if crash_failed:
                continue
            if outcome == 3:
                result = json.loads(row["result"]) if row["result"] else None
                if args.get("fail"):
                    r.bad_outcomes += 1
                    r.note(f"BAD {where}: a task that always fails is FINISHED")
                elif result not in nonces:
                    r.bad_outcomes += 1
                    r.note(f"BAD {where}: result {result!r} comes from no logged execution")
            elif outcome == 4:
                message = row["result"] or ""
                if not args.get("fail"):
                    r.bad_outcomes += 1
                    r.note(f"BAD {where}: FAILED: {message[:200]}")
                elif not any(f"nonce={n}" in message for n in nonces):
                    r.bad_outcomes += 1
                    r.note(f"BAD {where}: error {message[:80]!r} comes from no logged execution")
        for task_id, key in accepted.items():
            if task_id not in rows:
                r.lost += 1
                r.note(f"LOST task {task_id} key={key}: accepted but not stored in {self.store.location}")
        phantom = set(executions) - keys_stored
        if phantom:
            r.bad_outcomes += len(phantom)
            r.note(f"executions of {len(phantom)} key(s) that no row holds, e.g. {sorted(phantom)[:3]}")

    def check_counts(self, records: list[dict[str, Any]]) -> None:
        """The counts kept by the statements that moved the tasks (through every kill) must
        equal the rows: a count that drifted would show a dashboard a wrong queue."""
        scanned = Counter((row["status"], row["outcome"] or 0) for row in records if row["status"])
        try:
            kept = self.store.kept_counts()
        except Exception as exc:  # noqa: BLE001 - reported in the verdict
            self.result.errors += 1
            self.result.note(f"reading the kept counts failed: {exc!r}")
            return
        if kept != dict(scanned):
            self.result.bad_outcomes += 1
            self.result.note(f"BAD kept counts {sorted(kept.items())} != rows {sorted(scanned.items())}")

    def line(self) -> str:
        r = self.result
        return (f"scenario backend={r.backend} shards={r.shards}: sent={r.sent} accepted={r.accepted} "
                f"stored={r.stored} "
                f"finished={r.finished} failed={r.failed} crash_failed={r.crash_failed} "
                f"crash_failed_never_ran={r.crash_failed_never_ran} lost={r.lost} stuck={r.stuck} "
                f"executions={r.executions} duplicate_executions={r.duplicate_executions} "
                f"unexplained_duplicates={r.unexplained_duplicates} bad_outcomes={r.bad_outcomes} "
                f"errors={r.errors} kills={r.kills} (sigkill={r.sigkills} sigterm={r.sigterms} "
                f"sigstop={r.sigstops}) "
                f"restarts={r.restarts} seconds={r.seconds:.1f} {'PASS' if r.ok else 'FAIL'}")


def _count_lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.endswith("\n"))


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

SHORT = {"shards": "1,3", "workers": 3, "threads": 3, "senders": 3, "tasks": 240, "kills": 20,
         "chaos_seconds": 8.0, "finish_timeout": 15.0}
LONG = {"shards": "1,4", "workers": 4, "threads": 3, "senders": 4, "tasks": 4000, "kills": 150,
        "chaos_seconds": 120.0, "finish_timeout": 120.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true",
                        help="the quick run the tests use: 1 and 3 shards, under a minute")
    parser.add_argument("--shards", help="shard counts, one scenario each, e.g. 1,4 "
                        f"(short: {SHORT['shards']}, long: {LONG['shards']})")
    parser.add_argument("--workers", type=int, help="worker processes")
    parser.add_argument("--threads", type=int, help="worker threads per worker process")
    parser.add_argument("--senders", type=int, help="sender processes")
    parser.add_argument("--tasks", type=int, help="tasks per scenario")
    parser.add_argument("--kills", type=int, help="faults (SIGKILL/SIGTERM/SIGSTOP) per scenario")
    parser.add_argument("--chaos-seconds", type=float, help="about how long the faults go on")
    parser.add_argument("--finish-timeout", type=float,
                        help="seconds the workers get to finish after the faults stop")
    parser.add_argument("--visibility-timeout", type=float, default=1.5, help="lease seconds")
    parser.add_argument("--drain-timeout", type=float, default=1.0,
                        help="seconds a worker's graceful stop waits for running tasks")
    parser.add_argument("--sigterm-share", type=float, default=0.15,
                        help="share of worker faults that are SIGTERM instead of SIGKILL")
    parser.add_argument("--sigstop-share", type=float, default=0.1,
                        help="share of faults that freeze a worker or sender (SIGSTOP, then SIGCONT "
                        "after 0.5-4 leases: its leases expire while it may hold the write lock)")
    parser.add_argument("--cold-start", action="store_true",
                        help="let the workers and senders create the shard files themselves in every "
                        "scenario (default: only with 1 shard; a worker serves only the files present "
                        "when it starts)")
    parser.add_argument("--seed", type=int, help="random seed (printed; reuse it to replay)")
    parser.add_argument("--dir", help="parent folder of the run folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder even when it passes "
                        "(and, on PostgreSQL, the scenarios' schemas)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"),
                        help="sqlite (default) or postgres: the database in $MQS_TEST_POSTGRES_DSN, "
                        "unless --broker-url names one")
    parser.add_argument("--broker-url", help="run on PostgreSQL at this postgresql:// URL (a schema in it "
                        "is replaced by a fresh one per scenario); one scenario, shard counts do not apply")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    base = SHORT if args.short else LONG

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return base[name] if value is None else value

    broker_url = args.broker_url
    if args.backend == "sqlite" and broker_url:
        raise SystemExit("--backend sqlite and --broker-url contradict each other")
    if args.backend == "postgres" and not broker_url:
        broker_url = os.environ.get("MQS_TEST_POSTGRES_DSN")
        if not broker_url:
            raise SystemExit("--backend postgres needs MQS_TEST_POSTGRES_DSN (or --broker-url)")
    if broker_url and not broker_url.startswith(("postgresql://", "postgres://")):
        raise SystemExit(f"--broker-url {broker_url!r} is not a postgresql:// URL")
    if broker_url:  # one shard there: one scenario
        if args.shards is not None and args.shards.strip() != "1":
            raise SystemExit("--shards does not apply on PostgreSQL (a queue is one shard there)")
        shards = [1]
    else:
        shards = [int(x) for x in str(pick("shards")).split(",") if x.strip()]
    if not shards or min(shards) < 1:
        raise SystemExit("--shards needs counts >= 1, e.g. 1,4")
    return Settings(shards=shards, workers=pick("workers"), threads=pick("threads"),
                    senders=pick("senders"), tasks=pick("tasks"), kills=pick("kills"),
                    chaos_seconds=pick("chaos_seconds"), visibility_timeout=args.visibility_timeout,
                    drain_timeout=args.drain_timeout, finish_timeout=pick("finish_timeout"),
                    sigterm_share=args.sigterm_share, sigstop_share=args.sigstop_share,
                    cold_start=args.cold_start,
                    seed=args.seed if args.seed is not None else random.randrange(1 << 30),
                    keep=args.keep, root=args.dir, broker_url=broker_url)


def total_of(results: list[Result]) -> Result:
    """The scenarios' counts added up (for the verdict line)."""
    total = Result(0)
    for result in results:
        for field in dataclasses.fields(Result):
            if field.type in ("int", int) and field.name != "shards":
                setattr(total, field.name, getattr(total, field.name) + getattr(result, field.name))
    return total


def verdict_counts(total: Result) -> str:
    """The verdict line's first figures, the same in every runner."""
    return (f"sent={total.sent} accepted={total.accepted} finished={total.finished} failed={total.failed} "
            f"lost={total.lost} stuck={total.stuck} duplicate_executions={total.duplicate_executions} "
            f"unexplained_duplicates={total.unexplained_duplicates}")


def finish_run(folder: str, passed: bool, keep: bool, prog: str) -> int:
    """Remove the run folder of a passed run (unless kept); say where the evidence of a failed one is."""
    if passed and not keep:
        shutil.rmtree(folder, ignore_errors=True)
    elif not passed:
        print(f"{prog}: evidence kept in {folder} (events.log, logs/, exec/, state/, queue/)", flush=True)
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_sender":
        return sender_main(argv[1:])
    settings = settings_from(build_parser().parse_args(argv))
    sys.path.insert(0, str(REPO))
    folder = tempfile.mkdtemp(prefix="mqs-faults-", dir=settings.root)
    started = time.monotonic()
    backend = "postgres" if settings.broker_url else "sqlite"
    where = f" on PostgreSQL {split_broker_url(settings.broker_url)[0]}" if settings.broker_url else ""
    print(f"faults: run folder {folder}{where}, seed {settings.seed}", flush=True)
    results: list[Result] = []
    for number, shards in enumerate(settings.shards):
        name = f"postgres-{number}" if settings.broker_url else f"shards-{shards}-{number}"
        scenario = Scenario(settings, shards, os.path.join(folder, name),
                            random.Random(settings.seed * 31 + number))
        try:
            result = scenario.run()
        except BaseException:
            for proc in scenario.procs:
                if proc.popen.poll() is None:
                    proc.popen.kill()
                    proc.popen.wait()
            raise
        finally:
            if settings.keep:
                scenario.store.close()
                if isinstance(scenario.store, PostgresStore):
                    print(f"faults: kept {scenario.store.url}", flush=True)
            else:
                problem = scenario.store.discard()
                if problem:
                    print(f"faults: {problem}", flush=True)
        results.append(result)
        print(scenario.line(), flush=True)
        for note in result.notes:
            print(f"  {note}", flush=True)
    total = total_of(results)
    total.seconds = time.monotonic() - started
    passed = all(r.ok for r in results)
    print(f"faults: {verdict_counts(total)} kills={total.kills} "
          f"backend={backend} shards={','.join(str(s) for s in settings.shards)} stored={total.stored} "
          f"crash_failed={total.crash_failed} bad_outcomes={total.bad_outcomes} errors={total.errors} "
          f"seconds={total.seconds:.1f} verdict={'PASS' if passed else 'FAIL'}", flush=True)
    return finish_run(folder, passed, settings.keep, "faults")


if __name__ == "__main__":
    sys.exit(main())
