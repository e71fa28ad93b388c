"""Named queues, on both backends: where a task goes, which queues a worker serves (in this
process and across CLI worker processes), fairness between queues, lanes with threads of
their own, per-queue counts and listings, periodic and immediate-mode tasks, and bad input
refused with its value named and nothing stored."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import start_cli_worker, stop_processes, subprocess_env, wait_until, worker_logs

from message_queue_sqlite import MessageQueue, TaskStatus
from message_queue_sqlite.core.queues import Lane, parse_queues, plan_lanes


def test_tasks_go_to_their_queue_and_a_send_may_name_another(make_queue):
    mq = make_queue()

    @mq.task(queue="emails")
    def email(to):
        return to

    @mq.task
    def plain():
        return 1

    sent = [mq.send(email, {"to": "a"}), mq.send(plain), mq.send(email, {"to": "b"}, queue="bulk"),
            *mq.send_many([(plain, {}), (email, {"to": "c"})], queue="reports")]
    queues = {t.task_id: t.queue for t in mq.tasks()}
    assert [queues[h.task_id] for h in sent] == ["emails", "default", "bulk", "reports", "reports"]
    assert mq.queue_depths() == {name: {"queued": n, "scheduled": 0, "running": 0} for name, n in
                                 [("bulk", 1), ("default", 1), ("emails", 1), ("reports", 2)]}
    assert [t.task_id for t in mq.tasks(queue="reports")] == [sent[4].task_id, sent[3].task_id]
    assert mq.stats()["queues"]["reports"]["queued"] == 2


def test_a_worker_given_no_queues_serves_every_queue(make_queue):
    mq = make_queue()

    @mq.task(queue="emails")
    def email():
        return "email"

    @mq.task
    def plain():
        return "plain"

    handles = [mq.send(email), mq.send(plain), mq.send(plain, queue="named-at-send-only")]
    with mq.running():
        assert [h.result(timeout=10) for h in handles] == ["email", "plain", "plain"]
        late = mq.send(plain, queue="sent-while-running")  # a queue new to the running worker
        assert late.result(timeout=10) == "plain"


def test_a_worker_on_some_queues_leaves_the_others_waiting(make_queue, backend):
    mq = make_queue(shards=2) if backend == "sqlite" else make_queue()  # (shard, queue) rotation
    ran: list[str] = []

    @mq.task
    def job(queue):
        ran.append(queue)

    for queue in ("a", "b", "c") * 4:
        mq.send(job, {"queue": queue}, queue=queue)
    with mq.running(queues="a,b"):
        wait_until(lambda: len(ran) == 8, what="the tasks of queues a and b")
        assert sorted(ran) == ["a"] * 4 + ["b"] * 4
        assert mq.queue_depths()["c"]["queued"] == 4
    with mq.running(queues="*"):  # every stored queue
        wait_until(lambda: len(ran) == 12, what="queue c's tasks under '*'")


def test_a_star_worker_finds_queues_created_after_it_started(make_queue):
    mq = make_queue()
    done = threading.Event()

    @mq.task
    def job():
        done.set()

    with mq.running(queues="*"):
        mq.send(job, queue="born-later")
        assert done.wait(10)


def test_queues_are_served_in_rotation_so_a_backlog_never_starves_another(make_queue):
    """One thread, 600 tasks waiting in "bulk" before 5 in "urgent": each claim takes from one
    queue, and the next look starts at the other, so the urgent ones run after at most one
    batch of bulk ones (a claim holds at most ``prefetch`` tasks), not after all of them."""
    mq = make_queue(workers=1, prefetch=50)
    order: list[str] = []

    @mq.task
    def job(kind):
        order.append(kind)

    mq.send_many([(job, {"kind": "bulk"})] * 600, queue="bulk")
    mq.send_many([(job, {"kind": "urgent"})] * 5, queue="urgent")
    with mq.running(queues=["bulk", "urgent"]):
        wait_until(lambda: order.count("urgent") == 5, timeout=30, what="the urgent tasks")
        last_urgent = max(i for i, kind in enumerate(order) if kind == "urgent")
        assert last_urgent < 2 * 50 + 5, (last_urgent, order.count("bulk"))
        wait_until(lambda: len(order) == 605, timeout=60, what="the bulk backlog")


def test_a_lane_per_queue_keeps_its_own_threads(make_queue):
    """``queues={"slow": 1, "fast": 2}``: two slow tasks blocked in their one thread hold
    neither each other's lane open (one at a time) nor the fast lane (which keeps running)."""
    mq = make_queue()
    release = threading.Event()
    running_slow: list[int] = []
    peak = [0]
    lock = threading.Lock()

    @mq.task(queue="slow")
    def slow():
        with lock:
            running_slow.append(1)
            peak[0] = max(peak[0], len(running_slow))
        release.wait(30)
        with lock:
            running_slow.pop()

    @mq.task(queue="fast")
    def fast(n):
        return n

    slow_handles = [mq.send(slow) for _ in range(2)]
    lanes = mq.start(queues={"slow": 1, "fast": 2})
    try:
        assert lanes == [Lane(("slow",), 1), Lane(("fast",), 2)]
        wait_until(lambda: running_slow, what="a slow task to start")
        assert [mq.send(fast, {"n": n}).result(timeout=10) for n in range(5)] == list(range(5))
        assert peak[0] == 1  # the second slow task waits for the lane's one thread
        release.set()
        for handle in slow_handles:
            handle.result(timeout=10)
        assert peak[0] == 1
        assert len(mq.engine.workers) == 2
    finally:
        release.set()
        mq.stop()


def test_priority_orders_tasks_within_a_queue_and_listings_merge_the_queues(make_queue):
    mq = make_queue()

    @mq.task
    def job():
        return None

    low = mq.send(job, priority=1, queue="x")
    high = mq.send(job, priority=9, queue="y")
    mid = mq.send(job, priority=5, queue="x")
    waiting = mq.tasks(status=TaskStatus.NOT_STARTED)
    assert [t.task_id for t in waiting] == [high.task_id, mid.task_id, low.task_id]
    assert [t.task_id for t in mq.tasks(status=TaskStatus.NOT_STARTED, queue="x")] == [mid.task_id,
                                                                                       low.task_id]
    _, claims = mq.engine.shards[0].complete_and_claim([], "w", 10, 30.0, (), "x")
    assert [c.task_id for c in claims] == [mid.task_id, low.task_id]
    assert {c.queue for c in claims} == {"x"}
    assert mq.queue_depths()["x"] == {"queued": 0, "scheduled": 0, "running": 2}


def test_delayed_tasks_are_counted_in_their_queue_and_become_ready_there(make_queue):
    mq = make_queue()
    done = threading.Event()

    @mq.task(queue="later")
    def job():
        done.set()

    mq.send(job, delay=0.2)
    assert mq.queue_depths()["later"]["scheduled"] == 1
    with mq.running():
        assert done.wait(10)


def test_a_periodic_task_is_enqueued_on_its_queue(make_queue):
    mq = make_queue()
    ran = threading.Event()

    @mq.periodic(every=1, queue="cron")
    def tick():
        ran.set()

    with mq.running(queues=["cron"]):
        assert ran.wait(10)
    assert {t.queue for t in mq.tasks(task_name="tick")} == {"cron"}


def test_immediate_mode_runs_tasks_of_every_queue(tmp_path):
    with MessageQueue(str(tmp_path / "q"), immediate=True) as mq:
        @mq.task(queue="emails")
        def email(n):
            return n * 2

        assert mq.send(email, {"n": 2}).result(timeout=5) == 4
        assert mq.send(email, {"n": 3}, queue="other").result(timeout=5) == 6


def test_the_seed_api_takes_a_queue_on_its_decorator_and_send_message(tmp_path, app_package):
    from message_queue_sqlite import Config, discover_and_mount_ts, init_server

    package = app_package({"jobs": """
        from message_queue_sqlite import task_function

        @task_function(queue="emails")
        def email(to):
            return to
    """})
    server, client, send_message = init_server(discover_and_mount_ts(package),
                                               Config(middleware_path=str(tmp_path / "q")))
    try:
        first = send_message("email", {"to": "a"})
        second = send_message("email", {"to": "b"}, queue="bulk")
        queues = {t.task_id: t.queue for t in client.queue.tasks()}
        assert (queues[first], queues[second]) == ("emails", "bulk")
        with client.queue.running(queues=["emails"]):
            assert client.queue.get(first).result(timeout=10) == "a"
            assert client.queue.get(second).status == TaskStatus.NOT_STARTED
        with client.queue.running():  # every queue
            assert client.queue.get(second).result(timeout=10) == "b"
    finally:
        client.queue.close()


@pytest.mark.parametrize("bad", ["", "two words", "a,b", "x=1", 5, "q" * 201])
def test_a_bad_queue_name_is_refused_by_name_and_nothing_is_stored(make_queue, bad):
    mq = make_queue()

    @mq.task
    def job():
        return None

    with pytest.raises(ValueError, match=r"queue=.* is not a queue name"):
        mq.task(queue=bad)
    with pytest.raises(ValueError, match=r"queue=.* is not a queue name"):
        mq.send(job, queue=bad)
    assert mq.tasks() == [] and set(mq.queue_depths()) == {"default"}


@pytest.mark.parametrize(("queues", "message"), [
    ([], "names no queue"),
    ({}, "names no queue"),
    ({"a": 0}, "thread count of queue 'a' must be an integer >= 1"),
    ({"a": True}, "thread count of queue 'a'"),
    ({"*": 2}, "'\\*' \\(every queue\\) cannot have a lane"),
    (["ok", "not ok"], "queues='not ok' is not a queue name"),
    ("a=2,b", "gives thread counts for some queues only"),
    ("a=x", "'x' is not a thread count for queue 'a'"),
    ("a,,b", "has an empty name"),
    (42, "must be a list of queue names"),
])
def test_bad_queues_for_workers_are_refused_before_anything_starts(make_queue, queues, message):
    mq = make_queue()
    with pytest.raises((ValueError, TypeError), match=message):
        mq.start(queues=queues)
    assert not mq.engine.workers_running


def test_lanes_are_planned_from_every_spelling():
    assert plan_lanes(None, 4) == [Lane(None, 4)]
    assert plan_lanes(["b", "a", "b"], 3) == [Lane(("b", "a"), 3)]
    assert parse_queues("emails=2, reports=8", 5) == [Lane(("emails",), 2), Lane(("reports",), 8)]
    assert parse_queues("emails, reports", 5) == [Lane(("emails", "reports"), 5)]
    assert parse_queues("*", 5) == [Lane(None, 5)]


# -- across processes: CLI workers, each on its own queue -----------------------------------
APP = '''
import os
from message_queue_sqlite import MessageQueue

mq = MessageQueue(os.environ["QUEUES_DIR"], workers=2, broker_url=os.environ.get("QUEUES_URL") or None)


@mq.task(queue="emails")
def email(n):
    return ["emails", os.getpid()]


@mq.task(queue="reports")
def report(n):
    return ["reports", os.getpid()]
'''


def test_two_cli_workers_on_different_queues_each_run_only_their_own(tmp_path, backend, broker_url):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "queues_app.py").write_text(APP)
    env = subprocess_env()
    env.update(QUEUES_DIR=str(tmp_path / "q"), QUEUES_URL=broker_url or "")
    sender = MessageQueue(str(tmp_path / "q"), broker_url=broker_url)  # sends by name and queue
    workers = [start_cli_worker(app_dir, "queues_app:mq", env, "--queues", "emails"),
               start_cli_worker(app_dir, "queues_app:mq", env, "--queues", "reports=3")]
    try:
        handles = [*sender.send_many([("email", {"n": n}) for n in range(40)], queue="emails"),
                   *sender.send_many([("report", {"n": n}) for n in range(40)], queue="reports")]
        results = [h.result(timeout=60) for h in handles]
        pids = {queue: {pid for q, pid in results if q == queue} for queue in ("emails", "reports")}
        assert len(pids["emails"]) == 1 and len(pids["reports"]) == 1, (pids, worker_logs(app_dir))
        assert pids["emails"] == {workers[0].pid} and pids["reports"] == {workers[1].pid}
        wait_until(lambda: all("thread" in p.read_text() for p in app_dir.glob("worker-*.log")),
                   what="both workers' banners")
        banners = worker_logs(app_dir)
        assert "serving emails (2 threads)" in banners and "serving reports (3 threads)" in banners
    finally:
        stop_processes(workers)
        sender.close()
    assert [w.returncode for w in workers] == [0, 0], worker_logs(app_dir)


def test_the_cli_refuses_a_bad_queues_spec_and_shows_queues_in_stats(tmp_path):
    folder = tmp_path / "q"
    with MessageQueue(str(folder)) as mq:
        mq.task(lambda: None, name="job")
        mq.send("job", {}, queue="emails")
        mq.send("job", {})
    run = [sys.executable, "-m", "message_queue_sqlite"]
    bad = subprocess.run([*run, "worker", "app:mq", "--queues", "emails=x"], cwd=tmp_path,
                         env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'x' is not a thread count for queue 'emails'" in bad.stderr
    stats = subprocess.run([*run, "stats", "--path", str(folder)], env=subprocess_env(),
                           capture_output=True, text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    lines = {line.split()[0]: line.split()[1:] for line in stats.stdout.splitlines() if line.strip()}
    assert lines["emails"] == ["1", "0", "0"] and lines["default"] == ["1", "0", "0"], stats.stdout


def test_a_worker_on_one_queue_in_another_process_does_not_claim_other_queues(tmp_path):
    """The claim statement itself filters by queue: a raw claim for queue "a" never returns
    a task of "b", whoever sent it (here another process)."""
    folder = str(tmp_path / "q")
    script = textwrap.dedent(f"""
        from message_queue_sqlite import MessageQueue
        with MessageQueue({folder!r}) as mq:
            mq.send_many([("t", {{}})] * 3, queue="b")
            mq.send("t", {{}}, queue="a")
    """)
    subprocess.run([sys.executable, "-c", script], env=subprocess_env(), check=True, timeout=60)
    with MessageQueue(folder) as mq:
        _, claims = mq.engine.shards[0].complete_and_claim([], "w", 10, 30.0, (), "a")
        assert [c.queue for c in claims] == ["a"]
        assert mq.queue_depths()["b"]["queued"] == 3
