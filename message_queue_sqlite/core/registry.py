"""Marking functions as tasks and finding them by name.

The decorator only marks a function; registries are plain objects built from marked
functions, so two queues in one process never share hidden state.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from types import ModuleType
from typing import Any, TypeVar, overload

from message_queue_sqlite.core import unique as uniq
from message_queue_sqlite.core.durations import check_timeout
from message_queue_sqlite.core.queues import DEFAULT_QUEUE, check_queue_name
from message_queue_sqlite.core.rates import Rate, parse_rate
from message_queue_sqlite.core.retry import NO_RETRY, RetryPolicy
from message_queue_sqlite.core.schedule import SCHEDULE_OPTIONS, Schedule

F = TypeVar("F", bound=Callable[..., Any])
MARK = "__mqs_task__"
EXECUTORS = ("thread", "process")  # what ``executor=`` takes; an ``async def`` task runs on the event loop


@dataclass(frozen=True)
class TaskOptions:
    """What the decorator says about a task."""

    use_cache: bool = False
    retry: RetryPolicy = NO_RETRY
    name: str | None = None
    schedule: Schedule | None = None  # a periodic task's
    queue: str = DEFAULT_QUEUE  # where it is sent unless a send names another (core/queues.py)
    timeout: float | None = None  # seconds a run may take (None: Config.task_timeout, if set)
    concurrency: int | None = None  # most runs at once, across every worker process (None: no limit)
    rate: Rate | None = None  # most runs per window, across every worker process (core/rates.py)
    # unique tasks (core/unique.py): False, True (key from the name and every argument), or
    # the argument names the key is derived from; how long a key holds, and in which states
    unique: bool | tuple[str, ...] = False
    unique_for: float | None = None
    unique_states: int = uniq.DEFAULT_MASK
    # what runs a plain function: the worker's threads, or a child process (CPU-bound work,
    # hard timeouts); an ``async def`` task always runs on the worker's event loop
    executor: str = "thread"


@dataclass(frozen=True)
class TaskDefinition:
    name: str
    func: Callable[..., Any]
    options: TaskOptions = field(default_factory=TaskOptions)
    _signature: _CallCheck | None = field(default=None, compare=False, repr=False)

    @property
    def module(self) -> str:
        return getattr(self.func, "__module__", "?")

    @property
    def kind(self) -> str:
        """Which of a worker's executors runs it: ``"async"``, ``"process"`` or ``"thread"``."""
        if is_async_function(self.func):
            return "async"
        return self.options.executor

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """TypeError naming the task and its signature when ``args``/``kwargs`` cannot call it:
        a wrong argument is reported at send, not when a worker runs the task."""
        if self._signature is not None:
            self._signature.check(self.name, args, kwargs)


class _CallCheck:
    """A function's signature, prepared once, so that checking a send costs a set operation
    in the common case (keyword arguments only) and ``Signature.bind`` otherwise."""

    __slots__ = ("_signature", "_names", "_required", "_any_keyword", "_plain")

    def __init__(self, func: Callable[..., Any]):
        self._signature = inspect.signature(func)
        params = self._signature.parameters.values()
        kinds = inspect.Parameter
        self._any_keyword = any(p.kind is kinds.VAR_KEYWORD for p in params)
        self._names = frozenset(p.name for p in params
                                if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY))
        self._required = frozenset(p.name for p in params if p.default is p.empty
                                   and p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY))
        # keyword-only sends can be checked by names alone when no parameter is positional-only
        self._plain = all(p.kind is not kinds.POSITIONAL_ONLY for p in params)

    @classmethod
    def of(cls, func: Callable[..., Any]) -> _CallCheck | None:
        try:
            return cls(func)
        except (TypeError, ValueError):  # a builtin or C function without a signature
            return None

    def check(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not args and self._plain and type(kwargs) is dict:
            keys = kwargs.keys()
            if self._required <= keys and (self._any_keyword or keys <= self._names):
                return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"arguments of task {name!r} do not fit {name}{self._signature}: {exc}") from None


def make_task_options(
    use_cache: bool = False,
    retries: int = 0,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 300.0,
    retry_jitter: bool = True,
    retry_on: tuple[type[BaseException] | str, ...] | type[BaseException] = (Exception,),
    name: str | None = None,
    unique: bool | tuple[str, ...] = False,
    unique_for: float | timedelta | None = None,
    unique_states: tuple[str, ...] | None = None,
    queue: str = DEFAULT_QUEUE,
    timeout: float | timedelta | None = None,
    concurrency: int | None = None,
    rate: str | None = None,
    executor: str = "thread",
    **periodic: Any,
) -> TaskOptions:
    """The one place decorator keywords become ``TaskOptions``. ``every=`` or ``cron=`` (and
    the other fields of ``Schedule``) make the task periodic."""
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache={use_cache!r} must be True or False")
    unknown = sorted(set(periodic) - SCHEDULE_OPTIONS)
    if unknown:
        raise TypeError(f"unknown task option(s) {', '.join(unknown)}; task options are use_cache, "
                        "retries, retry_backoff, retry_backoff_max, retry_jitter, retry_on, name, "
                        "queue, timeout, concurrency, rate, executor, unique, unique_for, unique_states, and "
                        f"for periodic tasks {', '.join(sorted(SCHEDULE_OPTIONS))}")
    schedule = Schedule(**periodic) if periodic else None
    if schedule is not None and use_cache:
        raise ValueError("a periodic task cannot use_cache=True: its arguments would live in the "
                         "memory of whichever worker enqueued it")
    unique = uniq.check_unique_option(unique)
    seconds = uniq.check_unique_for(unique_for)
    mask = uniq.DEFAULT_MASK if unique_states is None else uniq.states_mask(unique_states)
    if not unique and (unique_for is not None or unique_states is not None):
        given = "unique_for" if unique_for is not None else "unique_states"
        raise TypeError(f"{given}= applies to unique tasks: add unique=True (or unique=('arg', ...)) "
                        "to the decorator, or pass unique_key= and it at each send")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or concurrency < 1):
        raise ValueError(f"concurrency={concurrency!r} must be an integer >= 1 (the most runs of the "
                         "task at once, across every worker), or None for no limit")
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r} is not one of {', '.join(map(repr, EXECUTORS))}: "
                         "'thread' runs the task on the worker's threads (the default), 'process' in a "
                         "child process (CPU-bound work; a timeout stops it for real)")
    if use_cache and executor == "process":
        raise ValueError("a task with use_cache=True cannot use executor='process': its arguments live "
                         "in the sending process's memory, which a child process cannot read")
    if not isinstance(retry_on, tuple):
        retry_on = (retry_on,)
    policy = RetryPolicy(max_retries=retries, backoff=retry_backoff, backoff_max=retry_backoff_max,
                         jitter=retry_jitter, retry_on=retry_on)
    return TaskOptions(use_cache=use_cache, retry=policy, name=name, schedule=schedule,
                       queue=check_queue_name(queue), timeout=check_timeout(timeout), concurrency=concurrency,
                       rate=parse_rate(rate), executor=executor,
                       unique=unique, unique_for=seconds, unique_states=mask)


@overload
def task_function(func: F) -> F: ...
@overload
def task_function(func: None = None, **options: Any) -> Callable[[F], F]: ...
def task_function(func: Any = None, **options: Any) -> Any:
    """Mark a plain function as a task; it stays directly callable.

    ``@task_function()``, ``@task_function`` and ``@task_function(use_cache=True,
    retries=3)`` all work. Registration happens later, in ``discover_and_mount_ts`` or
    ``TaskRegistry.register``.
    """
    task_options = make_task_options(**options)

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@task_function needs a function, got {f!r}")
        if isinstance(task_options.unique, tuple):  # a wrong name fails here, not at a send
            uniq.check_fields(task_options.name or getattr(f, "__name__", "?"), f, task_options.unique)
        setattr(f, MARK, task_options)
        return f

    return mark(func) if func is not None else mark


class TaskRegistry:
    """Tasks by name. ``get_all_task_names()`` is the original package's spelling."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDefinition] = {}
        self._names: dict[int, str] = {}  # id(function) -> name

    def register(self, func: Callable[..., Any], options: TaskOptions | None = None,
                 name: str | None = None) -> TaskDefinition:
        opts = options or getattr(func, MARK, None) or TaskOptions()
        task_name = name or opts.name or func.__name__
        if inspect.isasyncgenfunction(func):
            raise TypeError(f"task {task_name!r} ({getattr(func, '__module__', '?')}) is an async "
                            "generator ('async def' with 'yield'); a task returns one value: make it "
                            "a plain 'async def' that returns a list")
        if is_async_function(func) and opts.executor != "thread":
            raise ValueError(f"task {task_name!r} is an 'async def' function: it runs on the worker's "
                             f"event loop, so executor={opts.executor!r} does not apply; make it a plain "
                             "function to run it in a child process")
        if opts.executor == "process" and "<locals>" in getattr(func, "__qualname__", "<locals>"):
            raise ValueError(f"task {task_name!r} uses executor='process', but its function "
                             f"{getattr(func, '__qualname__', func)!r} is not defined at module level: a "
                             "child process finds it by module and name, so define it at the top level "
                             "of an importable module")
        existing = self._tasks.get(task_name)
        if existing is not None:
            if existing.func is func:
                return existing
            raise ValueError(
                f"two tasks are named {task_name!r}: one in module {existing.module!r}, "
                f"one in module {getattr(func, '__module__', '?')!r}; rename one or pass name="
            )
        if isinstance(opts.unique, tuple):
            uniq.check_fields(task_name, func, opts.unique)
        definition = TaskDefinition(task_name, func, opts, _CallCheck.of(func))
        if opts.schedule is not None:
            _check_periodic_call(definition, opts.schedule)
        self._tasks[task_name] = definition
        self._names[id(func)] = task_name
        return definition

    def name_of(self, func: Callable[..., Any]) -> str | None:
        """The name a registered function is known by (None if it is not registered)."""
        name = self._names.get(id(func))
        return name if name is not None and self._tasks[name].func is func else None

    def get(self, name: str) -> TaskDefinition | None:
        return self._tasks.get(name)

    def get_all_task_names(self) -> list[str]:
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[TaskDefinition]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"TaskRegistry({self.get_all_task_names()})"


def is_async_function(func: Callable[..., Any]) -> bool:
    """An ``async def`` function (or a partial or bound method of one)."""
    return inspect.iscoroutinefunction(func)


def _check_periodic_call(definition: TaskDefinition, schedule: Schedule) -> None:
    """A periodic task is called with its schedule's kwargs (and the slot, if asked): refuse
    at declaration a function that cannot take them, not at its first slot."""
    kwargs = dict(schedule.kwargs)
    if schedule.slot_arg is not None:
        kwargs[schedule.slot_arg] = "2026-01-01T00:00:00+00:00"
    try:
        definition.check_arguments((), kwargs)
    except TypeError as exc:
        raise TypeError(f"periodic task {definition.name!r} cannot be called by its schedule "
                        f"({schedule.expression}): {exc}") from None


def _iter_modules(package: ModuleType) -> Iterator[ModuleType]:
    yield package
    path = getattr(package, "__path__", None)
    if path is None:
        return
    for info in pkgutil.walk_packages(path, prefix=package.__name__ + "."):
        yield importlib.import_module(info.name)


def discover_tasks(package_name: str, registry: TaskRegistry | None = None) -> TaskRegistry:
    """Import every module of ``package_name`` and register the functions marked as tasks."""
    if not isinstance(package_name, str) or not package_name:
        raise ValueError(f"package name {package_name!r} must be a dotted module name like 'app.engine'")
    registry = registry if registry is not None else TaskRegistry()
    package = importlib.import_module(package_name)
    for module in _iter_modules(package):
        for value in list(vars(module).values()):
            if callable(value) and hasattr(value, MARK):
                registry.register(value)
    return registry
