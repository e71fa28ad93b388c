"""``worker``, ``stats``, ``failed``, ``retry`` and ``demo``; ``--help`` on each."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from message_queue_sqlite.api.queue import MessageQueue
from message_queue_sqlite.backends.sqlite import existing_shard_count
from message_queue_sqlite.core.config import BROKER_URL_ENV, Config
from message_queue_sqlite.core.errors import MessageQueueError
from message_queue_sqlite.core.registry import discover_tasks
from message_queue_sqlite.core.status import TaskStatus

log = logging.getLogger("message_queue_sqlite.cli")


def _add_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", default="message_queue",
                        help="queue folder holding the shard files (default: %(default)s)")
    parser.add_argument("--broker-url", default=os.environ.get(BROKER_URL_ENV),
                        help=f"postgresql:// URL instead of SQLite files (default: ${BROKER_URL_ENV})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m message_queue_sqlite",
                                     description="A durable task queue on SQLite (or PostgreSQL).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run workers for the tasks of a package",
                            description="Run worker threads for the tasks found in PACKAGE (as "
                            "discover_and_mount_ts finds them), serving every shard of the queue. "
                            "SIGTERM/SIGINT stop gracefully; a second signal stops at once.")
    worker.add_argument("package", help="dotted package holding @task_function tasks, e.g. app.engine")
    _add_location(worker)
    worker.add_argument("--workers", type=int, default=5, help="worker threads (default: %(default)s)")
    worker.add_argument("--visibility-timeout", type=float, default=30.0,
                        help="lease length in seconds (default: %(default)s)")
    worker.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds a graceful stop waits for running tasks (default: %(default)s)")

    stats = sub.add_parser("stats", help="count tasks per status per shard",
                           description="Count tasks per status, in total and per shard.")
    _add_location(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")

    failed = sub.add_parser("failed", help="list failed tasks (the dead-letter view)",
                            description="List FAILED tasks, newest first, with their errors.")
    _add_location(failed)
    failed.add_argument("--task", help="only tasks of this name")
    failed.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
    failed.add_argument("--json", action="store_true", help="print JSON")

    retry = sub.add_parser("retry", help="queue failed tasks again",
                           description="Queue FAILED tasks again with a fresh retry budget: one "
                           "task by id, every failed task of a name, or all of them.")
    _add_location(retry)
    group = retry.add_mutually_exclusive_group(required=True)
    group.add_argument("task_id", nargs="?", help="the id of one failed task")
    group.add_argument("--task", help="every failed task of this name")
    group.add_argument("--all", action="store_true", help="every failed task")

    demo = sub.add_parser("demo", help="run the original package's example app and summarize",
                          description="Run the original README's example app unmodified against "
                          "SQLite for a few seconds, show progress, stop it with Ctrl+C (SIGINT) "
                          "as a user would, and summarize tasks done, throughput and latency.")
    demo.add_argument("--seconds", type=float, default=5.0, help="how long to run (default: %(default)s)")
    demo.add_argument("--dir", default=None, help="where to run it (default: a new temporary folder)")
    return parser


def _open(args: argparse.Namespace, **settings: Any) -> MessageQueue:
    if args.broker_url:
        return MessageQueue(config=Config(middleware_path=args.path, broker_url=args.broker_url, **settings))
    shards = existing_shard_count(args.path)
    if shards == 0:
        raise MessageQueueError(f"no queue files (mq-shard-N.db) in {args.path!r}")
    return MessageQueue(config=Config(middleware_path=args.path, middleware_num=shards, **settings))


def cmd_worker(args: argparse.Namespace) -> int:
    sys.path.insert(0, os.getcwd())
    settings = {"visibility_timeout": args.visibility_timeout, "drain_timeout": args.drain_timeout,
                "max_workers": args.workers}
    if args.broker_url:
        config = Config(middleware_path=args.path, broker_url=args.broker_url, **settings)
    else:
        shards = max(1, existing_shard_count(args.path))
        config = Config(middleware_path=args.path, middleware_num=shards, **settings)
    try:
        registry = discover_tasks(args.package)
    except ImportError:
        raise
    except Exception as exc:  # a task module that does not even import: say which
        raise MessageQueueError(f"cannot load the tasks of {args.package!r}: "
                                f"{type(exc).__name__}: {exc}") from exc
    queue = MessageQueue(config=config, registry=registry)
    stop = threading.Event()
    signals = 0

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.warning("signal %d: stopping gracefully (again to stop at once)", signum)
            stop.set()
        else:
            queue.engine.hurry()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    queue.start()
    print(f"worker: {config.max_workers} thread(s), tasks {registry.get_all_task_names()}, "
          f"queue {queue.engine.backend.location} ({len(queue.engine.shards)} shard(s))", flush=True)
    stop.wait()
    queue.close()
    print("worker: stopped", flush=True)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args) as queue:
        stats = queue.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    names = [s.name for s in TaskStatus]
    print("shard".ljust(16) + "".join(n.rjust(12) for n in names))
    for row in stats["shards"]:
        print(row["shard"].ljust(16) + "".join(str(row[n]).rjust(12) for n in names))
    print("total".ljust(16) + "".join(str(stats["totals"][n]).rjust(12) for n in names))
    return 0


def cmd_failed(args: argparse.Namespace) -> int:
    with _open(args) as queue:
        records = queue.tasks(TaskStatus.FAILED, args.task, args.limit)
    if args.json:
        print(json.dumps([{"task_id": r.task_id, "task_name": r.task_name, "error": r.error,
                           "traceback": r.traceback, "attempts": r.attempts, "ended_at": r.ended_at}
                          for r in records], indent=2))
        return 0
    for r in records:
        print(f"{r.task_id}  {r.task_name}  attempts={r.attempts}  {r.error}")
    print(f"{len(records)} failed task(s)")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    with _open(args) as queue:
        count = queue.retry_failed(task_id=args.task_id, task_name=args.task)
    print(f"{count} task(s) queued again")
    return 0 if count or args.all or args.task else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            from message_queue_sqlite.cli.demo import run_demo

            return run_demo(args.seconds, args.dir)
        return {"worker": cmd_worker, "stats": cmd_stats, "failed": cmd_failed,
                "retry": cmd_retry}[args.command](args)
    except (MessageQueueError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
