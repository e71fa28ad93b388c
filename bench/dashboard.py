#!/usr/bin/env python3
"""What the dashboard's pages cost at a million stored tasks (issue 15: under 300 ms each).

    python3 bench/dashboard.py [--rows 1000000] [--broker-url postgresql://...] [--repeat 5]

Builds one shard as bench/admin.py does (through the storage interface, so the kept counts
are kept as in real use: about 1% failed, 1,000 ready, 100 scheduled, 10 running, the rest
finished, all ended within the last minutes), then times whole page renders through the
ASGI app in process (Starlette's TestClient: routing, storage reads, templates, no network),
median of ``repeat``, in milliseconds. Needs the ``dashboard`` extra (``make`` installs it in
.venv: run it with .venv/bin/python). A measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from admin import BATCH, build, settle, timed  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from message_queue_sqlite import MessageQueue  # noqa: E402
from message_queue_sqlite.backends.base import NewTask  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--broker-url", help="PostgreSQL URL (with ?schema=NAME of its own)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backlog", type=int, default=200_000,
                        help="ready tasks then sent on top, for the worst case (default: %(default)s)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="mqs-dashboard-")
    mq = MessageQueue(folder, broker_url=args.broker_url)
    started = time.perf_counter()
    failed, _ready = build(mq, args.rows)
    built = time.perf_counter() - started
    if args.broker_url:
        settle(mq)
    client = TestClient(mq.dashboard())
    first = client.get("/tasks").text
    older = re.search(r'id="next-page" href="([^"]+)"', first)
    middle = f"/tasks?after={args.rows // 2}:0"  # a cursor half way down the table
    pages = [
        ("overview /", "/"),
        ("task list /tasks (newest)", "/tasks"),
        ("task list, second page", older.group(1).replace("&amp;", "&") if older else "/tasks"),
        ("task list, half way down (keyset)", middle),
        ("failed /tasks?status=failed", "/tasks?status=failed"),
        ("finished /tasks?status=finished", "/tasks?status=finished"),
        ("waiting /tasks?status=queued", "/tasks?status=queued"),
        ("scheduled /tasks?status=scheduled", "/tasks?status=scheduled"),
        ("running /tasks?status=running", "/tasks?status=running"),
        ("name filter /tasks?name=work", "/tasks?name=work"),
        ("text filter /tasks?q=boom (sparse)", "/tasks?q=boom"),
        ("task page /tasks/ID", f"/tasks/{failed}"),
        ("schedules", "/schedules"),
        ("nodes", "/nodes"),
    ]
    print(f"backend: {'postgresql' if args.broker_url else 'sqlite'}; {args.rows:,} tasks built in "
          f"{built:.0f} s; whole page renders in process, median of {args.repeat}, ms")
    print(f"| {'page':40} | {'ms':>8} | {'bytes':>7} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 9}|")
    for name, url in pages:
        response = client.get(url)
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code}: {response.text[:200]}")
        ms = timed(lambda url=url: client.get(url), args.repeat)
        print(f"| {name:40} | {ms:8.1f} | {len(response.content):7} |")
    # The overview's worst case: the newest rows are a backlog that has not run, so the look
    # for recent ends (SQLite: among the newest rows) finds none and reads its whole window;
    # and a text filter that matches nothing reads its whole window on every page.
    shard, node = mq.engine.shards[0], mq.engine.node
    for _ in range(args.backlog // BATCH):
        shard.enqueue([NewTask("work", '{"n": 2}', 0, node, False, None, 0, None, 0.0, time.time())
                       for _ in range(BATCH)])
    print(f"\nthen {args.backlog:,} more tasks queued on top (the newest rows: none ended)")
    print(f"| {'page':40} | {'ms':>8} | {'bytes':>7} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 9}|")
    for name, url in [("overview /", "/"), ("text filter, no match /tasks?q=zzz", "/tasks?q=zzz"),
                      ("waiting /tasks?status=queued", "/tasks?status=queued")]:
        response = client.get(url)
        ms = timed(lambda url=url: client.get(url), args.repeat)
        print(f"| {name:40} | {ms:8.1f} | {len(response.content):7} |")
    mq.close()


if __name__ == "__main__":
    main()
