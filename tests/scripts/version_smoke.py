"""Run by tests/test_python_versions.py under each Python the package supports, with every
DeprecationWarning an error (Python 3.12 warns, and 3.14 refuses, a parameter sequence bound
to numbered placeholders): the SQLite path's statements of a send, a claim, a completion, a
retry, a delay, a listing, a unique key, a cancel and a send in an application transaction."""

import os
import sqlite3
import sys
import tempfile
import warnings

warnings.simplefilter("error", DeprecationWarning)
sys.path.insert(0, sys.argv[1])
from message_queue_sqlite import MessageQueue, TaskFailedError  # noqa: E402

folder = tempfile.mkdtemp()
with MessageQueue(os.path.join(folder, "q"), workers=2) as mq:
    @mq.task(retries=1, retry_backoff=0.01, retry_jitter=False)
    def add(a, b):
        return a + b

    @mq.task(retries=1, retry_backoff=0.01, retry_jitter=False)
    def boom():
        raise ValueError("boom")

    with mq.running():
        handles = [mq.send(add, {"a": i, "b": 1}, delay=0.01 if i % 2 else 0, priority=i) for i in range(40)]
        handles += mq.send_many([(add, {"a": i, "b": 2}) for i in range(40)])
        assert [h.result(timeout=30) for h in handles[:40]] == [i + 1 for i in range(40)]
        assert [h.result(timeout=30) for h in handles[40:]] == [i + 2 for i in range(40)]
        try:
            mq.send(boom).result(timeout=30)
            raise AssertionError("boom did not fail")
        except TaskFailedError:
            pass
        assert mq.send(add, {"a": 1, "b": 1}, unique_key="k").result(timeout=30) == 2
        assert mq.cancel(mq.send(add, {"a": 1, "b": 1}, delay=60).task_id)
        assert len(mq.tasks()) >= 80 and mq.stats()["outcomes"]["failed"] == 1
        assert mq.retry_failed() == 1
path = os.path.join(folder, "app.db")
app = sqlite3.connect(path)
app.execute("CREATE TABLE orders (item TEXT)")
app.commit()
with MessageQueue(database=path) as mq:
    mq.task(name="confirm")(lambda: "done")
    app.execute("INSERT INTO orders VALUES ('book')")
    handle = mq.send("confirm", connection=app, delay=0.01)
    app.commit()
    with mq.running():
        assert handle.result(timeout=30) == "done"
print("ok", sys.version.split()[0])
