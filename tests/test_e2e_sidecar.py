"""Scenario: two legacy apps, each with its own ssaproxy sidecar, talking mutual TLS.

    client pod (netns C)                               server pod (netns S)
    legacy client (nobody) --OUTPUT REDIRECT-->        PREROUTING REDIRECT --> ssaproxy inbound
    ssaproxy outbound --TLS + client certificate-->    (client_auth = require, allow-list)
                                                       --> 127.0.0.1:<original port>: legacy server

Neither app knows: the client speaks plain HTTP (or raw bytes) to the server's address, the
server answers plain HTTP on its own port.  Both sides' rules come from `ssaproxy iptables
apply`.  On the wire there is only TLS; a client whose certificate is not on the allow-list is
refused and the server app never sees it.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.lab import REPO, SERVER_V4, Lab, poll, stop
from tests.peers.pattern import pattern_digest
from tests.pki import PKI

HTTP, ECHO, IMPOSTOR = 8080, 8082, 9090


@pytest.fixture(scope="module")
def scene(lab: Lab, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("sidecar")
    good, other, server = pki.client("client_good"), pki.client("client_other"), pki.server("good")
    client_side = d / "client-pod.toml"
    client_side.write_text(f"""
[policy]
trust_store = "{pki.root_pem}"

[outbound]
listen = "tcp:15001:interface=127.0.0.1"

[[outbound.route]]
name = "to-server"
destination = "{SERVER_V4}/32"
ports = [{HTTP}, {ECHO}]
hostname = "backend.test"
client_certificate = "{good.chain}"
client_key = "{good.key}"

[[outbound.route]]
name = "impostor"
destination = "{SERVER_V4}/32"
ports = [{IMPOSTOR}]
tls_port = {HTTP}
hostname = "backend.test"
client_certificate = "{other.chain}"
client_key = "{other.key}"
""")
    server_side = d / "server-pod.toml"
    server_side.write_text(f"""
[[inbound]]
name = "sidecar"
listen = "tcp6:15006"
backend = "original"
ports = [{HTTP}, {ECHO}]
certificates = [ {{ chain = "{server.chain}", key = "{server.key}" }} ]
client_auth = "require"
client_ca = "{pki.client_ca_pem}"
allow = ["uri:spiffe://example.org/ns/default/sa/web"]
""")
    # The legacy server apps listen on every address, as legacy apps do.
    lab.backend("http", HTTP, d / "http.log", host="0.0.0.0")
    lab.backend("echo", ECHO, d / "echo.log", host="0.0.0.0")
    for ns, config in ((lab.c, client_side), (lab.s, server_side)):
        lab.ns(ns, [sys.executable, "-m", "ssaproxy.cli", "iptables", "apply", "--config", str(config), "--uid",
                    "0"], cwd=REPO)
    lab.start_daemon(client_side, d / "client-pod.log")
    lab.start_daemon(server_side, d / "server-pod.log", ns=lab.s)
    dump = lab.spawn(lab.s, ["tcpdump", "-i", "s0", "--immediate-mode", "-U", "-n", "-s", "0", "-w",
                             str(d / "wire.pcap"), "tcp"], log=d / "tcpdump.log")
    poll(lambda: "listening on" in (d / "tcpdump.log").read_text())
    yield d
    stop(dump)


def _events(scene: Path, pod: str) -> list[str]:
    return [x for x in (scene / f"{pod}.log").read_text().splitlines() if "Connection#" in x]


def test_legacy_http_client_reaches_legacy_server_over_mtls(lab: Lab, scene: Path) -> None:
    canary = "canary-" + secrets.token_hex(8)
    r = lab.curl(f"http://{SERVER_V4}:{HTTP}/{canary}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"200 ok /{canary}\n"
    inbound = poll(lambda: [e for e in _events(scene, "server-pod") if " closed: " in e])
    assert inbound and "client=dns:client.test,uri:spiffe://example.org/ns/default/sa/web" in inbound[-1]
    assert "verified=True" in inbound[-1] and f"backend=127.0.0.1:{HTTP}" in inbound[-1]
    outbound = poll(lambda: [e for e in _events(scene, "client-pod") if " closed: " in e])
    assert outbound and "verified=True" in outbound[-1]
    wire = poll(lambda: (scene / "wire.pcap").read_bytes() if b"backend.test" in (scene / "wire.pcap").read_bytes()
                else b"")
    assert wire and canary.encode() not in wire  # on the wire: TLS only


def test_bytes_are_intact_both_ways_with_half_close(lab: Lab, scene: Path) -> None:
    size = 1024 * 1024 + 3
    r = lab.client(SERVER_V4, ECHO, "--send-bytes", str(size), "--shutdown", timeout=60)
    assert r["end"] == "eof" and r["received"] == size and r["sha256"] == pattern_digest(size), r
    echo = poll(lambda: [json.loads(x) for x in (scene / "echo.log").read_text().splitlines() if x.startswith("{")])
    assert echo[-1]["received"] == size


def test_client_not_on_the_allow_list_is_refused(lab: Lab, scene: Path) -> None:
    served = (scene / "http.log").read_text().count("{")
    r = lab.curl(f"http://{SERVER_V4}:{IMPOSTOR}/should-not-arrive")
    assert r.returncode == 56 and "reset" in r.stderr.lower(), (r.returncode, r.stderr)
    refused = poll(lambda: [e for e in _events(scene, "server-pod") if " client-refused: " in e])
    assert refused and "client identity not allowed" in refused[-1] and "sa/other" in refused[-1]
    failed = poll(lambda: [e for e in _events(scene, "client-pod") if "route=impostor" in e])
    # The server's alert, as the client sidecar saw it: in TLS 1.3 the client's side of the
    # handshake is over before the server judges its certificate, so it arrives as a TLS error.
    assert failed and "alert" in failed[-1] and (" reset: " in failed[-1] or " handshake-failed: " in failed[-1])
    assert (scene / "http.log").read_text().count("{") == served
    assert "should-not-arrive" not in (scene / "http.log").read_text()
