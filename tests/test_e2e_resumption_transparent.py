"""Scenario: client session resumption on the transparent face, counted by the servers.

curl fetches plain http:// URLs through real iptables rules; the daemon upgrades them to TLS
towards Python ssl servers that report, per connection, whether it resumed a session.  The
route on port 80 resumes (the default): the second request for a name resumes the first's
session, a request for another name on the same server does not.  The route on port 8080
has `session_resumption = false`: nothing is resumed there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.lab import REPO, SERVER_V4, Lab, log_events, poll
from tests.pki import PKI


@pytest.fixture(scope="module")
def scene(lab: Lab, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("resumption-transparent")
    config = d / "ssaproxy.toml"
    config.write_text(f"""
[policy]
trust_store = "{pki.root_pem}"

[outbound]
listen = "tcp:15001:interface=127.0.0.1"

[[outbound.route]]
name = "resuming"
destination = "{SERVER_V4}/32"
ports = [80]
tls_port = 443
hostname_from = "http-host"

[[outbound.route]]
name = "not-resuming"
destination = "{SERVER_V4}/32"
ports = [8080]
tls_port = 8443
hostname_from = "http-host"
session_resumption = false
""")
    lab.tls_server("http", pki.server("good_wildcard"), 443, d / "resuming.log")
    lab.tls_server("http", pki.server("good_wildcard"), 8443, d / "not-resuming.log")
    cli = [sys.executable, "-m", "ssaproxy.cli"]
    lab.ns(lab.c, [*cli, "iptables", "apply", "--config", str(config), "--uid", "0"], cwd=REPO)
    lab.start_daemon(config, d / "daemon.log")
    yield d
    lab.ns(lab.c, [*cli, "iptables", "remove", "--config", str(config)], cwd=REPO)


def fetch(lab: Lab, name: str, port: int) -> subprocess.CompletedProcess[str]:
    r = lab.curl(f"http://{name}:{port}/", "--resolve", f"{name}:{port}:{SERVER_V4}")
    assert r.returncode == 0 and r.stdout == "hello from the TLS server\n", (r.returncode, r.stderr)
    return r


def reports(log: Path, count: int) -> list[dict[str, Any]]:
    def read() -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        return lines if len(lines) >= count else []

    found = poll(read, 10)
    assert found, log.read_text()
    return found


def test_second_request_resumes_and_another_name_does_not(lab: Lab, scene: Path) -> None:
    for n, name in enumerate(["a.wild.test", "a.wild.test", "b.wild.test", "b.wild.test", "a.wild.test"]):
        fetch(lab, name, 80)
        # The server's TLS 1.3 ticket reaches the daemon after the handshake; the request and
        # its answer come after it, so each fetch leaves its ticket behind.
        reports(scene / "resuming.log", n + 1)
    seen = [(x["sni"], x["reused"]) for x in reports(scene / "resuming.log", 5)]
    assert seen == [("a.wild.test", False), ("a.wild.test", True), ("b.wild.test", False), ("b.wild.test", True),
                    ("a.wild.test", True)], seen
    # The daemon's record of a connection is written when it ends, which may be a little after
    # the server's report of it.
    def five() -> list[str]:
        found = [e for e in log_events(scene / "daemon.log") if "route=resuming" in e]
        return found if len(found) >= 5 else []

    events = poll(five, 10)
    assert events, log_events(scene / "daemon.log")
    assert [("resumed=True" in e) for e in events] == [False, True, False, True, True], events
    assert all("verified=True" in e for e in events), events


def test_route_with_resumption_off_resumes_nothing(lab: Lab, scene: Path) -> None:
    for n in range(3):
        fetch(lab, "a.wild.test", 8080)
        reports(scene / "not-resuming.log", n + 1)
    assert [x["reused"] for x in reports(scene / "not-resuming.log", 3)] == [False, False, False]
