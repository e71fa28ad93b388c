"""``TaskBackend``: Django's Tasks framework stored in this queue, run by its workers.

How the framework's notions map onto the queue's:

- A Django task is known by its ``module_path`` (``"shop.tasks.send_receipt"``), as the
  framework itself identifies it (``Task.__reduce__``): that is its task name here. The
  backend registers a small runner under that name the first time a process sends the task,
  finds one, or needs it in a worker (a name a worker has not seen is imported from its
  module path, and refused unless it is a Django task of this backend).
- ``priority`` (-100..100, higher first) is stored unchanged: the queue's priorities are any
  64-bit integer, higher first, so Django's range is a sub-range with the same order.
- ``queue_name`` is the named queue; ``run_after`` the task's due time (``eta``).
- The result id is the queue's task id (``"0-42"``); ``get_result`` reads the stored task.

The store is opened once per process and backend settings (Django makes a backend object
per thread), when first used, and closed at exit.
"""

from __future__ import annotations

import atexit
import builtins
import dataclasses
import importlib
import inspect
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.db import close_old_connections
from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, TaskError
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone as django_timezone
from django.utils.json import normalize_json
from django.utils.module_loading import autodiscover_modules, import_string

from message_queue_sqlite import Config, MessageQueue, TaskCancelled, TaskRegistry, TaskStatus, current_task
from message_queue_sqlite.api.queue import TaskInfo
from message_queue_sqlite.core.queues import check_queue_name
from message_queue_sqlite.core.registry import make_task_options
from message_queue_sqlite.serialization import loads_call

APP = "message_queue_sqlite.contrib.django"
OPTION_KEYS = ("PATH", "BROKER_URL", "DATABASE", "SCHEMA", "WORKERS", "SHARDS", "SETTINGS", "TASK_OPTIONS",
               "TASK_MODULES")
# What TASK_OPTIONS may give every Django task (the rest is Django's to say, or cannot apply).
TASK_OPTION_KEYS = ("retries", "retry_backoff", "retry_backoff_max", "retry_jitter", "retry_on", "timeout",
                    "concurrency", "rate", "unique", "unique_for", "unique_states")
# Worker ids Django lists per attempt: the store keeps the worker of the running attempt
# only (its lease), so earlier (and ended) attempts show this instead.
UNKNOWN_WORKER = "unknown"

# The queue's statuses as Django's. A task waiting for its due time or for a retry is READY
# ("ready to be executed again"); a cancelled one FAILED ("was unable to start", or stopped).
STATUSES: dict[TaskStatus, TaskResultStatus] = {
    TaskStatus.NOT_STARTED: TaskResultStatus.READY,
    TaskStatus.SCHEDULED: TaskResultStatus.READY,
    TaskStatus.RUNNING: TaskResultStatus.RUNNING,
    TaskStatus.FINISHED: TaskResultStatus.SUCCESSFUL,
    TaskStatus.FAILED: TaskResultStatus.FAILED,
    TaskStatus.CANCELLED: TaskResultStatus.FAILED,
}

_OPEN: dict[tuple[Any, ...], MessageQueue] = {}  # one store per process and settings
_OPEN_LOCK = threading.Lock()
_REGISTER_LOCK = threading.RLock()  # two threads sending a new task register it once


def close_all() -> None:
    """Close every store this process opened (at exit; tests call it between settings)."""
    with _OPEN_LOCK:
        queues = list(_OPEN.values())
        _OPEN.clear()
    for queue in queues:
        queue.close()


atexit.register(close_all)


class DjangoTaskRegistry(TaskRegistry):
    """The queue's registry, which resolves a name it does not know (a Django task's module
    path) through ``resolve`` before saying it is unknown: a worker then runs any task of
    the backend without a list of them, as the framework itself finds tasks by path."""

    def __init__(self, resolve: Callable[[str], bool]):
        super().__init__()
        self._resolve = resolve
        self._refused: set[str] = set()  # names that are no Django task of this backend: asked once

    def get(self, name: str) -> Any:
        found = super().get(name)
        if found is None and name not in self._refused:
            if self._resolve(name):
                found = super().get(name)
            else:
                self._refused.add(name)
        return found


class TaskBackend(BaseTaskBackend):
    """Django's task backend on message_queue_sqlite: durable, run by ``manage.py mqs_worker``.

    ``OPTIONS``: ``PATH`` (a folder of SQLite files), ``BROKER_URL`` (``postgresql://...``;
    ``?schema=NAME`` picks the schema) or ``DATABASE`` (a Django database alias: the queue
    lives in that database, and a task enqueued inside ``transaction.atomic()`` on it joins
    that transaction; ``SCHEMA`` names the queue's schema on a PostgreSQL one), one of them;
    ``WORKERS`` (threads of a worker, default 5), ``SHARDS`` (SQLite files, default 1),
    ``SETTINGS`` (other ``Config`` fields: ``visibility_timeout``, ``drain_timeout``,
    ``task_timeout``, ``retention``, ...),
    ``TASK_OPTIONS`` (options of ``@mq.task`` for every Django task: ``retries``,
    ``timeout``, ...) and ``TASK_MODULES`` (modules a worker imports besides each app's
    ``tasks``)."""

    supports_defer = True  # run_after: the task's due time
    supports_async_task = True  # async def tasks run in the worker through asgiref's async_to_sync
    supports_get_result = True  # from any thread or process: the result is stored
    supports_priority = True  # higher first within a queue, then in send order

    def __init__(self, alias: str, params: dict[str, Any]):
        super().__init__(alias, params)
        if not isinstance(self.options, Mapping):
            raise InvalidTaskBackend(f"TASKS[{alias!r}]['OPTIONS'] must be a dict, got {self.options!r}")
        unknown = sorted(set(self.options) - set(OPTION_KEYS))
        if unknown:
            raise InvalidTaskBackend(f"TASKS[{alias!r}]['OPTIONS'] has unknown key(s) {unknown}; "
                                     f"the options are {', '.join(OPTION_KEYS)}")
        for name in sorted(self.queues):
            try:
                check_queue_name(name, "QUEUES")
            except ValueError as exc:
                raise InvalidTaskBackend(f"TASKS[{alias!r}]['QUEUES']: {exc}") from None
        self._config = self._make_config()
        self._task_options = self._check_task_options()
        self._key = (alias, repr(dataclasses.asdict(self._config)), repr(sorted(self._task_options.items())))

    # -- the store ----------------------------------------------------------------------
    def _make_config(self) -> Config:
        """The queue's settings from OPTIONS, checked now (no storage is opened): a wrong
        setting fails when Django loads the backend, naming it, not at the first send."""
        where = f"TASKS[{self.alias!r}]['OPTIONS']"
        path, url = self.options.get("PATH"), self.options.get("BROKER_URL")
        database = self.options.get("DATABASE")
        if sum(value is not None for value in (path, url, database)) != 1:
            raise InvalidTaskBackend(
                f"{where} must give one of PATH (a folder for the SQLite files, e.g. BASE_DIR / 'tasks'), "
                f"BROKER_URL (postgresql://user@host/db) or DATABASE (a Django database alias, e.g. "
                f"'default'); got PATH={path!r}, BROKER_URL={url!r}, DATABASE={database!r}")
        in_database: dict[str, Any] = {}
        if database is not None:
            in_database = _database_location(database, where, self.options.get("SCHEMA"))
            url = in_database.get("broker_url")
        elif self.options.get("SCHEMA") is not None:
            raise InvalidTaskBackend(f"{where}['SCHEMA'] goes with DATABASE (a PostgreSQL one); with "
                                     "BROKER_URL, name the schema in it: ?schema=NAME")
        if url is not None and (not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://"))):
            raise InvalidTaskBackend(f"{where}['BROKER_URL']={url!r} is not a postgresql:// URL")
        fields: dict[str, Any] = dict(self.options.get("SETTINGS") or {})
        fields["broker_url"] = url  # explicit: PATH means SQLite even if MQS_BROKER_URL is set
        if path is not None:
            fields["middleware_path"] = str(path)
        if "database" in in_database:
            fields["database"] = in_database["database"]
        for key, field_name in (("WORKERS", "max_workers"), ("SHARDS", "middleware_num")):
            if key in self.options:
                fields[field_name] = self.options[key]
        try:
            return Config(**fields)
        except (TypeError, ValueError) as exc:
            raise InvalidTaskBackend(f"{where}: {exc}") from None

    def _check_task_options(self) -> dict[str, Any]:
        """TASK_OPTIONS, checked now as ``@mq.task`` would check them. Options that would
        take a task's identity or placement from Django (its name, its queue) or keep it from
        a worker process (cache mode) or make it periodic are refused."""
        where = f"TASKS[{self.alias!r}]['OPTIONS']['TASK_OPTIONS']"
        given = self.options.get("TASK_OPTIONS") or {}
        if not isinstance(given, Mapping):
            raise InvalidTaskBackend(f"{where} must be a dict of @mq.task options, got {given!r}")
        refused = sorted(set(given) - set(TASK_OPTION_KEYS))
        if refused:
            raise InvalidTaskBackend(f"{where} cannot set {refused}; it takes {', '.join(TASK_OPTION_KEYS)}")
        try:
            make_task_options(**given)
        except (TypeError, ValueError) as exc:
            raise InvalidTaskBackend(f"{where}: {exc}") from None
        return dict(given)

    @property
    def queue(self) -> MessageQueue:
        """This process's queue object for these settings, opened on first use."""
        queue = _OPEN.get(self._key)
        if queue is not None:
            return queue
        with _OPEN_LOCK:
            queue = _OPEN.get(self._key)
            if queue is None:
                queue = MessageQueue(config=self._config, registry=DjangoTaskRegistry(self._resolve))
                _OPEN[self._key] = queue
        return queue

    def close(self) -> None:
        """Close this backend's store in this process (it opens again on next use)."""
        with _OPEN_LOCK:
            queue = _OPEN.pop(self._key, None)
        if queue is not None:
            queue.close()

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """A warning when the app is not installed: tasks are sent, but ``manage.py
        mqs_worker``, which runs them, does not exist then."""
        found = list(super().check(**kwargs))
        if not apps.is_installed(APP):
            found.append(checks.Warning(
                f"TASKS[{self.alias!r}] uses {APP}.TaskBackend, but {APP!r} is not in INSTALLED_APPS: "
                "tasks are stored, and nothing here can run them",
                hint=f"add {APP!r} to INSTALLED_APPS to get `manage.py mqs_worker`",
                obj=self, id="message_queue_sqlite.W001"))
        return found

    # -- validation -----------------------------------------------------------------------
    def validate_task(self, task: Task) -> None:
        """The framework's checks (module-level function, context argument, priority range,
        aware ``run_after``, queue among ``QUEUES``), plus what the store needs: a queue name
        it can hold. A ``timedelta`` ``run_after`` (from now, as the framework's reference
        documents) is accepted too."""
        if isinstance(task.run_after, timedelta):
            super().validate_task(SimpleNamespace(  # the framework's other checks, on a stand-in
                func=task.func, takes_context=task.takes_context, priority=task.priority,
                run_after=None, queue_name=task.queue_name))
        else:
            super().validate_task(task)
        try:
            check_queue_name(task.queue_name, "queue_name")
        except ValueError as exc:
            raise InvalidTask(str(exc)) from None

    # -- sending --------------------------------------------------------------------------
    def enqueue(self, task: Task, args: Iterable[Any], kwargs: dict[str, Any]) -> TaskResult:
        """Store the task (committed when this returns) and return its result as stored: READY,
        unless a worker was quicker (or the queue is ``immediate``, which ran it). The arguments
        go through Django's JSON normalization first, so what the worker gets is what
        ``result.args``/``result.kwargs`` show; one that JSON cannot carry raises TypeError and
        nothing is stored."""
        self.validate_task(task)
        result = TaskResult(task=task, id="", status=TaskResultStatus.READY, enqueued_at=None,
                            started_at=None, finished_at=None, last_attempted_at=None,
                            args=list(args), kwargs=dict(kwargs), backend=self.alias, errors=[],
                            worker_ids=[])
        queue = self.queue
        name = self._register(task)
        handle = queue.send(name, result.kwargs, args=result.args, priority=int(task.priority),
                            queue=task.queue_name, connection=self._atomic_connection(),
                            **self._when(task.run_after))
        object.__setattr__(result, "id", handle.task_id)
        object.__setattr__(result, "enqueued_at", _datetime(time.time()))
        info = queue.task_info(handle.task_id)
        if info is not None:  # as stored: what get_result() reads (already run in immediate mode)
            result = self._to_result(info, task, exact=True)
        task_enqueued.send(type(self), task_result=result)
        return result

    def _atomic_connection(self) -> Any:
        """With ``DATABASE``, inside ``transaction.atomic()`` on that database: its driver
        connection, so the task commits or rolls back with the view's writes. Otherwise None
        (the task is committed by itself, at once)."""
        alias = self.options.get("DATABASE")
        if alias is None:
            return None
        from django.db import connections

        wrapper = connections[alias]
        if not wrapper.in_atomic_block:
            return None
        wrapper.ensure_connection()
        return wrapper.connection

    @staticmethod
    def _when(run_after: datetime | timedelta | None) -> dict[str, Any]:
        if run_after is None:
            return {}
        if isinstance(run_after, timedelta):
            return {"delay": max(0.0, run_after.total_seconds())}
        if django_timezone.is_naive(run_after):  # USE_TZ = False: Django's naive times are local
            run_after = django_timezone.make_aware(run_after)
        return {"eta": run_after}

    # -- registering -------------------------------------------------------------------------
    def _register(self, task: Task) -> str:
        """Register ``task`` with the queue under its module path (once per process)."""
        name = task.module_path
        queue = self.queue
        if name in queue.registry:
            return name
        with _REGISTER_LOCK:
            if name not in queue.registry:
                queue.task(name=name, **self._task_options)(self._runner(task))
        return name

    def _resolve(self, name: str) -> bool:
        """Register the Django task at module path ``name`` if it is one of this backend's
        (a worker meeting a task it has not imported yet); False if it is not."""
        try:
            found = import_string(name)
        except ImportError:
            return False
        if not isinstance(found, Task) or not self._serves(found):
            return False
        self._register(found)
        return True

    def discover(self) -> list[str]:
        """Import each installed app's ``tasks`` module and the ``TASK_MODULES``, and register
        the Django tasks found there: what a worker shows it serves (others are still found
        by their module path when claimed). Returns the task names."""
        autodiscover_modules("tasks")  # imports those that exist, as the admin's autodiscovery does
        modules = [sys.modules[f"{app.name}.tasks"] for app in apps.get_app_configs()
                   if f"{app.name}.tasks" in sys.modules]
        modules += [importlib.import_module(name) for name in self.options.get("TASK_MODULES") or ()]
        for module in modules:
            for value in list(vars(module).values()):
                if isinstance(value, Task) and self._serves(value):
                    self._register(value)
        return self.queue.registry.get_all_task_names()

    def _serves(self, task: Task) -> bool:
        """Whether ``task`` is sent through a backend with this one's store and settings."""
        try:
            backend = task.get_backend()
        except InvalidTaskBackend:
            return False
        return isinstance(backend, TaskBackend) and backend._key == self._key

    def _runner(self, task: Task) -> Callable[..., Any]:
        """The function the queue runs for ``task``: its signature (less ``context``) is
        checked at each send; each run gets fresh database connections and Django's task
        signals, and the context when the task takes it."""
        backend = self

        def run(*args: Any, **kwargs: Any) -> Any:
            return backend._run(task, args, kwargs)

        signature = inspect.signature(task.func)
        if task.takes_context:
            signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__name__ = task.func.__name__
        run.__qualname__ = task.func.__qualname__
        run.__module__ = task.func.__module__
        run.__doc__ = task.func.__doc__
        return run

    def _run(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One attempt, in a worker thread: as Django's own backends run a task (signals,
        context, the return value normalized to JSON), between fresh database connections
        as a request would have them."""
        close_old_connections()
        try:
            info = self.queue.task_info(current_task.task_id)
            # (None: removed while claimed; it runs all the same, with what is known)
            result = self._result_now(task, args, kwargs) if info is None else self._to_result(info, task)
            task_started.send(type(self), task_result=result)
            try:
                if task.takes_context:
                    value = task.call(TaskContext(task_result=result), *args, **kwargs)
                else:
                    value = task.call(*args, **kwargs)
                value = normalize_json(value)
            except BaseException as exc:
                error = TaskError(exception_class_path=_class_path(type(exc)),
                                  traceback="".join(_format(exc)))
                failed = dataclasses.replace(result, status=TaskResultStatus.FAILED,
                                             finished_at=_datetime(time.time()),
                                             errors=[*result.errors, error])
                task_finished.send(type(self), task_result=failed)
                raise
            done = dataclasses.replace(result, status=TaskResultStatus.SUCCESSFUL,
                                       finished_at=_datetime(time.time()))
            object.__setattr__(done, "_return_value", value)
            task_finished.send(type(self), task_result=done)
            return value
        finally:
            close_old_connections()

    def _result_now(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskResult:
        now = _datetime(time.time())
        return TaskResult(task=task, id=current_task.task_id, status=TaskResultStatus.RUNNING,
                          enqueued_at=None, started_at=now, last_attempted_at=now, finished_at=None,
                          args=list(args), kwargs=kwargs, backend=self.alias, errors=[],
                          worker_ids=[UNKNOWN_WORKER] * current_task.attempt)

    # -- results ----------------------------------------------------------------------------
    def get_result(self, result_id: str) -> TaskResult:
        """The stored task as a ``TaskResult``; ``TaskResultDoesNotExist`` for an id that is
        not one of this store's (or was purged by retention), or a task that is not a Django
        task (another sender's, on a shared store)."""
        text = str(result_id)
        try:
            info = self.queue.task_info(text)
        except (ValueError, LookupError):  # not an id of this store's form ("0-42")
            info = None
        if info is None:
            raise TaskResultDoesNotExist(result_id)
        return self._to_result(info)

    def _to_result(self, info: TaskInfo, task: Task | None = None, exact: bool = False) -> TaskResult:
        """The stored task as Django's result; ``task`` (found from the name if None) is taken
        as stored (priority, queue, due time), or as it is with ``exact``."""
        if task is None:
            task = self._task_of(info)
        if not exact:
            task = self._as_sent(task, info)
        args, kwargs = loads_call(info.arguments) if info.arguments else ((), {})
        errors = []
        if info.error is not None:  # a failure, or the last failed attempt of one to be retried
            errors.append(TaskError(exception_class_path=_stored_class_path(info),
                                    traceback=info.traceback or info.error))
        owner = info.lease_owner if info.status == TaskStatus.RUNNING else None
        workers = [UNKNOWN_WORKER] * max(0, info.attempts - 1)
        if info.attempts:
            workers.append(owner or UNKNOWN_WORKER)
        started = _datetime(info.started_at)
        ended = info.status in (TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.CANCELLED)
        result = TaskResult(task=task, id=info.task_id, status=STATUSES[info.status],
                            enqueued_at=_datetime(info.created_at), started_at=started,
                            last_attempted_at=started,
                            finished_at=_datetime(info.ended_at) if ended else None,
                            args=list(args), kwargs=kwargs, backend=self.alias, errors=errors,
                            worker_ids=workers)
        if info.status == TaskStatus.FINISHED:
            object.__setattr__(result, "_return_value", info.result)
        return result

    def _task_of(self, info: TaskInfo) -> Task:
        try:
            found = import_string(info.task_name)
        except ImportError:
            found = None
        if not isinstance(found, Task):
            raise TaskResultDoesNotExist(f"{info.task_id}: task {info.task_name!r} is not a Django task "
                                         "(its module path does not import as one)")
        return found

    @staticmethod
    def _as_sent(task: Task, info: TaskInfo) -> Task:
        """``task`` with the priority and queue it was stored with, and its ``run_after`` while
        it waits for its first run (the store keeps no due time once a task ran)."""
        changes: dict[str, Any] = {"priority": min(TASK_MAX_PRIORITY, max(TASK_MIN_PRIORITY, info.priority)),
                                   "queue_name": info.queue}
        waiting = info.status in (TaskStatus.NOT_STARTED, TaskStatus.SCHEDULED)
        due = waiting and info.attempts == 0 and info.run_after > info.created_at
        changes["run_after"] = _datetime(info.run_after) if due else None
        if all(getattr(task, key) == value for key, value in changes.items()):
            return task
        try:
            return dataclasses.replace(task, **changes)
        except InvalidTask:  # e.g. sent to a queue this backend does not list: show it as declared
            return task


def _database_location(alias: Any, where: str, schema: Any = None) -> dict[str, Any]:
    """Where the queue lives for ``DATABASE=alias``: inside that SQLite file, or on that
    PostgreSQL database (in ``schema``, else the PostgreSQL backend's default schema)."""
    from urllib.parse import quote

    from django.conf import settings

    db = settings.DATABASES.get(alias) if isinstance(alias, str) else None
    if db is None:
        raise InvalidTaskBackend(f"{where}['DATABASE']={alias!r} is not a database alias of DATABASES "
                                 f"({', '.join(map(repr, settings.DATABASES)) or 'none'})")
    engine, name = db.get("ENGINE", ""), str(db.get("NAME") or "")
    if engine.endswith("sqlite3"):
        if not name or name == ":memory:" or "mode=memory" in name:
            raise InvalidTaskBackend(f"{where}['DATABASE']={alias!r} is an in-memory SQLite database; the "
                                     "queue needs a file that worker processes open too")
        if schema is not None:
            raise InvalidTaskBackend(f"{where}['SCHEMA']={schema!r} applies to a PostgreSQL database; "
                                     f"{alias!r} is SQLite")
        return {"database": name}
    if "postgresql" in engine:
        user = quote(str(db.get("USER") or ""), safe="")
        password = quote(str(db.get("PASSWORD") or ""), safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        port = f":{db['PORT']}" if db.get("PORT") else ""
        tail = f"?schema={quote(str(schema), safe='')}" if schema is not None else ""
        return {"broker_url": f"postgresql://{auth}{db.get('HOST') or ''}{port}/{quote(name, safe='')}{tail}"}
    raise InvalidTaskBackend(f"{where}['DATABASE']={alias!r} uses {engine!r}; the queue can live in a "
                             "django.db.backends.sqlite3 or django.db.backends.postgresql database")


def _datetime(stamp: float | None) -> datetime | None:
    """Epoch seconds as Django wants times: aware (UTC) with USE_TZ, else naive local."""
    if stamp is None:
        return None
    if settings.USE_TZ:
        return datetime.fromtimestamp(stamp, timezone.utc)
    return datetime.fromtimestamp(stamp)


def _class_path(kind: type[BaseException]) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _format(exc: BaseException) -> list[str]:
    return traceback.format_exception(exc)


def _stored_class_path(info: TaskInfo) -> str:
    """The exception class of a stored failure. The store keeps ``"Type: message"`` and the
    traceback, whose last line Python writes as ``module.Type: message`` (``Type`` alone for
    builtins and ``__main__``): the class is read from there."""
    if info.status == TaskStatus.CANCELLED:
        return _class_path(TaskCancelled)
    error = info.error or ""
    name = error.split(":", 1)[0].strip()
    for line in reversed((info.traceback or "").splitlines()):
        head = line.split(":", 1)[0].strip()
        if not line[:1].isspace() and (head == name or head.endswith("." + name)):
            name = head
            break
    if "." in name:
        return name
    if isinstance(getattr(builtins, name, None), type):
        return f"builtins.{name}"
    from message_queue_sqlite.core import errors as queue_errors  # TaskTimeout: no traceback line

    if isinstance(getattr(queue_errors, name, None), type):
        return _class_path(getattr(queue_errors, name))
    return f"__main__.{name}" if name.isidentifier() else "builtins.Exception"
