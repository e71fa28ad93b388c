"""Global concurrency limits, on both backends: ``@mq.task(concurrency=N)`` holds however many
threads and worker processes claim, enforced in the claim statement; other tasks of the queue
are not held back; bad values are refused by name."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import start_cli_worker, stop_processes, subprocess_env, wait_until

from message_queue_sqlite import MessageQueue


def test_a_limited_task_never_runs_more_than_its_limit_in_one_process(make_queue):
    mq = make_queue(workers=8)
    lock = threading.Lock()
    now = [0]
    peak = [0]

    @mq.task(concurrency=2)
    def limited(n):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.01)
        with lock:
            now[0] -= 1

    @mq.task
    def free(n):
        return n

    with mq.running():
        limited_handles = mq.send_many([(limited, {"n": n}) for n in range(40)])
        free_handles = mq.send_many([(free, {"n": n}) for n in range(40)])
        assert [h.result(timeout=30) for h in free_handles] == list(range(40))  # not held back
        for handle in limited_handles:
            handle.result(timeout=60)
    assert peak[0] == 2, peak[0]


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True])
def test_a_bad_concurrency_is_refused_by_name(make_queue, bad):
    mq = make_queue()
    with pytest.raises(ValueError, match=r"concurrency=.* must be an integer >= 1"):
        mq.task(concurrency=bad)


APP = '''
import os
import time
from message_queue_sqlite import MessageQueue

mq = MessageQueue(os.environ["LIMIT_DIR"], workers=4, broker_url=os.environ.get("LIMIT_URL") or None)
LOG = os.environ["LIMIT_LOG"]


def _log(event, n, stamp=None):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event} {n} {time.time() if stamp is None else stamp:.6f} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


@mq.task(concurrency=2)
def limited(n):
    _log("start", n)
    time.sleep(0.02)
    _log("end", n)


@mq.task(rate="10/s")
def rated(n):
    _log("ran", n, mq.engine.shards[0].wall_now())  # by the backend's clock, as the windows are
'''


def _start_workers(tmp_path: Path, broker_url: str | None, count: int) -> tuple[list[subprocess.Popen], Path]:
    """``count`` CLI workers of APP on this test's queue; returns them and the log the tasks write."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "limit_app.py").write_text(APP)
    log = tmp_path / "runs.log"
    env = subprocess_env()
    env.update(LIMIT_DIR=str(tmp_path / "q"), LIMIT_URL=broker_url or "", LIMIT_LOG=str(log))
    return [start_cli_worker(app, "limit_app:mq", env) for _ in range(count)], log


def test_three_worker_processes_hold_a_limit_of_two(tmp_path, backend, broker_url):
    """3 CLI worker processes x 4 threads, 60 runs of a task limited to 2: the most running at
    once, replayed from the log the task writes (start and end times), is 2."""
    workers, log = _start_workers(tmp_path, broker_url, 3)
    try:
        with MessageQueue(str(tmp_path / "q"), broker_url=broker_url) as sender:
            # the limit is the workers' declaration: wait until it is stored, then send
            wait_until(lambda: sender.limits().get("limited") == 2, timeout=60,
                       what="the workers to declare the limit")
            handles = sender.send_many([("limited", {"n": n}) for n in range(60)])
            for handle in handles:
                handle.result(timeout=120)
    finally:
        stop_processes(workers)
    peak, pids = _peak(log)
    print(f"\n{backend}: 60 runs limited to 2 over 3 worker processes x 4 threads: at most {peak} at once "
          f"(ran in {len(pids)} process(es))")
    assert peak == 2


def _peak(log: Path) -> tuple[int, set[str]]:
    events = []
    pids = set()
    for line in log.read_text().splitlines():
        event, _n, stamp, pid = line.split()
        events.append((float(stamp), 0 if event == "end" else 1))  # an end before a start at a tie
        pids.add(pid)
    running = peak = 0
    for _stamp, kind in sorted(events):
        running += 1 if kind else -1
        peak = max(peak, running)
    return peak, pids


# -- rate limits -------------------------------------------------------------------------------
def test_a_rate_limit_holds_per_window_and_defers_the_rest_once(make_queue):
    mq = make_queue(workers=4)
    ran: list[float] = []

    @mq.task(rate="5/s")
    def limited(n):
        ran.append(mq.engine.shards[0].wall_now())

    handles = mq.send_many([(limited, {"n": n}) for n in range(12)])
    with mq.running():
        for handle in handles:
            handle.result(timeout=30)
    windows: dict[int, int] = {}
    for stamp in ran:
        windows[int(stamp // 1)] = windows.get(int(stamp // 1), 0) + 1
    assert max(windows.values()) <= 5 and len(windows) >= 3, windows
    infos = mq.tasks(limit=100)
    assert max(t.attempts for t in infos) <= 2  # deferred once at most: nothing loops
    assert mq.stats()["outcomes"]["finished"] == 12


@pytest.mark.parametrize("bad", ["100", "0/m", "5/w", "x/s", 5, "5/0s"])
def test_a_bad_rate_is_refused_by_name(make_queue, bad):
    mq = make_queue()
    with pytest.raises(ValueError, match=r"rate=.* is not a rate"):
        mq.task(rate=bad)





def test_two_worker_processes_hold_a_rate_limit_per_window(tmp_path, backend, broker_url):
    """2 CLI worker processes x 4 threads, 35 runs of a task limited to 10 per second: counted
    from the log the task writes (the backend's clock), no one-second window holds more than 10."""
    workers, log = _start_workers(tmp_path, broker_url, 2)
    try:
        with MessageQueue(str(tmp_path / "q"), broker_url=broker_url) as sender:
            handles = sender.send_many([("rated", {"n": n}) for n in range(35)])
            for handle in handles:
                handle.result(timeout=120)
    finally:
        stop_processes(workers)
    windows: dict[int, int] = {}
    pids = set()
    for line in log.read_text().splitlines():
        _event, _n, stamp, pid = line.split()
        windows[int(float(stamp) // 1)] = windows.get(int(float(stamp) // 1), 0) + 1
        pids.add(pid)
    counts = [windows[w] for w in sorted(windows)]
    print(f"\n{backend}: 35 runs at rate 10/s over 2 worker processes: per-second counts {counts}")
    assert sum(counts) == 35 and max(counts) <= 10, counts
