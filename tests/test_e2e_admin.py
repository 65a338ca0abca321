"""Scenario: the admin endpoint of a real daemon on loopback, read with curl and `ssaproxy status`.

An inbound listener ("web") terminates TLS in front of an echo backend; `[admin]` listens on
another loopback port.  After a few connections (one still open, one a failed handshake):
/metrics shows the counters, the active gauge, the connect and handshake histograms and the
certificate's expiry; /healthz and /readyz answer 200; /status is JSON with the listener, the
open connection and the failure; `ssaproxy status` prints them as a table; POST is 405; and
`ssaproxy status` against nothing exits 1 with one line.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.api_harness import free_port
from tests.lab import REPO, poll
from tests.loopback import LoopbackDaemon, tls_client
from tests.pki import PKI

CONFIG = """[admin]
listen = "tcp:{admin_port}:interface=127.0.0.1"

[[inbound]]
name = "web"
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
{certificates}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PKI, int, str, Path]]:
    tmp = tmp_path_factory.mktemp("admin")
    pki = PKI(tmp / "pki")
    with LoopbackDaemon(pki, tmp, CONFIG, mode="echo") as d:
        yield pki, d.port, f"http://127.0.0.1:{d.admin_port}", d.log


def curl(url: str, *args: str) -> tuple[int, str]:
    r = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args, url], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    return int(code), body


def sample(text: str, metric: str, **labels: str) -> float:
    """One sample's value from the text exposition (labels given must all match)."""
    for line in text.splitlines():
        m = re.match(rf"{metric}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


def test_metrics_health_status_and_the_status_command(daemon: tuple[PKI, int, str, Path]) -> None:
    pki, port, admin, log = daemon
    assert curl(admin + "/healthz") == (200, "ok\n")
    assert curl(admin + "/readyz") == (200, "ready\n")
    for n in range(2):  # two whole connections
        with tls_client(pki, port, suppress_ragged_eofs=True) as s:
            s.sendall(b"ping%d" % n)
            assert s.recv(100) == b"ping%d" % n
            s.unwrap()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # no TLS at all
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        raw.recv(100)
    assert poll(lambda: "handshake-failed" in log.read_text(), 10)
    still = tls_client(pki, port, suppress_ragged_eofs=True)
    try:
        still.sendall(b"x" * 1000)
        assert len(still.recv(2000)) > 0

        def metrics_text() -> str:
            code, text = curl(admin + "/metrics")
            assert code == 200
            return text

        def after_two() -> str:
            t = metrics_text()
            return t if sample(t, "ssaproxy_connections_total", kind="inbound", where="web", outcome="closed") >= 2 \
                else ""

        text = poll(after_two)
        assert text, metrics_text()
        assert sample(text, "ssaproxy_active_connections", kind="inbound") == 1
        assert sample(text, "ssaproxy_connections_total", kind="inbound", where="web", outcome="handshake-failed") == 1
        assert sample(text, "ssaproxy_handshake_duration_seconds_count", kind="inbound", side="near") >= 3
        assert sample(text, "ssaproxy_connect_duration_seconds_count", kind="inbound") >= 3
        assert sample(text, "ssaproxy_bytes_total", kind="inbound", direction="near-to-far") == 10  # counted at the end
        assert sample(text, "ssaproxy_certificate_expiry_seconds", scope="inbound", name="web") > 86400
        assert "# TYPE ssaproxy_config_reloads_total counter" in text

        code, body = curl(admin + "/status")
        assert code == 200
        status = json.loads(body)
        assert {"version", "config", "uptime", "listeners", "active", "failures"} <= set(status)
        assert status["listeners"] == [{"face": "inbound", "name": "web", "address": f"127.0.0.1:{port}",
                                        "bound": True}]
        (live,) = status["active"]
        assert live["kind"] == "inbound" and live["where"] == "web" and live["state"] == "relaying"
        assert live["bytes_near_to_far"] == 1000 and live["peer"].startswith("127.0.0.1:") and live["age"] >= 0
        assert status["failures"][-1]["outcome"] == "handshake-failed"

        shown = subprocess.run([sys.executable, "-m", "ssaproxy.cli", "status", "--admin", admin], capture_output=True,
                               text=True, timeout=20, cwd=REPO)
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout
        assert "listeners (1)" in out and f"127.0.0.1:{port}" in out
        assert "active connections (1)" in out and "relaying" in out and "1000B" in out
        assert "handshake-failed" in out, out
    finally:
        still.close()
    assert curl(admin + "/metrics", "-X", "POST")[0] == 405
    assert curl(admin + "/status", "-X", "DELETE")[0] == 405
    assert curl(admin + "/nothing")[0] == 404


def test_status_against_nothing_is_one_line_and_exit_1() -> None:
    r = subprocess.run([sys.executable, "-m", "ssaproxy.cli", "status", "--admin", f"http://127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=20, cwd=REPO)
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot read" in r.stderr, r.stderr
