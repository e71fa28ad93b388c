"""The command line as a user meets it, each through a subprocess: which queue a worker
serves, how it stops, what it logs, and what every command says when something is off."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env, wait_until

import message_queue_sqlite
from message_queue_sqlite import MessageQueue, QueueStorageError, RetryPolicy, TaskStatus

PY = sys.executable
QUICK_RETRY = RetryPolicy(max_retries=1, backoff=0.05, jitter=False)
COMMANDS = ["worker", "stats", "failed", "retry", "purge", "demo"]

APP = """
import threading
from message_queue_sqlite import Hook, MessageQueue

class Mark(Hook):  # proves the worker runs this very object: its hooks apply
    def after_run(self, claim, run):
        with open({marks!r}, "a") as f:
            f.write(claim.task_name + "\\n")

mq = MessageQueue("jobs_dir", shards={shards}, workers=2, hooks=[Mark()])
release = threading.Event()

@mq.task
def square(x):
    return x * x

@mq.task
def boom():
    raise RuntimeError("boom on purpose")

@mq.task
def read_only_storage():  # the worker's storage turns read-only once this ran: its end is not recorded
    shard = mq.engine.shards[0]
    with shard._lock:
        shard._connection().execute("PRAGMA query_only = 1")
    open({started!r}, "w").close()
    return "ran"

@mq.task
def hang():
    open({started!r}, "w").close()  # it runs (a lease alone may still wait in the worker's buffer)
    release.wait(120)  # only a stop that gives it back ends its worker
    return "released"
"""


def cli(*args: str, cwd: str | Path | None = None, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "message_queue_sqlite", *args], cwd=cwd, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def write_app(root: Path, shards: int = 1) -> str:
    """A package ``jobs_<id>`` whose __init__ creates ``mq = MessageQueue("jobs_dir", ...)``."""
    name = f"jobs_{uuid.uuid4().hex[:8]}"
    (root / name).mkdir(parents=True)
    source = APP.format(marks=str(root / "marks.txt"), started=str(root / "hang-started"), shards=shards)
    (root / name / "__init__.py").write_text(textwrap.dedent(source))
    return name


def start_worker(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "message_queue_sqlite", "worker", *args], cwd=cwd,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(worker: subprocess.Popen, signals: int = 1) -> tuple[str, str]:
    for _ in range(signals):
        worker.send_signal(signal.SIGTERM)
    try:
        return worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()


# -- 1. the worker serves the queue the tasks were written for -------------------------
@pytest.mark.parametrize("spelling", [":", "."])
def test_worker_serves_the_application_object(tmp_path, spelling):
    """`worker jobs:mq` (or jobs.mq) serves that object: its folder (not ./message_queue),
    every shard file present there, its hooks; --workers overrides its thread count."""
    package = write_app(tmp_path)
    folder = str((tmp_path / "jobs_dir").resolve())
    with MessageQueue(folder, shards=3) as sender:  # the folder holds 3 shards; the object says 1
        handles = [sender.send("square", {"x": i}) for i in range(9)]
        assert {sender.engine.shard_of(h.task_id)[0] for h in handles} == {0, 1, 2}
        worker = start_worker(tmp_path, f"{package}{spelling}mq", "--workers", "3")
        try:
            line = worker.stdout.readline()
            expected = (f"worker: {package}{spelling}mq, queue {folder} (3 shards), "
                        "serving every queue (3 threads)")
            assert line.startswith(expected), line  # (its stderr can be read only once it stopped)
            assert "'square'" in line
            assert [h.result(timeout=30) for h in handles] == [i * i for i in range(9)]
        finally:
            out, err = stop(worker)
    assert worker.returncode == 0, err
    assert (tmp_path / "marks.txt").read_text().split() == ["square"] * 9  # the object's own hook ran
    assert not (tmp_path / "message_queue").exists()


def test_worker_refuses_a_package_whose_queue_object_lives_elsewhere(tmp_path):
    package = write_app(tmp_path)
    result = cli("worker", package, cwd=tmp_path, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{package}:mq" in result.stderr and str(tmp_path / "jobs_dir") in result.stderr
    assert f"worker {package}:mq" in result.stderr  # the spelling that works
    assert not (tmp_path / "message_queue").exists()


def test_worker_serves_the_package_on_the_folder_it_is_told(tmp_path):
    """With --path the user has chosen: the package's tasks are served there."""
    package = write_app(tmp_path)
    with MessageQueue(str(tmp_path / "jobs_dir")) as sender:
        handle = sender.send("square", {"x": 7})
        worker = start_worker(tmp_path, package, "--path", "jobs_dir")
        try:
            assert handle.result(timeout=30) == 49
        finally:
            out, err = stop(worker)
    assert worker.returncode == 0, err
    assert out.startswith(f"worker: package {package}, queue {(tmp_path / 'jobs_dir').resolve()} (1 shard)")


def test_worker_refuses_a_package_without_tasks(tmp_path):
    (tmp_path / "notasks").mkdir()
    (tmp_path / "notasks" / "__init__.py").write_text("def helper():\n    return 1\n")
    result = cli("worker", "notasks", "--path", "q", cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    assert "no tasks in 'notasks'" in result.stderr and "@task_function" in result.stderr


def test_worker_refuses_an_object_that_is_not_a_queue(tmp_path):
    package = write_app(tmp_path)
    result = cli("worker", f"{package}:square", cwd=tmp_path, timeout=30)
    assert result.returncode == 2 and "is a function, not a MessageQueue" in result.stderr
    result = cli("worker", f"{package}:nope", cwd=tmp_path, timeout=30)
    assert result.returncode == 2 and f"{package}:mq" in result.stderr  # what it does define


def test_worker_on_a_missing_module_says_where_it_looked(tmp_path):
    result = cli("worker", "no_such_pkg_xyz", cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    assert "no_such_pkg_xyz" in result.stderr and str(tmp_path) in result.stderr
    assert "sys.path" in result.stderr and "PYTHONPATH" in result.stderr
    assert "project's root folder" in result.stderr


# -- 2. stopping -------------------------------------------------------------------------
def _hanging_worker(tmp_path: Path, *extra: str) -> tuple[MessageQueue, subprocess.Popen, str]:
    package = write_app(tmp_path)
    sender = MessageQueue(str(tmp_path / "jobs_dir"))
    handle = sender.send("hang")
    worker = start_worker(tmp_path, f"{package}:mq", *extra)
    wait_until((tmp_path / "hang-started").exists, timeout=30, what="the task to run")
    return sender, worker, handle.task_id


def test_second_signal_gives_tasks_back_and_exits_3(tmp_path):
    sender, worker, task_id = _hanging_worker(tmp_path)
    try:
        worker.send_signal(signal.SIGTERM)
        logged = []  # two signals sent at once may reach the handler as one: wait for the first
        while not logged or "stopping gracefully" not in logged[-1]:
            line = worker.stderr.readline()
            assert line, "the worker ended before handling the first signal"
            logged.append(line)
        out, err = stop(worker)  # the second signal
        err = "".join(logged) + err
        assert worker.returncode == 3, out + err
        assert "second signal" in err and "1 task(s) given back unfinished" in err
        assert "drain timeout" not in err
        assert sender.get(task_id).status == TaskStatus.NOT_STARTED  # ready to run again
    finally:
        sender.close()


def test_a_stop_whose_results_could_not_be_recorded_exits_3_and_says_so(tmp_path):
    """Every task finished, but storage refused the completion (here: turned read-only under
    the worker): the stop cannot record it, so the exit code is not the clean drain's 0."""
    package = write_app(tmp_path)
    sender = MessageQueue(str(tmp_path / "jobs_dir"))
    try:
        handle = sender.send("read_only_storage")
        worker = start_worker(tmp_path, f"{package}:mq")
        wait_until((tmp_path / "hang-started").exists, timeout=30, what="the task to run")
        out, err = stop(worker)
        assert worker.returncode == 3, out + err
        assert "1 task(s) that finished but whose results could not be recorded" in err, err
        assert "every running task finished" not in out
        assert sender.get(handle.task_id).status == TaskStatus.RUNNING  # runs again once its lease expires
    finally:
        sender.close()


def test_drain_timeout_gives_tasks_back_and_exits_3(tmp_path):
    sender, worker, task_id = _hanging_worker(tmp_path, "--drain-timeout", "0.2")
    try:
        out, err = stop(worker)
        assert worker.returncode == 3, out + err
        assert "1 task(s) given back unfinished" in err and "0.2 s drain timeout" in err
        assert sender.get(task_id).status == TaskStatus.NOT_STARTED
    finally:
        sender.close()


# -- 3. per-task logging -------------------------------------------------------------------
def _one_ok_one_failing(tmp_path: Path, sender: MessageQueue, target: str, *extra: str):
    """Serve one task that returns and one that fails twice (one retry); the handles and stderr."""
    worker = start_worker(tmp_path, target, *extra)
    assert worker.stdout.readline().startswith("worker:")
    ok = sender.send("square", {"x": 2})
    failing = sender.send("boom", retry=QUICK_RETRY)
    assert ok.result(timeout=30) == 4
    failing.outcome(timeout=30)
    return ok, failing, stop(worker)[1]


def test_worker_logs_failures_and_with_v_every_start_and_end(tmp_path):
    package = write_app(tmp_path)
    with MessageQueue(str(tmp_path / "jobs_dir")) as sender:
        _, _, quiet_err = _one_ok_one_failing(tmp_path, sender, f"{package}:mq")
        ok, failing, err = _one_ok_one_failing(tmp_path, sender, f"{package}:mq", "-v")
    # by default: only what went wrong, at WARNING, with id, name and error
    failure = [line for line in quiet_err.splitlines() if "message_queue_sqlite.tasks" in line]
    assert len(failure) == 1, quiet_err
    assert "WARNING" in failure[0] and "failed boom" in failure[0]
    assert "RuntimeError: boom on purpose" in failure[0]
    assert "start" not in quiet_err and "retry boom" not in quiet_err
    # -v: one line per start and end, with durations; the retry with its delay
    lines = [line for line in err.splitlines() if "message_queue_sqlite.tasks" in line]
    assert sum(f"start square {ok.task_id} " in line for line in lines) == 1
    assert sum(f"done square {ok.task_id} in " in line and " ms" in line for line in lines) == 1
    assert sum(f"retry boom {failing.task_id} in " in line and "INFO" in line for line in lines) == 1
    assert sum(f"failed boom {failing.task_id} after " in line and "attempt 2" in line for line in lines) == 1


class _Untouchable:
    def __getattr__(self, name):
        raise AssertionError(f"{name} was read although the level filters the line out")


def test_task_log_costs_nothing_when_filtered_out():
    """Below its level TaskLog reads nothing of the task and formats nothing."""
    from message_queue_sqlite.engine.task_log import TaskLog

    logger = logging.getLogger(f"test.tasklog.{uuid.uuid4().hex}")
    logger.setLevel(logging.ERROR)
    hook = TaskLog(logger)
    hook.before_run(_Untouchable())
    hook.after_run(_Untouchable(), type("R", (), {"ok": True})())
    hook.retry_scheduled(_Untouchable(), _Untouchable(), 1.0)
    hook.failed(_Untouchable(), _Untouchable())


# -- 4. polish ------------------------------------------------------------------------------
def test_version():
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"message_queue_sqlite {message_queue_sqlite.__version__} (Python ")


def _script(tmp_path: Path, name: str) -> Path:
    """A console script as pip writes it (argv[0] is the script's path)."""
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("import sys\nfrom message_queue_sqlite.cli.main import main\nsys.exit(main())\n")
    return path


@pytest.mark.parametrize("name", ["mqs", "message-queue-sqlite"])
def test_usage_names_the_program_as_invoked(tmp_path, name):
    result = subprocess.run([PY, str(_script(tmp_path, name)), "stats", "--help"], env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {name} stats")
    assert f"  {name} stats --path q" in result.stdout  # the examples too
    assert cli("--help").stdout.startswith("usage: python -m message_queue_sqlite")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_an_example(command):
    result = cli(command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and f"python -m message_queue_sqlite {command} " in result.stdout


def test_global_options_after_the_command(tmp_path):
    MessageQueue(str(tmp_path / "q")).close()
    after = cli("stats", "--path", str(tmp_path / "q"), "-v")
    before = cli("-v", "stats", "--path", str(tmp_path / "q"))
    assert after.returncode == 0 and before.returncode == 0, after.stderr + before.stderr


def test_errors_name_the_flag_typed(tmp_path):
    result = cli("worker", "anything", "--workers", "0", "--path", "q", cwd=tmp_path)
    assert result.returncode == 2 and "--workers" in result.stderr
    assert "Config" not in result.stderr and "max_workers" not in result.stderr
    result = cli("stats", "--broker-url", "mysql://db/x", cwd=tmp_path)
    assert result.returncode == 2 and "--broker-url" in result.stderr and "Config" not in result.stderr
    result = cli("worker", "anything", "--drain-timeout", "-1", cwd=tmp_path)
    assert result.returncode == 2 and "--drain-timeout" in result.stderr
    # a folder spelled as a sqlite:// URL is named as it was typed, not as --path
    result = cli("stats", "--broker-url", "sqlite://nothere", cwd=tmp_path)
    assert result.returncode == 2 and "in --broker-url 'sqlite://nothere' (" in result.stderr
    assert "--path" not in result.stderr
    (tmp_path / "jobs.db").write_text("")
    result = cli("failed", cwd=tmp_path, env=dict(subprocess_env(), MQS_BROKER_URL="sqlite://jobs.db"))
    assert result.returncode == 2
    said = result.stderr.split(": error: ")[1]
    assert said.startswith("$MQS_BROKER_URL='sqlite://jobs.db': jobs.db is a file")


def _failed_queue(folder: str, count: int) -> list[str]:
    with MessageQueue(folder) as mq:
        @mq.task
        def flaky(n):
            raise RuntimeError(f"no {n}")

        @mq.task
        def fine():
            return 1

        handles = [mq.send(flaky, {"n": i}) for i in range(count)] + [mq.send(fine)]
        with mq.running():
            for h in handles:
                h.outcome(timeout=10)
        return [h.task_id for h in handles]


def test_failed_limit_and_footer(tmp_path):
    folder = str(tmp_path / "q")
    _failed_queue(folder, 3)
    refused = cli("failed", "--path", folder, "--limit", "-1")
    assert refused.returncode == 2 and "--limit" in refused.stderr
    some = cli("failed", "--path", folder, "--limit", "2")
    assert some.returncode == 0 and len(some.stdout.splitlines()) == 3
    assert some.stdout.splitlines()[-1].startswith("showing the newest 2 of 3 failed tasks")
    every = cli("failed", "--path", folder)
    assert every.stdout.splitlines()[-1] == "showing 3 of 3 failed task(s)"


def test_retry_says_why_nothing_was_queued(tmp_path):
    folder = str(tmp_path / "q")
    ids = _failed_queue(folder, 1)
    finished = cli("retry", ids[-1], "--path", folder)
    assert finished.returncode == 1 and "FINISHED, not FAILED" in finished.stderr
    missing = cli("retry", "--task", "nosuch", "--path", folder)
    assert missing.returncode == 1 and "no failed task named 'nosuch'" in missing.stderr
    assert "flaky" in missing.stderr  # what did fail
    again = cli("retry", ids[0], "--path", folder)
    assert again.returncode == 0 and "1 task(s) queued again" in again.stdout


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`stats --json | head -1`: the reader is gone before the output is written."""
    folder = str(tmp_path / "q")
    MessageQueue(folder).close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, as after `head` exited
    try:
        result = subprocess.run([PY, "-m", "message_queue_sqlite", "stats", "--path", folder, "--json"],
                                stdout=write_end, stderr=subprocess.PIPE, env=subprocess_env(),
                                text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("seconds", ["0", "-1", "nan"])
def test_demo_refuses_a_run_of_no_time(tmp_path, seconds):
    result = cli("demo", "--seconds", seconds, "--dir", str(tmp_path / "d"))
    assert result.returncode == 2 and "--seconds" in result.stderr
    assert not (tmp_path / "d").exists()


def test_demo_does_not_overwrite_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "main.py").write_text("mine\n")
    result = cli("demo", "--seconds", "1", "--dir", str(tmp_path))
    assert result.returncode == 2 and "--force" in result.stderr
    assert (tmp_path / "main.py").read_text() == "mine\n" and not (tmp_path / "app").exists()


def test_demo_removes_its_temporary_folder_unless_kept(tmp_path):
    env = dict(subprocess_env(), TMPDIR=str(tmp_path))
    removed = cli("demo", "--seconds", "0.5", env=env, timeout=120)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "removed its temporary folder" in removed.stdout
    assert not list(tmp_path.glob("mqs-demo-*"))
    kept = cli("demo", "--seconds", "0.5", "--keep", env=env, timeout=120)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    [folder] = tmp_path.glob("mqs-demo-*")
    assert f"kept its folder {folder}" in kept.stdout and (folder / "main.py").exists()


def test_a_file_path_is_refused_with_the_right_spelling(tmp_path):
    (tmp_path / "other.db").write_text("")
    result = cli("stats", "--path", "other.db", cwd=tmp_path)
    assert result.returncode == 2
    assert "other.db is a file" in result.stderr and "--path other_dir" in result.stderr
    result = cli("worker", "anything", "--path", "new.sqlite3", cwd=tmp_path)
    assert result.returncode == 2 and "--path new_dir" in result.stderr
    assert not (tmp_path / "new.sqlite3").exists()
    with pytest.raises(QueueStorageError, match=r"other\.db is a file; .*MessageQueue\('.*other_dir'\)"):
        MessageQueue(str(tmp_path / "other.db"))
    with pytest.raises(QueueStorageError, match=r"named like a database file"):
        MessageQueue(str(tmp_path / "jobs.sqlite"))
    assert not (tmp_path / "jobs.sqlite").exists()
    os.mkdir(tmp_path / "old.db")  # an existing folder of that name is a folder: fine
    MessageQueue(str(tmp_path / "old.db")).close()


def test_stats_counts_every_shard_file(tmp_path):
    folder = str(tmp_path / "q")
    with MessageQueue(folder, shards=3) as mq:
        mq.send_many([("t", {}) for _ in range(30)])
        result = cli("stats", "--path", folder, "--json")
    data = json.loads(result.stdout)
    assert data["totals"]["NOT_STARTED"] == 30 and len(data["shards"]) == 3


def test_pip_install_metadata_is_current():
    """`pip install .` warned about a license table and license classifiers (setuptools >= 77
    takes an SPDX expression). Building in a scratch venv needs the network, so the suite
    checks the metadata that caused the warnings; the install itself was checked by hand."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert not [c for c in project["project"]["classifiers"] if c.startswith("License ::")]
    build = project["build-system"]["requires"]
    assert any(r.startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77 for r in build)


def _mixed_queue(folder: str, shards: int = 1) -> None:
    """3 finished (2 of them with a callback that ran), 2 failed (1 with a callback), 1 waiting."""
    with MessageQueue(folder, shards=shards) as mq:
        @mq.task
        def ok(n):
            return n

        @mq.task
        def bad(n):
            raise ValueError(f"bad {n}")

        ran: list[object] = []
        handles = [mq.send(ok, {"n": 1}, callback=ran.append), mq.send(ok, {"n": 2}, callback=ran.append),
                   mq.send(ok, {"n": 3}), mq.send(bad, {"n": 4}, callback=ran.append), mq.send(bad, {"n": 5})]
        with mq.running():
            wait_until(lambda: sum(h.callback_ran for h in handles) == 3, what="three callbacks")
            for h in handles:
                h.outcome(timeout=10)
        mq.send(ok, {"n": 6})


def test_stats_says_finished_and_failed_whether_or_not_the_callback_ran(tmp_path):
    """`stats` once counted only stored statuses: a failed task whose callback ran was stored
    CALLBACKED and shown with the finished ones. Now the outcome split is in both outputs,
    per shard and in total, and "totals" keeps the stored statuses as before (a contract)."""
    folder = str(tmp_path / "q")
    _mixed_queue(folder, shards=2)
    data = json.loads(cli("stats", "--path", folder, "--json").stdout)
    assert data["outcomes"] == {"queued": 1, "scheduled": 0, "running": 0, "finished": 3, "failed": 2,
                                "cancelled": 0, "callback_ran": 3}
    assert list(data["totals"]) == [s.name for s in TaskStatus]  # the stored statuses, as before
    assert data["totals"]["CALLBACKED"] == 3 and data["totals"]["FAILED"] == 1
    assert [row["shard"] for row in data["shards"]] == ["mq-shard-0.db", "mq-shard-1.db"]
    for name in data["outcomes"]:
        assert sum(row["outcomes"][name] for row in data["shards"]) == data["outcomes"][name]
    assert all(set(row) == {"shard", "outcomes", *data["totals"]} for row in data["shards"])
    human = cli("stats", "--path", folder)
    assert human.returncode == 0, human.stderr
    table = human.stdout.splitlines()
    assert len(table) == 5, human.stdout
    header, rows, total, words = table[0].split(), table[1:3], table[3].split(), table[4]
    assert header == ["shard", "queued", "scheduled", "running", "finished", "failed", "cancelled",
                      "callback", "ran"]
    names = ["queued", "scheduled", "running", "finished", "failed", "cancelled", "callback_ran"]
    for line, row in zip(rows, data["shards"], strict=True):  # each shard's own split
        assert line.split() == [row["shard"], *(str(row["outcomes"][n]) for n in names)]
    assert total == ["total", "1", "0", "0", "3", "2", "0", "3"]
    assert words == ("5 ended: 3 finished, 2 failed; the callback ran for 3 of them. "
                     "1 queued, 0 scheduled, 0 running")
    MessageQueue(str(tmp_path / "empty")).close()
    assert cli("stats", "--path", str(tmp_path / "empty")).stdout.splitlines()[-1] == (
        "nothing ended yet. 0 queued, 0 scheduled, 0 running")


def test_failed_counts_failures_whose_callback_ran(tmp_path):
    """The footer once said some failures "may" be among the CALLBACKED ones, uncounted:
    M in "showing N of M" is now every failed task, whether or not its callback ran."""
    folder = str(tmp_path / "q")
    _mixed_queue(folder)
    result = cli("failed", "--path", folder, "--limit", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "showing the newest 1 of 2 failed tasks; raise --limit to see more")
    every = cli("failed", "--path", folder).stdout.splitlines()
    assert [line.split()[1] for line in every[:-1]] == ["bad", "bad"]  # the one whose callback ran too
    assert every[-1] == "showing 2 of 2 failed task(s)"
    named = cli("failed", "--path", folder, "--task", "bad", "--limit", "1").stdout.splitlines()
    assert named[-1] == (
        "showing the newest 1 failed task(s) named 'bad'; there are more (raise --limit to see them)")
    assert cli("failed", "--path", folder, "--task", "ok").stdout.splitlines() == [
        "showing 0 of 0 failed task(s) named 'ok'"]


def test_purge_removes_waiting_tasks_and_says_why_not(tmp_path):
    folder = str(tmp_path / "q")
    with MessageQueue(folder) as mq:
        sent = [mq.send("a", {}) for _ in range(3)] + [mq.send("b", {}, delay=600) for _ in range(2)]
    nothing = cli("purge", "--path", folder)
    assert nothing.returncode == 2 and "TASK_ID" in nothing.stderr and "--all" in nothing.stderr
    one = cli("purge", sent[0].task_id, "--path", folder)
    assert one.returncode == 0 and "1 waiting task(s) removed" in one.stdout
    gone = cli("purge", sent[0].task_id, "--path", folder)
    assert gone.returncode == 1 and "no task" in gone.stderr
    named = cli("purge", "--task", "b", "--path", folder)
    assert named.returncode == 0 and "2 waiting task(s) named 'b' removed" in named.stdout
    with MessageQueue(folder) as mq:
        @mq.task
        def a():
            return 1

        with mq.running():
            mq.get(sent[1].task_id).outcome(timeout=10)
            mq.get(sent[2].task_id).outcome(timeout=10)
    ended = cli("purge", sent[1].task_id, "--path", folder)
    assert ended.returncode == 1 and "FINISHED, not waiting" in ended.stderr
    every = cli("purge", "--all", "--path", folder)
    assert every.returncode == 0 and "0 waiting task(s) removed" in every.stdout
    data = json.loads(cli("stats", "--path", folder, "--json").stdout)
    assert data["outcomes"]["finished"] == 2 and data["outcomes"]["queued"] == 0


def _demo_folder(root: Path, failing: int, finished_without_callback: int = 0) -> tuple[MessageQueue, Path]:
    """A queue folder and app log as the demo's app leaves them, made with the app's task
    names: finished ``test1`` tasks whose callback ran (and printed), ``finished_without_callback``
    more whose callback did not run, ``failing`` ``test1`` tasks that raised, one cache-mode
    ``test`` orphaned at its sender's close (never run), and one ``test1`` still queued."""
    folder = str(root / "message_queue")
    printed: list[str] = []
    with MessageQueue(folder) as mq:
        @mq.task
        def test1(message, fail=False):
            if fail:
                raise RuntimeError(f"cannot print {message}")
            return "test1"

        @mq.task
        def test(message):
            return "test"

        handles = [mq.send(test1, {"message": "hi"}, callback=lambda o: printed.append(str(o)))
                   for _ in range(3)]
        handles += [mq.send(test1, {"message": "hi", "fail": True}) for _ in range(failing)]
        handles += [mq.send(test1, {"message": "hi"}) for _ in range(finished_without_callback)]
        with mq.running():
            wait_until(lambda: sum(h.callback_ran for h in handles) == 3, what="three callbacks")
            for h in handles:
                h.outcome(timeout=10)
        mq.send(test1, {"message": "later"})
    with MessageQueue(folder) as sender:  # a cache-mode send its sender never runs: failed at its close
        sender.send("test", {"message": "x"}, use_cache=True)
    log = root / "app-output.log"
    assert all(line.startswith("{'task_id': ") for line in printed)  # what the app's print(x) writes
    log.write_text("hello world1\n" + "".join(f"{line}\n" for line in printed))
    return MessageQueue(folder), log


def test_demo_summary_is_ok_over_what_the_app_was_promised(tmp_path, capsys):
    """Callbacks all ran, one task queued for the next run, and one failure: the cache-mode
    task orphaned at the stop, which the seed README says cache mode cannot avoid."""
    from message_queue_sqlite.cli.demo import _summarize

    queue, log = _demo_folder(tmp_path, failing=0)
    assert _summarize(queue, 0, log) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  finished                  3" in out
    assert any(line.startswith("  failed                    1  most common failure: the process that "
                               "sent this cache-mode task ended before it ran") and line.endswith("(1 of 1)")
               for line in out), out
    assert "  still queued              1  (kept in the files for the next run)" in out
    assert "  scheduled                 0" in out and "  running (must be 0)       0" in out
    assert "  callbacks                 3 recorded as run, 3 printed by the app" in out
    assert out[-1] == "demo: OK"


def test_demo_summary_counts_failures_apart_and_is_not_ok_over_them(tmp_path, capsys):
    """The demo once printed "demo: OK" over failed tasks, counted as done. The app's
    stored task failing twice: counted as failed, the most common reason named among all
    failures, NOT OK (exit 1); so is a finished task whose callback did not run."""
    from message_queue_sqlite.cli.demo import _summarize

    queue, log = _demo_folder(tmp_path, failing=2, finished_without_callback=1)
    assert _summarize(queue, 0, log) == 1
    out = capsys.readouterr().out.splitlines()
    assert "  finished                  4" in out
    assert "  failed                    3  most common failure: RuntimeError: cannot print hi (2 of 3)" in out
    assert "  callbacks                 3 recorded as run, 3 printed by the app" in out
    problems = [line for line in out if line.startswith("demo: NOT OK: ")]
    assert problems[0] == "demo: NOT OK: 1 task(s) finished but their callback did not run"
    assert problems[1].startswith("demo: NOT OK: 2 task(s) failed that were not cache-mode tasks orphaned "
                                  "at the stop, e.g. ")
    assert problems[1].endswith("(test1): RuntimeError: cannot print hi") and len(problems) == 2
    assert "demo: OK" not in out


def test_demo_verdict_accepts_only_what_the_app_was_promised():
    from message_queue_sqlite.api.queue import TaskInfo
    from message_queue_sqlite.cli.demo import verdict

    def failure(name: str, traceback: str | None = None) -> TaskInfo:
        return TaskInfo("0-1", name, TaskStatus.FAILED, False, None, "why", traceback, 0, 1,
                        1.0, None, 2.0, 0.0)

    def stats(callback_not_run: int = 0, **outcomes: int) -> dict:
        split = {"queued": 3, "scheduled": 0, "running": 0, "finished": 10, "failed": 1, "cancelled": 0,
                 "callback_ran": 10, **outcomes}
        return {"outcomes": split, "totals": {"FINISHED": callback_not_run}}  # stored: callback not run

    good, orphan = stats(), failure("test")  # claimed, given back at the stop (attempt 1), failed at close
    assert verdict(0, good, 10, [orphan]) == []
    assert verdict(1, good, 10, [orphan]) == ["main.py exited with code 1"]
    assert verdict(None, good, 10, [orphan]) == ["main.py did not exit within 60 s of its Ctrl+C "
                                                 "(the demo killed it)"]
    assert verdict(0, stats(running=2), 10, [orphan]) == ["2 task(s) left RUNNING after the app stopped"]
    assert verdict(0, good, 9, [orphan]) == ["9 callback line(s) printed, but 10 recorded as run"]
    assert verdict(0, stats(1, finished=11), 10, [orphan]) == [
        "1 task(s) finished but their callback did not run"]
    assert verdict(0, stats(finished=0, failed=0, callback_ran=0), 0, []) == ["no task finished"]
    assert "failed that were not" in verdict(0, good, 10, [failure("test", "Traceback ...")])[0]  # it ran
    assert "failed that were not" in verdict(0, good, 10, [failure("test1")])[0]
    unread = verdict(0, stats(failed=1001), 10, [orphan] * 1000)
    assert unread == ["1001 tasks failed; the newest 1000 were cache-mode tasks orphaned at the stop, "
                      "the others were not read, so cannot be told apart"]


def test_demo_ok_run_summary_agrees_with_the_files(tmp_path):
    """A real run of the app: OK, and its summary's figures are what `stats` reads after."""
    folder = tmp_path / "d"
    result = cli("demo", "--seconds", "0.5", "--dir", str(folder), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert out[-1] == "demo: OK", result.stdout
    figures = {line[2:28].strip(): line[28:].split()[0] for line in out if line.startswith("  ") and
               not line.startswith("  t=")}
    split = json.loads(cli("stats", "--path", str(folder / "message_queue"), "--json").stdout)["outcomes"]
    assert split["finished"] > 0 and figures["finished"] == str(split["finished"])
    assert figures["failed"] == str(split["failed"]) and figures["running (must be 0)"] == "0"
    assert figures["still queued"] == str(split["queued"]) and figures["scheduled"] == str(split["scheduled"])
    assert f"  callbacks                 {split['callback_ran']} recorded as run, {split['callback_ran']} " \
           "printed by the app" in out
