"""Reaching the queue's schema: parse the URL, connect, refuse what is not ours, migrate.

The URL is a libpq URL with one extra query parameter, ``schema`` (default ``mqs``),
removed before connecting. Every table lives in that schema. Opening verifies that the
schema holds only this package's tables (another application's schema is refused and
left untouched), then creates or migrates it inside one transaction that first takes
``pg_advisory_xact_lock``, so processes opening a fresh schema at once agree on one
migration run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

import psycopg
from psycopg import conninfo as pg_conninfo

from message_queue_sqlite.backends.sql_files import load_migrations
from message_queue_sqlite.core.errors import QueueStorageError

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "mqs"
VERSION_TABLE = "mqs_schema_version"
OUR_TABLES = frozenset({"mqs_tasks", "mqs_nodes", "mqs_counts", "mqs_count_deltas", "mqs_schedules",
                        "mqs_queues", "mqs_limits", "mqs_rates", VERSION_TABLE})
FIRST_TABLES = frozenset({"mqs_tasks", "mqs_nodes", VERSION_TABLE})  # every version has these
MIGRATIONS = load_migrations(__package__)
SCHEMA_VERSION = MIGRATIONS[-1][0]
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Network timeouts (issue 17, finding 6). Without them a blackholed network or a stopped
# server held a call for 15 minutes and more: TCP only gives up after its retransmissions
# (~15 min) and an idle connection's dead peer is never noticed. Every bound here is the
# queue's, on every connection it opens (a connection string that sets one keeps its own):
# - connect_timeout: a connection attempt (TCP and the server's handshake) gives up after it;
# - keepalives: an idle connection (the listener's) whose peer vanished breaks after
#   idle + interval * count = 5 + 2 * 3 = 11 s;
# - tcp_user_timeout: data left unacknowledged this long (ms) breaks the connection (a
#   partition while a statement is sent or its reply awaited);
# - IO_TIMEOUT_S (client side, see QueueConnection): a reply not received in this long breaks
#   the connection, whatever TCP says: a peer that acknowledges but never answers (a
#   stopped server, a proxy or middlebox that blackholes) is noticed too;
# - statement_timeout / lock_timeout / idle_in_transaction_session_timeout (server side,
#   queue sessions): every queue statement is short (milliseconds), so one that runs or
#   waits for a lock far longer is cancelled by the server before the client gives up on it,
#   and a transaction whose client vanished mid-way frees its row locks.
CONNECT_TIMEOUT_S = 5
TCP_USER_TIMEOUT_MS = 10_000
STATEMENT_TIMEOUT_S = 10.0
LOCK_TIMEOUT_S = 5.0
IDLE_IN_TRANSACTION_TIMEOUT_S = 15.0
IO_TIMEOUT_S = STATEMENT_TIMEOUT_S + 2.0  # the server's cancel, and its reply, arrive first
MIGRATE_TIMEOUT_S = 300.0  # a migration may build indexes on a large table: its own bound
# Defaults added to the connection string unless it sets them: a name that shows in
# pg_stat_activity and the network bounds above.
CONNECT_DEFAULTS = {
    "application_name": "message_queue_sqlite",
    "connect_timeout": str(CONNECT_TIMEOUT_S),
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": str(TCP_USER_TIMEOUT_MS),
}


class NetworkTimeout(psycopg.OperationalError):
    """No reply from the server within the connection's ``io_timeout``: the connection was
    closed (its state is unknown), so callers reconnect as after any break."""


class QueueConnection(psycopg.Connection):
    """A psycopg connection whose every wait for the server is bounded by ``io_timeout``
    seconds (None: unbounded). psycopg's own waits have no bound; TCP's take ~15 minutes."""

    io_timeout: float | None = IO_TIMEOUT_S

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        bound = self.io_timeout if timeout is None else timeout
        try:
            return super().wait(gen, interval=interval, timeout=bound)
        except psycopg.errors._WaitTimeout:
            if timeout is not None:  # psycopg's own bounded wait (a cancel): its handling
                raise
            self.pgconn.finish()  # mid-statement, state unknown: never reused
            raise NetworkTimeout(f"no reply from PostgreSQL within {bound:g} s (the network or the "
                                 "server is not answering); the connection was closed") from None


class Target:
    """Where a queue lives: a libpq connection string and a schema in that database."""

    def __init__(self, url: str):
        base, _, query_text = url.partition("?")
        query = parse_qsl(query_text, keep_blank_values=True)
        schemas = [value for key, value in query if key == "schema"]
        schema = schemas[-1] if schemas else DEFAULT_SCHEMA
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema={schema!r} in the broker URL is not a plain identifier "
                             "(letters, digits and _, at most 63, not starting with a digit)")
        self.schema = schema
        self.quoted_schema = f'"{schema}"'
        rest = [(key, value) for key, value in query if key != "schema"]
        bare = f"{base}?{urlencode(rest)}" if rest else base
        try:
            given = pg_conninfo.conninfo_to_dict(bare)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"the broker URL is not a valid PostgreSQL URL: {exc}") from None
        params = {**CONNECT_DEFAULTS, **{k: str(v) for k, v in given.items() if v is not None}}
        self.conninfo = pg_conninfo.make_conninfo("", **params)
        self.location = _location(given, schema)
        channel = f"mqs_{schema}"
        if len(channel) > 63:  # a NOTIFY channel is an identifier: at most 63 bytes
            channel = "mqs_" + hashlib.sha1(schema.encode()).hexdigest()
        self.channel = channel
        self.lock_key = int.from_bytes(
            hashlib.blake2b(f"message_queue_sqlite:{schema}".encode(), digest_size=8).digest(),
            "big", signed=True)

    def sql(self, text: str) -> str:
        return text.replace("{schema}", self.quoted_schema)


def _location(params: dict[str, object], schema: str) -> str:
    """postgresql://user@host:port/db?schema=NAME, for people: never the password."""
    user = params.get("user")
    host = str(params.get("host") or params.get("hostaddr") or "")
    port = str(params.get("port") or "").strip(",")
    dbname = params.get("dbname") or user or ""
    query = f"schema={schema}"
    netloc = f"{user}@" if user else ""
    if host.startswith("/"):  # a Unix socket directory
        query = f"host={host}&{query}"
    else:
        netloc += f"[{host}]" if ":" in host and "," not in host else (host or "localhost")
        if port:
            netloc += f":{port}"
    return f"postgresql://{netloc}/{dbname}?{query}"


SYNCHRONOUS_COMMIT = {"normal": "off", "full": "on"}
# The queue table's statistics are always stale: its contents turn over in seconds, and an
# ANALYZE taken while it was empty makes a burst of ready rows look like one row. Left to
# itself the planner then sorts every ready row for each claim (bitmap scan + sort: seen
# at 8 ms per claim on 20,000 ready rows, against 0.2 ms walking the index), or joins by
# hashing a scan of the whole table. Every statement in queries.sql is written for
# index-driven plans (claim: walk the ready index in order, stop at the limit; updates:
# nested loops on the primary key), so the queue's own sessions rule the others out.
# (extra_float_digits: times leave the server as JSON text, and must round-trip exactly.)
# A plan that must still sort (a listing of the few running tasks, sorted after reading them
# on their index) carries the cost the settings above add, far above jit_above_cost: the
# server then spent 260 ms compiling a 0.1 ms query. These statements are all short: no JIT.
SESSION_SETTINGS = ("SET enable_sort = off; SET enable_hashjoin = off; SET enable_mergejoin = off; "
                    "SET jit = off; SET extra_float_digits = 1; "
                    f"SET statement_timeout = {int(STATEMENT_TIMEOUT_S * 1000)}; "
                    f"SET lock_timeout = {int(LOCK_TIMEOUT_S * 1000)}; "
                    f"SET idle_in_transaction_session_timeout = {int(IDLE_IN_TRANSACTION_TIMEOUT_S * 1000)}")


def connect(target: Target, durability: str | None = None,
            timeout: float | None = None) -> QueueConnection:
    """A new autocommit connection. With a durability it is a queue session: its
    ``synchronous_commit``, timeouts and planner settings are set (the listener needs none).
    ``timeout`` (seconds) bounds this attempt below ``connect_timeout`` (libpq's minimum: 2 s),
    so a call near the end of its retry window does not overrun it."""
    extra = {} if timeout is None else {"connect_timeout": max(2, min(CONNECT_TIMEOUT_S, math.ceil(timeout)))}
    conn = QueueConnection.connect(target.conninfo, autocommit=True, **extra)
    try:
        if durability is not None:
            conn.execute(f"SET synchronous_commit = {SYNCHRONOUS_COMMIT[durability]}; {SESSION_SETTINGS}")
    except BaseException:
        conn.close()
        raise
    return conn


def open_schema(target: Target, durability: str = "normal") -> QueueConnection:
    """A connection to a verified, migrated schema (the first connection of a backend)."""
    try:
        conn = connect(target, durability)
    except psycopg.Error as exc:
        raise QueueStorageError(f"cannot connect to PostgreSQL at {target.location}: {exc}") from exc
    try:
        migrate(conn, target)
    except psycopg.Error as exc:
        conn.close()
        raise QueueStorageError(f"cannot use schema {target.schema!r} at {target.location}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _refuse(target: Target, why: str) -> QueueStorageError:
    return QueueStorageError(
        f"schema {target.schema!r} at {target.location} is not a queue schema of "
        f"message_queue_sqlite: {why}; nothing was changed. Pick another schema with "
        "?schema=NAME in the broker URL.")


def _inspect(conn: psycopg.Connection, target: Target) -> tuple[bool, int]:
    """(schema exists, applied version); raises when the schema holds foreign tables."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_class AS c "
        "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        (target.schema,)).fetchall()
    exists = conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s",
                          (target.schema,)).fetchone() is not None
    tables = {r[0] for r in rows}
    foreign = sorted(tables - OUR_TABLES)
    if foreign:
        raise _refuse(target, f"it holds other tables ({', '.join(foreign[:5])})")
    if not tables:
        return exists, 0
    if VERSION_TABLE not in tables:
        raise _refuse(target, f"it holds tables named like ours ({', '.join(sorted(tables))}) "
                              f"but no {VERSION_TABLE} table")
    version = conn.execute(
        target.sql(f"SELECT coalesce(max(version), 0) FROM {{schema}}.{VERSION_TABLE}")).fetchone()[0]
    if version > SCHEMA_VERSION:
        raise QueueStorageError(
            f"schema {target.schema!r} at {target.location} has queue schema version {version}, "
            f"newer than this package supports ({SCHEMA_VERSION}); upgrade message_queue_sqlite")
    if version and not tables >= FIRST_TABLES:  # later ones arrive by migration
        raise _refuse(target, f"tables are missing (found {', '.join(sorted(tables))})")
    return exists, version


def migrate(conn: QueueConnection, target: Target) -> None:
    """Create or upgrade the schema; a no-op read when it is current."""
    _exists, version = _inspect(conn, target)
    if version == SCHEMA_VERSION:
        return
    conn.io_timeout = MIGRATE_TIMEOUT_S
    try:
        _migrate(conn, target)
    finally:
        conn.io_timeout = IO_TIMEOUT_S


def _migrate(conn: QueueConnection, target: Target) -> None:
    """The migration transaction, under the advisory lock (another opener may hold it while it
    migrates: waited for up to MIGRATE_TIMEOUT_S, as are the DDL statements)."""
    with conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = {int(MIGRATE_TIMEOUT_S * 1000)}; "
                     "SET LOCAL lock_timeout = 0")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (target.lock_key,))
        exists, version = _inspect(conn, target)  # another opener may have migrated meanwhile
        if version == SCHEMA_VERSION:
            return
        if not exists:
            conn.execute(target.sql("CREATE SCHEMA {schema}"))
        conn.execute(target.sql(
            f"CREATE TABLE IF NOT EXISTS {{schema}}.{VERSION_TABLE} ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"))
        for number, name, sql in MIGRATIONS:
            if number > version:
                log.info("%s: applying migration %04d_%s", target.location, number, name)
                conn.execute(target.sql(sql))  # no parameters: one message, many statements
                conn.execute(target.sql(f"INSERT INTO {{schema}}.{VERSION_TABLE} (version, name) "
                                        "VALUES (%s, %s)"), (number, name))
