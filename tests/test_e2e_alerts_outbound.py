"""Scenario: a hostile upstream (tlslite-ng, tests/peers/hostile_tls.py) behind the outbound face.

A plaintext program (as nobody, redirected by real iptables rules) sends a request; the daemon
upgrades it to verified TLS to the hostile server, which answers and then sends a record the
daemon must refuse.  The server decrypts and names the alert the daemon sent (an alert on the
wire, not a bare reset), and the program's plaintext connection ends with a reset after the
answer it was sent: never a clean end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lab import PEERS, SERVER_V4, Lab, poll, wait_for_text
from tests.pki import PKI

# OpenSSL 4.0 as a TLS 1.3 client discards a plaintext ChangeCipherSpec record after the
# handshake (middlebox compatibility) where 3.0 refused it: nothing fails, so no alert is owed;
# the server, hearing nothing, goes away without close_notify, and the program gets a reset.
IGNORED = {None}
CASES = [
    ("bad-mac", "1.3", {"bad_record_mac"}),
    ("bad-mac", "1.2", {"bad_record_mac"}),
    ("oversized", "1.3", {"record_overflow"}),
    ("ccs", "1.3", {"unexpected_message"} | IGNORED),
    ("ccs", "1.2", {"unexpected_message"}),
    ("empty-alert", "1.3", {"decode_error", "unexpected_message"}),
    ("zero-type", "1.3", {"unexpected_message"}),
    ("keyupdate", "1.3", {"illegal_parameter"}),
]
REQUEST = "GET / HTTP/1.0\r\nHost: backend.test\r\n\r\n"


@pytest.fixture(scope="module")
def scene(lab: Lab, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("alerts-out")
    routes = "".join(f"""
[[outbound.route]]
name = "case{n}"
destination = "{SERVER_V4}/32"
ports = [{8000 + n}]
tls_port = {9000 + n}
hostname = "backend.test"
""" for n in range(len(CASES)))
    config = d / "ssaproxy.toml"
    config.write_text(f"""
[policy]
trust_store = "{pki.root_pem}"

[outbound]
listen = "tcp:15001:interface=127.0.0.1"
{routes}""")
    good = pki.server("good")
    for n, (case, version, _) in enumerate(CASES):
        log = d / f"hostile{n}.log"
        p = lab.spawn(lab.s, [sys.executable, str(PEERS / "hostile_tls.py"), "server", SERVER_V4, str(9000 + n),
                              "--case", case, "--version", version, "--cert", str(good.chain), "--key",
                              str(good.key), "--alert-timeout", "3"], log=log)
        wait_for_text(log, "READY", p, 15)
    lab.apply_rules(config)
    lab.start_daemon(config, d / "daemon.log")
    return d


@pytest.mark.parametrize("n", range(len(CASES)), ids=[f"{c}-tls{v}" for c, v, _ in CASES])
def test_a_hostile_upstreams_bad_record_gets_its_alert_and_the_program_a_reset(lab: Lab, scene: Path,
                                                                               n: int) -> None:
    case, version, alerts = CASES[n]
    result: dict[str, Any] = lab.client(SERVER_V4, 8000 + n, "--send", REQUEST)
    assert result["received"] == 4 and result["end"] == "reset", result  # "pong", then never a clean end
    log = scene / f"hostile{n}.log"
    reports = poll(lambda: [json.loads(x) for x in log.read_text().splitlines() if x.startswith('{"case"')])
    assert reports, log.read_text()
    report = reports[-1]
    assert report["request"].startswith("GET / "), report
    if report["alert"] is None and alerts >= IGNORED:  # the record was discarded: the session went on
        assert report["end"] == "timeout", report
        return
    assert report["end"] == "alert" and report["alert"] in alerts, report
