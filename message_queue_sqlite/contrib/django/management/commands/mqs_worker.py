"""``python manage.py mqs_worker``: run the queue's workers for this Django project's tasks.

Django is set up by ``manage.py`` (settings, apps, models), so tasks can use the ORM; each
run gets fresh database connections. The first SIGTERM or SIGINT stops claiming and lets
running tasks finish (up to the drain timeout), and exits 0; a second gives them back at
once (they run again in another worker or at the next start) and exits 3.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, task_backends
from django.tasks.exceptions import InvalidTaskBackend

from message_queue_sqlite.contrib.django.backend import TaskBackend

log = logging.getLogger("message_queue_sqlite.contrib.django")
EXIT_GIVEN_BACK = 3  # as `mqs worker`'s: stopped with running tasks given back unfinished


class Command(BaseCommand):
    help = ("Run message_queue_sqlite workers for the tasks of a TASKS backend "
            "(message_queue_sqlite.contrib.django.TaskBackend). Stops gracefully on SIGTERM/SIGINT.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS, metavar="ALIAS",
                            help="the TASKS alias to serve (default: %(default)s)")
        parser.add_argument("--queues", default=None, metavar="SPEC",
                            help="the queues to serve: 'a,b' (sharing the threads), 'a=2,b=8' (a lane "
                                 "of threads each) or '*' (every queue); default: the backend's QUEUES, "
                                 "or every queue when QUEUES is []")
        parser.add_argument("--workers", type=int, default=None, metavar="N",
                            help="worker threads (default: OPTIONS['WORKERS'], else 5)")
        parser.add_argument("--drain-timeout", type=float, default=None, metavar="SECONDS",
                            help="how long a graceful stop waits for running tasks (default: the "
                                 "queue's drain_timeout, 30 s)")

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["backend"]
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend as exc:
            raise CommandError(f"--backend {alias!r}: {exc}") from None
        if not isinstance(backend, TaskBackend):
            kind = f"{type(backend).__module__}.{type(backend).__qualname__}"
            raise CommandError(f"TASKS[{alias!r}] is {kind}; mqs_worker serves "
                               "message_queue_sqlite.contrib.django.TaskBackend")
        workers = options["workers"]
        if workers is not None and workers < 1:
            raise CommandError(f"--workers {workers} is invalid; it must be an integer >= 1")
        names = backend.discover()
        queue = backend.queue
        queues = options["queues"] or (",".join(sorted(backend.queues)) if backend.queues else None)
        drain = options["drain_timeout"]
        drain = queue.config.drain_timeout if drain is None else drain
        stop = threading.Event()
        signals = 0
        started: list[Any] = []  # the lanes' workers, kept at start: a stop takes them off the queue

        def on_signal(signum: int, _frame: Any) -> None:
            nonlocal signals
            signals += 1
            name = signal.Signals(signum).name
            if signals == 1:
                log.warning("%s: stopping gracefully; running tasks get up to %g s to finish "
                            "(signal again to give them back at once)", name, drain)
                stop.set()
                return
            log.warning("%s again: giving the running tasks back now; they will run again", name)
            for worker in started:  # as `mqs worker` does on a second signal
                worker.hurry()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                lanes = queue.start(workers=workers or queue.config.max_workers, queues=queues)
            except (TypeError, ValueError) as exc:
                raise CommandError(f"--queues {queues!r}: {exc}") from None
            started.extend(queue.engine.workers)
            if signals > 1:  # a second signal came while the workers started
                for worker in started:
                    worker.hurry()
            served = ", ".join(("every queue" if lane.queues is None else ",".join(lane.queues))
                               + f" ({lane.threads} threads)" for lane in lanes)
            self.stdout.write(f"mqs_worker: backend {alias!r}, queue {queue.stats()['location']}, "
                              f"serving {served}, tasks {names} (pid {os.getpid()})")
            self.stdout.flush()
            stop.wait()
            queue.stop(drain)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            backend.close()
        if signals > 1:
            self.stderr.write("mqs_worker: stopped early by a second signal: tasks still running were "
                              f"given back and will run again (exit code {EXIT_GIVEN_BACK})")
            raise SystemExit(EXIT_GIVEN_BACK)
        self.stdout.write("mqs_worker: stopped")
