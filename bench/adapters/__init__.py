"""One adapter per system. Every adapter module exposes the same few names:

``LABEL``; ``CAPS`` (what the API offers: ``batch``, ``callbacks``, ``shards``,
``durability``); ``NOTES`` (how the adapter drives the system, shown in the report);
``version()``; ``open(path, role, threads, shards, durability, callbacks)`` -> handle
(``role``: "both", "producer" or "worker"); ``enqueue(q, i)`` (one task, one call);
``enqueue_batch(q, start, n)`` (one call for n tasks, only if ``CAPS["batch"]``);
``prefill(q, n)`` (put n tasks in quickly before a drain; not timed);
``start(q, threads)`` / ``stop(q)`` (worker threads in this process);
``done_counter(q, path, shards)`` -> a function returning how many tasks have their
result recorded in storage; ``callbacks(q)`` (callbacks run in this process);
``roundtrip(q, i)`` (send one task, block until its result is back); ``close(q)``.

The task everywhere is a no-op that returns its argument ``i``, except in the worker-CLI
workloads (io_10ms, async_sleep, cpu_2ms; trial.py ``work``): there the adapters of systems
deployed as their own worker processes (``SPAWNS``; adapters/_broker.py) also expose
``prefill_kind``, ``spawn(q, spec)``, ``ready``, ``check`` and ``cpu_seconds``, and ours is
driven through ``ours_cli`` (``mqs worker``). Their task modules are in bench/broker_tasks/.
"""

SYSTEMS = {
    # name: (module, virtualenv or None for the repo's interpreter, short label)
    "raw": ("raw", None, "raw sqlite3 (ceiling)"),
    "ours": ("ours", None, "ours: MessageQueue"),
    "ours_seed": ("ours_seed", None, "ours: seed API"),
    "original": ("original", "original", "message-queue-sqlite 2.0.1"),
    "huey": ("huey_sqlite", "peers", "huey SqliteHuey"),
    "persistqueue": ("persistqueue_ack", "peers", "persist-queue SQLiteAckQueue"),
    "litequeue": ("litequeue_sqlite", "peers", "litequeue"),
    # broker-based peers on the local Redis, each in a virtualenv of its own
    "celery": ("celery_redis", "celery", "Celery (Redis)"),
    "rq": ("rq_redis", "rq", "RQ (Redis)"),
    "dramatiq": ("dramatiq_redis", "dramatiq", "dramatiq (Redis)"),
    "huey_redis": ("huey_redis", "huey_redis", "huey RedisHuey"),
    "arq": ("arq_redis", "arq", "arq (Redis)"),
    "saq": ("saq_redis", "saq", "SAQ (Redis)"),
}
BROKERS = ["celery", "rq", "dramatiq", "huey_redis", "arq", "saq"]
CLI_MODULES = {"ours": "ours_cli", "huey": "huey_sqlite_cli"}  # adapters for the worker-CLI workloads
