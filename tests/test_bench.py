"""The benchmark runs end to end: its smallest configuration (`--smoke`) drives every path
(client mode, server mode and the socket API, through ssaproxy, stunnel and haproxy, and the
direct baseline) and writes every figure to a JSON file.  This checks that the figures are
produced and plausible (positive, the bytes counted equal to the bytes sent, full handshakes
only), never how fast anything was."""

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
PROXIES = ("ssaproxy", "stunnel", "haproxy")
# Every figure each target must report, and which are rates/sizes that must be above zero.
POSITIVE = ("upload_mbps", "download_mbps", "conn_rate", "req_p50_us", "req_p99_us")
PROXY_ONLY = ("conn_cpu_us", "req_cpu_us", "idle_kib")


def test_smoke_run_produces_every_figure(tmp_path: Path) -> None:
    require_lab()
    for tool in ("haproxy", "stunnel4", "taskset"):
        if shutil.which(tool) is None:
            pytest.fail(f"the benchmark needs {tool} (tests/setup.sh installs it)")
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke", "--markdown",
                        "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    got = {(x["mode"], x["target"], x["figure"]): x["values"] for x in data["results"]}

    targets = [(m, p) for m in ("client", "server") for p in PROXIES] + [("api", "ssaproxy"), ("direct", "direct TLS")]
    for mode, name in targets:
        for fig in POSITIVE:
            values = got.get((mode, name, fig))
            assert values and all(v > 0 for v in values), (mode, name, fig, values)
        if mode == "direct":
            continue
        for fig in PROXY_ONLY:
            values = got.get((mode, name, fig))
            assert values and all(v >= 0 for v in values), (mode, name, fig, values)

    # Four transfers per target (a CRC-checked one and a timed one each way), each counted by
    # the receiving end to exactly the bytes sent.
    checks = data["checks"]
    assert len(checks) == 4 * len(targets)
    assert all(c["sent"] == c["counted"] and c["sent"] > 0 for c in checks), checks
    totals = data["info"]["backend totals"]
    assert totals["resumed"] == 0 and totals["handshake_errors"] == 0, totals
    # The resumption variant: ssaproxy, its sessions kept, resumed upstream handshakes (not the
    # first ones: the loader's first connections run at once, before any session is cached).
    variant = data["info"]["variant handshakes"]["conn_resumed ssaproxy"]
    assert 0 < variant["resumed"] <= variant["handshakes"], variant
    assert "TRACEBACK" not in data["info"]["ssaproxy outcomes"], data["info"]["ssaproxy outcomes"]
    assert data["notes"] == [], data["notes"]
    # The summary prints the three tables, with the ratios to haproxy, and the markdown block.
    for title in ("Client mode", "Server mode", "Socket API", "ssaproxy / haproxy", "| figure | ssaproxy |"):
        assert title in r.stdout, title
