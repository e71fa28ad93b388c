"""The web dashboard: an ASGI app (Starlette, Jinja2) on a queue's durable storage.

``mq.dashboard()`` or ``create_app(mq)`` returns it; ``mqs dashboard`` serves it with uvicorn.
Every page is read from the database, so it survives restarts and agrees across several
dashboard processes. See the README, "Dashboard", for the pages and the security model.
"""

from message_queue_sqlite.contrib.dashboard.app import create_app

__all__ = ["create_app"]
