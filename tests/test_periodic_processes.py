"""The proof that a periodic slot is enqueued exactly once with no leader (and then runs at
least once, like any task): three CLI worker processes
serve one queue for over a minute (every=1 and a cron schedule every minute), one of them is
killed with SIGKILL mid-run, then all stop for 10 s and one restarts: each missed-slot policy
does what the README says. Every run is counted from a log the task itself appends to."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import pytest
from conftest import start_cli_worker, stop_processes, subprocess_env, wait_until, worker_logs

from message_queue_sqlite import MessageQueue

APP = '''
import os
from message_queue_sqlite import MessageQueue

LOG = os.environ["PERIODIC_LOG"]
mq = MessageQueue(os.environ["PERIODIC_DIR"], workers=2, visibility_timeout=2.0,
                  broker_url=os.environ.get("PERIODIC_URL") or None)


def _log(name, slot):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # one write per line: never interleaved
    try:
        os.write(fd, f"{name} {slot} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


@mq.periodic(every=1, slot_arg="scheduled_at")  # missed="latest", the default
def latest(scheduled_at):
    _log("latest", scheduled_at)


@mq.periodic(every=1, missed="skip", slot_arg="scheduled_at")
def skip(scheduled_at):
    _log("skip", scheduled_at)


@mq.periodic(every=1, missed="all", slot_arg="scheduled_at")
def catch_up(scheduled_at):
    _log("catch_up", scheduled_at)


@mq.periodic(cron="* * * * *", slot_arg="scheduled_at")
def minute(scheduled_at):
    _log("minute", scheduled_at)
'''

SLOTS = 62  # of each every=1 schedule before the outage
OUTAGE_S = 10.0


def _runs(log: Path, pid: int | None = None) -> dict[str, list[float]]:
    """The slots each schedule's task logged, in log order (of one process's runs, with ``pid``)."""
    found: dict[str, list[float]] = defaultdict(list)
    if log.exists():
        for line in log.read_text().splitlines():
            name, slot, by = line.split()
            if pid is None or int(by) == pid:
                found[name].append(datetime.fromisoformat(slot).timestamp())
    return found


def _worker(app_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    return start_cli_worker(app_dir, "periodic_app:mq", env)


def _contiguous(slots: list[float]) -> bool:
    return all(round(b - a, 6) == 1.0 for a, b in zip(slots, slots[1:], strict=False))


@pytest.mark.timeout(300)
def test_three_worker_processes_enqueue_each_slot_exactly_once_and_apply_the_missed_policies(
        tmp_path, backend, broker_url):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "periodic_app.py").write_text(APP)
    log = tmp_path / "runs.log"
    folder = str(tmp_path / "q")
    env = subprocess_env()
    env.update(PERIODIC_LOG=str(log), PERIODIC_DIR=folder, PERIODIC_URL=broker_url or "")
    workers = [_worker(app_dir, env) for _ in range(3)]
    killed = None
    try:
        # a minute and more of slots with three schedulers racing for every one (counted from
        # the first run, however long the workers took to start); one killed halfway
        wait_until(lambda: len(set(_runs(log)["latest"])) >= SLOTS / 2, timeout=SLOTS + 60,
                   what=lambda: f"half the run\n{worker_logs(app_dir)}")
        killed = workers[0]
        killed.kill()
        wait_until(lambda: len(set(_runs(log)["latest"])) >= SLOTS and _runs(log)["minute"],
                   timeout=SLOTS + 60,
                   what=lambda: f"a minute of slots, a minute slot included\n{worker_logs(app_dir)}")
        stop_processes(workers[1:])
        assert all(w.returncode == 0 for w in workers[1:]), worker_logs(app_dir)
        with MessageQueue(folder, broker_url=broker_url) as mq:
            before = {s.name: s.last_slot for s in mq.schedules()}
        ran_before = _runs(log)
        # all stopped: nothing runs for ten seconds
        outage_end = time.time() + OUTAGE_S
        wait_until(lambda: time.time() >= outage_end, timeout=OUTAGE_S + 5, what="the outage")
        assert _runs(log) == ran_before, "a task ran while every worker was stopped"
        restarted_at = time.time()
        workers.append(_worker(app_dir, env))
        wait_until(lambda: all(len([s for s in _runs(log)[name] if s > restarted_at]) >= 3
                               for name in ("latest", "skip", "catch_up")),
                   timeout=60,
                   what=lambda: "three on-time runs of each schedule after the restart\n"
                                + worker_logs(app_dir))
        stop_processes(workers[-1:])
        with MessageQueue(folder, broker_url=broker_url) as mq:
            stored = Counter((t.task_name) for t in mq.tasks(limit=100_000))
    finally:
        stop_processes(workers)

    runs = _runs(log)
    # Exactly once per slot enqueued: one stored task per slot, and every one ran. A run is at
    # least once, like any task's: a slot the SIGKILLed worker had started runs again after its
    # lease expired, so a slot may show twice only if the killed worker ran it first.
    killed_runs = _runs(log, pid=killed.pid)
    for name, slots in runs.items():
        twice = [slot for slot, n in Counter(slots).items() if n > 1]
        assert max(Counter(slots).values()) <= 2, (name, Counter(slots).most_common(3))
        assert all(slot in killed_runs[name] for slot in twice), (name, twice, killed_runs[name][-3:])
        assert len(twice) <= 2, (name, twice)  # it ran at most its 2 threads' worth when killed
        assert stored[name] == len(set(slots)), (name, stored[name], len(set(slots)))
    reruns = sum(len(slots) - len(set(slots)) for slots in runs.values())
    # The minute and more before the outage: every slot ran, none missing, through the kill (a
    # slot enqueued as the workers stopped waits, stored, and runs after the restart).
    upto = {name: sorted({s for s in runs[name] if s <= before[name]}) for name in before}
    window = upto["latest"]
    assert window[-1] == before["latest"] and _contiguous(window), window
    assert len(window) >= SLOTS
    for name in ("skip", "catch_up"):
        assert upto[name][-1] == before[name] and _contiguous(upto[name]), upto[name]
    assert ran_before["minute"] and all(s % 60 == 0 for s in runs["minute"])
    # After the outage: skip runs only slots due since the restart; latest one catch-up run for
    # the most recent missed slot, then every slot; all every missed slot, oldest first.
    after = {name: sorted({s for s in runs[name] if s > before[name]})
             for name in ("latest", "skip", "catch_up")}
    assert _contiguous(after["skip"]) and after["skip"][0] > restarted_at, after["skip"][:3]
    assert after["skip"][0] - before["skip"] >= OUTAGE_S, (before["skip"], after["skip"][:3])
    # (the restarted scheduler plans the two schedules a moment apart: a second may tick between)
    assert _contiguous(after["latest"]) and after["latest"][0] in (after["skip"][0] - 1,
                                                                   after["skip"][0] - 2), (
        after["latest"][:3], after["skip"][:3])
    assert after["latest"][0] - before["latest"] >= OUTAGE_S, (before["latest"], after["latest"][:3])
    assert after["catch_up"][0] == before["catch_up"] + 1, after["catch_up"][:3]
    assert _contiguous(after["catch_up"]), after["catch_up"]
    assert len(after["catch_up"]) >= OUTAGE_S
    print(f"\n{backend}: slots before the outage {len(window)}, runs {sum(len(v) for v in runs.values())}, "
          f"slots enqueued twice 0, missing 0, runs again after the SIGKILL {reruns}; after the outage: "
          f"skip from +{after['skip'][0] - before['skip']:.0f} s, "
          f"latest one catch-up then every slot, all {len(after['catch_up'])} runs from the first "
          "missed slot")
    assert os.path.exists(folder) or broker_url
    assert killed is not None and killed.returncode == -signal.SIGKILL
