#!/usr/bin/env python3
"""Storage-fault runner: the queue on a small tmpfs that fills up, and shard files whose writes
fail with EIO or EROFS for a while, while senders and CLI workers run; then the same check as
``scripts/faults.py`` (from the files themselves) plus ``PRAGMA integrity_check`` per shard.

    python scripts/storage_faults.py --short     # < 60 s: 1 and 3 shards, one window of each fault
    python scripts/storage_faults.py             # long mode: about 3 minutes
    python scripts/storage_faults.py --windows 12 --tasks 3000

Needs root (to mount the tmpfs) and a C compiler (``cc``/``gcc``, to build the LD_PRELOAD shim
``storage_fault_shim.c`` that fails writes with EIO/EROFS); without either it says why and
exits 77 (the tests skip with that reason). The mount is removed at the end, also when the run
is interrupted (SIGINT/SIGTERM/SIGHUP end it through the same ``finally``).

Faults come in windows, one kind at a time, with calm between them:

* ``full``: a filler file takes every free byte of the tmpfs; removed after the window;
* ``eio``/``erofs``: the shim makes write()/pwrite()/writev()/fsync()/fdatasync()/ftruncate()
  on the shard files (database, -wal, -shm) of every worker and sender fail with EIO or EROFS
  (for EROFS, statvfs also reports the file system read-only, as a real remount would).

Senders (``faults.py _sender --storage-errors``) treat a QueueStorageError as "not accepted",
write its message to ``state/storage-errors-N.txt``, back off and send the task again under a
new key; a storage error that does not name the file and the condition (disk full, read-only
file system, I/O error) counts as an error, as does any other exception. Workers must ride the
faults out without exiting. The verdict line::

    storage_faults: sent=N accepted=N lost=0 stuck=0 duplicate_executions=N unexplained_duplicates=0
        integrity=ok,ok,... clear_errors=full:N,eio:N,erofs:N unclear_errors=0 ... verdict=PASS

PASS needs lost 0, stuck 0, unexplained 0, no bad outcome or error, every shard ``ok``, no
unclear storage error, and each fault kind seen by a sender or worker at least once (a fault
window that nothing noticed proves nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
SHIM_SOURCE = SCRIPTS / "storage_fault_shim.c"
SKIP_EXIT = 77


def build_shim(out_dir: str) -> tuple[str | None, str]:
    """Compile the LD_PRELOAD shim with the system C compiler: (its path, "") or (None, why)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc or gcc) on PATH to build the LD_PRELOAD shim"
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "mqs_storage_fault_shim.so")
    done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", out, str(SHIM_SOURCE), "-ldl"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None, f"{compiler} could not build {SHIM_SOURCE.name}: {done.stderr.strip()[-600:]}"
    return out, ""
