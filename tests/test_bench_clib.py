"""benchmarks/clib.py runs end to end: its smallest configuration (`--smoke`) drives the four
clients (the C library built with `ssaproxy c-flags`, a C client linked against OpenSSL, the
Python library and Python's ssl) against the benchmark's backend and writes every figure to a
JSON file.  This checks that each client produced its numbers and that the work was what it
says (bytes checked, full verified handshakes, the library's connections through the daemon),
never how fast anything was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_lab

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ("C libssaproxy", "C OpenSSL", "Python ssaproxy.socket", "Python ssl")
THROUGH_DAEMON = ("C libssaproxy", "Python ssaproxy.socket")
POSITIVE = ("connect_p50_us", "connect_p99_us", "cycle_p50_us", "client_cpu_us", "total_cpu_us",
            "download_mbps", "upload_mbps", "download_mb_per_cpu", "upload_mb_per_cpu")
SMOKE_CONNS = 3


def test_smoke_run_produces_figures_for_each_client(tmp_path: Path) -> None:
    require_lab()
    for tool in ("gcc", "taskset"):
        if shutil.which(tool) is None:
            pytest.fail(f"the benchmark needs {tool} (tests/setup.sh installs it)")
    out = tmp_path / "clib.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "clib.py"), "--smoke", "--markdown",
                        "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    got = {(x["client"], x["figure"]): x["values"] for x in data["results"]}

    for client in CLIENTS:
        for fig in POSITIVE:
            values = got.get((client, fig))
            assert values and all(v > 0 for v in values), (client, fig, values)
        daemon = got.get((client, "daemon_cpu_us"))
        assert daemon and all(v >= 0 for v in daemon), (client, daemon)

    # Per client: a checked transfer each way, then a timed one each way, each counted by the
    # receiving end to exactly the bytes sent.
    checks = data["checks"]
    assert sorted(c["client"] for c in checks) == sorted(CLIENTS * 4), checks
    assert all(c["sent"] == c["counted"] and c["sent"] > 0 for c in checks), checks
    assert data["notes"] == [], data["notes"]
    # Every handshake the backend saw in the rounds was a full one, and none failed: per client
    # the connections and the two transfers (+1: the closing STATS connection).
    backend = data["info"]["backend during the rounds"]
    assert backend["handshakes"] == len(CLIENTS) * (SMOKE_CONNS + 2), backend
    assert backend["resumed"] == 0 and backend["handshake_errors"] == 0, backend
    # The two libraries really went through the daemon, verified: info, two checked transfers,
    # the connections and the two timed transfers each; nothing else was logged as a session.
    sessions = data["info"]["daemon sessions"]
    assert sessions == {"closed verified=True": len(THROUGH_DAEMON) * (3 + SMOKE_CONNS + 2)}, sessions
    # The summary prints the table with the ratios, and the markdown block.
    for text in ("C lib / C OpenSSL", "Py lib / C OpenSSL", "| figure | C libssaproxy |", "connect + handshake, p50"):
        assert text in r.stdout, text
