"""The async client (README, "Async client"): ``await mq.asend(...)``, ``await task.asend(...)``,
``await handle.aresult(timeout=)``, on both backends. Waiting costs a future, never a thread;
a timeout raises TimeoutError; a cancelled wait leaves nothing registered."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from message_queue_sqlite import MessageQueue, TaskCancelled, TaskFailedError, TaskStatus
from tests.conftest import wait_until


def _app(make_queue, **options) -> MessageQueue:
    mq = make_queue(**options)

    @mq.task
    def add(a, b=1):
        return a + b

    @mq.task
    def boom(message):
        raise RuntimeError(message)

    return mq


async def _until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    """``wait_until`` for a coroutine: polls without blocking the loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


def test_asend_and_aresult_round_trip(make_queue):
    mq = _app(make_queue)
    add = mq.registry.get("add").func

    async def main():
        first = await add.asend(2, b=3)  # the task object's own arguments, like task.send
        second = await mq.asend("add", {"a": 10}, priority=5)  # mq.send's arguments
        failing = await mq.asend("boom", {"message": "no luck"})
        assert await first.aresult(timeout=10) == 5
        assert await second.aresult(timeout=10) == 11
        with pytest.raises(TaskFailedError, match="no luck"):
            await failing.aresult(timeout=10)
        outcome = await failing.aoutcome(timeout=10)
        assert outcome.status == TaskStatus.FAILED and "no luck" in outcome.error
        assert await first.astatus() == TaskStatus.FINISHED
        assert await failing.astatus() == TaskStatus.FAILED
        return first.task_id

    with mq.running():
        task_id = asyncio.run(main())
    assert mq.get(task_id).result(timeout=1) == 5  # the same task, seen by the sync API


def test_asend_checks_its_arguments_as_send_does(make_queue):
    mq = _app(make_queue)

    async def main():
        with pytest.raises(TypeError, match="add"):
            await mq.asend("add", {"nope": 1})
        with pytest.raises(ValueError, match="'missing'"):
            await mq.asend("missing", {})
        with pytest.raises(TypeError, match="priority"):
            await mq.asend("add", {"a": 1}, priority="high")

    asyncio.run(main())
    assert mq.stats()["outcomes"]["queued"] == 0  # nothing was stored


def test_two_hundred_concurrent_waits_use_no_thread_each(make_queue):
    """200 coroutines await results in one loop: every wait is registered before any worker
    runs, and the process has no more threads than before (a thread per wait would add 200;
    PostgreSQL's one storage look per wait borrows the loop's few executor threads)."""
    mq = _app(make_queue, workers=4)
    before = threading.active_count()

    async def main():
        handles = [await mq.asend("add", {"a": i}) for i in range(200)]
        waits = [asyncio.ensure_future(h.aresult(timeout=60)) for h in handles]
        dispatcher = mq.engine.dispatcher
        await _until(lambda: all(dispatcher.waiting_on(h.task_id) for h in handles), what="200 waits")
        await asyncio.sleep(0.05)  # any thread a wait started would be running by now
        during = threading.active_count()
        assert not any(w.done() for w in waits)  # no worker yet: all 200 are waiting
        mq.start()
        results = await asyncio.gather(*waits)
        return during, results

    try:
        during, results = asyncio.run(main())
    finally:
        mq.stop()
    assert results == [i + 1 for i in range(200)]
    assert during - before <= 8, (before, during)


def test_a_wait_past_its_timeout_raises_and_forgets_the_task(make_queue):
    mq = _app(make_queue)  # no workers: nothing ends

    async def main():
        handle = await mq.asend("add", {"a": 1})
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=handle.task_id):
            await handle.aresult(timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 5
        return handle

    handle = asyncio.run(main())
    assert not mq.engine.dispatcher.waiting_on(handle.task_id)


def test_a_cancelled_wait_leaves_no_registration(make_queue):
    """A web request cancelled while it awaits a result (the client went away) must not leave
    its wait behind; the task itself still runs (cancelling a wait is not cancelling a task)."""
    mq = _app(make_queue)

    async def main():
        handle = await mq.asend("add", {"a": 41})
        waiting = asyncio.ensure_future(handle.aresult())
        dispatcher = mq.engine.dispatcher
        await _until(lambda: dispatcher.waiting_on(handle.task_id), what="the wait registered")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not dispatcher.waiting_on(handle.task_id)
        return handle

    handle = asyncio.run(main())
    with mq.running():
        assert handle.result(timeout=10) == 42


def test_an_outcome_recorded_by_another_queue_object_reaches_the_wait(make_queue, queue_dir):
    """The sender runs no workers: the outcome comes through storage (another process's
    commit, as far as the sender can tell), and resolves the awaiting coroutine."""
    sender = _app(make_queue)
    worker = _app(make_queue)  # the same queue (folder, or schema), another node

    async def main():
        handles = [await sender.asend("add", {"a": i}) for i in range(20)]
        failing = await sender.asend("boom", {"message": "far away"})
        results = await asyncio.gather(*(h.aresult(timeout=30) for h in handles))
        with pytest.raises(TaskFailedError, match="far away"):
            await failing.aresult(timeout=30)
        return results

    with worker.running():
        assert asyncio.run(main()) == [i + 1 for i in range(20)]


def test_an_outcome_already_stored_is_found_at_once(make_queue):
    mq = _app(make_queue)
    with mq.running():
        handle = mq.send("add", {"a": 1})
        wait_until(lambda: handle.status == TaskStatus.FINISHED, what="the task to end")
    late = mq.get(handle.task_id)  # a handle made after the end: its result is in storage

    async def main():
        return await late.aresult(timeout=5)

    assert asyncio.run(main()) == 2


def test_acancel_a_waiting_task(make_queue):
    mq = _app(make_queue)

    async def main():
        handle = await mq.asend("add", {"a": 1})
        assert await handle.acancel() == "cancelled"
        with pytest.raises(TaskCancelled):
            await handle.aresult(timeout=10)

    asyncio.run(main())


def test_asend_and_aresult_in_an_asgi_handler(make_queue):
    """As a FastAPI (Starlette) endpoint uses it: requests handled concurrently in one loop,
    each sending a task and awaiting its result."""
    pytest.importorskip("starlette")
    httpx = pytest.importorskip("httpx")
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    mq = _app(make_queue, workers=4)

    async def endpoint(request):
        handle = await mq.asend("add", {"a": int(request.path_params["a"])})
        return JSONResponse({"task_id": handle.task_id, "result": await handle.aresult(timeout=30)})

    app = Starlette(routes=[Route("/add/{a}", endpoint)])

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = await asyncio.gather(*(client.get(f"/add/{i}") for i in range(50)))
        return [r.json()["result"] for r in responses]

    with mq.running():
        assert asyncio.run(main()) == [i + 1 for i in range(50)]


def test_the_write_runs_where_the_readme_says(make_queue, backend):
    """SQLite: in the event loop's thread (tens of microseconds); PostgreSQL: on a thread (a
    network round trip would hold the loop). Told apart by the thread the send hook runs in."""
    from message_queue_sqlite import Hook

    threads: list[int] = []

    class Where(Hook):
        def before_send(self, request):
            threads.append(threading.get_ident())

    mq = _app(make_queue, hooks=[Where()])

    async def main():
        await mq.asend("add", {"a": 1})
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(threads) == 1
    assert (threads[0] == loop_thread) == (backend == "sqlite")


def test_asend_in_immediate_mode_runs_the_task_off_the_loop(tmp_path):
    """Immediate mode runs the task inside the send: asend does that on a thread, and the
    result is there when it returns."""
    seen: list[int] = []
    with MessageQueue(str(tmp_path / "q"), immediate=True) as mq:

        @mq.task
        def where():
            seen.append(threading.get_ident())
            return "ran"

        async def main():
            handle = await where.asend()
            assert await handle.aresult(timeout=5) == "ran"
            return threading.get_ident()

        loop_thread = asyncio.run(main())
    assert seen and seen[0] != loop_thread
