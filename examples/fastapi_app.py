"""A FastAPI app that sends tasks and awaits their results without blocking its event loop.

Run it (the queue's workers start and stop with the app, through its lifespan)::

    pip install "message-queue-sqlite[dashboard]" fastapi uvicorn
    uvicorn examples.fastapi_app:app

or run the workers apart, as many processes as you like, and the app without them::

    MQS_RUN_WORKERS=0 uvicorn examples.fastapi_app:app
    mqs worker examples.fastapi_app:mq --processes 2

- ``POST /thumbnails?name=cat.png&width=200`` sends a task (``await task.asend``: committed
  when it returns) and answers its id at once;
- ``GET /thumbnails/{task_id}?wait=10`` awaits the result (``await handle.aresult``: an asyncio
  future, no thread per waiting request): 200 with the value, 202 while it is still running,
  500 with the error if it failed, 404 for an unknown id;
- ``GET /prices/{sku}`` sends an ``async def`` task and awaits it in the same request;
- ``/queue`` is the dashboard, mounted in the app.

Where the queue lives: ``MQS_QUEUE_DIR`` (a folder, default ``queue_dir``), or
``MQS_BROKER_URL`` (``postgresql://...``) for PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

from message_queue_sqlite import MessageQueue, TaskCancelled, TaskFailedError

mq = MessageQueue(os.environ.get("MQS_QUEUE_DIR", "queue_dir"),
                  broker_url=os.environ.get("MQS_BROKER_URL") or None, workers=4)
RUN_WORKERS = os.environ.get("MQS_RUN_WORKERS", "1") != "0"


@mq.task(retries=2)
def make_thumbnail(name: str, width: int = 128) -> dict[str, object]:
    """A plain function: runs on a worker thread (or a worker process: ``mqs worker``)."""
    if not name.endswith((".png", ".jpg")):
        raise ValueError(f"{name!r} is not an image name (.png or .jpg)")
    return {"name": name, "width": width, "thumbnail": f"{name.rsplit('.', 1)[0]}-{width}.png"}


@mq.task(timeout=5)
async def fetch_price(sku: str) -> float:
    """An ``async def`` task: runs on the worker's event loop, many at once."""
    await asyncio.sleep(0.01)  # stands for an HTTP call to a price service
    return round(len(sku) * 1.25, 2)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """Workers start with the app and stop with it (draining what runs), unless they run apart."""
    if RUN_WORKERS:
        mq.start()
    try:
        yield
    finally:
        if RUN_WORKERS:
            await asyncio.to_thread(mq.stop)  # a graceful stop waits for running tasks: off the loop
        mq.close()


app = FastAPI(lifespan=lifespan)
app.mount("/queue", mq.dashboard())


@app.post("/thumbnails", status_code=202)
async def create_thumbnail(name: str, width: int = 128) -> dict[str, str]:
    try:
        handle = await make_thumbnail.asend(name, width=width)
    except TypeError as exc:  # arguments that do not fit the task: refused before anything is stored
        raise HTTPException(422, str(exc)) from None
    return {"task_id": handle.task_id}


@app.get("/thumbnails/{task_id}")
async def thumbnail_result(task_id: str, wait: float = 10.0) -> object:
    try:
        handle = mq.get(task_id)
    except (LookupError, ValueError) as exc:  # unknown, or not an id of this queue
        raise HTTPException(404, str(exc)) from None
    try:
        return await handle.aresult(timeout=wait)
    except TimeoutError:
        return JSONResponse({"task_id": task_id, "status": "pending"}, status_code=202)
    except (TaskFailedError, TaskCancelled) as exc:
        raise HTTPException(500, str(exc)) from None


@app.get("/prices/{sku}")
async def price(sku: str) -> dict[str, object]:
    handle = await fetch_price.asend(sku)
    return {"sku": sku, "price": await handle.aresult(timeout=10)}
