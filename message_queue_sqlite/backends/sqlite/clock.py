"""The two clocks a shard's SQL reads: one for leases, one for scheduled times.

Every process on the host shares a shard file, so an expiry written by one is compared
by another: both must read the same clock, and it must not step. ``time.time()`` can do
both wrong (NTP steps it, an operator sets it, and a client's clock feeding the engine
may be anything), so leases and node liveness use ``CLOCK_BOOTTIME``: seconds since the
kernel booted, the same value in every process of the host (the suspended time included,
so a lease also runs out while the machine sleeps), never stepped. It restarts at a reboot,
which is why the file records the boot its leases were taken in (``BOOT_ID``; see
``SQLiteShard``): after a reboot every process of the previous boot is dead, and each of
their leases and liveness rows is expired by the first opener. (A time namespace can offset
``CLOCK_BOOTTIME`` for a container; processes sharing one queue file must share one.)

Where the host offers no boot clock with a boot id (not Linux), leases fall back to the
wall clock, as before, and the boot marker says so.

Scheduled times (``run_after``: a delayed send, a retry's back-off) are absolute times
people reason about, so they stay on the wall clock, read by the backend.

The SQL reads both through functions registered on each connection (``mqs_lease_now()``
and ``mqs_wall_now()``), declared deterministic so that SQLite evaluates each once per
statement: in the statement's first row, after the statement's opening ``Transaction``
instruction took the write lock, so no wait for the lock (the busy handler, up to
``LOCK_DEADLINE_S`` of retries) shortens the lease it grants.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

WALL_CLOCK_MARKER = "wall-clock"  # the "boot id" recorded where leases are on the wall clock


def _read_boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _wall_now() -> float:
    # time.time is looked up at each call (not bound once), so that a test stepping the
    # process's wall clock (monkeypatching time.time) moves scheduled times and nothing else
    return time.time()


_boot_id = _read_boot_id()
if _boot_id is not None and hasattr(time, "CLOCK_BOOTTIME"):
    BOOT_ID = _boot_id
    lease_now: Callable[[], float] = functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
else:
    BOOT_ID = WALL_CLOCK_MARKER
    lease_now = _wall_now
wall_now: Callable[[], float] = _wall_now


class Clock:
    """The clocks of a backend's shards: ``lease`` for lease and node expiries, ``wall`` for
    scheduled times and end stamps. Tests replace either (one object serves every shard of
    a backend, so a replacement reaches the shards opened later too)."""

    __slots__ = ("lease", "wall")

    def __init__(self, lease: Callable[[], float] | None = None,
                 wall: Callable[[], float] | None = None):
        self.lease = lease or lease_now
        self.wall = wall or wall_now

    def lease_reading(self) -> float:
        return self.lease()

    def wall_reading(self) -> float:
        return self.wall()
