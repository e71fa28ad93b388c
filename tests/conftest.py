"""Shared fixtures. No test sleeps to wait for work: ``wait_until`` polls a condition
against a deadline and fails with a message when it is not met."""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from message_queue_sqlite import MessageQueue

REPO = Path(__file__).resolve().parents[1]
WATCHDOG_GRACE_S = 60.0


@pytest.fixture(autouse=True)
def _hard_deadline(request: pytest.FixtureRequest) -> Iterator[None]:
    """pytest-timeout's signal cannot end a test stuck in C code (a deadlock between SQLite's
    mutex and the GIL is one): past its timeout and a grace period, print every thread's stack
    and end the run, so a hang fails in minutes with its cause shown, not at CI's limit."""
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout") or 0)
    if not limit:
        yield
        return

    def give_up() -> None:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=True)  # the stacks must reach the real stderr
        sys.stderr.write(f"\n{request.node.nodeid} still runs {limit + WATCHDOG_GRACE_S:.0f} s after "
                         "it started, past its timeout: every thread's stack follows; ending the run\n")
        faulthandler.dump_traceback(all_threads=True)
        os._exit(3)

    timer = threading.Timer(limit + WATCHDOG_GRACE_S, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def wait_until(condition: Callable[[], Any], timeout: float = 10.0,
               what: str | Callable[[], str] = "condition") -> Any:
    """Poll ``condition`` until it is true or ``timeout`` passes; ``what`` (or what it returns,
    computed only on failure: worker logs, say) names it in the error."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            named = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {named}")
        event.wait(0.005)


@pytest.fixture
def queue_dir(tmp_path: Path) -> str:
    return str(tmp_path / "queue")


POSTGRES_DSN = os.environ.get("MQS_TEST_POSTGRES_DSN")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Conformance: tests that take ``backend`` (directly or through ``make_queue``) run on
    both backends. PostgreSQL runs when MQS_TEST_POSTGRES_DSN is set (CI sets it)."""
    if request.param == "postgres":
        if not POSTGRES_DSN and os.environ.get("MQS_REQUIRE_POSTGRES"):
            pytest.fail("MQS_REQUIRE_POSTGRES is set but MQS_TEST_POSTGRES_DSN is not")
        if not POSTGRES_DSN:
            pytest.skip("PostgreSQL tests need MQS_TEST_POSTGRES_DSN (e.g. postgresql://postgres@127.0.0.1/test)")
        pytest.importorskip("psycopg")
    return request.param


@pytest.fixture
def broker_url(backend: str) -> Iterator[str | None]:
    """None for SQLite; for PostgreSQL a URL with a schema of this test's own, dropped after
    the test (after ``make_queue`` closed its queues, as that fixture depends on this one)."""
    if backend == "sqlite":
        yield None
        return
    url = pg_url_with_fresh_schema()
    yield url
    drop_pg_schema(url)


def drop_pg_schema(url: str) -> None:
    """Drop the schema named in ``url`` (a test's own); a lock still held elsewhere is reported
    rather than waited on forever."""
    import psycopg

    assert POSTGRES_DSN
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def pg_url_with_fresh_schema() -> str:
    assert POSTGRES_DSN
    separator = "&" if "?" in POSTGRES_DSN else "?"
    return f"{POSTGRES_DSN}{separator}schema=mqs_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_queue(queue_dir: str, broker_url: str | None) -> Iterator[Callable[..., MessageQueue]]:
    """Queue objects on this test's backend. On PostgreSQL each distinct ``path`` gets a
    schema of its own, so "two queues in two folders" stay two queues there too."""
    made: list[MessageQueue] = []
    schemas: dict[str, str] = {}

    def factory(path: str | None = None, **options: Any) -> MessageQueue:
        options.setdefault("workers", 2)
        folder = path or queue_dir
        if broker_url is not None:
            if folder == queue_dir:
                url = broker_url
            else:
                url = schemas.setdefault(folder, pg_url_with_fresh_schema())
            options.setdefault("broker_url", url)
        queue = MessageQueue(folder, **options)
        made.append(queue)
        return queue

    yield factory
    for queue in made:
        queue.close()
    for url in schemas.values():
        drop_pg_schema(url)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def use_clock(queue: MessageQueue, clock: Callable[[], float]) -> MessageQueue:
    """Make a SQLite queue object's backend read ``clock`` for leases and scheduled times (the
    engine's own ``clock=`` only stamps display times)."""
    queue.engine.backend.clock.lease = clock
    queue.engine.backend.clock.wall = clock
    return queue


class BackendTime:
    """Time as the backend under test reads it, for tests of leases and schedules.

    SQLite: a fake clock, injected into the backend (leases and scheduled times) and the
    engine, moved by ``advance``. PostgreSQL decides every time by the server's clock, which
    no test can move: ``advance`` waits until that much real time has passed, and tests scale
    their durations by ``unit`` (0.1: a 10-unit lease lasts 1 s) to keep the waits short."""

    def __init__(self, backend: str):
        self.exact = backend == "sqlite"
        self.unit = 1.0 if self.exact else 0.1
        self.tolerance = 1e-6 if self.exact else 0.25  # a server time vs a client one, same host
        self._fake = FakeClock() if self.exact else None

    def now(self) -> float:
        return self._fake() if self._fake is not None else time.time()

    def queue(self, make_queue: Callable[..., MessageQueue], **options: Any) -> MessageQueue:
        if self._fake is None:
            return make_queue(**options)
        return use_clock(make_queue(clock=self._fake, **options), self._fake)

    def advance(self, seconds: float) -> None:
        if self._fake is not None:
            self._fake.advance(seconds)
            return
        until = time.monotonic() + seconds
        wait_until(lambda: time.monotonic() >= until, timeout=seconds + 10, what=f"{seconds} s to pass")


@pytest.fixture
def backend_time(backend: str) -> BackendTime:
    return BackendTime(backend)


@pytest.fixture
def app_package(tmp_path: Path) -> Callable[[dict[str, str]], str]:
    """Write a package of task modules under a unique name; returns the package name."""
    created: list[str] = []

    def write(modules: dict[str, str]) -> str:
        name = f"app_{uuid.uuid4().hex[:8]}"
        root = tmp_path / "pkgs" / name
        root.mkdir(parents=True)
        (root / "__init__.py").write_text("")
        for module, source in modules.items():
            path = root / f"{module}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        if str(tmp_path / "pkgs") not in sys.path:
            sys.path.insert(0, str(tmp_path / "pkgs"))
        created.append(name)
        return name

    yield write
    for name in created:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


def start_cli_worker(app_dir: Path, target: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    """``mqs worker TARGET ARGS`` run from ``app_dir``, its output in ``app_dir/worker-N.log``
    (a pipe nobody reads would fill and stop it), shown by ``worker_logs`` when a test fails."""
    number = len(list(app_dir.glob("worker-*.log")))
    with open(app_dir / f"worker-{number}.log", "w") as out:
        return subprocess.Popen([sys.executable, "-m", "message_queue_sqlite", "worker", target, *args],
                                cwd=app_dir, env=env, stdout=out, stderr=subprocess.STDOUT)


def worker_logs(app_dir: Path) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}"
                     for path in sorted(app_dir.glob("worker-*.log")))


def stop_processes(workers: list[subprocess.Popen], timeout: float = 60) -> None:
    """SIGTERM each one still running (a graceful stop), then wait; kill what does not end."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def measure_tasks_short(mq: MessageQueue) -> None:
    """Run a few no-op tasks on ``mq``'s started worker, so it has measured its tasks as short
    and prefetches beyond its free threads (a fresh worker claims one per free thread)."""
    def no_op() -> None:
        return None

    mq.task(name="measure_short")(no_op)
    for _ in range(5):
        mq.send("measure_short").result(timeout=10)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH")] if p)
    return env
