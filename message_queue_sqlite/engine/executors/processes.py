"""The process executor: ``executor="process"`` tasks run in child processes.

For CPU-bound work (threads share one core through the GIL) and for timeouts that must stop
a run for real. It is the thread executor with one child process per thread: the thread
takes a claim from the buffer as usual, hands the call to its child over a pipe and waits;
claiming, leasing and recording stay in the worker process.

- Children start with ``spawn`` (a fresh interpreter: safe whatever threads the worker runs),
  at the first claim that needs one, and serve run after run. A task function is found in the
  child by its module and qualified name, so it must be defined at module level (and a script
  that starts workers needs the usual ``if __name__ == "__main__":`` guard).
- A run past its timeout: the child is killed at the deadline, the run recorded as
  ``TaskTimeout`` (retried per policy), and a new child takes its place.
- A cancel asked for while it runs kills its child too: the run ends CANCELLED.
- A child that dies mid-run (SIGKILL, a segfault, ``os._exit``) fails that run with the way
  it died (retried per policy, as Celery's ``WorkerLostError``); the next run gets a new child.
- The run sees ``current_task`` (its id, attempt, deadline; ``progress()`` is sent back to
  the worker over the pipe; ``cancelled`` stays False: a cancel kills the child instead).
- Arguments and results cross as the stored JSON; an exception crosses pickled (so retry
  policies match its class), or as a ``ChildTaskError`` naming it when it cannot be pickled.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import multiprocessing
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from message_queue_sqlite.backends.base import ClaimedTask, Completion
from message_queue_sqlite.core.errors import MessageQueueError, TaskCancelled, TaskTimeout
from message_queue_sqlite.core.outcome import TaskOutcome
from message_queue_sqlite.core.registry import TaskDefinition
from message_queue_sqlite.engine import context
from message_queue_sqlite.engine.context import TaskContext
from message_queue_sqlite.engine.executors.threads import ThreadExecutor
from message_queue_sqlite.engine.hooks import Run, describe_exception
from message_queue_sqlite.serialization import dumps_result, loads_call, loads_result

if TYPE_CHECKING:
    from message_queue_sqlite.engine.worker import Worker

log = logging.getLogger(__name__)

START_METHOD = "spawn"
KILL_WAIT_S = 5.0  # how long a killed child gets to be reaped
START_TIMEOUT_S = 60.0  # how long a new child may take to start (a fresh interpreter, imports)


class ChildTaskError(MessageQueueError):
    """A task in a child process raised an exception that could not be sent back as itself."""


class ChildDied(MessageQueueError):
    """The child process running a task died before the task ended."""


# -- the child ---------------------------------------------------------------------------
@dataclasses.dataclass
class _ChildClaim:
    """What a ``TaskContext`` reads of its claim, in the child: a cancel kills the child instead."""

    cancel_requested: bool = False


def serve(conn: Connection) -> None:
    """A child's loop: run each call the parent sends, send back its end; exit on None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C goes to the worker, which stops us
    functions: dict[tuple[str, str], Callable[..., Any]] = {}
    conn.send(("ready",))  # started: a run's timeout counts from here, not from the spawn
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send(_run_job(conn, functions, *job))


def _run_job(conn: Connection, functions: dict[tuple[str, str], Callable[..., Any]], module: str,
             qualname: str, args: str, fields: dict[str, Any]) -> tuple[Any, ...]:
    def report(_claim: Any, progress: Any) -> None:
        conn.send(("progress", progress))

    token = context.enter(lambda: TaskContext(**fields, _claim=_ChildClaim(), _report=report))  # type: ignore[arg-type]
    try:
        func = functions.get((module, qualname))
        if func is None:
            func = functions[(module, qualname)] = _find(module, qualname)
        positional, keywords = loads_call(args)
        return ("ok", dumps_result(func(*positional, **keywords)))
    except BaseException as exc:  # noqa: BLE001 - every end goes back to the parent
        return ("error", _portable(exc), traceback.format_exc())
    finally:
        context.leave(token)


def _find(module: str, qualname: str) -> Callable[..., Any]:
    value: Any = importlib.import_module(module)
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


def _portable(exc: BaseException) -> bytes:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - e.g. an exception class with a custom __init__
        return pickle.dumps(ChildTaskError(describe_exception(exc)))


# -- the parent --------------------------------------------------------------------------
class _Child:
    """One child process and its pipe, made again after it dies or is killed."""

    def __init__(self) -> None:
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.killed_for: str | None = None  # why the executor killed it during a run

    def ensure(self) -> None:
        if self.process is not None and self.process.is_alive():
            return
        self.close()
        spawn = multiprocessing.get_context(START_METHOD)
        parent, child = spawn.Pipe()
        process = spawn.Process(target=serve, args=(child,), name="mqs-task-process", daemon=True)
        process.start()
        child.close()
        self.process, self.conn = process, parent
        if not wait([parent, process.sentinel], START_TIMEOUT_S) or not parent.poll():
            self.kill("start")
            self.close()
            raise ChildDied(f"a child process did not start within {START_TIMEOUT_S:.0f} s")
        parent.recv()

    def kill(self, why: str) -> None:
        self.killed_for = why
        if self.process is not None and self.process.is_alive():
            self.process.kill()

    def close(self) -> None:
        """End the child: asked to exit when idle, killed if it does not."""
        process, conn = self.process, self.conn
        self.process = self.conn = None
        if conn is not None:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            conn.close()
        if process is not None:
            process.join(KILL_WAIT_S)
            if process.is_alive():
                process.kill()
                process.join(KILL_WAIT_S)


class ProcessExecutor(ThreadExecutor):
    thread_name = "mqs-process-runner"
    watches_timeouts = False  # the thread that waits for its child kills it at the deadline

    def __init__(self, processes: int):
        super().__init__(processes)
        self._children: dict[int, _Child] = {}  # by runner thread ident
        self._running_in: dict[ClaimedTask, _Child] = {}
        self._children_lock = threading.Lock()
        self.killed = 0  # children killed for a timeout or a cancel (tests and logs read it)

    def _run_function(self, worker: Worker) -> Callable[[ClaimedTask], tuple[Completion, TaskOutcome | None]]:
        child = _Child()
        with self._children_lock:
            self._children[threading.get_ident()] = child

        def run(claim: ClaimedTask) -> tuple[Completion, TaskOutcome | None]:
            return worker.runner.finish(claim, self._run_in(worker, child, claim))

        return run

    def _run_in(self, worker: Worker, child: _Child, claim: ClaimedTask) -> Run:
        runner = worker.runner
        started = runner.clock()
        definition = runner.begin(claim, started)
        if isinstance(definition, Run):
            return definition  # not registered here
        seconds = runner.timeout_of(claim)
        shown = runner.context_of(claim, definition, started)
        fields = {f.name: getattr(shown, f.name) for f in dataclasses.fields(shown)
                  if not f.name.startswith("_")}
        job = (definition.func.__module__, definition.func.__qualname__, claim.args or "{}", fields)
        try:
            child.ensure()
            assert child.conn is not None
            child.killed_for = None
            with self._children_lock:
                self._running_in[claim] = child
            if claim.cancel_requested:  # asked for before the child had it: never run
                return Run(definition, False, TaskCancelled(claim.task_id, claim.task_name), None,
                           started, runner.clock())
            child.conn.send(job)
            return self._wait(worker, child, claim, definition, started, seconds)
        except (OSError, EOFError, ChildDied) as exc:
            error = exc if isinstance(exc, ChildDied) else ChildDied(f"its child process failed: {exc}")
            return Run(definition, False, error, None, started, runner.clock())
        finally:
            with self._children_lock:
                self._running_in.pop(claim, None)

    def _wait(self, worker: Worker, child: _Child, claim: ClaimedTask, definition: TaskDefinition,
              started: float, seconds: float | None) -> Run:
        """Wait for the child's answer, its death, or the deadline (then kill it)."""
        runner = worker.runner
        assert child.conn is not None and child.process is not None
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([child.conn, child.process.sentinel], left)
            if not ready:  # the deadline passed: stop it for real
                child.kill("timeout")
                self.killed += 1
                self.timed_out += 1
                log.warning("task %s (%s) timed out after %.1f s; its process was killed", claim.task_name,
                            claim.task_id, seconds)
                child.close()
                return Run(definition, False, TaskTimeout(seconds or 0.0), None, started, runner.clock())
            if child.conn in ready:
                try:
                    message = child.conn.recv()
                except (EOFError, OSError):
                    message = None
                if message is not None and message[0] == "progress":
                    runner.report_progress(claim, message[1])
                    continue
                if message is not None:
                    return self._ended(definition, message, started, runner.clock())
            return self._died(child, claim, definition, started, runner.clock())

    @staticmethod
    def _ended(definition: TaskDefinition, message: tuple[Any, ...], started: float, ended: float) -> Run:
        if message[0] == "ok":
            return Run(definition, True, loads_result(message[1]), None, started, ended)
        try:
            error = pickle.loads(message[1])
        except Exception as exc:  # noqa: BLE001 - e.g. its class is not importable here
            error = ChildTaskError(f"the task's exception could not be read back: {describe_exception(exc)}")
        return Run(definition, False, error, message[2], started, ended)

    def _died(self, child: _Child, claim: ClaimedTask, definition: TaskDefinition, started: float,
              ended: float) -> Run:
        process = child.process
        code = None
        if process is not None:
            process.join(KILL_WAIT_S)
            code = process.exitcode
        why = child.killed_for
        child.close()
        if why == "cancel" or claim.cancel_requested:
            return Run(definition, False, TaskCancelled(claim.task_id, claim.task_name,
                                                        "its process was killed when the cancel was asked"),
                       None, started, ended)
        how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit code {code}")
        log.warning("the process running task %s (%s) died (%s); a new one takes its place",
                    claim.task_name, claim.task_id, how)
        return Run(definition, False, ChildDied(f"the child process running the task died ({how})"), None,
                   started, ended)

    # -- the executor interface, for children ----------------------------------------
    def cancel(self, claims: list[ClaimedTask]) -> list[ClaimedTask]:
        unstarted = super().cancel(claims)
        with self._children_lock:
            running = [self._running_in[c] for c in claims if c in self._running_in]
        for child in running:
            child.kill("cancel")
            self.killed += 1
        return unstarted

    def unfinished(self) -> list[ClaimedTask]:
        left = super().unfinished()
        with self._children_lock:
            running = list(self._running_in.values())
        for child in running:  # given back: they run again elsewhere
            child.kill("given back")
        return left

    def wait(self, deadline: float, hurry: threading.Event) -> bool:
        finished = super().wait(deadline, hurry)
        if finished:
            with self._children_lock:
                children = list(self._children.values())
            for child in children:
                child.close()
        return finished
