"""The FastAPI example (examples/fastapi_app.py), started with uvicorn in its own process and
called over HTTP on loopback, on both backends: a POST sends, a GET awaits the result (202
while it runs, 500 with the error when it failed, 404 for an unknown id), 50 requests await
at once, an async def task is awaited within one request, the dashboard answers at /queue;
SIGTERM stops the app and its workers cleanly. Then the same app without workers, served by a
separate `mqs worker examples.fastapi_app:mq --processes 2`."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, start_cli_worker, stop_processes, subprocess_env, wait_until, worker_logs

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = open(tmp_path / "uvicorn.log", "w")  # noqa: SIM115 - kept open for the process's life
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--host",
                                "127.0.0.1", "--port", str(port)], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/queue/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=60, what=f"uvicorn to serve the example ({(tmp_path / 'uvicorn.log')})")
    return process, base


@pytest.fixture
def example_env(tmp_path, queue_dir, broker_url):
    return {**subprocess_env(), "MQS_QUEUE_DIR": queue_dir, "MQS_BROKER_URL": broker_url or ""}


async def _many_results(base: str, count: int) -> list[dict]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        ids = [(await client.post("/thumbnails", params={"name": f"p{n}.png", "width": n})).json()["task_id"]
               for n in range(count)]
        answers = await asyncio.gather(*(client.get(f"/thumbnails/{task_id}", params={"wait": 20})
                                         for task_id in ids))
    assert {a.status_code for a in answers} == {200}
    return [a.json() for a in answers]


def test_the_fastapi_example_sends_and_awaits_results_with_its_workers_in_its_lifespan(tmp_path, example_env):
    app, base = _serve(tmp_path, example_env)
    log = tmp_path / "uvicorn.log"
    try:
        sent = httpx.post(f"{base}/thumbnails", params={"name": "cat.png", "width": 200}, timeout=10)
        assert sent.status_code == 202, log.read_text()
        task_id = sent.json()["task_id"]
        done = httpx.get(f"{base}/thumbnails/{task_id}", params={"wait": 20}, timeout=30)
        assert done.status_code == 200 and done.json()["thumbnail"] == "cat-200.png", done.text

        results = asyncio.run(_many_results(base, 50))
        assert sorted(r["width"] for r in results) == list(range(50))

        bad = httpx.post(f"{base}/thumbnails", params={"name": "notes.txt"}, timeout=10).json()["task_id"]
        failed = httpx.get(f"{base}/thumbnails/{bad}", params={"wait": 20}, timeout=30)
        assert failed.status_code == 500 and "is not an image name" in failed.text, failed.text
        assert httpx.get(f"{base}/thumbnails/0-999999", timeout=10).status_code == 404
        assert httpx.get(f"{base}/thumbnails/nonsense", timeout=10).status_code == 404

        assert httpx.get(f"{base}/prices/abcd", timeout=30).json() == {"sku": "abcd", "price": 5.0}
        page = httpx.get(f"{base}/queue/", timeout=10)
        assert page.status_code == 200 and "Read from the queue's storage" in page.text
    finally:
        app.send_signal(signal.SIGTERM)
        code = app.wait(timeout=60)
    # (uvicorn re-raises the SIGTERM once its graceful shutdown is done)
    assert code in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()  # the lifespan stopped the workers


def test_the_fastapi_example_without_workers_is_served_by_a_separate_worker(tmp_path, example_env):
    env = {**example_env, "MQS_RUN_WORKERS": "0"}
    app, base = _serve(tmp_path, env)
    try:
        task_id = httpx.post(f"{base}/thumbnails", params={"name": "dog.jpg"}, timeout=10).json()["task_id"]
        waiting = httpx.get(f"{base}/thumbnails/{task_id}", params={"wait": 0.2}, timeout=10)
        assert waiting.status_code == 202 and waiting.json()["status"] == "pending"  # no worker yet
        worker = start_cli_worker(tmp_path, "examples.fastapi_app:mq", env, "--processes", "2")
        try:
            done = httpx.get(f"{base}/thumbnails/{task_id}", params={"wait": 30}, timeout=40)
            assert done.status_code == 200, worker_logs(tmp_path)
            assert done.json()["thumbnail"] == "dog-128.png"
        finally:
            stop_processes([worker])
        assert worker.returncode == 0, worker_logs(tmp_path)
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=60)
