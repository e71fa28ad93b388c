"""The dashboard's Starlette app: pages read from the queue's storage, and the actions.

Security model (the README's "Dashboard" says it for users):

- Every POST carries a CSRF token: a signed double-submit cookie. The page's form holds the
  same value as the ``mqs_csrf`` cookie, and the value is signed with the app's secret, so a
  cross-site form cannot forge it and a cookie planted by a sibling domain is refused.
  Requests authenticated by an ``Authorization: Bearer`` header need none (a browser never
  adds that header on its own).
- With ``token=`` every page and action needs it: the header, or the login form, which sets
  an HttpOnly, SameSite=Strict cookie holding an HMAC of the token (never the token). Pages
  are protected too, as task arguments, results and tracebacks may be sensitive.
- ``read_only=True``: no action is shown, and every action answers 403.
- Jinja2 autoescapes everything; a Content-Security-Policy allows only the app's own script
  and stylesheet, so even a missed escape could not run injected script.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from message_queue_sqlite.api.queue import MessageQueue, TaskInfo
from message_queue_sqlite.contrib.dashboard import figures
from message_queue_sqlite.core.status import TaskStatus

PACKAGE = "message_queue_sqlite.contrib.dashboard"
CSRF_COOKIE, AUTH_COOKIE, CSRF_FIELD = "mqs_csrf", "mqs_auth", "csrf"
PAGE_SIZE = 50
ENDS_LIMIT = 10_000  # per shard: the overview's figures look at no more ended tasks than this
# Status filter values in URLs, as people say them, and the order the filter shows them.
STATUSES = {"queued": TaskStatus.NOT_STARTED, "scheduled": TaskStatus.SCHEDULED,
            "running": TaskStatus.RUNNING, "finished": TaskStatus.FINISHED, "failed": TaskStatus.FAILED,
            "cancelled": TaskStatus.CANCELLED}
STATUS_WORD = {code: word for word, code in STATUSES.items()}
WAITING = (TaskStatus.NOT_STARTED, TaskStatus.SCHEDULED)
CANCELLABLE = (TaskStatus.NOT_STARTED, TaskStatus.SCHEDULED, TaskStatus.RUNNING)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


class Dashboard:
    """The state behind the routes: the queue, the mode, and the secret that signs cookies."""

    def __init__(self, mq: MessageQueue, read_only: bool, token: str | None):
        self.metrics: Any = None  # the /metrics registry, made at the first scrape
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ValueError(f"token={token!r}: give a non-empty string (or None for no token)")
        self.mq = mq
        self.location = mq.stats()["location"]  # the folder or the PostgreSQL schema, shown in the header
        self.read_only = read_only
        self.token = token
        # With a token, the secret derives from it: every dashboard process of one deployment
        # accepts the others' cookies. Without one, a random secret per process.
        self.secret = (hashlib.sha256(b"mqs-dashboard:" + token.encode()).digest() if token
                       else secrets.token_bytes(32))
        env = jinja2.Environment(loader=jinja2.PackageLoader(PACKAGE, "templates"),
                                 autoescape=True, undefined=jinja2.StrictUndefined)
        env.filters.update(clock=_clock, ago=_ago, seconds=_seconds, percent=_percent, pretty=_pretty)
        self.templates = Jinja2Templates(env=env)

    # -- cookies and tokens --------------------------------------------------------------
    def _sign(self, value: str) -> str:
        return hmac.new(self.secret, value.encode(), hashlib.sha256).hexdigest()

    def new_csrf(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign('csrf:' + nonce)}"

    def csrf_valid(self, value: str | None) -> bool:
        if not value or "." not in value:
            return False
        nonce, signature = value.split(".", 1)
        return hmac.compare_digest(signature, self._sign("csrf:" + nonce))

    def signed_notice(self, notice: str) -> dict[str, str]:
        """The query parameters that carry an action's notice back to a page, signed so that
        a crafted link cannot make the dashboard show words it did not write."""
        return {"notice": notice, "ns": self._sign("notice:" + notice)[:20]}

    def notice_of(self, request: Request) -> str | None:
        notice, signature = request.query_params.get("notice"), request.query_params.get("ns", "")
        if notice is None or not hmac.compare_digest(signature, self._sign("notice:" + notice)[:20]):
            return None
        return notice

    def auth_cookie_value(self) -> str:
        return self._sign("auth")

    def bearer_ok(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return (self.token is not None and scheme.lower() == "bearer"
                and hmac.compare_digest(given.strip().encode(), self.token.encode()))

    def authenticated(self, request: Request) -> bool:
        if self.token is None or self.bearer_ok(request):
            return True
        cookie = request.cookies.get(AUTH_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.auth_cookie_value().encode())

    # -- rendering -----------------------------------------------------------------------
    def render(self, request: Request, name: str, context: dict[str, Any],
               status_code: int = 200) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE)
        if not self.csrf_valid(csrf):
            csrf = self.new_csrf()
        base = {"read_only": self.read_only, "csrf": csrf, "token_set": self.token is not None,
                "location": self.location, "path_for": _path_for(request),
                "now": time.time(), "page": name.removesuffix(".html"),
                "notice": self.notice_of(request), "filters": {"status": ""}}
        response = self.templates.TemplateResponse(request, name, {**base, **context},
                                                   status_code=status_code)
        if request.cookies.get(CSRF_COOKIE) != csrf:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict",
                                path=_cookie_path(request), secure=request.url.scheme == "https")
        return response


def _path_for(request: Request) -> Callable[..., str]:
    """``path_for('tasks', {'status': 'failed'})``, ``path_for('task', task_id=...)``: the route's
    path under the mount point (root_path included), with a query string (empty values left
    out): links stay relative to wherever the app is mounted."""
    def path_for(name: str, query: dict[str, Any] | None = None, **params: Any) -> str:
        path = request.url_for(name, **params).path
        kept = {k: v for k, v in (query or {}).items() if v not in (None, "")}
        return f"{path}?{urlencode(kept)}" if kept else path
    return path_for


def _cookie_path(request: Request) -> str:
    return request.scope.get("root_path") or "/"


# -- template filters ----------------------------------------------------------------------
def _clock(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    if value < 120:
        return f"{value:.2f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _ago(stamp: float | None, now: float) -> str:
    if stamp is None:
        return "-"
    delta = now - stamp
    return f"in {_seconds(-delta)}" if delta < 0 else f"{_seconds(delta)} ago"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _pretty(text: str | None) -> str:
    """Stored JSON indented for reading; anything else as it is (it is escaped either way)."""
    if text is None:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


# -- middleware ------------------------------------------------------------------------------
Next = Callable[[Request], Awaitable[Response]]


class Guard(BaseHTTPMiddleware):
    """Authentication, CSRF, read-only, and the security headers, before any route runs."""

    def __init__(self, app: Any, dashboard: Dashboard):
        super().__init__(app)
        self.dashboard = dashboard

    async def dispatch(self, request: Request, call_next: Next) -> Response:
        response = await self._check(request, call_next)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _check(self, request: Request, call_next: Next) -> Response:
        dash = self.dashboard
        path, root = request.scope["path"], request.scope.get("root_path", "")
        route = path[len(root):] if root and path.startswith(root) else path
        public = route == "/login" or route.startswith("/static/")
        if request.method == "POST":
            bearer = dash.bearer_ok(request)
            if not bearer:
                # The raw body, not request.form(): a form parsed here would be lost to the
                # route (Starlette replays the body downstream, not the parsed form). The
                # dashboard's forms are urlencoded; anything else carries no token here.
                body = (await request.body()).decode("utf-8", "replace")
                urlencoded = request.headers.get("content-type", "").startswith(
                    "application/x-www-form-urlencoded")
                given = (parse_qs(body).get(CSRF_FIELD, [""])[0]) if urlencoded else ""
                cookie = request.cookies.get(CSRF_COOKIE, "")
                if not (dash.csrf_valid(given) and hmac.compare_digest(given.encode(), cookie.encode())):
                    return PlainTextResponse("403: missing or wrong CSRF token; reload the page and "
                                             "try again", status_code=403)
            if route != "/login" and route != "/logout":
                if not dash.authenticated(request):
                    return PlainTextResponse("401: this dashboard needs its token (log in, or send "
                                             "Authorization: Bearer TOKEN)", status_code=401,
                                             headers={"WWW-Authenticate": "Bearer"})
                if dash.read_only:
                    return PlainTextResponse("403: this dashboard is read-only; actions are off",
                                             status_code=403)
        elif not public and not dash.authenticated(request):
            if "authorization" in request.headers:
                return PlainTextResponse("401: wrong token", status_code=401,
                                         headers={"WWW-Authenticate": "Bearer"})
            login = request.url_for("login").path
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{login}?{urlencode({'next': target})}", status_code=303)
        return await call_next(request)


# -- pages -----------------------------------------------------------------------------------
# Pages are plain functions, which Starlette runs in its thread pool, and actions run their
# storage calls there too: the queue's calls block (sqlite3, psycopg), and the app may be
# mounted in a user's own event loop, which they must not stall.
def _dash(request: Request) -> Dashboard:
    return request.app.state.dashboard


def overview(request: Request) -> Response:
    dash = _dash(request)
    mq = dash.mq
    now = time.time()
    stats = mq.stats()
    ends = mq.recent_ends(now - figures.HOUR, ENDS_LIMIT)
    oldest = mq.oldest_waiting()
    return dash.render(request, "overview.html", {
        "counts": stats["outcomes"], "shards": stats["shards"], "queues": stats["queues"],
        "figures": figures.compute(ends, now, ENDS_LIMIT),
        "oldest": oldest, "chart": {"width": figures.CHART_WIDTH, "height": figures.CHART_HEIGHT},
        "schedules": len(mq.schedules()), "nodes": len(mq.nodes())})


def _filters(request: Request) -> tuple[str, TaskStatus | None, str | None, str | None, str | None,
                                        str | None]:
    query = request.query_params
    word = query.get("status", "")
    if word and word not in STATUSES:
        raise HTTPException(400, f"unknown status {word!r}; one of {', '.join(STATUSES)}")
    name = query.get("name", "").strip() or None
    text = query.get("q", "").strip() or None
    queue = query.get("queue", "").strip() or None
    after = query.get("after") or None
    return word, STATUSES.get(word), name, text, queue, after


def task_list(request: Request) -> Response:
    dash = _dash(request)
    word, status, name, text, queue, after = _filters(request)
    try:
        tasks, next_cursor, examined = dash.mq.task_page(status, name, text, after, PAGE_SIZE, queue=queue)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    filters = {"status": word, "name": name or "", "q": text or "", "queue": queue or ""}
    return dash.render(request, "tasks.html", {
        "tasks": tasks, "filters": filters, "statuses": list(STATUSES), "next_cursor": next_cursor,
        "examined": examined, "first_page": after is None, "queues": dash.mq.queue_depths(),
        "word_of": STATUS_WORD, "retryable": status in (None, TaskStatus.FAILED),
        "removable": status in (None, *WAITING), "cancellable": status in (None, *CANCELLABLE)})


def _task_or_404(dash: Dashboard, task_id: str) -> TaskInfo:
    try:
        info = dash.mq.task_info(task_id)
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from exc
    if info is None:
        raise HTTPException(404, f"no task {task_id!r} is stored (removed, or purged by retention)")
    return info


def task_page(request: Request) -> Response:
    dash = _dash(request)
    info = _task_or_404(dash, request.path_params["task_id"])
    result = None if info.result is None else json.dumps(info.result, indent=2, ensure_ascii=False)
    wait = (None if info.started_at is None
            else max(0.0, info.started_at - max(info.created_at, info.run_after)))
    run = None if info.started_at is None or info.ended_at is None else info.ended_at - info.started_at
    return dash.render(request, "task.html", {
        "task": info, "result_text": result, "word": STATUS_WORD.get(info.status, info.status.name.lower()),
        "wait": wait, "run": run, "waiting": info.status in WAITING,
        "cancellable": info.status in CANCELLABLE})


def schedules_page(request: Request) -> Response:
    dash = _dash(request)
    return dash.render(request, "schedules.html", {"schedules": dash.mq.schedules(),
                                                   "word_of": STATUS_WORD})


def nodes_page(request: Request) -> Response:
    dash = _dash(request)
    return dash.render(request, "nodes.html", {"nodes": dash.mq.nodes()})


def metrics_page(request: Request) -> Response:
    """The stored queue's gauges in Prometheus' text format (the ``metrics`` extra); a worker's
    run counters are on its own ``--metrics-port``."""
    dash = _dash(request)
    if dash.metrics is None:
        try:
            from message_queue_sqlite.contrib.metrics import QueueMetrics
        except ImportError as exc:
            raise HTTPException(404, f"{exc}") from exc
        dash.metrics = QueueMetrics(dash.mq)
    return Response(dash.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


# -- actions ---------------------------------------------------------------------------------
def _local(request: Request, candidate: str) -> str | None:
    """``candidate`` if it is a path of this app (under its mount point), else None: a form's
    ``back`` or ``next`` never redirects elsewhere (``//host``, ``/\\host``, a scheme)."""
    root = request.scope.get("root_path", "")
    if candidate.startswith(f"{root}/") and not candidate.startswith("//") and "\\" not in candidate:
        return candidate
    return None


def _back(request: Request, form: Any, notice: str) -> Response:
    """Back to the page the action came from (a path of this app only), with a notice."""
    back = _local(request, str(form.get("back", ""))) or request.url_for("tasks").path
    url = URL(back).remove_query_params(["notice", "ns"]).include_query_params(
        **_dash(request).signed_notice(notice))
    return RedirectResponse(f"{url.path}?{url.query}", status_code=303)


async def _on_one(request: Request, action: Callable[[MessageQueue, str], int]) -> tuple[str, int, Any]:
    """Apply ``action`` to the task of the URL (404 if it is not stored): (id, count, form)."""
    dash = _dash(request)
    task_id = request.path_params["task_id"]

    def act() -> int:
        _task_or_404(dash, task_id)
        return action(dash.mq, task_id)

    return task_id, await run_in_threadpool(act), await request.form()


async def retry_one(request: Request) -> Response:
    task_id, count, form = await _on_one(request, lambda mq, task_id: mq.retry_failed(task_id=task_id))
    notice = f"{task_id} queued again" if count else f"{task_id} is not failed (or was retried already)"
    return _back(request, form, notice)


async def delete_one(request: Request) -> Response:
    task_id, count, form = await _on_one(request, lambda mq, task_id: mq.purge(task_id=task_id))
    if not count:
        return _back(request, form, f"{task_id} is no longer waiting: not deleted")
    if str(form.get("back", "")).endswith(f"/tasks/{task_id}"):  # its own page is gone: to the list
        form = {"back": request.url_for("tasks").path}
    return _back(request, form, f"{task_id} deleted")


async def cancel_one(request: Request) -> Response:
    dash = _dash(request)
    task_id = request.path_params["task_id"]

    def act() -> str:
        _task_or_404(dash, task_id)
        return dash.mq.cancel(task_id)[task_id]

    state, form = await run_in_threadpool(act), await request.form()
    return _back(request, form, {"cancelled": f"{task_id} cancelled: it will not run",
                                 "stopping": f"{task_id} was running: asked to stop",
                                 "ended": f"{task_id} had ended: nothing to cancel"}[state])


def _selected(form: Any) -> list[str]:
    return [str(v) for v in form.getlist("task_id") if str(v)]


async def bulk_retry(request: Request) -> Response:
    """Retry the selected failed tasks, or with ``all``, every failed task (of ``name``)."""
    dash = _dash(request)
    form = await request.form()
    if form.get("all"):
        name = str(form.get("name", "")).strip() or None
        count = await run_in_threadpool(lambda: dash.mq.retry_failed(task_name=name))
        return _back(request, form, f"{count} failed task(s){f' of {name}' if name else ''} queued again")
    ids = _selected(form)
    count = await run_in_threadpool(
        lambda: sum(dash.mq.retry_failed(task_id=task_id) for task_id in _valid_ids(dash, ids)))
    return _back(request, form, f"{count} failed task(s) queued again")


async def bulk_delete(request: Request) -> Response:
    """Delete the selected waiting tasks (one by one, by primary key)."""
    dash = _dash(request)
    form = await request.form()
    ids = _selected(form)
    count = await run_in_threadpool(
        lambda: sum(dash.mq.purge(task_id=task_id) for task_id in _valid_ids(dash, ids)))
    return _back(request, form, f"{count} waiting task(s) deleted")


async def bulk_cancel(request: Request) -> Response:
    """Cancel the selected tasks (waiting ones never start, running ones are asked to stop)."""
    dash = _dash(request)
    form = await request.form()
    ids = _selected(form)
    states = await run_in_threadpool(lambda: dash.mq.cancel(*_valid_ids(dash, ids)) if ids else {})
    values = list(states.values())
    return _back(request, form, f"{values.count('cancelled')} task(s) cancelled, "
                                f"{values.count('stopping')} running one(s) asked to stop")


def _valid_ids(dash: Dashboard, ids: list[str]) -> list[str]:
    """The selected ids, all checked before any is acted on: 400 naming a malformed one."""
    for task_id in ids:
        try:
            dash.mq.task_info(task_id)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
    return ids


# -- login -----------------------------------------------------------------------------------
async def login(request: Request) -> Response:
    dash = _dash(request)
    target = request.query_params.get("next", "")
    if request.method == "GET":
        return dash.render(request, "login.html", {"next": target, "error": None})
    form = await request.form()
    target = str(form.get("next", ""))
    given = str(form.get("token", ""))
    if dash.token is None or not hmac.compare_digest(given.encode(), dash.token.encode()):
        return dash.render(request, "login.html", {"next": target, "error": "wrong token"}, status_code=401)
    response = RedirectResponse(_local(request, target) or request.url_for("overview").path, status_code=303)
    response.set_cookie(AUTH_COOKIE, dash.auth_cookie_value(), httponly=True, samesite="strict",
                        path=_cookie_path(request), secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse(request.url_for("login").path, status_code=303)
    response.delete_cookie(AUTH_COOKIE, path=_cookie_path(request))
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return PlainTextResponse(f"{exc.status_code}: {exc.detail}", status_code=exc.status_code)


def create_app(mq: MessageQueue, *, read_only: bool = False, token: str | None = None) -> Starlette:
    """The dashboard of ``mq`` as a Starlette app (see the module's docstring for the security
    model). Serve it (``uvicorn``), or mount it: ``app.mount("/queue", create_app(mq))``."""
    if not isinstance(mq, MessageQueue):
        raise TypeError(f"create_app takes a MessageQueue, got {type(mq).__name__}: {mq!r}")
    dashboard = Dashboard(mq, read_only, token)
    routes = [
        Route("/", overview, name="overview"),
        Route("/tasks", task_list, name="tasks"),
        Route("/tasks/{task_id}", task_page, name="task"),
        Route("/tasks/{task_id}/retry", retry_one, methods=["POST"], name="retry_task"),
        Route("/tasks/{task_id}/delete", delete_one, methods=["POST"], name="delete_task"),
        Route("/tasks/{task_id}/cancel", cancel_one, methods=["POST"], name="cancel_task"),
        Route("/actions/cancel", bulk_cancel, methods=["POST"], name="bulk_cancel"),
        Route("/actions/retry", bulk_retry, methods=["POST"], name="bulk_retry"),
        Route("/actions/delete", bulk_delete, methods=["POST"], name="bulk_delete"),
        Route("/schedules", schedules_page, name="schedules"),
        Route("/nodes", nodes_page, name="nodes"),
        Route("/metrics", metrics_page, name="metrics"),
        Route("/login", login, methods=["GET", "POST"], name="login"),
        Route("/logout", logout, methods=["POST"], name="logout"),
        Mount("/static", StaticFiles(packages=[(PACKAGE, "static")]), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Guard, dashboard=dashboard)],
                    exception_handlers={HTTPException: _http_error})
    app.state.dashboard = dashboard
    return app

