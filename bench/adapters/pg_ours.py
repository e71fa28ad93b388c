"""PostgreSQL: this repository's package (``MessageQueue`` with a postgresql:// broker_url)."""

from __future__ import annotations

from message_queue_sqlite import MessageQueue

LABEL = "ours: MessageQueue on PostgreSQL"
NOTES = "send_many() for the batch, send().result() for round trips; `workers=4` threads"


def version() -> str:
    import psycopg

    import message_queue_sqlite

    return f"{message_queue_sqlite.__version__}, psycopg {psycopg.__version__}"


class Q:
    def __init__(self, mq):
        self.mq = mq


def open(url, schema, workdir, threads=4):
    mq = MessageQueue(workdir, workers=threads, broker_url=f"{url}?schema={schema}")

    @mq.task
    def noop(i=0):
        return i

    return Q(mq)


def enqueue_batch(q, start, n):
    q.mq.send_many([("noop", {"i": i}) for i in range(start, start + n)])


prefill = enqueue_batch


def start(q, threads):
    q.mq.start(threads)


DONE_SQL = "SELECT count(*) FROM {schema}.mqs_tasks WHERE status IN (3, 4, 5)"


def roundtrip(q, i, timeout):
    return q.mq.send("noop", {"i": i}).result(timeout=timeout)


def close(q):
    try:
        q.mq.stop()
    finally:
        q.mq.close()
