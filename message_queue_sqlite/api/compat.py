"""The original package's functions, kept exactly, as a thin layer over ``MessageQueue``.

``server, client, send_message = init_server(tasks, config)``; ``start_server(server,
client)`` blocks until ``stop_server(server, client)`` (from another thread) has let
running tasks finish and their callbacks run; it then returns 0.
"""

from __future__ import annotations

import threading
from typing import Any

from message_queue_sqlite.api.queue import MessageQueue
from message_queue_sqlite.core.config import Config
from message_queue_sqlite.core.registry import TaskRegistry, discover_tasks
from message_queue_sqlite.engine.dispatcher import Callback
from message_queue_sqlite.engine.engine import SendRequest


class Server:
    """The worker side of a queue created by ``init_server``."""

    def __init__(self, queue: MessageQueue):
        self.queue = queue
        # entered through the C lock itself: stop_server runs right after the app's Ctrl+C, and
        # a with statement on a C lock releases it whatever is raised (Condition.__enter__ is
        # Python code, where a KeyboardInterrupt could leave the lock taken)
        self._mutex = threading.RLock()
        self._state = threading.Condition(self._mutex)
        self._started = False
        self._stopped = False

    def run(self) -> None:
        """Start the workers and block until ``stop`` is called."""
        with self._mutex:
            if self._stopped:
                return
            if self._started:
                raise RuntimeError("start_server was already called for this server")
            self.queue.start()
            self._started = True
            self._state.wait_for(lambda: self._stopped)

    def stop(self) -> None:
        with self._mutex:
            if self._stopped:
                return
            self._stopped = True
            started = self._started
        if started:
            self.queue.stop()
        with self._mutex:
            self._state.notify_all()


class Client:
    """The sending side of a queue created by ``init_server``: callbacks run in this process."""

    def __init__(self, queue: MessageQueue):
        self.queue = queue

    def send_message(self, task_name: str, task_args: dict[str, Any], callback: Callback | None = None,
                     priority: int = 0, use_cache: bool = False, queue: str | None = None) -> str:
        """Store the task durably and return its id; ``callback(result_dict)`` runs here when
        it ends. Higher ``priority`` runs first (within its queue); ``queue`` names another
        queue than the task's own (``@task_function(queue=)``, else ``"default"``)."""
        if type(task_name) is not str:  # (a function, say: resolved, or refused, as mq.send does)
            return self.queue.send(task_name, task_args, callback=callback, priority=priority,
                                   use_cache=use_cache, queue=queue).task_id
        # The seed's every call: straight to the engine, which checks all of it as for mq.send;
        # no handle is made (the seed returns the id), so none is built and thrown away.
        request = SendRequest(task_name, {} if task_args is None else task_args, callback, priority,
                              use_cache, queue=queue)
        return self.queue.engine.send(request)


    def cancel_message(self, task_id: str) -> str:
        """Cancel a sent task: ``"cancelled"`` (it never runs), ``"stopping"`` (it was running:
        asked to stop) or ``"ended"``."""
        return self.queue.cancel(task_id)[task_id]


def discover_and_mount_ts(package: str) -> TaskRegistry:
    """Import every module of ``package`` and register its ``@task_function`` functions."""
    return discover_tasks(package)


def init_server(tasks: TaskRegistry, config: Config | None = None) -> tuple[Server, Client, Any]:
    """Open (create or migrate) the queue; start nothing. Returns ``(server, client, send_message)``."""
    if not isinstance(tasks, TaskRegistry):
        raise TypeError(f"init_server needs the registry from discover_and_mount_ts(), got {tasks!r}")
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be a message_queue_sqlite.config.Config, got {config!r}")
    queue = MessageQueue(config=config or Config(), registry=tasks)
    client = Client(queue)
    return Server(queue), client, client.send_message


def start_server(server: Server, client: Client) -> None:
    """Run the workers; returns once ``stop_server`` has stopped them."""
    server.run()


def stop_server(server: Server, client: Client) -> int:
    """Stop the workers gracefully, run the callbacks of what finished, close; returns 0."""
    server.stop()
    client.queue.close()
    return 0
