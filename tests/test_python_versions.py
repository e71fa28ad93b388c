"""The package under every supported Python found on this machine (pyenv's 3.10, 3.12, 3.13),
with every DeprecationWarning an error: a parameter sequence bound to numbered placeholders
warns from 3.12 on and is refused by 3.14, so the SQLite path binds by position only where a
statement's placeholders are plain and in order, and by name elsewhere (connection.py)."""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

INTERPRETERS = sorted({path for version in ("3.10", "3.12", "3.13")
                       for path in glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python{version}")})


@pytest.mark.skipif(not INTERPRETERS, reason="no other Python versions here (pyenv's 3.10, 3.12, 3.13)")
@pytest.mark.parametrize("python", INTERPRETERS, ids=lambda path: Path(path).name)
def test_the_sqlite_path_runs_without_deprecation_warnings(python: str) -> None:
    done = subprocess.run([python, str(REPO / "tests" / "scripts" / "version_smoke.py"), str(REPO)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith("ok")
