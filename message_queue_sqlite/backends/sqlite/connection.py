"""Opening a shard file: refuse what is not ours, switch to WAL safely, migrate.

Another application's database is never modified (an application id in the file header
marks ours); switching a fresh file to WAL needs the write lock, so processes opening it
at once retry the switch instead of failing with "database is locked"; and the schema is
created or migrated inside one ``BEGIN IMMEDIATE`` so concurrent openers agree.

A shard may also live in memory (immediate mode; ``memory_database``): the same schema,
migrations and settings, minus WAL, which SQLite has no use for there.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from message_queue_sqlite.backends.backoff import Backoff
from message_queue_sqlite.backends.sql_files import load_migrations
from message_queue_sqlite.backends.sqlite.clock import Clock
from message_queue_sqlite.core.errors import QueueStorageError

log = logging.getLogger(__name__)

APPLICATION_ID = 0x4D515331  # "MQS1" in the file header: marks a file as this package's
MIGRATIONS = load_migrations(__package__)
SCHEMA_VERSION = MIGRATIONS[-1][0]
BUSY_TIMEOUT_S = 5.0  # one wait inside SQLite's busy handler
LOCK_DEADLINE_S = 120.0  # total time a write keeps retrying a locked file before giving up
SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}
MEMORY_VFS_SUFFIX = "?vfs=memdb"

T = TypeVar("T")


def is_locked_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def retry_locked(action: Callable[[], T], what: str, deadline_s: float = LOCK_DEADLINE_S) -> T:
    """Run ``action`` again with jittered back-off while the file is locked by another process,
    so "database is locked" never reaches a user unless the lock outlives ``deadline_s``."""
    backoff = Backoff(first=0.001, cap=0.2, deadline_s=deadline_s)
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not is_locked_error(exc):
                raise
            if backoff.expired:
                raise QueueStorageError(
                    f"{what}: the queue file stayed locked by another process for over "
                    f"{deadline_s:.0f} s ({exc})"
                ) from exc
            log.debug("%s: file locked, retrying in up to %.3f s", what, backoff.delay)
            backoff.wait()


def storage_condition(path: str, exc: sqlite3.Error) -> str:
    """What the OS condition behind a failed SQLite call on ``path`` is, and what to do, as a
    sentence for the error (empty when it is no storage condition, e.g. a constraint).

    SQLite reports EIO and EROFS alike as SQLITE_IOERR_* ("disk I/O error"), and an ENOSPC
    hit outside a write of the database (the WAL index) as an I/O error too: the file
    system's state (``statvfs``: read-only flag, free blocks) tells them apart. The caller
    rolled the transaction back, so what was acknowledged before is intact."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    text = str(exc).lower()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fs = os.statvfs(folder)
        read_only_fs, no_space = bool(fs.f_flag & os.ST_RDONLY), fs.f_bavail == 0
    except OSError:
        read_only_fs = no_space = False
    io_error = name.startswith("SQLITE_IOERR") or "disk i/o error" in text
    full = name == "SQLITE_FULL" or "disk is full" in text
    after = ("the transaction was rolled back, the file is intact and nothing acknowledged before "
             "is lost; retry once space is freed")
    if no_space and (full or io_error):
        return f"the disk is full (ENOSPC on the file system of {folder}): free disk space there; {after}"
    if full:  # space is left now: it was freed since, or the file's max_page_count was reached
        return (f"the database is full (SQLITE_FULL; the file system of {folder} has space now: "
                f"freed since, or the file's max_page_count was reached): free disk space, or raise "
                f"max_page_count; {after}")
    if read_only_fs and (io_error or name.startswith("SQLITE_READONLY") or "readonly" in text):
        return (f"the file system of {folder} is read-only (EROFS; remounted read-only after an "
                "error?): remount it read-write (check dmesg first) or move the queue folder; "
                "nothing was written, what was acknowledged before is intact; retry once it is writable")
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return (f"the file or its folder {folder} is read-only (permissions): make both writable "
                "by this user; nothing was written")
    if io_error:
        what = name.removeprefix("SQLITE_IOERR").strip("_").lower() or "read/write"
        return (f"an I/O error (EIO) from the device or file system ({name or 'SQLITE_IOERR'}: "
                f"the {what} call failed): check the disk (dmesg, SMART) and the file system; the "
                "transaction was rolled back, so retrying is safe once the storage is healthy; "
                f"then run PRAGMA integrity_check on {path}")
    return ""


def _refuse(path: str, why: str) -> QueueStorageError:
    return QueueStorageError(f"{path} is not a queue file of message_queue_sqlite: {why}; "
                             "nothing was changed. Point middleware_path at another folder.")


MIN_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING


def check_sqlite_library() -> None:
    """The queries need RETURNING (3.35) and the JSON functions: say so clearly if missing."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise QueueStorageError(
            f"SQLite {sqlite3.sqlite_version} is too old: message_queue_sqlite needs "
            f"{'.'.join(map(str, MIN_SQLITE))} or newer (use a newer Python, or pysqlite3)")
    try:
        sqlite3.connect(":memory:").execute("SELECT json_array(1)").fetchone()
    except sqlite3.OperationalError as exc:
        raise QueueStorageError(f"this SQLite library lacks the JSON functions ({exc})") from exc


def memory_database(name: str) -> str:
    """Where to ``connect`` for the in-memory database ``name`` of this process (SQLite's
    "memdb" VFS): every connection opened on it in this process shares the one database, with
    SQLite's usual locking (a write transaction holds readers off, within the busy timeout),
    and it is freed when its last connection closes. Nothing is read from or written to disk;
    no other process can see it. ``name`` must be unique in the process for a database of its own."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):  # nothing a URI would read otherwise
        raise ValueError(f"an in-memory database name must be a plain word, got {name!r}")
    return f"file:/{name}{MEMORY_VFS_SUFFIX}"


def is_memory_database(path: str) -> bool:
    return path.startswith("file:/") and path.endswith(MEMORY_VFS_SUFFIX)


_NUMBERED = re.compile(r"\?(\d+)")
# a prepared statement's text -> what rearranges a parameter tuple for it (None: as it is)
_ARRANGERS: dict[str, Callable[[Any], tuple[Any, ...]] | None] = {}


def prepare_statement(sql: str) -> str:
    """queries.sql's numbered placeholders (``?1``, ``?2``) made plain ``?`` (Python 3.12 warns
    about a parameter tuple bound to numbered placeholders, 3.14 refuses it). Where the numbers
    do not appear once each, in order, the connection rearranges the tuple for the statement
    (``arrange``): a C-level item getter per row, a tenth of what binding by name would cost."""
    order = [int(n) - 1 for n in _NUMBERED.findall(sql)]
    plain = _NUMBERED.sub("?", sql)
    if order == list(range(len(order))):
        _ARRANGERS[plain] = None
    elif len(order) == 1:
        index = order[0]
        _ARRANGERS[plain] = lambda parameters: (parameters[index],)
    else:
        _ARRANGERS[plain] = operator.itemgetter(*order)
    return plain


def arrange(sql: str, parameters: Any) -> Any:
    """A parameter tuple in the order a statement of ``prepare_statement`` binds it."""
    arranger = _ARRANGERS.get(sql)
    return parameters if arranger is None or not parameters else arranger(parameters)


class QueueConnection(sqlite3.Connection):
    """Rearranges a parameter tuple for a statement that ``prepare_statement`` made plain."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        arranger = _ARRANGERS.get(sql)
        if arranger is not None and parameters:
            parameters = arranger(parameters)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> sqlite3.Cursor:  # type: ignore[override]
        arranger = _ARRANGERS.get(sql)
        if arranger is not None:
            seq_of_parameters = map(arranger, seq_of_parameters)
        return super().executemany(sql, seq_of_parameters)


def connect(path: str, durability: str, clock: Clock | None = None,
            embedded: bool = False) -> sqlite3.Connection:
    """A configured connection to a verified, migrated shard file (or in-memory shard, see
    ``memory_database``), its SQL reading ``clock`` (default: the host's boot clock for
    leases, the wall clock for scheduled times). ``embedded``: the file is an application's
    own database, asked for explicitly (``Config.database``): its tables are left alone, and
    the queue's schema version is kept in ``mqs_meta`` (the file's user_version and
    application_id are the application's)."""
    in_memory = is_memory_database(path)
    try:  # only our own memory strings are read as URIs: a folder may be named "file:..."
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False,
                               cached_statements=256, uri=in_memory, factory=QueueConnection)
    except sqlite3.Error as exc:
        raise QueueStorageError(f"cannot open queue file {path}: {exc}") from exc
    try:
        clock = clock or Clock()
        # deterministic: read once per statement, after it took the write lock (clock.py)
        conn.create_function("mqs_lease_now", 0, clock.lease_reading, deterministic=True)
        conn.create_function("mqs_wall_now", 0, clock.wall_reading, deterministic=True)
        if not embedded:
            _verify_owner(conn, path)
        if not in_memory:  # in memory the journal stays in memory too (journal_mode MEMORY)
            _set_wal(conn, path)
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS[durability]}")
        conn.execute("PRAGMA journal_size_limit = 67108864")  # WAL truncated to 64 MiB after checkpoints
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -64000")  # up to 64 MiB of pages: a million-row queue stays hot
        migrate = _migrate_embedded if embedded else _migrate
        retry_locked(lambda: migrate(conn, path), f"migrating {path}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        condition = storage_condition(path, exc)
        if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc).lower():
            raise QueueStorageError(f"queue file {path} is read-only: {exc}"
                                    f"{'; ' + condition if condition else ''}") from exc
        raise QueueStorageError(f"cannot use queue file {path}: {exc}"
                                f"{'; ' + condition if condition else ''}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _verify_owner(conn: sqlite3.Connection, path: str) -> None:
    try:  # one statement: one snapshot, even while another process creates the schema
        app_id, names = conn.execute(
            "SELECT (SELECT application_id FROM pragma_application_id()), (SELECT group_concat(name)"
            " FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%')").fetchone()
        tables = names.split(",") if names else []
    except sqlite3.DatabaseError as exc:
        condition = storage_condition(path, exc) if isinstance(exc, sqlite3.OperationalError) else ""
        if condition or is_locked_error(exc):  # the storage failed, the file may well be ours
            raise QueueStorageError(f"cannot read queue file {path}: {exc}; {condition or 'locked'}") from exc
        raise _refuse(path, f"it is not a SQLite database ({exc})") from exc
    if app_id == APPLICATION_ID:
        return
    if app_id != 0:
        raise _refuse(path, f"it belongs to another application (application_id={app_id:#x})")
    if tables:
        raise _refuse(path, f"it is another application's SQLite database (tables: {', '.join(tables[:5])})")


def _set_wal(conn: sqlite3.Connection, path: str) -> None:
    """Switching a fresh file to WAL needs the write lock; racing openers retry."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    mode = retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0],
                        f"switching {path} to WAL")
    if mode.lower() != "wal":
        raise QueueStorageError(f"queue file {path} cannot use WAL mode (got {mode!r}); "
                                "is it on a network or read-only file system?")


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION and _owned(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        _verify_owner(conn, path)  # another process may have written it meanwhile
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise QueueStorageError(
                f"queue file {path} has schema version {version}, newer than this package "
                f"supports ({SCHEMA_VERSION}); upgrade message_queue_sqlite")
        for number, name, sql in MIGRATIONS:
            if number > version:
                log.info("%s: applying migration %04d_%s", path, number, name)
                for statement in _statements(sql):
                    conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _embedded_version(conn: sqlite3.Connection) -> int:
    """The queue's schema version inside an application's database (0: not created yet)."""
    has_meta = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'mqs_meta'"
                            ).fetchone()[0]
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM mqs_meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row is not None else 0


def _migrate_embedded(conn: sqlite3.Connection, path: str) -> None:
    """``_migrate`` for a queue inside an application's database: the same numbered
    migrations (every object they create is named ``mqs_*``), the version in ``mqs_meta``."""
    if _embedded_version(conn) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _embedded_version(conn)  # another process may have migrated it meanwhile
        if version > SCHEMA_VERSION:
            raise QueueStorageError(
                f"the queue in {path} has schema version {version}, newer than this package "
                f"supports ({SCHEMA_VERSION}); upgrade message_queue_sqlite")
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'mqs\\_%' "
                                         "ESCAPE '\\'").fetchone()[0]:
            raise _refuse(path, "it holds tables named mqs_* that this package did not make")
        for number, name, sql in MIGRATIONS:
            if number > version:
                log.info("%s: applying migration %04d_%s", path, number, name)
                for statement in _statements(sql):
                    conn.execute(statement)
        conn.execute("INSERT INTO mqs_meta (key, value) VALUES ('schema_version', ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _owned(conn: sqlite3.Connection) -> bool:
    return conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def _statements(script: str) -> list[str]:
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {buffer[:80]!r}")
    return statements


def warn_if_network_filesystem(folder: str, mounts_file: str = "/proc/mounts") -> None:
    """WAL needs shared memory on one host; NFS/SMB locking corrupts databases."""
    try:
        with open(mounts_file, encoding="utf-8") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return
    real = os.path.realpath(folder)
    best = ("", "")
    for parts in entries:
        inside = real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")
        if len(parts) >= 3 and inside and len(parts[1]) >= len(best[0]):
            best = (parts[1], parts[2])
    if best[1] in {"nfs", "nfs4", "cifs", "smbfs", "smb3", "9p", "fuse.sshfs"}:
        log.warning("queue folder %s is on a %s network file system; SQLite's WAL locking is "
                    "unreliable there (risk of corruption). Use a local disk, or PostgreSQL "
                    "for many machines.", folder, best[1])
