"""OPTIONS DATABASE: the queue lives in a Django database (an SQLite file, or PostgreSQL), and
a task enqueued inside ``transaction.atomic()`` on it joins that transaction: a rollback
leaves neither the view's row nor the task, a commit makes both, and the task then runs once.
Each case is a fresh Django process (its own settings and DATABASES), on both backends."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("django", minversion="6.0", reason="the Django backend's tests need Django 6 "
                    "(Python >= 3.12): run them with `make test-django`")

from conftest import POSTGRES_DSN, subprocess_env  # noqa: E402

SCRIPT = '''
import json, os, sys, time, uuid
import django
from django.conf import settings

where = sys.argv[1]
if where.startswith("postgresql"):
    from urllib.parse import urlparse
    u = urlparse(where)
    db = {"ENGINE": "django.db.backends.postgresql", "NAME": u.path.lstrip("/"), "USER": u.username or "",
          "HOST": u.hostname or "", "PORT": u.port or ""}
    extra = {"SCHEMA": "mqs_dj_" + uuid.uuid4().hex[:8]}
else:
    db = {"ENGINE": "django.db.backends.sqlite3", "NAME": where}
    extra = {}
settings.configure(
    INSTALLED_APPS=["message_queue_sqlite.contrib.django"], DATABASES={"default": db}, USE_TZ=True,
    TASKS={"default": {"BACKEND": "message_queue_sqlite.contrib.django.TaskBackend",
                       "OPTIONS": {"DATABASE": "default", "WORKERS": 1, **extra}}})
django.setup()
from django.db import connection, transaction
from django.tasks import TaskResultStatus, default_task_backend, task

@task
def confirm(order_id):
    return f"confirmed {order_id}"

table = "orders_" + uuid.uuid4().hex[:8]
with connection.cursor() as cursor:
    cursor.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, item TEXT)")

def orders():
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT item FROM {table} ORDER BY id")
        return [r[0] for r in cursor.fetchall()]

class Rollback(Exception):
    pass

out = {}
try:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} (id, item) VALUES (1, 'book')")
        rolled_back = confirm.enqueue(1)
        raise Rollback
except Rollback:
    pass
queue = default_task_backend.queue
out["after_rollback"] = {"orders": orders(), "tasks": len(queue.tasks())}
with transaction.atomic():
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} (id, item) VALUES (2, 'pen')")
    committed = confirm.enqueue(2)
    out["inside"] = {"tasks_seen_outside": len(queue.tasks())}
out["after_commit"] = {"orders": orders(), "tasks": len(queue.tasks())}
queue.start()
deadline = time.monotonic() + 30
result = committed
while time.monotonic() < deadline:
    result = default_task_backend.get_result(committed.id)
    if result.status == TaskResultStatus.SUCCESSFUL:
        break
    time.sleep(0.02)
out["result"] = [str(result.status), result.return_value if result.status == TaskResultStatus.SUCCESSFUL
                 else None]
queue.stop()
out["runs"] = len(queue.tasks())
with connection.cursor() as cursor:
    cursor.execute(f"DROP TABLE {table}")
    if extra:
        default_task_backend.close()
        cursor.execute(f"DROP SCHEMA {extra['SCHEMA']} CASCADE")
print(json.dumps(out))
'''


@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"])
def test_a_task_enqueued_in_an_atomic_block_joins_its_transaction(backend_name: str, tmp_path: Path) -> None:
    if backend_name == "postgres":
        if not POSTGRES_DSN:
            pytest.skip("PostgreSQL tests need MQS_TEST_POSTGRES_DSN")
        where = POSTGRES_DSN
    else:
        where = str(tmp_path / "site.db")
    script = tmp_path / "atomic.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run([sys.executable, str(script), where], capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["after_rollback"] == {"orders": [], "tasks": 0}
    assert out["inside"] == {"tasks_seen_outside": 0}  # not visible before the commit
    assert out["after_commit"] == {"orders": ["pen"], "tasks": 1}
    assert out["result"] == ["SUCCESSFUL", "confirmed 2"] and out["runs"] == 1
