"""What ``worker TARGET`` serves: an application object, or a package of tasks.

``pkg:mq`` (or ``pkg.mq``) names a ``MessageQueue`` (or the server/client of
``init_server``) that a module creates: the worker then serves that very object, with its
folder, shards, broker URL, settings, tasks and hooks, as huey's consumer serves a huey
instance. A plain ``pkg`` is the original package's way: every ``@task_function`` in it,
served on ``--path``. The queue objects the package's modules create are noted, so that a
worker about to serve another folder than the one the senders write to can refuse.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType

from message_queue_sqlite.api.compat import Client, Server
from message_queue_sqlite.api.queue import MessageQueue
from message_queue_sqlite.core.errors import MessageQueueError
from message_queue_sqlite.core.registry import TaskRegistry, discover_tasks


class TargetError(MessageQueueError):
    """The worker's TARGET cannot be served; the message says why and what to type."""


@dataclass
class Target:
    spec: str
    module: str  # the module TARGET imports (for messages)
    queue: MessageQueue | None = None  # the application object, when TARGET named one
    registry: TaskRegistry | None = None  # the package's tasks, when TARGET is a package
    queues: list[tuple[str, MessageQueue]] = field(default_factory=list)  # ("pkg.mod:name", object)


def as_queue(value: object) -> MessageQueue | None:
    """The queue object behind a module attribute: a MessageQueue, or init_server's server/client."""
    if isinstance(value, MessageQueue):
        return value
    if isinstance(value, (Server, Client)):
        return value.queue
    return None


def load_target(spec: str, prog: str) -> Target:
    """Import what ``spec`` names. ``pkg:attr`` must be a queue object; ``a.b`` is a module if
    one of that name exists, else attribute ``b`` of module ``a``."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise TargetError(f"{spec!r} is not a worker target: use PACKAGE (tasks marked with "
                              "@task_function) or MODULE:OBJECT (a MessageQueue), e.g. app:mq")
        return _object_target(spec, _import(module_name, prog), attr, prog)
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        parent, _, attr = spec.rpartition(".")
        if exc.name != spec or not parent:  # not "the last part is not a module": report it
            raise _import_error(spec, exc, prog) from exc
        module = _import(parent, prog)
        if not hasattr(module, attr):
            raise _import_error(spec, exc, prog) from exc
        return _object_target(spec, module, attr, prog)
    except Exception as exc:  # noqa: BLE001 - a task module that does not even import: say which
        raise _load_error(spec, exc) from exc
    try:
        registry = discover_tasks(spec)
    except ImportError as exc:
        raise _import_error(spec, exc, prog) from exc
    except Exception as exc:  # noqa: BLE001
        raise _load_error(spec, exc) from exc
    return Target(spec, spec, registry=registry, queues=queue_objects(spec))


def _object_target(spec: str, module: ModuleType, attr: str, prog: str) -> Target:
    value: object = module
    for part in attr.split("."):
        if not hasattr(value, part):
            found = ", ".join(name for name, _ in queue_objects(module.__name__)) or "none"
            raise TargetError(f"module {module.__name__!r} has no attribute {attr!r} (queue objects "
                              f"its package defines: {found})")
        value = getattr(value, part)
    queue = as_queue(value)
    if queue is None:
        raise TargetError(f"{spec} is a {type(value).__name__}, not a MessageQueue; "
                          f"`{prog} worker MODULE:OBJECT` serves a MessageQueue object, "
                          f"`{prog} worker PACKAGE` the @task_function tasks of a package")
    return Target(spec, module.__name__, queue=queue, queues=queue_objects(module.__name__))


def queue_objects(module_name: str) -> list[tuple[str, MessageQueue]]:
    """The queue objects held by module attributes of ``module_name``'s top-level package,
    each once, by its shortest spelling (``pkg:mq`` before ``pkg.sub:mq``)."""
    top = module_name.split(".")[0]
    found: dict[int, tuple[str, MessageQueue]] = {}
    modules = sorted((name, mod) for name, mod in list(sys.modules.items())
                     if mod is not None and (name == top or name.startswith(top + ".")))
    for name, module in sorted(modules, key=lambda item: (item[0].count("."), item[0])):
        for attr, value in list(vars(module).items()):
            queue = as_queue(value)
            if queue is not None and id(queue) not in found:
                found[id(queue)] = (f"{name}:{attr}", queue)
    return list(found.values())


def _import(module_name: str, prog: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise _import_error(module_name, exc, prog) from exc
    except Exception as exc:  # noqa: BLE001
        raise _load_error(module_name, exc) from exc


def _import_error(spec: str, exc: ImportError, prog: str) -> TargetError:
    """A module that is not found is nearly always a working directory or path problem:
    say where Python looked and how to fix it. A module found that imports a missing one is
    a missing dependency: say that instead."""
    module = spec.partition(":")[0]
    missing = getattr(exc, "name", None)
    if missing is None or not (module == missing or module.startswith(missing + ".")):
        return TargetError(f"cannot load {spec!r}: importing it failed: {type(exc).__name__}: {exc}")
    parent, _, last = missing.rpartition(".")
    found = sys.modules.get(parent) if parent else None
    if found is not None:
        where = getattr(found, "__file__", None) or parent
        return TargetError(f"no module named {missing!r}: {parent!r} ({where}) has no submodule "
                           f"or attribute {last!r}")
    top = module.split(".")[0]
    origin = "" if missing == spec else f" (from {spec!r})"
    return TargetError(
        f"no module named {missing!r}{origin}. The worker imports it from the working "
        f"directory ({os.getcwd()}, which it puts first on sys.path), from PYTHONPATH and from the "
        f"installed packages. Run {prog} from your project's root folder (the one that contains "
        f"{top}/ or {top}.py), or set PYTHONPATH to that folder.")


def _load_error(spec: str, exc: BaseException) -> TargetError:
    return TargetError(f"cannot load the tasks of {spec!r}: {type(exc).__name__}: {exc}")
