"""Periodic tasks: slot arithmetic (DST included), missed-slot policies, exactly one enqueue
per slot however many schedulers try, skip_if_running, the stored schedules and their CLI.
The real-process proof (3 CLI workers, a kill, an outage) is in test_periodic_processes.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from conftest import subprocess_env, wait_until

from message_queue_sqlite import MessageQueue, TaskStatus, task_function
from message_queue_sqlite.core.registry import TaskRegistry
from message_queue_sqlite.core.schedule import LATE_LIMIT_S, Schedule, plan


def _utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


# -- slot arithmetic ------------------------------------------------------------------
def test_every_slots_are_multiples_of_the_period_since_the_epoch():
    s = Schedule(every=timedelta(minutes=5))
    assert s.every == 300.0
    t = _utc(2026, 1, 1, 12, 7, 30)
    assert s.next_after(t) == _utc(2026, 1, 1, 12, 10)
    assert s.newest_at_or_before(t) == _utc(2026, 1, 1, 12, 5)
    assert s.newest_at_or_before(_utc(2026, 1, 1, 12, 10)) == _utc(2026, 1, 1, 12, 10)  # inclusive
    assert list(s.slots_between(_utc(2026, 1, 1, 12, 0), _utc(2026, 1, 1, 12, 15))) == [
        _utc(2026, 1, 1, 12, 5), _utc(2026, 1, 1, 12, 10), _utc(2026, 1, 1, 12, 15)]


def test_cron_slots_and_their_inclusive_newest():
    s = Schedule(cron="*/5 * * * *")
    t = _utc(2026, 1, 1, 12, 7, 30)
    assert s.next_after(t) == _utc(2026, 1, 1, 12, 10)
    assert s.newest_at_or_before(t) == _utc(2026, 1, 1, 12, 5)
    assert s.newest_at_or_before(_utc(2026, 1, 1, 12, 10)) == _utc(2026, 1, 1, 12, 10)
    assert s.next_after(_utc(2026, 1, 1, 12, 10)) == _utc(2026, 1, 1, 12, 15)


def _local(schedule: Schedule, slots) -> list[str]:
    return [schedule.slot_datetime(slot).isoformat() for slot in slots]


def test_cron_across_the_spring_gap_runs_once_just_after_it():
    s = Schedule(cron="30 2 * * *", tz="Europe/Berlin")  # 02:30 does not exist on 2026-03-29
    start = _utc(2026, 3, 28, 12)
    assert _local(s, s.slots_between(start, start + 3 * 86400)) == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]


def test_cron_across_the_autumn_repeat_runs_once_at_the_first_occurrence():
    s = Schedule(cron="30 2 * * *", tz="Europe/Berlin")  # 02:30 happens twice on 2026-10-25
    start = _utc(2026, 10, 24, 12)
    assert _local(s, s.slots_between(start, start + 3 * 86400)) == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"]


def test_an_interval_in_the_repeated_hour_runs_at_each_real_instant():
    s = Schedule(cron="0,30 * * * *", tz="Europe/Berlin")
    start = _utc(2026, 10, 24, 23, 45)  # 01:45 CEST
    got = _local(s, s.slots_between(start, start + 3 * 3600))
    assert got == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:00:00+01:00",
                   "2026-10-25T02:30:00+01:00", "2026-10-25T03:00:00+01:00", "2026-10-25T03:30:00+01:00"]
    stamps = list(s.slots_between(start, start + 3 * 3600))
    assert all(b - a == 1800 for a, b in zip(stamps, stamps[1:], strict=False))


# -- bad declarations -------------------------------------------------------------------
@pytest.mark.parametrize("options, words", [
    ({}, "exactly one of every"),
    ({"every": 5, "cron": "* * * * *"}, "exactly one of every"),
    ({"every": 0}, "every=0 is invalid"),
    ({"every": "5"}, "every='5' is invalid"),
    ({"cron": "61 * * * *"}, "cron='61 * * * *' is not a valid cron expression"),
    ({"every": 5, "missed": "never"}, "missed='never' is not a policy"),
    ({"every": 5, "tz": "Mars/Olympus"}, "tz='Mars/Olympus' is not a time zone"),
    ({"every": 5, "max_delay": -1}, "max_delay=-1 is invalid"),
    ({"every": 5, "slot_arg": "not a name"}, "slot_arg='not a name'"),
])
def test_bad_schedules_are_refused_in_the_words_typed(options, words):
    with pytest.raises((ValueError, TypeError), match=words.replace("*", r"\*").replace("(", r"\(")):
        Schedule(**options)


def test_cron_without_the_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cronsim", None)  # as if not installed
    with pytest.raises(ImportError, match=r"message_queue_sqlite\[cron\]"):
        Schedule(cron="* * * * *")
    assert Schedule(every=1).every == 1.0  # every= needs nothing


def test_a_periodic_task_that_cannot_take_its_arguments_is_refused_at_declaration(tmp_path):
    with MessageQueue(str(tmp_path / "q")) as mq:
        with pytest.raises(TypeError, match="periodic task 'needs_x' cannot be called by its schedule"):
            @mq.periodic(every=60)
            def needs_x(x):
                return x
        with pytest.raises(TypeError, match="needs every=SECONDS"):
            mq.periodic(lambda: None)
        with pytest.raises(ValueError, match="cannot use_cache=True"):
            mq.periodic(every=5, use_cache=True)(lambda: None)
        with pytest.raises(TypeError, match="unknown task option"):
            mq.task(evry=5)(lambda: None)


def test_the_seed_decorator_declares_a_periodic_task_too():
    @task_function(every=30, missed="skip")
    def beat():
        return "beat"

    registry = TaskRegistry()
    definition = registry.register(beat)
    assert definition.options.schedule == Schedule(every=30, missed="skip")


# -- what runs after an outage ------------------------------------------------------------
def test_a_slot_a_live_scheduler_reaches_late_still_runs():
    # watching since 100: slots 101..103 came due while it was alive (a stall), all run
    assert plan(Schedule(every=1, missed="skip"), 100.0, 103.5, 100.0).run == (101.0, 102.0, 103.0)


def test_nothing_is_due_before_the_next_slot():
    assert plan(Schedule(every=1), 100.0, 100.9, 0.0) is None


@pytest.mark.parametrize("policy, runs, skipped", [
    ("skip", (110.0,), 9),  # only the slot due since the scheduler started
    ("latest", (109.0, 110.0), 8),  # plus one catch-up for the most recent missed slot
    ("all", tuple(float(s) for s in range(101, 111)), 0),
])
def test_missed_slots_follow_the_policy(policy, runs, skipped):
    decision = plan(Schedule(every=1, missed=policy), 100.0, 110.5, 109.9)
    assert decision.run == runs and decision.decided == 110.0 and decision.skipped == skipped


def test_latest_respects_max_delay_and_all_respects_backfill():
    assert plan(Schedule(every=1, max_delay=0.5), 100.0, 110.5, 109.9).run == (110.0,)
    assert plan(Schedule(every=1, missed="all", backfill=3), 100.0, 110.5, 109.9).run == (108.0, 109.0, 110.0)


def test_a_stall_past_the_late_limit_counts_as_missed():
    now = 1000.0 + LATE_LIMIT_S + 5
    decision = plan(Schedule(every=1, missed="skip"), 1000.0, now, 0.0)
    assert decision.run[0] >= now - LATE_LIMIT_S


# -- exactly once, in one process and across queue objects --------------------------------
def _periodic_app(make_queue, log: list[str], lock: threading.Lock, **options):
    mq = make_queue(workers=2)

    @mq.periodic(every=0.2, slot_arg="scheduled_at", **options)
    def tick(scheduled_at):
        with lock:
            log.append(scheduled_at)

    return mq


def test_two_schedulers_on_one_queue_enqueue_each_slot_once(make_queue):
    log: list[str] = []
    lock = threading.Lock()
    a = _periodic_app(make_queue, log, lock)
    b = _periodic_app(make_queue, log, lock)  # a second queue object: its own scheduler
    declared = a.engine.shards[0].wall_now()
    a.start()
    b.start()
    wait_until(lambda: len(log) >= 12, timeout=20, what="12 slots to run")
    a.stop()
    b.stop()
    counts = Counter(log)
    assert max(counts.values()) == 1, counts
    slots = sorted(datetime.fromisoformat(s).timestamp() for s in counts)
    gaps = [round(b - a, 3) for a, b in zip(slots, slots[1:], strict=False)]
    assert set(gaps) == {0.2}, gaps  # none missing
    assert slots[0] > declared  # a new schedule starts with its next slot, nothing for the past
    stored = [t for t in a.tasks(limit=1000) if t.task_name == "tick"]
    assert len(stored) == len(log)


def test_skip_if_running_skips_slots_while_the_previous_run_runs(make_queue):
    release = threading.Event()
    started: list[str] = []
    mq = make_queue(workers=2)

    @mq.periodic(every=0.1, skip_if_running=True, slot_arg="scheduled_at")
    def slow(scheduled_at):
        started.append(scheduled_at)
        release.wait(30)

    mq.start()
    wait_until(lambda: started, timeout=10, what="the first run")
    first = mq.schedules()[0].last_slot
    wait_until(lambda: mq.schedules()[0].last_slot >= first + 0.5, timeout=10, what="5 slots to pass")
    assert len(started) == 1 and len([t for t in mq.tasks(limit=100)]) == 1  # skipped, not stored
    release.set()
    wait_until(lambda: len(started) >= 2, timeout=10, what="a run after the first ended")
    mq.stop()


def test_schedules_are_stored_listed_and_pruned(make_queue):
    mq = make_queue(workers=1)

    @mq.periodic(cron="0 0 1 1 *")  # once a year: declared, nothing runs in this test
    def yearly():
        return None

    @mq.periodic(every=0.1)
    def often():
        return "ok"

    mq.start()
    wait_until(lambda: any(s.name == "often" and s.last_status == TaskStatus.FINISHED
                           for s in mq.schedules()), timeout=10, what="a finished run of 'often'")
    mq.stop()
    by_name = {s.name: s for s in mq.schedules()}
    assert by_name["yearly"].expression == "cron 0 0 1 1 * (UTC)"
    assert by_name["often"].expression == "every 0.1s"
    nxt = datetime.fromtimestamp(by_name["yearly"].next_run, timezone.utc)
    assert (nxt.month, nxt.day, nxt.hour, nxt.minute) == (1, 1, 0, 0)
    assert not any(s.orphaned for s in by_name.values())
    with pytest.raises(LookupError, match="no schedule named 'nope'"):
        mq.prune_schedules(["nope"])
    assert mq.prune_schedules(["yearly"]) == ["yearly"]
    assert [s.name for s in mq.schedules()] == ["often"]


def test_a_schedule_unseen_while_others_are_seen_is_orphaned(tmp_path):
    from message_queue_sqlite.engine.scheduler import ORPHANED_AFTER_S

    folder = str(tmp_path / "q")
    with MessageQueue(folder) as mq:
        shard = mq.engine.shards[0]
        now = shard.wall_now()
        shard.declare_schedules([("gone", "every 60s", now, now + 60)])
        conn = shard._connection()
        conn.execute("UPDATE mqs_schedules SET seen_at = seen_at - ? WHERE name = 'gone'",
                     (ORPHANED_AFTER_S + 1,))
        shard.declare_schedules([("kept", "every 60s", now, now + 60)])
        assert {s.name: s.orphaned for s in mq.schedules()} == {"gone": True, "kept": False}
        result = subprocess.run([sys.executable, "-m", "message_queue_sqlite", "schedules", "--path", folder,
                                 "--json"], capture_output=True, text=True, env=subprocess_env(), timeout=60)
        assert result.returncode == 0, result.stderr
        listed = {row["name"]: row for row in json.loads(result.stdout)}
        assert listed["gone"]["orphaned"] and not listed["kept"]["orphaned"]
        text = subprocess.run([sys.executable, "-m", "message_queue_sqlite", "schedules", "--path", folder],
                              capture_output=True, text=True, env=subprocess_env(), timeout=60)
        assert "gone" in text.stdout and "orphaned" in text.stdout, text.stdout
        pruned = subprocess.run([sys.executable, "-m", "message_queue_sqlite", "schedules", "--path", folder,
                                 "--prune"], capture_output=True, text=True, env=subprocess_env(), timeout=60)
        assert pruned.returncode == 0 and "gone" in pruned.stdout, pruned
        assert [s.name for s in mq.schedules()] == ["kept"]


def test_all_runs_at_most_its_cap_per_decision_oldest_first(monkeypatch):
    import message_queue_sqlite.core.schedule as schedule_module

    monkeypatch.setattr(schedule_module, "MAX_SLOTS_PER_PLAN", 5)
    decision = plan(Schedule(every=1, missed="all"), 100.0, 200.5, 200.2)
    assert decision.run == (101.0, 102.0, 103.0, 104.0, 105.0) and decision.decided == 200.0


def test_skipped_missed_slots_are_logged(make_queue, caplog):
    mq = make_queue(workers=1)

    @mq.periodic(every=0.05, missed="skip")
    def quick():
        return None

    mq.start()
    wait_until(lambda: mq.schedules() and mq.schedules()[0].last_task_id, timeout=10, what="a first run")
    mq.stop()
    shard = mq.engine.shards[0]
    stored = mq.schedules()[0]
    # as if every worker had been down for 10 s: the stored last slot is 10 s old
    shard.enqueue_slots("quick", stored.last_slot, stored.last_slot - 10, stored.last_slot, [], False)
    with caplog.at_level(logging.WARNING, logger="message_queue_sqlite.engine.scheduler"):
        mq.start()
        wait_until(lambda: "missed slot(s) not run (missed='skip')" in caplog.text, timeout=10,
                   what="the skipped slots to be logged")
        mq.stop()


def test_a_storage_outage_is_said_once_in_one_line_and_its_end_too(make_queue, caplog, monkeypatch):
    """While storage does not answer, the scheduler retries every ERROR_BACKOFF_S: it says so
    once (no traceback: nothing is wrong with the code), not once a second, and says when
    storage answers again."""
    from message_queue_sqlite.core.errors import QueueStorageError
    from message_queue_sqlite.engine import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "ERROR_BACKOFF_S", 0.01)
    real_tick = scheduler_module.Scheduler.tick
    failures: list[int] = []

    def tick(self):
        if len(failures) < 5:
            failures.append(1)
            raise QueueStorageError("queue.db is unreachable (as in a partition)")
        return real_tick(self)

    monkeypatch.setattr(scheduler_module.Scheduler, "tick", tick)
    mq = make_queue(workers=1)

    @mq.periodic(every=3600)
    def hourly():
        return None

    with caplog.at_level(logging.DEBUG, logger="message_queue_sqlite.engine.scheduler"):
        mq.start()
        wait_until(lambda: "storage answers again" in caplog.text, what="the scheduler to recover")
        mq.stop()
    said = [r for r in caplog.records if r.name.endswith("scheduler") and r.levelno >= logging.WARNING]
    assert [r.getMessage().split(";")[0] for r in said] == [
        "periodic tasks: queue.db is unreachable (as in a partition)",
        "periodic tasks: storage answers again"]
    assert all(r.exc_info is None for r in said)
    assert sum("still failing" in r.getMessage() for r in caplog.records) == 4
