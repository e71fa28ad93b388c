"""The web dashboard (contrib/dashboard): pages from storage with tasks in every state, on both
backends; filters and keyset paging; retry and delete; CSRF, read-only and the token; escaping
of hostile task names, arguments and errors; the CLI's refusal of an open address; and, in a
real browser (Debian's Chromium driven by Playwright), the same pages clicked through."""

from __future__ import annotations

import html
import importlib
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from markupsafe import escape

pytest.importorskip("starlette")
pytest.importorskip("jinja2")

from conftest import REPO, wait_until  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Mount  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from message_queue_sqlite import MessageQueue, TaskStatus  # noqa: E402
from message_queue_sqlite.api import browse  # noqa: E402
from message_queue_sqlite.cli.main import check_dashboard_bind, is_loopback, main  # noqa: E402
from message_queue_sqlite.contrib.dashboard import figures  # noqa: E402
from message_queue_sqlite.core.errors import MessageQueueError  # noqa: E402

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
XSS_NAME = f"evil{SCRIPT}{IMG}"
HOLDER = "dash-test-holder"  # the owner a test leases a task to, so that one stays RUNNING


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def row_ids(page: str) -> list[str]:
    return re.findall(r'<tr data-task="([^"]+)"', page)


class Populated:
    """A queue with tasks in every state, made by really running (or claiming) them."""

    def __init__(self, mq: MessageQueue):
        self.mq = mq
        self.ids: dict[str, list[str]] = {}


def populate(mq: MessageQueue) -> Populated:
    made = Populated(mq)

    @mq.task
    def ok(x: Any) -> dict[str, Any]:
        return {"doubled": x * 2, "note": SCRIPT}

    @mq.task
    def boom(payload: str) -> None:
        raise ValueError(f"refused {payload}")

    @mq.task(name=XSS_NAME)
    def hostile(x: int) -> int:
        return x

    @mq.task
    def held(x: int) -> int:
        return x

    @mq.periodic(every=3600)
    def hourly() -> None:
        return None

    done = [mq.send(ok, {"x": i}) for i in range(3)]
    done.append(mq.send(hostile, {"x": 1}))
    failed = [mq.send(boom, {"payload": SCRIPT}), mq.send(boom, {"payload": IMG})]
    with mq.running():
        for handle in done:
            handle.outcome(timeout=20)
        for handle in failed:
            handle.outcome(timeout=20)
        wait_until(lambda: mq.schedules(), timeout=20, what="the periodic task's schedule to be stored")
    made.ids["finished"] = [h.task_id for h in done]
    made.ids["failed"] = [h.task_id for h in failed]
    running = mq.send(held, {"x": 7})
    shard = mq.engine.shards[int(running.task_id.split("-")[0])]
    _stale, claims = shard.complete_and_claim([], HOLDER, 1, 600.0)
    assert [c.task_id for c in claims] == [running.task_id]
    made.ids["running"] = [running.task_id]
    made.ids["queued"] = [mq.send(ok, {"x": 10}).task_id, mq.send(ok, {"x": 11}, priority=5).task_id]
    made.ids["scheduled"] = [mq.send(ok, {"x": 12}, delay=3600).task_id]
    return made


@pytest.fixture
def populated(make_queue) -> Populated:
    return populate(make_queue(workers=2))


# -- pages --------------------------------------------------------------------------------
def test_every_page_renders_with_tasks_in_every_state(populated):
    mq = populated.mq
    client = TestClient(mq.dashboard())
    overview = client.get("/")
    assert overview.status_code == 200
    counts = mq.stats()["outcomes"]
    assert counts["finished"] == 4 and counts["failed"] == 2 and counts["running"] == 1
    for word in ("queued", "scheduled", "running", "finished", "failed"):
        assert f'data-count="{word}">{counts[word]}<' in overview.text, word
    assert '<svg class="chart"' in overview.text and 'class="bad"' in overview.text  # failures charted
    assert ">6</span> ended" in overview.text
    oldest = mq.oldest_waiting()
    assert oldest is not None and oldest[0] == populated.ids["queued"][0]  # sent first, lower priority
    assert f">{oldest[0]}</a>" in overview.text

    everything = client.get("/tasks")
    assert everything.status_code == 200
    assert set(row_ids(everything.text)) == {i for ids in populated.ids.values() for i in ids} | {
        info.last_task_id for info in mq.schedules() if info.last_task_id}
    for word, ids in populated.ids.items():
        page = client.get("/tasks", params={"status": word})
        assert page.status_code == 200, word
        assert sorted(row_ids(page.text)) == sorted(ids), word
    queued = row_ids(client.get("/tasks", params={"status": "queued"}).text)
    assert queued == list(reversed(populated.ids["queued"]))  # claim order: priority 5 first

    failed_page = client.get(f"/tasks/{populated.ids['failed'][0]}")
    assert failed_page.status_code == 200
    assert "Traceback" in failed_page.text and "ValueError: refused" in failed_page.text
    assert 'data-action="retry"' in failed_page.text
    finished_page = client.get(f"/tasks/{populated.ids['finished'][1]}")
    assert '&#34;doubled&#34;: 2' in finished_page.text  # the result, pretty-printed and escaped
    assert "&#34;x&#34;: 1" in finished_page.text  # the arguments
    running_page = client.get(f"/tasks/{populated.ids['running'][0]}")
    assert HOLDER in running_page.text and ">running<" in running_page.text
    scheduled_page = client.get(f"/tasks/{populated.ids['scheduled'][0]}")
    assert 'data-action="delete"' in scheduled_page.text and "due" in scheduled_page.text
    assert client.get("/tasks/0-999999").status_code == 404
    assert client.get("/tasks/nonsense").status_code == 404

    schedules = client.get("/schedules")
    assert schedules.status_code == 200 and 'data-schedule="hourly"' in schedules.text
    nodes = client.get("/nodes")
    assert nodes.status_code == 200
    assert client.get("/tasks", params={"status": "bogus"}).status_code == 400
    assert client.get("/tasks", params={"after": "x:y"}).status_code == 400


def test_nodes_page_lists_a_live_worker_with_its_running_task(make_queue):
    mq = make_queue(workers=1)
    gate = threading.Event()

    @mq.task
    def wait_for_gate() -> None:
        gate.wait(20)

    client = TestClient(mq.dashboard())
    with mq.running():
        handle = mq.send(wait_for_gate)
        wait_until(lambda: mq.nodes() and mq.nodes()[0].running == 1, timeout=20, what="the node running it")
        page = client.get("/nodes").text
        node = mq.nodes()[0]
        assert f'data-node="{node.node_id}"' in page and socket.gethostname() in page
        assert f"<td>{node.running}</td>" in page
        gate.set()
        handle.outcome(timeout=20)


def test_filters_by_status_name_and_text(make_queue):
    mq = make_queue()

    @mq.task
    def alpha(word: str) -> None: ...

    @mq.task
    def beta(word: str) -> None: ...

    mq.send_many([(alpha, {"word": f"apple{i}"}) for i in range(5)] + [(beta, {"word": "banana"})] * 3)
    client = TestClient(mq.dashboard())
    by_name = row_ids(client.get("/tasks", params={"name": "beta"}).text)
    assert len(by_name) == 3 and all(mq.task_info(i).task_name == "beta" for i in by_name)
    by_text = row_ids(client.get("/tasks", params={"q": "APPLE3"}).text)  # any case
    assert len(by_text) == 1 and "apple3" in mq.task_info(by_text[0]).arguments
    none = client.get("/tasks", params={"status": "failed", "name": "alpha"})
    assert row_ids(none.text) == [] and "No task matches" in none.text
    both = row_ids(client.get("/tasks", params={"status": "queued", "name": "alpha", "q": "apple"}).text)
    assert len(both) == 5


def test_paging_walks_every_task_once_in_the_views_order(make_queue, backend):
    """Keyset pages over three shards (SQLite; PostgreSQL has one schema): every task once, in
    order, with and without a sparse filter that leaves pages short."""
    mq = make_queue(shards=3) if backend == "sqlite" else make_queue()

    @mq.task
    def job(n: int) -> None: ...

    @mq.task
    def rare(n: int) -> None: ...

    mq.send_many([(job, {"n": n}) for n in range(60)])
    mq.send_many([(job, {"n": n}) for n in range(10)], priority=3)
    mq.send_many([(rare, {"n": n}) for n in range(4)])
    mq.send_many([(job, {"n": n}) for n in range(6)], delay=3600)

    def walk(status: TaskStatus | None, **filters: Any) -> list[browse.TaskRecord]:
        seen, cursor = [], None
        for _ in range(200):
            page = browse.page_tasks(mq.engine.shards, None if status is None else int(status),
                                     after=cursor, limit=7, window=9, **filters)
            seen.extend(page.records)
            cursor = page.next_cursor
            if cursor is None:
                return seen
        raise AssertionError("paging did not end")

    everything = walk(None)
    assert len(everything) == 80 == len({r.task_id for r in everything})
    ready = walk(TaskStatus.NOT_STARTED)
    assert len(ready) == 74 == len({r.task_id for r in ready})
    assert [r.priority for r in ready[:10]] == [3] * 10  # claim order: best priority first
    per_shard: dict[int, list[int]] = {}
    for record in ready[10:]:
        per_shard.setdefault(record.shard, []).append(record.row_id)
    assert all(ids == sorted(ids) for ids in per_shard.values())  # then oldest first, per shard
    scheduled = walk(TaskStatus.SCHEDULED)
    assert len(scheduled) == 6 and [r.run_after for r in scheduled] == sorted(r.run_after for r in scheduled)
    rare_ones = walk(None, task_name="rare")
    expected = sorted(r.task_id for r in everything if r.task_name == "rare")
    assert sorted(r.task_id for r in rare_ones) == expected
    with pytest.raises(ValueError, match="bad page cursor"):
        browse.page_tasks(mq.engine.shards, 1, after="12")

    client = TestClient(mq.dashboard())
    shown, url = [], "/tasks?status=queued"
    for _ in range(10):
        page = client.get(url).text
        shown.extend(row_ids(page))
        found = re.search(r'id="next-page" href="([^"]+)"', page)
        if not found:
            break
        url = html.unescape(found.group(1))
    assert len(shown) == 74 == len(set(shown))


# -- actions ------------------------------------------------------------------------------
def test_retry_a_failed_task_then_it_finishes_with_a_worker_running(make_queue):
    mq = make_queue(workers=2)
    calls = {"flaky": 0}

    @mq.task
    def flaky(n: int) -> int:
        calls["flaky"] += 1
        if calls["flaky"] <= 3:
            raise RuntimeError("not yet")
        return n

    client = TestClient(mq.dashboard())
    with mq.running():
        handles = [mq.send(flaky, {"n": n}) for n in range(3)]
        for handle in handles:
            handle.outcome(timeout=20)
        assert all(h.status == TaskStatus.FAILED for h in handles)
        page = client.get("/tasks", params={"status": "failed"}).text
        one = handles[0].task_id
        answer = client.post(f"/tasks/{one}/retry", follow_redirects=False,
                             data={"csrf": csrf_of(page), "back": "/tasks?status=failed"})
        assert answer.status_code == 303 and answer.headers["location"].startswith("/tasks?status=failed")
        wait_until(lambda: handles[0].status == TaskStatus.FINISHED, timeout=20, what="the retried task")
        assert "queued+again" in answer.headers["location"]
        # bulk: every failed task (of that name)
        answer = client.post("/actions/retry", data={"csrf": csrf_of(page), "all": "1", "name": "flaky"},
                             follow_redirects=False)
        assert answer.status_code == 303
        wait_until(lambda: all(h.status == TaskStatus.FINISHED for h in handles), timeout=20,
                   what="the bulk-retried tasks")
        assert mq.task_info(one).result == 0


def test_delete_waiting_tasks_one_and_selected(make_queue):
    mq = make_queue()

    @mq.task
    def later(n: int) -> None: ...

    waiting = [mq.send(later, {"n": n}, delay=3600).task_id for n in range(3)]
    newest = mq.send(later, {"n": 9}).task_id  # the newest row is kept as a tombstone: delete others
    client = TestClient(mq.dashboard())
    page = client.get("/tasks", params={"status": "scheduled"}).text
    answer = client.post(f"/tasks/{waiting[0]}/delete", data={"csrf": csrf_of(page), "back": "/tasks"},
                         follow_redirects=False)
    assert answer.status_code == 303 and "deleted" in answer.headers["location"]
    assert mq.task_info(waiting[0]) is None and client.get(f"/tasks/{waiting[0]}").status_code == 404
    answer = client.post("/actions/delete", data={"csrf": csrf_of(page), "task_id": waiting[1:]},
                         follow_redirects=False)
    assert answer.status_code == 303
    assert [mq.task_info(t) for t in waiting[1:]] == [None, None]
    assert mq.task_info(newest) is not None
    assert client.post("/actions/delete", data={"csrf": csrf_of(page), "task_id": "junk"}).status_code == 400


def test_cancel_one_and_selected_then_the_cancelled_page_and_per_queue_counts(make_queue):
    mq = make_queue()

    @mq.task(queue="mail")
    def send_mail(n: int) -> None: ...

    @mq.task
    def report(n: int) -> None: ...

    mail = [mq.send(send_mail, {"n": n}).task_id for n in range(3)]
    other = mq.send(report, {"n": 0}).task_id
    client = TestClient(mq.dashboard())
    overview = client.get("/").text
    assert '<tr data-queue="mail">' in overview and '<tr data-queue="default">' in overview
    page = client.get("/tasks", params={"queue": "mail"}).text
    assert row_ids(page) == list(reversed(mail))  # only that queue's tasks, newest first
    assert 'data-action="cancel"' in page and 'id="cancel-selected"' in page
    answer = client.post(f"/tasks/{mail[0]}/cancel", data={"csrf": csrf_of(page), "back": "/tasks"},
                         follow_redirects=False)
    assert answer.status_code == 303 and "cancelled" in answer.headers["location"]
    answer = client.post("/actions/cancel", data={"csrf": csrf_of(page), "task_id": mail[1:]},
                         follow_redirects=False)
    assert answer.status_code == 303
    assert [mq.get(t).status for t in mail] == [TaskStatus.CANCELLED] * 3
    assert mq.get(other).status == TaskStatus.NOT_STARTED
    cancelled = client.get("/tasks", params={"status": "cancelled"}).text
    assert row_ids(cancelled) == list(reversed(mail)) and 'class="badge cancelled"' in cancelled
    assert 'data-count="cancelled">3<' in client.get("/").text
    read_only = TestClient(mq.dashboard(read_only=True))
    assert 'data-action="cancel"' not in read_only.get("/tasks").text
    assert read_only.post(f"/tasks/{other}/cancel", data={"csrf": "x"}).status_code == 403
    assert mq.get(other).status == TaskStatus.NOT_STARTED


def test_the_task_page_shows_a_running_task_s_progress(populated):
    mq = populated.mq
    [task_id] = populated.ids["running"]
    shard, row_id = mq.engine.shard_of(task_id)
    progress = f'{{"done": 30, "total": 120, "message": "{SCRIPT}", "at": 1.0}}'
    mq.engine.shards[shard].record_progress(HOLDER, [(row_id, 1, progress)])
    page = TestClient(mq.dashboard()).get(f"/tasks/{task_id}").text
    assert '<progress max="1" value="0.25">' in page and "(30 of 120)" in page
    assert SCRIPT not in page and str(escape(SCRIPT)) in page


# -- security -------------------------------------------------------------------------------
def test_post_without_a_valid_csrf_token_is_refused(populated):
    mq = populated.mq
    client = TestClient(mq.dashboard())
    target = populated.ids["failed"][0]
    page = client.get("/tasks").text
    assert client.post(f"/tasks/{target}/retry", data={}).status_code == 403
    assert client.post(f"/tasks/{target}/retry", data={"csrf": "forged.0000"}).status_code == 403
    other = TestClient(mq.dashboard())  # another app's secret: its token does not sign here
    forged = csrf_of(other.get("/").text)
    client.cookies.set("mqs_csrf", forged)
    assert client.post(f"/tasks/{target}/retry", data={"csrf": forged}).status_code == 403
    client.cookies.set("mqs_csrf", csrf_of(page))
    assert mq.task_info(target).status == TaskStatus.FAILED
    assert client.post(f"/tasks/{target}/retry", data={"csrf": csrf_of(page)},
                       follow_redirects=False).status_code == 303
    assert mq.task_info(target).status == TaskStatus.NOT_STARTED


def test_read_only_shows_no_actions_and_refuses_posts(populated):
    client = TestClient(populated.mq.dashboard(read_only=True))
    for url in ("/tasks", "/tasks?status=failed", f"/tasks/{populated.ids['failed'][0]}",
                f"/tasks/{populated.ids['queued'][0]}"):
        page = client.get(url).text
        assert "data-action" not in page and 'class="action' not in page, url
    csrf = csrf_of(client.get("/").text)
    answer = client.post(f"/tasks/{populated.ids['failed'][0]}/retry", data={"csrf": csrf})
    assert answer.status_code == 403 and "read-only" in answer.text
    delete = {"csrf": csrf, "task_id": populated.ids["queued"]}
    assert client.post("/actions/delete", data=delete).status_code == 403
    assert populated.mq.task_info(populated.ids["failed"][0]).status == TaskStatus.FAILED


def test_token_is_required_for_pages_and_actions(populated):
    mq = populated.mq
    client = TestClient(mq.dashboard(token="s3cret"))
    answer = client.get("/tasks", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    target = populated.ids["failed"][0]
    login_page = client.get("/login").text
    assert client.post(f"/tasks/{target}/retry", data={"csrf": csrf_of(login_page)}).status_code == 401
    wrong = client.post("/login", data={"csrf": csrf_of(login_page), "token": "guess", "next": "/tasks"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    right = client.post("/login", data={"csrf": csrf_of(login_page), "token": "s3cret", "next": "/tasks"},
                        follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == "/tasks"
    assert "s3cret" not in right.headers["set-cookie"]  # the cookie holds an HMAC, not the token
    away = client.post("/login", data={"csrf": csrf_of(login_page), "token": "s3cret",
                                       "next": "https://elsewhere.example/"}, follow_redirects=False)
    assert away.headers["location"] == "/"
    page = client.get("/tasks")
    assert page.status_code == 200
    assert client.post(f"/tasks/{target}/retry", data={"csrf": csrf_of(page.text)},
                       follow_redirects=False).status_code == 303
    # an API client: the Bearer header alone, no cookie and no CSRF token (browsers never send it)
    api = TestClient(mq.dashboard(token="s3cret"))
    assert api.post("/actions/retry", data={"all": "1"}, headers={"Authorization": "Bearer s3cret"},
                    follow_redirects=False).status_code == 303
    with pytest.raises(ValueError, match="non-empty"):
        mq.dashboard(token="  ")


def test_hostile_names_arguments_and_errors_show_escaped(populated):
    client = TestClient(populated.mq.dashboard())
    hostile = populated.mq.task_page(task_name=XSS_NAME)[0][0].task_id
    pages = {url: client.get(url) for url in (
        "/", "/tasks", "/tasks?status=failed", f"/tasks/{populated.ids['failed'][0]}",
        f"/tasks/{populated.ids['failed'][1]}", f"/tasks/{populated.ids['finished'][0]}", f"/tasks/{hostile}",
        "/tasks?" + "&".join(f"{k}={v}" for k, v in {"q": SCRIPT, "name": IMG}.items()))}
    for url, page in pages.items():
        assert page.status_code == 200, url
        assert SCRIPT not in page.text and "<img src=x" not in page.text, url
        assert "script-src 'self'" in page.headers["content-security-policy"]
    escaped_script, escaped_img = str(escape(SCRIPT)), str(escape(IMG))
    assert escaped_script in pages["/tasks?status=failed"].text  # in the error column
    assert escaped_img in pages[f"/tasks/{populated.ids['failed'][1]}"].text  # error and traceback
    assert str(escape(XSS_NAME)) in pages["/tasks"].text  # the task name
    assert str(escape(XSS_NAME)) in pages[f"/tasks/{hostile}"].text


def test_links_stay_under_the_mount_point(populated):
    host = Starlette(routes=[Mount("/queue", app=populated.mq.dashboard())])
    client = TestClient(host)
    for url in ("/queue/", "/queue/tasks?status=failed", f"/queue/tasks/{populated.ids['failed'][0]}"):
        page = client.get(url)
        assert page.status_code == 200, url
        links = re.findall(r'\s(?:href|action|formaction|src)="([^"]+)"', page.text)
        assert links and [link for link in links if not link.startswith("/queue/")] == [], url
    page = client.get("/queue/tasks?status=failed").text
    answer = client.post(f"/queue/tasks/{populated.ids['failed'][0]}/retry",
                         data={"csrf": csrf_of(page), "back": "/queue/tasks?status=failed"},
                         follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/queue/tasks?status=failed")
    # a plain ASGI dispatcher, as the README's Django asgi.py does it
    dashboard = populated.mq.dashboard()

    async def dispatcher(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/queue/"):
            await dashboard({**scope, "root_path": scope.get("root_path", "") + "/queue"}, receive, send)
            return
        await PlainTextResponse("the other app")(scope, receive, send)

    plain = TestClient(dispatcher)
    served = plain.get("/queue/tasks?status=failed")
    assert served.status_code == 200
    assert row_ids(served.text) == row_ids(client.get("/queue/tasks?status=failed").text)
    assert f'href="/queue/tasks/{populated.ids["failed"][1]}"' in served.text
    assert plain.get("/elsewhere").text == "the other app"
    escape = client.post(f"/queue/tasks/{populated.ids['failed'][1]}/retry",
                         data={"csrf": csrf_of(page), "back": "https://elsewhere.example/"},
                         follow_redirects=False)
    assert escape.headers["location"].startswith("/queue/tasks?")  # never redirected off the app
    shown = client.get(escape.headers["location"]).text
    assert 'class="notice"' in shown and "queued again" in shown
    crafted = client.get("/queue/tasks?notice=Your+session+expired%3A+log+in+at+elsewhere.example").text
    assert "elsewhere.example" not in crafted  # only notices the dashboard signed are shown
    for elsewhere in ("//elsewhere.example/queue/", "/queue/\\..\\elsewhere", "/other/"):
        answer = client.post("/queue/actions/retry", data={"csrf": csrf_of(page), "back": elsewhere},
                             follow_redirects=False)
        assert answer.headers["location"].startswith("/queue/tasks?"), elsewhere


def test_figures_of_the_last_hour():
    now = 10_000.0
    ends = [(now - 100, now - 90, now - 50, 3), (now - 100, now - 99, now - 20, 4),
            (now - 4000, now - 3990, now - 3980, 3)]  # this one ended before the hour
    shown = figures.compute(ends, now, limit=100)
    assert (shown.finished, shown.failed, shown.failure_rate) == (1, 1, 0.5)
    assert (shown.wait_p50, shown.wait_p99) == (1.0, 10.0)
    assert (shown.run_p50, shown.run_p99) == (40.0, 79.0)
    assert shown.peak == 2 and len(shown.bars) == figures.BUCKETS  # one bar, both stacked
    last = shown.bars[-1]
    assert (last.finished, last.failed) == (1, 1) and last.failed_y == 0.0 and not shown.sampled
    # one point: the middle of the last minute's bar, half way up (1 of its 2 ends failed)
    assert shown.rate_points == [(last.x + last.width / 2, figures.CHART_HEIGHT / 2)]
    assert figures.percentile([], 50) is None and figures.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert figures.compute(ends, now, limit=3).sampled


def test_cli_refuses_a_non_loopback_host_without_a_token(tmp_path, capsys):
    folder = str(tmp_path / "q")
    MessageQueue(folder).close()
    assert main(["dashboard", "--path", folder, "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert "--host 0.0.0.0 is reachable from other machines" in error and "--token" in error
    assert main(["dashboard", "--path", folder, "--host", "192.168.1.5", "--token", " "]) == 2
    assert "is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dashboard", "--path", folder, "--port", "70000"])
    assert "70000 is invalid; it must be an integer <= 65535" in capsys.readouterr().err
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "example.com", "::"))
    check_dashboard_bind("0.0.0.0", "t", read_only=False)  # a token: allowed
    check_dashboard_bind("0.0.0.0", None, read_only=True)  # no actions: allowed
    with pytest.raises(MessageQueueError, match="reachable"):
        check_dashboard_bind("10.1.2.3", None, read_only=False)


def test_cli_serves_the_queue_of_a_target_or_a_folder(tmp_path, app_package, monkeypatch, capsys):
    from message_queue_sqlite.cli.main import _dashboard_queue, build_parser

    folder = str(tmp_path / "jobs")
    package = app_package({"__init__": f"from message_queue_sqlite import MessageQueue\n"
                                       f"mq = MessageQueue({folder!r})\n"})
    monkeypatch.chdir(tmp_path)
    args = build_parser("mqs").parse_args(["dashboard", f"{package}:mq"])
    args.prog = "mqs"

    assert _dashboard_queue(args) is importlib.import_module(package).mq
    args = build_parser("mqs").parse_args(["dashboard", f"{package}:mq", "--path", str(tmp_path / "other")])
    args.prog = "mqs"
    with pytest.raises(MessageQueueError, match="another queue"):
        _dashboard_queue(args)
    args = build_parser("mqs").parse_args(["dashboard", "--path", folder])
    args.prog = "mqs"
    with _dashboard_queue(args) as queue:
        assert queue.engine.backend.location.endswith("jobs")
    assert main(["dashboard", "--path", str(tmp_path / "missing")]) == 2
    assert "no queue files" in capsys.readouterr().err


# -- a real browser -----------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(populated) -> Iterator[tuple[str, Populated]]:
    """The dashboard on uvicorn in a thread, on a free loopback port, with workers running."""
    uvicorn = pytest.importorskip("uvicorn")
    config = uvicorn.Config(populated.mq.dashboard(), host="127.0.0.1", port=_free_port(),
                            log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{config.port}", populated
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.mark.skipif(CHROMIUM is None, reason="the browser tests need Debian's chromium "
                    "(apt-get install -y chromium; `make test` installs it)")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_in_a_real_browser(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, populated = served
    mq = populated.mq
    dialogs: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            expect = sync_api.expect

            page.goto(base + "/")
            expect(page.locator("h1")).to_have_text("Overview")
            expect(page.locator('[data-count="failed"]')).to_have_text("2")
            expect(page.locator("#failure-rate")).to_have_count(1)
            # live refresh: a task sent now shows up without a reload
            queued = mq.stats()["outcomes"]["queued"]
            mq.send("ok", {"x": 99})
            expect(page.locator('[data-count="queued"]')).to_have_text(str(queued + 1), timeout=15_000)
            assert page.evaluate("document.body.dataset.refreshed") is not None
            populated.ids["queued"].append(mq.tasks(status=TaskStatus.NOT_STARTED, limit=1)[0].task_id)
            for path, heading in (("/tasks", "Tasks"), ("/tasks?status=failed", "Failed tasks"),
                                  ("/tasks?status=queued", "Waiting tasks"), ("/schedules", "Schedules"),
                                  ("/nodes", "Live nodes"), (f"/tasks/{populated.ids['failed'][0]}", "Task")):
                page.goto(base + path)
                expect(page.locator("h1")).to_contain_text(heading)
            page.goto(base + f"/tasks/{populated.ids['failed'][1]}")
            expect(page.locator("#error")).to_contain_text(IMG)  # shown as text
            assert page.locator("img").count() == 0

            # filter the list by name, through the form
            page.goto(base + "/tasks")
            page.fill('input[name="name"]', "ok")
            page.click('#filters button[type="submit"]')
            expect(page.locator("tr[data-task]")).to_have_count(7)  # 3 finished, 3 queued, 1 scheduled
            page.select_option('select[name="status"]', "queued")
            page.click('#filters button[type="submit"]')
            expect(page.locator("tr[data-task]")).to_have_count(3)

            # delete a waiting task
            doomed = populated.ids["scheduled"][0]
            page.goto(base + "/tasks?status=scheduled")
            page.click(f'tr[data-task="{doomed}"] button[data-action="delete"]')
            expect(page.locator(".notice")).to_contain_text(f"{doomed} deleted")
            expect(page.locator(f'tr[data-task="{doomed}"]')).to_have_count(0)
            assert mq.task_info(doomed) is None

            # retry a failed task with workers running, and watch it finish (live refresh)
            runs = {"n": 0}

            @mq.task
            def first_time_fails() -> str:
                runs["n"] += 1
                if runs["n"] == 1:
                    raise RuntimeError("first run fails")
                return "second run"

            with mq.running():
                handle = mq.send(first_time_fails)
                handle.outcome(timeout=20)
                assert handle.status == TaskStatus.FAILED
                page.goto(base + "/tasks?status=failed")
                page.click(f'tr[data-task="{handle.task_id}"] button[data-action="retry"]')
                expect(page.locator(".notice")).to_contain_text(f"{handle.task_id} queued again")
                page.goto(base + f"/tasks/{handle.task_id}")
                expect(page.locator("#task-status")).to_have_text("finished", timeout=20_000)
                expect(page.locator("#result")).to_contain_text("second run")
                wait_until(lambda: mq.stats()["outcomes"]["queued"] == 0, timeout=20,
                           what="the queue to drain")

                page.goto(base + "/")
                finished = str(mq.stats()["outcomes"]["finished"])
                expect(page.locator('[data-count="finished"]')).to_have_text(finished, timeout=20_000)
                # the README's picture is refreshed on request only (MQS_UPDATE_SCREENSHOT=1): a
                # test run leaves the checkout as it found it
                folder = REPO / "docs" if os.environ.get("MQS_UPDATE_SCREENSHOT") else tmp_path
                shot = folder / "dashboard.png"
                shot.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
            assert dialogs == [], dialogs  # no injected script ran
            assert errors == [], errors
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
