"""Several sending and several working processes on one queue folder; growth stays bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import subprocess_env, wait_until

from message_queue_sqlite import MessageQueue, QueueStorageError, TaskStatus

TASKS = """
import os
from message_queue_sqlite import task_function

@task_function()
def record(n, log):
    with open(log, "a") as f:   # one short line per run, appended atomically
        f.write(f"{n} {os.getpid()}\\n")
    return n
"""

SENDER = textwrap.dedent("""
    import sys, threading
    from message_queue_sqlite import MessageQueue
    folder, first, count, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    mq = MessageQueue(folder, shards=int(sys.argv[5]))
    got, done = [], threading.Event()
    def callback(result):
        got.append(result["result"])
        if len(got) == count:
            done.set()
    for n in range(first, first + count):
        mq.send("record", {"n": n, "log": log}, callback=callback)
    assert done.wait(60), f"{len(got)} of {count} callbacks"
    assert sorted(got) == list(range(first, first + count))
    mq.close()
    print("sender ok")
""")


@pytest.mark.parametrize("shards", [1, 3])
def test_two_senders_two_workers_every_task_once_no_lock_errors(tmp_path, shards):
    folder = str(tmp_path / "q")
    MessageQueue(folder, shards=shards).close()
    (tmp_path / "mpapp").mkdir()
    (tmp_path / "mpapp" / "__init__.py").write_text("")
    (tmp_path / "mpapp" / "tasks.py").write_text(TASKS)
    (tmp_path / "sender.py").write_text(SENDER)
    log = str(tmp_path / "runs.log")
    env = subprocess_env()
    workers = [subprocess.Popen([sys.executable, "-m", "message_queue_sqlite", "worker", "mpapp",
                                 "--path", folder, "--workers", "3"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for w in workers:  # both serve before any task is sent (a slow start must not be killed)
        assert w.stdout.readline().startswith("worker:"), w.stderr.read()
    senders = [subprocess.Popen([sys.executable, "sender.py", folder, str(i * 400), "400", log,
                                 str(shards)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [s.communicate(timeout=120) for s in senders]
    for w in workers:
        w.terminate()
    worker_outputs = [w.communicate(timeout=60) for w in workers]
    for sender, (out, err) in zip(senders, outputs, strict=True):
        assert sender.returncode == 0 and "sender ok" in out, err
    for worker, (_out, err) in zip(workers, worker_outputs, strict=True):
        assert worker.returncode == 0, err
        assert "locked" not in err.lower(), err
    runs = Path(log).read_text().split()
    numbers = sorted(int(n) for n in runs[0::2])
    assert numbers == list(range(800))  # every task ran exactly once (no lease expired here)
    assert len(set(runs[1::2])) == 2  # both workers took part
    with MessageQueue(folder, shards=shards) as mq:
        totals = mq.stats()["totals"]
    assert totals["CALLBACKED"] == 800 and totals["RUNNING"] == 0


def test_file_size_stays_bounded_under_steady_load(tmp_path):
    folder = tmp_path / "q"
    with MessageQueue(str(folder), workers=2, retention=0) as mq:
        @mq.task
        def work(payload):
            return len(payload)

        sizes = []
        mq.start()
        for _ in range(6):
            handles = mq.send_many([(work, {"payload": "x" * 200}) for _ in range(1500)])
            for h in handles:
                h.result(timeout=30)
            mq.engine.housekeeper._next_purge = 0
            mq.housekeeping()  # purge what ended (retention 0): its pages are reused next round
            sizes.append(os.path.getsize(folder / "mq-shard-0.db"))
        totals = mq.stats()["totals"]
    assert sum(totals.values()) <= 1  # only the newest row is kept (row ids never reused)
    assert sizes[-1] <= sizes[1] * 1.2, sizes


def test_a_corrupt_file_is_a_clear_error_naming_it(tmp_path):
    folder = tmp_path / "q"
    with MessageQueue(str(folder)) as mq:
        mq.send_many([("t", {"pad": "y" * 500}) for _ in range(500)])
    path = folder / "mq-shard-0.db"
    MessageQueue(str(folder)).close()  # checkpointed into the main file on close
    data = bytearray(path.read_bytes())
    for offset in range(4096 * 2, len(data), 4096):  # scribble over every page but the header's
        data[offset:offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with pytest.raises(QueueStorageError) as err, MessageQueue(str(folder)) as mq:
        mq.stats()
        mq.send("t", {})
    assert str(path) in str(err.value) and "malformed" in str(err.value)


def test_sends_wait_out_another_process_holding_the_write_lock(tmp_path):
    """A writer that holds the lock for a while makes sends wait, not fail."""
    folder = tmp_path / "q"
    with MessageQueue(str(folder)) as mq:
        mq.send("t", {})
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import sqlite3, sys, time
            conn = sqlite3.connect({str(folder / "mq-shard-0.db")!r}, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            print("locked", flush=True)
            sys.stdin.readline()   # hold the lock until told
            conn.execute("COMMIT")
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
        import threading

        result = {}
        sender = threading.Thread(target=lambda: result.update(id=mq.send("t", {}).task_id))
        sender.start()
        sender.join(0.3)
        assert sender.is_alive()  # waiting on the lock, not failed
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(10)
        sender.join(20)
        assert "id" in result
        assert mq.get(result["id"]).status == TaskStatus.NOT_STARTED
        wait_until(lambda: mq.stats()["totals"]["NOT_STARTED"] == 2, what="both sends stored")
