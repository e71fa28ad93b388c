"""The command line: ``worker``, ``stats``, ``top``, ``failed``, ``retry``, ``purge``, ``cancel``,
``schedules``, ``dashboard`` and ``demo``; ``--help`` on each.

It is the first thing many users meet, so every refusal names what the user typed (``--path``,
``--workers``, not the ``Config`` field behind it) and says what to type instead; a worker
never quietly serves a queue its senders do not write to; and exit codes tell a script what
happened (see ``--help`` of each command).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from message_queue_sqlite.api.queue import MessageQueue, TaskInfo
from message_queue_sqlite.backends.base import OUTCOME_NAMES
from message_queue_sqlite.backends.sqlite import existing_shard_count, folder_mistake
from message_queue_sqlite.cli.supervisor import NODE_FLAG, Supervisor
from message_queue_sqlite.cli.target import Target, load_target
from message_queue_sqlite.core.config import BROKER_URL_ENV, Config
from message_queue_sqlite.core.errors import MessageQueueError
from message_queue_sqlite.core.queues import DEFAULT_QUEUE, Lane, parse_queues
from message_queue_sqlite.core.status import TaskStatus
from message_queue_sqlite.engine.task_log import TaskLog

if TYPE_CHECKING:
    from message_queue_sqlite.engine.worker import Worker

log = logging.getLogger("message_queue_sqlite.cli")

DEFAULT_PATH = "message_queue"
EXIT_NOTHING = 1  # retry: nothing to queue again for what was named
EXIT_ERROR = 2  # usage, nothing to serve, storage
EXIT_UNFINISHED = 3  # worker: stopped with tasks given back unfinished
EXIT_BROKEN_PIPE = 128 + 13
DASHBOARD_TOKEN_ENV = "MQS_DASHBOARD_TOKEN"  # what a shell reports for a tool ended by SIGPIPE (`| head`)
FLAGS = {"middleware_path": "--path", "max_workers": "--workers", "broker_url": "--broker-url",
         "visibility_timeout": "--visibility-timeout", "drain_timeout": "--drain-timeout",
         "async_concurrency": "--async-concurrency"}


class CliError(MessageQueueError):
    """A refusal worded for the command line (flags, not Config fields)."""

    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


def program_name(argv0: str | None = None) -> str:
    """The program as the user invoked it, for usage lines and hints: ``mqs``,
    ``message-queue-sqlite``, or ``python -m message_queue_sqlite`` (argv[0] is then the
    package's ``__main__.py``)."""
    path = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(path)
    if name in ("__main__.py", "__main__.pyc"):
        package = os.path.basename(os.path.dirname(os.path.abspath(path)))
        return "python -m message_queue_sqlite" if package == "message_queue_sqlite" else "mqs"
    name = name.removesuffix(".exe")
    return name if name and name not in ("-c", "-m") else "mqs"


def _version() -> str:
    from message_queue_sqlite import __version__

    python = ".".join(map(str, sys.version_info[:3]))
    return f"message_queue_sqlite {__version__} (Python {python}, SQLite {sqlite3.sqlite_version})"


# -- argument types: a bad value is refused by argparse, naming the flag ---------------
def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is invalid; it must be an integer >= {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is invalid; it must be an integer <= {maximum}")
        return value

    return parse


def _seconds(allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"{text} is invalid; it must be a number of seconds {bound}")
        return value

    return parse


# -- the parser ------------------------------------------------------------------------
def _examples(prog: str, lines: Sequence[tuple[str, str]], after: str = "") -> str:
    text = "examples:\n" + "\n".join(f"  {prog} {command}\n      {what}" for command, what in lines)
    return text + ("\n\n" + after if after else "")


WORKER_EXIT_CODES = """\
exit codes:
  0  stopped after a clean drain (every running task finished and was recorded)
  2  nothing to serve (no such module, no tasks, a queue object elsewhere) or a bad option
  3  stopped with tasks given back unfinished (a second signal, or the drain timeout), or
     finished but not recorded (storage did not answer): they run again in another
     worker or at the next start"""

RETRY_EXIT_CODES = """\
exit codes:
  0  tasks were queued again (or --all found none failed)
  1  nothing to retry for what was named: the task is not FAILED (its status is shown),
     no such task, or no failed task of that name
  2  a bad option or task id, or the queue cannot be opened"""
CANCEL_EXIT_CODES = """\
exit codes:
  0  every task named was cancelled or asked to stop (none waiting is no error for --task)
  1  a task named by id had ended already, or is not in this queue
  2  a bad option or task id (or neither ids nor --task), or the queue cannot be opened"""

PURGE_EXIT_CODES = """\
exit codes:
  0  the waiting tasks named were removed (none waiting is no error for --task or --all)
  1  the task named by id is not waiting (its status is shown) or not in this queue
  2  a bad option or task id, or the queue cannot be opened"""


def _selection_examples(prog: str, name: str, which: str, exit_codes: str) -> str:
    return _examples(prog, [(f"{name} 0-17 --path q", "one task, by the id send returned"),
                            (f"{name} --task resize --path q", f"every {which} task named resize"),
                            (f"{name} --all --path q", f"every {which} task")], exit_codes)


def _add_selection(parser: argparse.ArgumentParser, which: str) -> None:
    """What ``retry`` and ``purge`` act on: one task by id, the tasks of a name, or all."""
    _add_location(parser)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("task_id", nargs="?", metavar="TASK_ID", help=f"the id of one {which} task, e.g. 0-17")
    group.add_argument("--task", metavar="NAME", help=f"every {which} task of this name")
    group.add_argument("--all", action="store_true", help=f"every {which} task")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    prog = prog or program_name()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=formatter,
        description="A durable task queue on SQLite (or PostgreSQL).",
        epilog=_examples(prog, [
            ("worker app:mq", "serve the MessageQueue object mq of module app"),
            ("worker app.engine --path q", "serve the @task_function tasks of package app.engine"),
            ("stats --path q", "count tasks per status"),
            ("failed --path q", "list failed tasks with their errors"),
            ("retry --all --path q", "queue every failed task again"),
            ("dashboard --path q", "the web dashboard, on http://127.0.0.1:8765/"),
            ("demo", "run the original example app and summarize"),
        ], f"`{prog} COMMAND --help` tells more about each command."))
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at INFO level (the worker: one line per task start and end)")
    # the same option after the command (`stats --path q -v`); SUPPRESS keeps the value set before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at INFO level (the worker: one line per task start and end)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, description: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=description, epilog=epilog,
                              parents=[common], formatter_class=formatter)

    worker = command(
        "worker", "run workers for an application object or a package of tasks",
        "Run worker threads until SIGTERM or Ctrl+C, which stop gracefully: no new claims,\n"
        "running tasks finish (up to the drain timeout); a second signal gives them back at once.\n\n"
        "TARGET is either MODULE:OBJECT (or MODULE.OBJECT), a MessageQueue your code creates:\n"
        "its folder, shards, broker URL, settings, tasks and hooks are used as they are, so\n"
        "the worker serves exactly the queue your senders write to; or a PACKAGE whose\n"
        "@task_function tasks are served on --path (the original package's way).\n"
        "The working directory is put first on sys.path: run it from your project's root.",
        _examples(prog, [
            ("worker app:mq", "mq = MessageQueue(...) in app.py or app/__init__.py"),
            ("worker app.tasks.mq --workers 8", "the object mq of module app.tasks, 8 threads"),
            ("worker app:mq --queues emails,reports", "only these two queues, sharing the threads"),
            ("worker app:mq --queues emails=2,reports=8", "a lane each: 2 and 8 threads of their own"),
            ("worker app.engine --path q", "the @task_function tasks of package app.engine, on q"),
            ("worker app.engine --broker-url postgresql://user@db/mydb", "the same, on PostgreSQL"),
            ("worker app:mq -v", "also log each task's start and end"),
        ], WORKER_EXIT_CODES))
    worker.add_argument("target", metavar="TARGET",
                        help="MODULE:OBJECT (a MessageQueue, e.g. app:mq) or PACKAGE (e.g. app.engine)")
    _add_location(worker, worker=True)
    worker.add_argument("--workers", type=_integer(1), default=None, metavar="N",
                        help="worker threads (default: the object's workers, or 5 for a package)")
    worker.add_argument("--processes", type=_integer(1), default=None, metavar="N",
                        help="run N worker processes under a supervisor (each with its threads and "
                             "event loop: CPU-bound tasks use every core); one that dies has its "
                             "tasks recovered at once and is replaced (default: one process)")
    worker.add_argument(NODE_FLAG, default=None, help=argparse.SUPPRESS)  # given by the supervisor
    worker.add_argument("--async-concurrency", type=_integer(1), default=None, metavar="N",
                        help="async def tasks run at once on the worker's event loop, apart from "
                             "its threads (default: the object's async_concurrency, or 100)")
    worker.add_argument("--queues", type=_queues, default=None, metavar="SPEC",
                        help="the named queues to serve: 'a,b' (sharing the threads) or 'a=2,b=8' "
                             "(a lane of threads each); default '*': every queue")
    worker.add_argument("--metrics-port", type=_integer(1, 65535), default=None, metavar="PORT",
                        help="serve Prometheus metrics (this worker's runs, the stored queue) on "
                             "http://HOST:PORT/metrics (the metrics extra)")
    worker.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                        help="address for --metrics-port (default 127.0.0.1)")
    worker.add_argument("--visibility-timeout", type=_seconds(False), default=None, metavar="S",
                        help="lease length in seconds (default: the object's setting, or 30)")
    worker.add_argument("--drain-timeout", type=_seconds(True), default=None, metavar="S",
                        help="seconds a graceful stop waits for running tasks "
                             "(default: the object's setting, or 30)")

    stats = command("stats", "how tasks stand: queued, running, finished, failed, callbacks",
                    "How tasks stand, per shard file and in total: queued, scheduled, running,\n"
                    "finished, failed (an ended task by how it ended, whether or not its callback\n"
                    "ran) and, apart, how many of the ended tasks had their callback run.",
                    _examples(prog, [("stats --path q", "a table, and the total in words"),
                                     ("stats --path q --json", "JSON: \"outcomes\" as in the table, "
                                      "\"totals\" per stored status, and \"shards\"")]))
    _add_location(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")

    top = command("top", "the overview, refreshed in place (q quits)",
                  "How tasks stand, refreshed in place every --interval seconds: the counts,\n"
                  "throughput, each queue, and the running tasks with their progress. q or Ctrl+C\n"
                  "quits. Read from storage, so it shows what every worker process does.",
                  _examples(prog, [("top --path q", "refresh every second"),
                                   ("top --path q --interval 0.5", "twice a second"),
                                   ("top --path q --once", "one frame, printed (for scripts)")]))
    _add_location(top)
    top.add_argument("--interval", type=_seconds(False), default=1.0, metavar="S",
                     help="seconds between frames (default: %(default)s)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")

    failed = command("failed", "list failed tasks (the dead-letter view)",
                     "List failed tasks, newest first, with their errors; the last line says how\n"
                     "many are shown of how many failed.",
                     _examples(prog, [("failed --path q", "the newest 50"),
                                      ("failed --path q --task resize --limit 5", "five of one task"),
                                      ("failed --path q --json", "JSON, with tracebacks")]))
    _add_location(failed)
    failed.add_argument("--task", metavar="NAME", help="only tasks of this name")
    failed.add_argument("--limit", type=_integer(1), default=50, metavar="N",
                        help="at most this many (default: %(default)s)")
    failed.add_argument("--json", action="store_true", help="print JSON (a list, with tracebacks)")

    _add_selection(command("retry", "queue failed tasks again",
                           "Queue failed tasks again with a fresh retry budget: one task by id, every\n"
                           "failed task of a name, or all of them.",
                           _selection_examples(prog, "retry", "failed", RETRY_EXIT_CODES)), "failed")
    _add_selection(command("purge", "remove waiting tasks for good",
                           "Remove tasks that have not started (NOT_STARTED or SCHEDULED) for good: one\n"
                           "task by id, every waiting task of a name, or all of them. A running task is\n"
                           "left alone; ended tasks go by retention.",
                           _selection_examples(prog, "purge", "waiting", PURGE_EXIT_CODES)), "waiting")

    cancel = command("cancel", "cancel tasks: waiting ones never start, running ones are asked to stop",
                     "Cancel tasks by id, or every waiting task of a name. A waiting task (even one\n"
                     "a worker had prefetched) never starts, in any process; a running one is asked\n"
                     "to stop (its code sees current_task.cancelled); an ended one is left alone.\n"
                     "Stored: it holds across restarts. Prints each task's state.",
                     _examples(prog, [("cancel 0-17 0-18 --path q", "these two tasks"),
                                      ("cancel --task resize --path q", "every waiting task named resize")],
                               CANCEL_EXIT_CODES))
    _add_location(cancel)
    cancel.add_argument("task_ids", nargs="*", metavar="TASK_ID", help="ids of tasks, e.g. 0-17")
    cancel.add_argument("--task", metavar="NAME", help="every waiting task of this name")
    cancel.add_argument("--wait", type=_seconds(True), default=5.0, metavar="S",
                        help="seconds to wait for the workers of running tasks to answer (default 5)")

    schedules = command("schedules", "list the schedules of periodic tasks",
                        "The stored schedules of periodic tasks: each one's schedule, next run, the\n"
                        "newest slot decided and how its run stands. A schedule that no running worker\n"
                        "declares any longer (removed from the code) shows as orphaned until pruned.",
                        _examples(prog, [("schedules --path q", "a table"),
                                         ("schedules --path q --json", "JSON: a list, times in ISO 8601"),
                                         ("schedules --path q --prune", "forget the orphaned schedules")]))
    _add_location(schedules)
    schedules.add_argument("--json", action="store_true", help="print JSON")
    schedules.add_argument("--prune", action="store_true",
                           help="forget the orphaned schedules (their tasks stay)")

    dashboard = command(
        "dashboard", "serve the web dashboard (needs the 'dashboard' extra)",
        "Serve the web dashboard of a queue with uvicorn: counts and the last hour, tasks with\n"
        "filters, a task's arguments, result and traceback, retry and delete, schedules and\n"
        "live nodes, all read from the queue's storage. It binds to 127.0.0.1 unless told\n"
        "otherwise, and refuses another address without --token (or --read-only, which\n"
        "leaves the pages, task arguments included, open to whoever reaches it).",
        _examples(prog, [
            ("dashboard --path q", "the queue in folder q, on http://127.0.0.1:8765/"),
            ("dashboard app:mq", "the MessageQueue object mq of module app (its folder or URL)"),
            ("dashboard --broker-url postgresql://user@db/mydb --read-only", "no actions"),
            (f"dashboard --path q --host 0.0.0.0 --token \"${DASHBOARD_TOKEN_ENV}\"",
             f"reachable from elsewhere, behind a token (or set ${DASHBOARD_TOKEN_ENV})"),
        ]))
    dashboard.add_argument("target", metavar="TARGET", nargs="?", default=None,
                           help="MODULE:OBJECT, a MessageQueue (e.g. app:mq); or give --path/--broker-url")
    _add_location(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to bind (default: %(default)s, this machine only)")
    dashboard.add_argument("--port", type=_integer(1, 65535), default=8765,
                           help="port (default: %(default)s)")
    dashboard.add_argument("--read-only", action="store_true", help="show no actions; refuse every POST")
    dashboard.add_argument("--token", default=None, metavar="T",
                           help=f"every page and action needs this token (default: ${DASHBOARD_TOKEN_ENV})")

    demo = command("demo", "run the original package's example app and summarize",
                   "Run the original README's example app unmodified against SQLite for a few\n"
                   "seconds, show progress, stop it with Ctrl+C (SIGINT) as a user would, and\n"
                   "summarize tasks done, throughput and latency. It runs in a new temporary\n"
                   "folder, removed afterwards unless --keep is given (or the run had a problem).",
                   _examples(prog, [("demo", "five seconds in a temporary folder"),
                                    ("demo --seconds 2 --keep", "two seconds; keep the folder"),
                                    ("demo --dir ./try-it", "in a new (or empty) folder, kept")]))
    demo.add_argument("--seconds", type=_seconds(False), default=5.0, metavar="S",
                      help="how long to run (default: %(default)s)")
    demo.add_argument("--dir", default=None, metavar="DIR",
                      help="run it in this folder, which is kept (default: a new temporary folder)")
    demo.add_argument("--force", action="store_true",
                      help="with --dir: overwrite the demo's files in a folder that is not empty")
    demo.add_argument("--keep", action="store_true", help="keep the temporary folder and say where")
    return parser


def _add_location(parser: argparse.ArgumentParser, worker: bool = False) -> None:
    whose = " for a PACKAGE's tasks" if worker else ""
    own = "; a MODULE:OBJECT has its own" if worker else ""
    parser.add_argument("--path", default=None, metavar="DIR",
                        help=f"the queue folder (its shard files){whose} (default: {DEFAULT_PATH}{own})")
    parser.add_argument("--broker-url", default=None, metavar="URL",
                        help=f"postgresql:// URL instead of SQLite files (default: ${BROKER_URL_ENV}{own})")


# -- opening the queue -----------------------------------------------------------------
def _broker_url(args: argparse.Namespace) -> str | None:
    return args.broker_url or os.environ.get(BROKER_URL_ENV) or None


def _is_postgres(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


def _folder(given: str | None, typed: str = "--path") -> str:
    """The --path folder, refused with the right spelling when it names a file. ``typed``
    names it as the user did: ``--path``, or ``--broker-url 'sqlite://...':``."""
    path = given or DEFAULT_PATH
    mistake = folder_mistake(path)
    if mistake is not None:
        raise CliError(f"{typed} {mistake[0]}; the queue is a folder of shard files (mq-shard-0.db, "
                       f"...): --path {mistake[1]} (in Python: MessageQueue({mistake[1]!r}))")
    return path


def _config(**fields: Any) -> Config:
    """``Config(...)`` with its refusals reworded for the command line."""
    try:
        return Config(**fields)
    except ValueError as exc:
        raise CliError(cli_wording(str(exc))) from exc


def cli_wording(text: str) -> str:
    """Name the flags, not the Config fields behind them: ``Config.max_workers=0`` becomes
    ``--workers 0``, ``middleware_path`` becomes ``--path``."""
    def flag(match: re.Match[str]) -> str:
        name = FLAGS.get(match.group(1))
        if name == "--broker-url":
            name = f"--broker-url (or ${BROKER_URL_ENV})"
        return f"{name} " if name else match.group(0)

    text = re.sub(r"\bConfig\.(\w+)=", flag, text)
    return re.sub(r"\b(middleware_path|max_workers)\b", lambda m: FLAGS[m.group(1)], text)


def _location_config(args: argparse.Namespace, need_files: bool, **settings: Any) -> Config:
    """The Config of --path or --broker-url. SQLite: every shard file present in the folder
    (however many the senders configured); ``need_files``: refuse a folder without any (an
    inspecting command must not create a queue). A URL that is not PostgreSQL's is refused,
    naming the flag."""
    url, given = _broker_url(args), args.path
    typed = None  # how the folder was named, when not by --path
    if url and url.startswith("sqlite://"):  # a folder, spelled as a URL
        typed = f"--broker-url {url!r}" if args.broker_url else f"${BROKER_URL_ENV}={url!r}"
        url, given = None, url[len("sqlite://"):]
    if url:
        return _config(middleware_path=given or DEFAULT_PATH, broker_url=url, **settings)
    path = _folder(given, f"{typed}:" if typed else "--path")
    shards = existing_shard_count(path)
    if shards == 0 and need_files:
        why = "the folder does not exist" if not os.path.exists(path) else "no mq-shard-0.db in it"
        raise CliError(f"no queue files (mq-shard-N.db) in {typed or f'--path {path!r}'} "
                       f"({os.path.abspath(path)}: {why}); give the folder your senders and workers use")
    return _config(middleware_path=path, middleware_num=max(1, shards), broker_url=None, **settings)


def _open(args: argparse.Namespace) -> MessageQueue:
    """The queue an inspecting command reads (all of its shards)."""
    return MessageQueue(config=_location_config(args, need_files=True))


# -- worker ----------------------------------------------------------------------------
def _place(broker_url: str | None, folder: str) -> str:
    """Where a queue lives, comparable between two queue objects."""
    if _is_postgres(broker_url):
        return str(broker_url)
    if broker_url and broker_url.startswith("sqlite://"):
        folder = broker_url[len("sqlite://"):]
    return os.path.realpath(folder)


def _place_of(queue: MessageQueue) -> str:
    return _place(queue.config.broker_url, queue.config.middleware_path)


def _where(queue: MessageQueue) -> str:
    location = queue.engine.backend.location
    if _is_postgres(queue.config.broker_url):
        return f"{location} (PostgreSQL)"
    count = len(queue.engine.shards)
    return f"{os.path.abspath(location)} ({count} shard{'s' if count != 1 else ''})"


def _application_queue(args: argparse.Namespace, target: Target) -> MessageQueue:
    """The object TARGET named, checked and prepared: the worker serves it as it is."""
    queue = target.queue
    assert queue is not None
    if args.path is not None or args.broker_url is not None:
        asked = _place(_broker_url(args), args.path or DEFAULT_PATH)
        if asked != _place_of(queue):
            flag = "--broker-url" if args.broker_url is not None else "--path"
            raise CliError(f"{flag} {args.broker_url or args.path} is not where {target.spec} keeps its "
                           f"queue ({_where(queue)}); the object decides where its queue lives: drop "
                           f"{flag}, or change the MessageQueue(...) call in {target.module}")
    if not len(queue.registry):
        raise CliError(f"{target.spec} has no tasks registered, so a worker would have nothing to run. "
                       "Register them on it (@mq.task) in modules that its module imports (e.g. "
                       "`from . import tasks` at the end of the package's __init__.py), or call "
                       "mq.discover('package.with.tasks')")
    if args.visibility_timeout is not None:  # read at every claim and renewal, so this applies
        queue.config.visibility_timeout = args.visibility_timeout
    if args.async_concurrency is not None:  # read when the worker makes its event loop
        queue.config.async_concurrency = args.async_concurrency
    if not any(isinstance(hook, TaskLog) for hook in queue.engine.hooks):
        queue.add_hook(TaskLog())
    queue.engine.backend.adopt_new_shards()  # shard files other processes added are served too
    return queue


def _package_queue(args: argparse.Namespace, target: Target, prog: str) -> MessageQueue:
    """A queue object for a package's @task_function tasks, on --path (or --broker-url)."""
    registry = target.registry
    assert registry is not None
    if not len(registry):
        hint = ""
        if target.queues:
            name, queue = target.queues[0]
            hint = f" It creates {name} (on {_where(queue)}): serve that with `{prog} worker {name}`."
        raise CliError(f"no tasks in {target.spec!r}: none of its modules has a function marked "
                       f"@task_function (or @mq.task), so a worker would have nothing to run.{hint}")
    url = _broker_url(args)
    if args.path is None and args.broker_url is None:
        here = _place(url, DEFAULT_PATH)
        elsewhere = [(name, queue) for name, queue in target.queues if _place_of(queue) != here]
        if elsewhere:
            name, queue = elsewhere[0]
            there = (f"--broker-url {queue.engine.backend.location}" if _is_postgres(queue.config.broker_url)
                     else f"--path {queue.config.middleware_path}")
            default = (f"the PostgreSQL queue of ${BROKER_URL_ENV}" if _is_postgres(url)
                       else f"{os.path.abspath(DEFAULT_PATH)} (the default --path)")
            raise CliError(
                f"{target.spec} creates {', '.join(f'{n} on {_where(q)}' for n, q in elsewhere)}, but "
                f"this worker would serve {default}: tasks sent through {name} would never run here. "
                f"Serve that object itself: `{prog} worker {name}` (its folder, tasks and settings), "
                f"or name where it is: `{prog} worker {target.spec} {there}`")
    settings: dict[str, Any] = {name: value for name, value in (
        ("max_workers", args.workers), ("visibility_timeout", args.visibility_timeout),
        ("drain_timeout", args.drain_timeout), ("async_concurrency", args.async_concurrency))
        if value is not None}
    config = _location_config(args, need_files=False, **settings)
    return MessageQueue(config=config, registry=registry, hooks=[TaskLog()])


class _StopSignals:
    """SIGTERM and SIGINT of a worker: the first stops gracefully (``stop`` is set), a second
    cuts the drain short. Python runs handlers in the main thread between statements, so a
    signal can come while ``start()`` runs, before the Worker object is known: a second signal
    then is remembered and applied in ``started``."""

    def __init__(self, drain: float):
        self.drain = drain
        self.stop = threading.Event()
        self.workers: list[Worker] = []
        self._count = 0
        self._hurry = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def started(self, workers: list[Worker]) -> None:
        self.workers = workers
        if self._hurry:
            for worker in workers:
                worker.hurry()

    def _handle(self, signum: int, _frame: Any) -> None:
        self._count += 1
        name = signal.Signals(signum).name
        if self._count == 1:
            log.warning("%s: stopping gracefully: no new tasks; running ones get up to %g s to "
                        "finish (signal again to give them back at once)", name, self.drain)
            self.stop.set()
            return
        log.warning("%s again: giving the running tasks back now; they will run again", name)
        self._hurry = True
        for worker in self.workers:
            worker.hurry()


def cmd_worker(args: argparse.Namespace) -> int:
    prog = args.prog
    if args.path is not None:
        _folder(args.path)  # a file named as the folder: refused before anything is imported
    sys.path.insert(0, os.getcwd())
    target = load_target(args.target, prog)
    if target.queue is not None:
        queue = _application_queue(args, target)
        what = target.spec
    else:
        queue = _package_queue(args, target, prog)
        what = f"package {target.spec}"
    if args.processes is not None and args.processes > 1:
        return Supervisor(queue, sys.argv[1:] if args.argv is None else args.argv, args.processes,
                          args.metrics_port).run()
    if args.node_id is not None:
        queue.engine.assume_node(args.node_id)
    threads = args.workers or queue.config.max_workers
    drain = queue.config.drain_timeout if args.drain_timeout is None else args.drain_timeout
    metrics = _serve_metrics(queue, args) if args.metrics_port is not None else ""
    signals = _StopSignals(drain)
    signals.install()
    try:
        lanes = queue.start(workers=threads, queues=args.queues)
    except ValueError as exc:
        raise SystemExit(f"{prog} worker: error: --queues {args.queues!r}: {exc}") from None
    signals.started(queue.engine.workers)
    kinds = {definition.kind for definition in queue.registry}
    loop = f", async tasks up to {queue.config.async_concurrency} at once" if "async" in kinds else ""
    print(f"worker: {what}, queue {_where(queue)}, {_lanes_in_words(lanes)}{loop}, "
          f"tasks {queue.registry.get_all_task_names()} (pid {os.getpid()}){metrics}", flush=True)
    signals.stop.wait()
    workers = signals.workers
    try:
        queue.stop(drain)
    finally:
        # what still runs now was given back by the stop (the engine logged it too)
        unfinished = sum(len(worker.executor.unfinished()) for worker in workers)
        unrecorded = sum(worker.ledger.pending_count for worker in workers)  # (the stop logged why)
        hurried = any(worker.hurried for worker in workers)
        queue.close()
    if unfinished:
        why = ("a second signal cut the stop short" if hurried
               else f"they were still running after the {drain:g} s drain timeout")
        print(f"worker: stopped with {unfinished} task(s) given back unfinished ({why}); they will "
              f"run again in another worker or at the next start (exit code {EXIT_UNFINISHED})",
              file=sys.stderr, flush=True)
    if unrecorded:
        print(f"worker: stopped with {unrecorded} task(s) that finished but whose results could not "
              "be recorded (storage did not answer); they will run again once their leases expire "
              f"(exit code {EXIT_UNFINISHED})", file=sys.stderr, flush=True)
    if unfinished or unrecorded:
        return EXIT_UNFINISHED
    print("worker: stopped (every running task finished)", flush=True)
    return 0


# -- inspecting and repairing ----------------------------------------------------------
def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args) as queue:
        stats = queue.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    # How tasks stand (an ended task by how it ended, whether or not its callback ran), then
    # whether the callbacks ran; the stored statuses (CALLBACKED as stored) are in --json.
    names = [name for name in OUTCOME_NAMES if name != "callback_ran"]
    width = max(16, *(len(row["shard"]) + 2 for row in stats["shards"]))
    print("shard".ljust(width) + "".join(n.rjust(11) for n in names) + "callback ran".rjust(14))
    for row in [*stats["shards"], {"shard": "total", "outcomes": stats["outcomes"]}]:
        counts = row["outcomes"]
        print(row["shard"].ljust(width) + "".join(str(counts[n]).rjust(11) for n in names)
              + str(counts["callback_ran"]).rjust(14))
    print(_stats_in_words(stats["outcomes"]))
    if set(stats["queues"]) != {DEFAULT_QUEUE}:  # named queues in use: how each stands
        width = max(16, *(len(name) + 2 for name in stats["queues"]))
        states = ("queued", "scheduled", "running")
        print("\n" + "queue".ljust(width) + "".join(n.rjust(11) for n in states))
        for name, counts in stats["queues"].items():
            print(name.ljust(width) + "".join(str(counts[n]).rjust(11) for n in states))
    return 0


def _serve_metrics(queue: MessageQueue, args: argparse.Namespace) -> str:
    """Count this worker's runs with a metrics hook and serve them with the stored queue's
    gauges; returns the banner's mention of where."""
    try:
        from message_queue_sqlite.contrib.metrics import QueueMetrics
    except ImportError as exc:
        raise CliError(f"--metrics-port: {exc}") from None
    metrics = QueueMetrics(queue)
    queue.add_hook(metrics)
    try:
        metrics.serve(args.metrics_port, args.metrics_host)
    except OSError as exc:
        raise CliError(f"--metrics-port {args.metrics_port}: cannot listen on "
                       f"{args.metrics_host}:{args.metrics_port} ({exc.strerror or exc})") from None
    return f", metrics on http://{args.metrics_host}:{args.metrics_port}/metrics"


def _lanes_in_words(lanes: list[Lane]) -> str:
    """``serving default, emails (4 threads)``; a lane each: ``serving emails (2 threads),
    reports (8 threads)``; ``serving every queue (4 threads)``."""
    def one(lane: Lane) -> str:
        names = "every queue" if lane.queues is None else ", ".join(lane.queues)
        return f"{names} ({lane.threads} thread{'s' if lane.threads != 1 else ''})"
    return "serving " + ", ".join(one(lane) for lane in lanes)


def _queues(text: str) -> str:
    """Checked when parsed (``--queues a=x`` is an error before anything starts), kept as text."""
    try:
        parse_queues(text, 1)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _stats_in_words(counts: dict[str, int]) -> str:
    """The total as a sentence, so that "callback ran" is not read as a third way to end:
    ``5 ended: 3 finished, 2 failed; the callback ran for 3 of them. 1 queued, ...``."""
    ended = counts["finished"] + counts["failed"] + counts["cancelled"]
    waiting = (f"{counts['queued']} queued, {counts['scheduled']} scheduled, "
               f"{counts['running']} running")
    if not ended:
        return f"nothing ended yet. {waiting}"
    cancelled = f", {counts['cancelled']} cancelled" if counts["cancelled"] else ""
    return (f"{ended} ended: {counts['finished']} finished, {counts['failed']} failed{cancelled}; the "
            f"callback ran for {counts['callback_ran']} of them. {waiting}")


def cmd_top(args: argparse.Namespace) -> int:
    from message_queue_sqlite.cli.top import run_top

    with _open(args) as queue:
        return run_top(queue, _where(queue), args.interval, args.once)


def cmd_failed(args: argparse.Namespace) -> int:
    with _open(args) as queue:
        # one more than shown tells whether the list is complete, without counting them all
        records = queue.tasks(TaskStatus.FAILED, args.task, args.limit + 1)
        failed = queue.stats()["outcomes"]["failed"]
    more = len(records) > args.limit
    records = records[:args.limit]
    if args.json:
        print(json.dumps([{"task_id": r.task_id, "task_name": r.task_name, "error": r.error,
                           "traceback": r.traceback, "attempts": r.attempts, "ended_at": r.ended_at}
                          for r in records], indent=2))
        return 0
    for r in records:
        print(f"{r.task_id}  {r.task_name}  attempts={r.attempts}  {r.error}")
    print(_failed_footer(len(records), more, failed, args.task))
    return 0


def _failed_footer(shown: int, more: bool, failed: int, name: str | None) -> str:
    """"showing N of M": M is every failed task, whether or not its callback ran (the counts
    are kept per outcome); of one name, M is known only when all are shown."""
    of_name = f" named {name!r}" if name else ""
    if not more:
        return f"showing {shown} of {shown} failed task(s){of_name}"
    if name:
        return (f"showing the newest {shown} failed task(s){of_name}; there are more "
                "(raise --limit to see them)")
    return f"showing the newest {shown} of {failed} failed tasks; raise --limit to see more"


def cmd_retry(args: argparse.Namespace) -> int:
    with _open(args) as queue:
        count = queue.retry_failed(task_id=args.task_id, task_name=args.task)
        if count:
            print(f"{count} task(s) queued again")
            return 0
        if args.task_id is not None:
            raise CliError(_why_not_retried(queue, args.task_id), EXIT_NOTHING)
        if args.task is not None:
            names = sorted({r.task_name for r in queue.tasks(TaskStatus.FAILED, None, 1000)})
            listed = f"; failed tasks are named: {', '.join(names)}" if names else "; no task failed"
            raise CliError(f"no failed task named {args.task!r} to retry{listed}", EXIT_NOTHING)
    print("0 task(s) queued again: no task is FAILED")
    return 0


def _why_not_retried(queue: MessageQueue, task_id: str) -> str:
    record = queue.engine.find(task_id)
    if record is None:
        return f"no task {task_id} in this queue (purged by retention, or another queue's id?)"
    info = TaskInfo.from_record(record)
    label = f"task {task_id} ({record.task_name})"
    if info.status == TaskStatus.FAILED and record.cache_owner is not None:
        return (f"{label} failed, but it was sent in cache mode: its arguments lived in the sending "
                "process's memory and are gone, so it cannot run again")
    ran = " (its callback ran)" if info.callback_ran else ""
    return f"{label} is {info.status.name}{ran}, not FAILED; only failed tasks can be retried"


def cmd_purge(args: argparse.Namespace) -> int:
    with _open(args) as queue:
        count = queue.purge(task_id=args.task_id, task_name=args.task)
        if count or args.task_id is None:
            what = f" named {args.task!r}" if args.task else ""
            print(f"{count} waiting task(s){what} removed")
            return 0
        record = queue.engine.find(args.task_id)
    if record is None:
        raise CliError(f"no task {args.task_id} in this queue (removed already, purged by retention, "
                       "or another queue's id?)", EXIT_NOTHING)
    status = TaskInfo.from_record(record).status
    raise CliError(f"task {args.task_id} ({record.task_name}) is {status.name}, not waiting; only "
                   "tasks that have not started (NOT_STARTED or SCHEDULED) can be purged", EXIT_NOTHING)


def cmd_cancel(args: argparse.Namespace) -> int:
    if not args.task_ids and not args.task:
        raise CliError("name the tasks to cancel: TASK_ID ... (e.g. 0-17) or --task NAME", EXIT_ERROR)
    with _open(args) as queue:
        for task_id in args.task_ids:
            try:
                queue.engine.shard_of(task_id)
            except ValueError as exc:
                raise CliError(f"TASK_ID {task_id!r}: {exc}", EXIT_ERROR) from None
        states = queue.cancel(*args.task_ids, task_name=args.task, wait=args.wait)
        missing = [t for t in args.task_ids if states.get(t) == "ended" and queue.engine.find(t) is None]
    for task_id, state in states.items():
        print(f"{task_id}  {'not found' if task_id in missing else state}")
    counts = {state: list(states.values()).count(state) for state in ("cancelled", "stopping", "ended")}
    print(f"{counts['cancelled']} cancelled before they started, {counts['stopping']} running and asked "
          f"to stop, {counts['ended']} already ended or not found")
    return EXIT_NOTHING if any(states.get(t) == "ended" for t in args.task_ids) else 0


def cmd_schedules(args: argparse.Namespace) -> int:
    with _open(args) as queue:
        if args.prune:
            pruned = queue.prune_schedules()
            names = f": {', '.join(pruned)}" if pruned else ""
            print(f"{len(pruned)} orphaned schedule(s) forgotten{names}")
            return 0
        infos = queue.schedules()
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return 0
    if not infos:
        print("no schedules stored (periodic tasks appear once a worker of their app starts)")
        return 0
    rows = [("name", "schedule", "next run (UTC)", "last slot (UTC)", "last run", "")]
    for info in infos:
        last = f"{info.last_task_id} {info.last_status.name}" if info.last_status else (
            info.last_task_id or "none yet")
        rows.append((info.name, info.expression, _clock(info.next_run), _clock(info.last_slot), last,
                     "orphaned: no worker declares it" if info.orphaned else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
    return 0


def _clock(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# -- dashboard -------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches: localhost, 127.0.0.0/8, ::1."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def dashboard_token(args: argparse.Namespace) -> str | None:
    """--token, else $MQS_DASHBOARD_TOKEN (kept out of the process list and shell history)."""
    token = args.token if args.token is not None else os.environ.get(DASHBOARD_TOKEN_ENV)
    if token is not None and not token.strip():
        raise CliError(f"--token {token!r} (or ${DASHBOARD_TOKEN_ENV}) is empty; give a secret, "
                       "e.g. --token \"$(python -c 'import secrets; print(secrets.token_urlsafe())')\"")
    return token


def check_dashboard_bind(host: str, token: str | None, read_only: bool) -> None:
    """Refuse to serve actions on an address other machines may reach without a token."""
    if is_loopback(host) or token is not None or read_only:
        return
    raise CliError(f"--host {host} is reachable from other machines, and the dashboard can retry and "
                   f"delete tasks: give --token T (or ${DASHBOARD_TOKEN_ENV}), or --read-only, or "
                   "bind to 127.0.0.1 (the default)")


def _dashboard_queue(args: argparse.Namespace) -> MessageQueue:
    """TARGET's own queue object, or the queue of --path / --broker-url."""
    if args.target is None:
        return _open(args)
    sys.path.insert(0, os.getcwd())
    target = load_target(args.target, args.prog)
    if target.queue is None:
        raise CliError(f"{args.target} is a package of tasks; the dashboard reads a queue: give "
                       f"MODULE:OBJECT (a MessageQueue) or --path DIR / --broker-url URL")
    if args.path is not None or args.broker_url is not None:
        asked = _place(_broker_url(args), args.path or DEFAULT_PATH)
        if asked != _place_of(target.queue):
            raise CliError(f"--path/--broker-url name another queue than {target.spec}'s "
                           f"({_where(target.queue)}); give one or the other")
    return target.queue


def cmd_dashboard(args: argparse.Namespace) -> int:
    token = dashboard_token(args)
    check_dashboard_bind(args.host, token, args.read_only)
    try:
        import uvicorn
    except ImportError as exc:
        raise CliError("the dashboard needs its extra: pip install 'message_queue_sqlite[dashboard]' "
                       f"({exc})") from exc
    queue = _dashboard_queue(args)
    try:
        app = queue.dashboard(read_only=args.read_only, token=token)
        if not is_loopback(args.host) and token is None:
            log.warning("--read-only on %s without --token: anyone who reaches it reads every task's "
                        "arguments and results", args.host)
        mode = "read-only" if args.read_only else "actions on"
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"dashboard: {_where(queue)} on http://{shown}:{args.port}/ ({mode}"
              f"{', token required' if token else ''}); Ctrl+C stops it", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    finally:
        queue.close()
    return 0


# -- entry point -----------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    from message_queue_sqlite.cli.demo import run_demo

    return run_demo(args.seconds, args.dir, force=args.force, keep=args.keep)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "worker": cmd_worker, "stats": cmd_stats, "top": cmd_top, "failed": cmd_failed, "retry": cmd_retry,
    "purge": cmd_purge, "cancel": cmd_cancel, "schedules": cmd_schedules, "dashboard": cmd_dashboard,
    "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    prog = program_name()
    args = build_parser(prog).parse_args(argv)
    args.prog = prog
    args.argv = None if argv is None else list(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe is reported here, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do. Point stdout at
        # /dev/null so that the interpreter's last flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except CliError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except (MessageQueueError, ValueError, ImportError) as exc:
        print(f"{prog}: error: {cli_wording(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
