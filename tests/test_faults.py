"""The fault-injection runner, short mode: workers and senders are SIGKILLed (and SIGTERMed)
at random moments on 1 and on 3 shards, and no accepted task may be lost or stuck, nor run
twice without a lease expiry to explain it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_faults_short_run_passes() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH")] if p)
    env.pop("MQS_BROKER_URL", None)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "faults.py"), "--short"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=110)
    output = done.stdout + done.stderr
    verdicts = [line for line in done.stdout.splitlines() if line.startswith("faults: sent=")]
    assert len(verdicts) == 1, output
    figures = dict(re.findall(r"(\w+)=(\S+)", verdicts[0]))
    assert done.returncode == 0, output
    assert figures["verdict"] == "PASS", output
    assert figures["lost"] == "0", output
    assert figures["stuck"] == "0", output
    assert figures["unexplained_duplicates"] == "0", output
    assert int(figures["kills"]) > 0, output
    assert int(figures["accepted"]) > 0, output
    assert int(figures["finished"]) + int(figures["failed"]) == int(figures["accepted"]), output
    assert figures["shards"].split(",") == ["1", "3"], output
