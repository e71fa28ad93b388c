"""Loading named SQL blocks and numbered migrations from a backend's package folder."""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
# Every backend lists tasks with one query per status, each on that state's index (or the
# primary key); the statuses not named here (FINISHED, CALLBACKED) share list_ended_as.
_LISTINGS = {None: "list_recent", 1: "list_ready", 2: "list_running", 4: "list_failed",
             6: "list_scheduled"}


# The dashboard's keyset pages (Admin.page_tasks), likewise one per state; CALLBACKED rows are
# shown by their outcome, so 3 and 4 include them.
_PAGES = {None: "page_recent", 1: "page_ready", 2: "page_running", 3: "page_finished", 4: "page_failed",
          6: "page_scheduled", 7: "page_cancelled"}


def page_query(status: int | None) -> str:
    """The name of the query that pages through tasks of ``status`` (None: of any)."""
    try:
        return _PAGES[status]
    except KeyError:
        raise ValueError(f"no page of tasks of status {status!r}; one of {sorted(_PAGES, key=str)}") from None


def listing_query(status: int | None) -> str:
    """The name of the query that lists tasks of ``status`` (None: of any)."""
    return _LISTINGS.get(status, "list_ended_as")


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Read ``-- name: X`` blocks; the comment lines after a name describe the query."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
        sql = sql.strip().rstrip(";").strip()
        if not sql:
            raise ValueError(f"query {name!r} in {package}/{filename} is empty")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in {package}/{filename}")
        queries[name] = sql
    return queries


def load_migrations(package: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for every ``NNNN_name.sql`` in ``package/migrations``, in order."""
    folder = resources.files(package).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations of {package} are not numbered 1..n: {versions}")
    return found
