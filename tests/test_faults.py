"""The fault-injection runner, short mode: workers and senders are SIGKILLed (and SIGTERMed)
at random moments on 1 and on 3 shards, and no accepted task may be lost or stuck, nor run
twice without a lease expiry to explain it. The same on PostgreSQL (one schema, one shard)
when MQS_TEST_POSTGRES_DSN is set; MQS_REQUIRE_POSTGRES (CI) makes its absence a failure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POSTGRES_DSN = os.environ.get("MQS_TEST_POSTGRES_DSN")


def run_script(script: str, *args: str, timeout: float = 110) -> subprocess.CompletedProcess:
    """Run ``scripts/<script>`` with this checkout first on the path and no broker URL inherited."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH")] if p)
    env.pop("MQS_BROKER_URL", None)
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_short(*extra: str) -> dict[str, str]:
    """Run ``faults.py --short`` and check its one verdict line; returns the line's figures."""
    done = run_script("faults.py", "--short", *extra)
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
    figures["output"] = output
    return figures


def test_faults_short_run_passes() -> None:
    figures = run_short()
    assert figures["backend"] == "sqlite", figures["output"]
    assert figures["shards"].split(",") == ["1", "3"], figures["output"]


def test_faults_short_run_passes_on_postgres() -> None:
    if not POSTGRES_DSN:
        if os.environ.get("MQS_REQUIRE_POSTGRES"):
            pytest.fail("MQS_REQUIRE_POSTGRES is set but MQS_TEST_POSTGRES_DSN is not")
        pytest.skip("the PostgreSQL fault run needs MQS_TEST_POSTGRES_DSN "
                    "(e.g. postgresql://postgres@127.0.0.1/test)")
    if os.environ.get("MQS_REQUIRE_POSTGRES"):
        import psycopg  # noqa: F401  (required: a missing driver fails here, it does not skip)
    else:
        pytest.importorskip("psycopg")
    figures = run_short("--backend", "postgres")
    assert figures["backend"] == "postgres", figures["output"]
    assert figures["shards"] == "1", figures["output"]
    assert int(figures["stored"]) >= int(figures["accepted"]), figures["output"]


def test_network_faults_short_run_passes() -> None:
    """``scripts/faults_network.py --short``: worker and sender hosts behind proxies that
    partition (shorter and longer than a lease), lose and delay, SIGKILL/SIGSTOP/SIGTERM, clock
    steps of hosts, and fast and immediate restarts of a PostgreSQL instance of the runner's
    own. It needs the machine's initdb (not the shared server, nor root: as root it runs initdb
    as postgres)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import faults_network
    finally:
        sys.path.remove(str(REPO / "scripts"))
    reason = faults_network.skip_reason()
    if reason:
        pytest.skip(f"the network fault runner cannot run here: {reason}")
    done = run_script("faults_network.py", "--short")
    output = done.stdout + done.stderr
    verdicts = [line for line in done.stdout.splitlines() if line.startswith("faults-network: sent=")]
    assert len(verdicts) == 1, output
    figures = dict(re.findall(r"(\w+)=(\S+)", verdicts[0]))
    assert done.returncode == 0 and figures["verdict"] == "PASS", output
    for name in ("lost", "stuck", "unexplained_duplicates", "bad_outcomes", "errors"):
        assert figures[name] == "0", output
    assert int(figures["acknowledged"]) > 0, output
    for kind in ("worker_partition_long", "sender_partition_long", "restart_immediate", "restart_fast",
                 "clock_step"):
        assert int(figures.get(kind, "0")) > 0, f"no {kind} fault: {output}"
    assert float(figures["longest_notice"].rstrip("s")) <= faults_network.NOTICE_BOUND_S, output


def test_storage_faults_short_run_passes() -> None:
    """scripts/storage_faults.py --short: the queue on a tmpfs that fills up, shard writes that
    fail with EIO and EROFS for a while (an LD_PRELOAD shim), senders and workers running and
    some killed: nothing accepted lost or stuck, every shard passes integrity_check, and every
    storage error a sender or worker saw names the file and the condition. Needs root (the
    mount) and a C compiler (the shim): without them the runner says why and the test skips."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH")] if p)
    env.pop("MQS_BROKER_URL", None)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "storage_faults.py"), "--short"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    output = done.stdout + done.stderr
    if done.returncode == 77:
        pytest.skip(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else output)
    verdicts = [line for line in done.stdout.splitlines() if line.startswith("storage_faults: sent=")]
    assert len(verdicts) == 1, output
    figures = dict(re.findall(r"(\w+)=(\S+)", verdicts[0]))
    assert done.returncode == 0, output
    assert figures["verdict"] == "PASS", output
    assert (figures["lost"], figures["stuck"], figures["unexplained_duplicates"]) == ("0", "0", "0"), output
    assert set(figures["integrity"].split(",")) == {"ok"}, output
    assert figures["unclear_errors"] == "0", output
    seen = dict(item.split(":") for item in figures["clear_errors"].split(","))
    assert all(int(seen[kind]) > 0 for kind in ("full", "eio", "erofs")), output
    assert int(figures["accepted"]) > 0, output
    assert int(figures["finished"]) + int(figures["failed"]) == int(figures["accepted"]), output
    mounts = Path("/proc/mounts").read_text() if Path("/proc/mounts").exists() else ""
    assert "mqs-storage-faults" not in mounts, mounts
