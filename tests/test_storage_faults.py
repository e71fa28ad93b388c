"""Storage faults found by the adversarial run of issue 17 (SQLite): a foreign file dropped into a
live queue folder, a multi-shard send that fails on one shard, storage errors that must say what
happened and what to do, and arguments too deeply nested to store."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env, wait_until

from message_queue_sqlite import MessageQueue, PartiallySentError, QueueStorageError

PY = sys.executable

HOLD_TASKS = """
import os
import re
import threading
import time

from message_queue_sqlite import task_function


@task_function()
def hold(marks: str) -> int:
    '''Say which process started it, then wait (bounded) until the test lets it end.'''
    open(os.path.join(marks, f"started-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(marks, "go")) and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    return os.getpid()
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start_worker(app: Path, folder: Path, name: str) -> subprocess.Popen:
    with open(app / f"{name}.log", "w") as out:
        return subprocess.Popen([PY, "-m", "message_queue_sqlite", "worker", "holdapp", "--path", str(folder),
                                 "--workers", "1", "--visibility-timeout", "1.5"],
                                cwd=app, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)


def _logs(app: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(app.glob("*.log")))


def test_a_foreign_file_in_a_live_folder_is_refused_and_recovery_goes_on(tmp_path):
    """Issue 17 finding 4: another application's database appearing as the next shard name
    made shard adoption raise inside housekeeping, before renewal and recovery, every round, so
    a SIGKILLed worker's task stayed RUNNING forever. Now the file is refused (logged once,
    naming it and why), untouched, and the other worker still recovers and runs the task."""
    app = tmp_path / "app"
    (app / "holdapp").mkdir(parents=True)
    (app / "holdapp" / "__init__.py").write_text("from . import tasks\n")
    (app / "holdapp" / "tasks.py").write_text(HOLD_TASKS)
    marks = tmp_path / "marks"
    marks.mkdir()
    folder = tmp_path / "q"
    sender = MessageQueue(str(folder), shards=1)
    workers: list[subprocess.Popen] = []
    try:
        first = _start_worker(app, folder, "worker-a")
        workers.append(first)
        handle = sender.send("hold", {"marks": str(marks)})
        wait_until(lambda: (marks / f"started-{first.pid}").exists(), timeout=30,
                   what=lambda: f"worker A to start the task\n{_logs(app)}")
        second = _start_worker(app, folder, "worker-b")  # idle: A holds the only task
        workers.append(second)
        wait_until(lambda: "worker:" in (app / "worker-b.log").read_text(), timeout=30,
                   what=lambda: f"worker B to start\n{_logs(app)}")
        made = tmp_path / "invoices.db"  # made elsewhere and moved in whole, as a copied file lands
        conn = sqlite3.connect(made)
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        conn.execute("INSERT INTO invoices (amount) VALUES (12.5)")
        conn.commit()
        conn.close()
        before = _digest(made)
        foreign = folder / "mq-shard-1.db"
        os.rename(made, foreign)
        # both workers have met the file (refused it, or failed on it) before A dies
        for name in ("worker-a", "worker-b"):
            wait_until(lambda name=name: "mq-shard-1.db" in (app / f"{name}.log").read_text(), timeout=30,
                       what=lambda: f"the workers to meet the foreign file\n{_logs(app)}")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        (marks / "go").touch()
        # B recovers A's expired lease and runs the task, foreign file or not
        assert handle.result(timeout=30) == second.pid, _logs(app)
        log_b = (app / "worker-b.log").read_text()
        refusals = [line for line in log_b.splitlines() if "refus" in line and "mq-shard-1.db" in line]
        assert len(refusals) == 1, _logs(app)
        assert "another application's SQLite database" in refusals[0], refusals
        assert "housekeeping failed" not in log_b, _logs(app)
        assert _digest(foreign) == before
        assert second.poll() is None, _logs(app)
    finally:
        sender.close()
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_arguments_nested_too_deep_raise_the_documented_type_error(tmp_path):
    """Issue 17 finding 8: 100,000 levels raised RecursionError at send; the documented error for
    arguments that cannot be stored is TypeError, and it names the task, argument and depth."""
    from message_queue_sqlite.serialization import dumps_call, dumps_result

    with MessageQueue(str(tmp_path / "q")) as mq:
        deep = _nested(100_000)
        with pytest.raises(TypeError, match=r"argument 'tree' of task 'walk' is nested 100000 levels deep"):
            mq.send("walk", {"flat": [1, 2], "tree": deep})
        with pytest.raises(TypeError, match=r"positional argument 1 of task 'walk' is nested 100000 levels"):
            dumps_call("walk", (1, deep), {})
        with pytest.raises(TypeError, match=r"return value \(list\) is nested 100000 levels deep"):
            dumps_result(deep)
        mq.send("walk", {"tree": _nested(50)})  # a modest depth still goes through


def _shim(tmp_path: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from storage_faults import build_shim

    built, why = build_shim(str(tmp_path / "shim"))
    if built is None:
        pytest.skip(f"cannot build the storage-fault shim: {why}")
    return built


SEND_UNDER_FAULT = """
import sys
from pathlib import Path
from message_queue_sqlite import MessageQueue, QueueStorageError
folder, control, mode = sys.argv[1:]
for phase in ("open", "send"):  # opening (a read that sets up the WAL index) can fail too
    Path(control).write_text(mode if phase == "open" else "off")
    try:
        mq = MessageQueue(folder)
        Path(control).write_text(mode)
        mq.send("t", {"payload": "x" * 5000})
    except QueueStorageError as exc:
        print(phase, "QueueStorageError:", exc)
    except Exception as exc:
        print(phase, "OTHER", type(exc).__name__, exc)
    else:
        print(phase, "SENT")
"""


@pytest.mark.parametrize(("mode", "condition"), [
    ("EIO", r"an I/O error \(EIO\) from the device or file system \(SQLITE_IOERR_\w+"),
    ("EROFS", r"is read-only \(EROFS"),
])
def test_eio_and_erofs_reach_the_sender_as_a_storage_error_saying_what_to_do(tmp_path, mode, condition):
    """Issue 17 finding 8: EIO and EROFS under SQLite reached senders as a bare
    ``sqlite3.OperationalError: disk I/O error``. An LD_PRELOAD shim fails the shard files'
    writes with the errno; the sender gets QueueStorageError naming the file, the condition and
    the remedy; afterwards the file is intact and sends go through again."""
    shim = _shim(tmp_path)
    folder = tmp_path / "q"
    MessageQueue(str(folder)).close()
    control = tmp_path / "control"
    env = {**subprocess_env(), "LD_PRELOAD": shim, "MQS_FAULT_CONTROL": str(control),
           "MQS_FAULT_RECHECK_MS": "0"}
    done = subprocess.run([PY, "-c", SEND_UNDER_FAULT, str(folder), str(control), mode], env=env,
                          capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["open", "send"], done.stdout + done.stderr
    for line in lines:
        assert line.split(" ", 1)[1].startswith("QueueStorageError:"), line
        assert str(folder / "mq-shard-0.db") in line, line
        assert re.search(condition, line), line
        assert "retry" in line, line
    done = subprocess.run([PY, "-c", SEND_UNDER_FAULT, str(folder), str(control), "off"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["open", "SENT", "send", "SENT"], done.stdout + done.stderr
    conn = sqlite3.connect(folder / "mq-shard-0.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM mqs_tasks").fetchone()[0] == 2  # the two sent without fault
    conn.close()


def _fail_third_enqueue(mq: MessageQueue, before_failing=lambda shards: None) -> None:
    """Make the third shard a send touches fail (before storing anything), after the first two
    committed: ``before_failing`` runs first (e.g. a worker claims what they stored)."""
    from faulty import FaultyShard

    calls = iter(range(1_000_000))
    real = list(mq.engine.backend.shards)

    def error() -> BaseException:
        before_failing(real)
        return QueueStorageError("enqueue on mq-shard-X.db failed: database or disk is full")

    for index, shard in enumerate(real):
        faulty = FaultyShard(shard)
        faulty.fail("enqueue", error, matches=lambda *a, **k: next(calls) == 2)
        mq.engine.backend.shards[index] = faulty


def test_the_part_of_a_multi_shard_send_that_stays_sent_gets_its_callbacks_and_handles(tmp_path):
    """The tasks of a PartiallySentError run: their callbacks run in the sender as for any send,
    and the error holds their handles (it once held ids only, and their callbacks never ran)."""
    import json
    import time

    from message_queue_sqlite import TaskStatus
    from message_queue_sqlite.backends.base import Completion

    claims = []

    def claim_everything(shards) -> None:
        for shard in shards:
            claims.extend(shard.complete_and_claim([], "thief", 100, 30.0)[1])

    got: list[dict] = []
    with MessageQueue(str(tmp_path / "q"), shards=3) as mq:
        _fail_third_enqueue(mq, claim_everything)
        with pytest.raises(PartiallySentError) as caught:
            mq.send_many([("t", {"n": n}) for n in range(9)], callback=got.append)
        error = caught.value
        assert claims and sorted(error.handles) == sorted(error.sent)
        assert all(error.handles[i].task_id == error.sent[i] for i in error.sent)
        now = time.time()
        for claim in claims:  # the "thief" worker finishes what it claimed
            finished = Completion(claim.row_id, claim.attempt, TaskStatus.FINISHED,
                                  json.dumps(claim.row_id), None, now, now)
            mq.engine.backend.shards[claim.shard].complete_and_claim([finished], "thief", 0, 30.0)
        wait_until(lambda: len(got) == len(error.sent),
                   what=lambda: f"{len(error.sent)} callbacks, got {got}")
        assert sorted(outcome["task_id"] for outcome in got) == sorted(error.sent.values())
        assert all(outcome["status"] == TaskStatus.FINISHED for outcome in got)
        for index, handle in error.handles.items():
            assert handle.result(timeout=10) == int(error.sent[index].split("-")[1])


def _rows(folder: Path, shards: int) -> list[tuple[int, int, str]]:
    found = []
    for index in range(shards):
        conn = sqlite3.connect(folder / f"mq-shard-{index}.db")
        found += [(index, row_id, status) for row_id, status in
                  conn.execute("SELECT id, status FROM mqs_tasks WHERE status <> 0")]
        conn.close()
    return found


def test_a_multi_shard_send_that_fails_on_one_shard_takes_back_the_rest(tmp_path):
    """Issue 17 finding 5: send_many raised when one shard failed, yet the part stored on the
    other shards stayed committed and ran (the caller had no ids). Now what is still waiting
    is taken back: the original error, and nothing stored anywhere."""
    folder = tmp_path / "q"
    with MessageQueue(str(folder), shards=3) as mq:
        _fail_third_enqueue(mq)
        with pytest.raises(QueueStorageError, match="disk is full") as caught:
            mq.send_many([("t", {"n": n}) for n in range(9)])
        assert not isinstance(caught.value, PartiallySentError)
        assert any("taken back" in note for note in caught.value.__notes__)
        assert _rows(folder, 3) == []
        assert sum(mq.engine.backend.shards[i].inner.count_tasks().get((1, 0), 0) for i in range(3)) == 0


def test_a_multi_shard_send_whose_sent_part_was_claimed_says_which_ids_were_sent(tmp_path):
    """What a worker claimed before the send could take it back stays sent: PartiallySentError
    names those ids (by request index), the indexes not stored, and the cause."""
    folder = tmp_path / "q"
    claimed: list[tuple[int, int]] = []

    def claim_everything(shards) -> None:
        for shard in shards:
            _, got = shard.complete_and_claim([], "thief", 100, 30.0)
            claimed.extend((shard.index, c.row_id) for c in got)

    with MessageQueue(str(folder), shards=3) as mq:
        _fail_third_enqueue(mq, claim_everything)
        with pytest.raises(PartiallySentError, match=r"stored \d of 9 tasks") as caught:
            mq.send_many([("t", {"n": n}) for n in range(9)])
    error = caught.value
    assert claimed and isinstance(error.cause, QueueStorageError)
    assert sorted(error.sent.values()) == sorted(f"{s}-{r}" for s, r in claimed)
    assert sorted([*error.sent, *error.failed]) == list(range(9))
    stored = _rows(folder, 3)
    assert sorted(f"{s}-{r}" for s, r, _ in stored) == sorted(error.sent.values())
    assert all(status == 2 for _, _, status in stored)  # RUNNING, under the thief's lease
