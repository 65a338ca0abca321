"""Scenario: the README's transparent-mode walk-through, with curl as the unmodified program.

`ssaproxy iptables apply` installs the rules (twice: idempotent), curl fetches plain http://
URLs, and on the wire between the namespaces there is only TLS: a good server answers through
verified TLS; a server with an expired certificate makes curl see a reset, and the request's
plaintext never crosses the wire in either case.  `ssaproxy iptables remove` leaves no trace.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.lab import REPO, SERVER_V4, Lab, log_events, poll, stop
from tests.pki import PKI

BAD_SERVER = "10.77.0.3"


def _ssaproxy(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.ns(lab.c, [sys.executable, "-m", "ssaproxy.cli", *args], cwd=REPO)


def _nat_rules(lab: Lab) -> str:
    return lab.ns(lab.c, ["iptables", "-t", "nat", "-S"]).stdout


@pytest.fixture(scope="module")
def scene(lab: Lab, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("transparent")
    # The embedded default's route (plain HTTP on port 80 -> verified HTTPS on 443, name from
    # the Host header), with the test CA as the trust store.
    config = d / "ssaproxy.toml"
    config.write_text(f"""
[policy]
trust_store = "{pki.root_pem}"

[outbound]
listen = "tcp:15001:interface=127.0.0.1"

[[outbound.route]]
name = "http-to-https"
destination = "0.0.0.0/0"
ports = [80]
tls_port = 443
hostname_from = "http-host"
""")
    lab.ns(lab.s, ["ip", "addr", "add", f"{BAD_SERVER}/24", "dev", "s0"])
    # The good server logs each request it decrypts; the bad one is openssl's own s_server.
    lab.tls_server("http", pki.server("good"), 443, d / "good.log")
    bad = pki.server("expired")
    lab.openssl_server(bad, 443, d / "s_server-expired.log", "-cert_chain", str(bad.chain), "-www",
                       host=BAD_SERVER)
    _ssaproxy(lab, "iptables", "apply", "--config", str(config), "--uid", "0")
    _ssaproxy(lab, "iptables", "apply", "--config", str(config), "--uid", "0")
    lab.start_daemon(config, d / "daemon.log")
    return d


@pytest.fixture(scope="module")
def capture(lab: Lab, scene: Path) -> Iterator[Path]:
    """Every packet on the server side of the wire, as a pcap file."""
    pcap = scene / "wire.pcap"
    dump = lab.spawn(lab.s, ["tcpdump", "-i", "s0", "--immediate-mode", "-U", "-n", "-s", "0", "-w", str(pcap),
                             "tcp"],
                     log=scene / "tcpdump.log")
    poll(lambda: "listening on" in (scene / "tcpdump.log").read_text(), 10)
    yield pcap
    stop(dump)


def test_apply_is_idempotent(lab: Lab, scene: Path) -> None:
    rules = _nat_rules(lab)
    assert rules.count("-A OUTPUT -p tcp -j SSAPROXY_OUTPUT") == 1, rules
    assert rules.count("--to-ports 15001") == 1, rules
    assert "--uid-owner 0 -j RETURN" in rules


def test_plain_http_is_upgraded_and_only_tls_is_on_the_wire(lab: Lab, scene: Path, capture: Path) -> None:
    canary = "canary-" + secrets.token_hex(8)
    r = lab.curl("http://backend.test/", "--resolve", f"backend.test:80:{SERVER_V4}", "-H", f"X-Canary: {canary}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from the TLS server\n"
    assert poll(lambda: canary in (scene / "good.log").read_text())  # it reached the server, decrypted
    assert _packets(lab, capture, f"src host {SERVER_V4} and src port 443 and tcp[tcpflags] & tcp-fin != 0")
    wire = capture.read_bytes()
    assert b"backend.test" in wire  # the SNI: proof the capture holds this connection
    assert canary.encode() not in wire
    event = poll(lambda: [e for e in log_events(scene / "daemon.log") if f"orig_dst={SERVER_V4}:80 " in e])[-1]
    assert " closed: " in event and "verified=True" in event and "tls=TLSv1.3" in event


def test_bad_certificate_resets_and_sends_no_plaintext(lab: Lab, scene: Path, capture: Path) -> None:
    canary = "canary-" + secrets.token_hex(8)
    r = lab.curl("http://backend.test/", "--resolve", f"backend.test:80:{BAD_SERVER}", "-H", f"X-Canary: {canary}")
    assert r.returncode == 56 and "reset" in r.stderr.lower(), (r.returncode, r.stderr)
    # The daemon's own ending of the failed handshake: its alert, then a FIN, towards the bad
    # server, which learns why (openssl s_server logs the alert it read).
    assert _packets(lab, capture, f"dst host {BAD_SERVER} and dst port 443 and tcp[tcpflags] & tcp-fin != 0")
    assert poll(lambda: "alert certificate expired" in (scene / "s_server-expired.log").read_text())
    assert canary.encode() not in capture.read_bytes()
    assert _packets(lab, capture, "port 80", wait=0) == ""  # nothing ever left for port 80
    event = poll(lambda: [e for e in log_events(scene / "daemon.log") if f"orig_dst={BAD_SERVER}:80 " in e])[-1]
    assert " verify-failed: " in event and "certificate has expired" in event


def _packets(lab: Lab, pcap: Path, bpf: str, wait: float = 10) -> str:
    """tcpdump's lines for the packets in `pcap` that match `bpf`, waiting up to `wait` s for some."""
    def read() -> str:
        return lab.ns(lab.s, ["tcpdump", "-r", str(pcap), "-n", bpf]).stdout.strip()

    return poll(read, wait) if wait else read()


def test_remove_leaves_no_trace(lab: Lab, scene: Path) -> None:
    config = scene / "ssaproxy.toml"
    _ssaproxy(lab, "iptables", "remove", "--config", str(config))
    rules = _nat_rules(lab)
    assert "SSAPROXY" not in rules, rules
    _ssaproxy(lab, "iptables", "remove", "--config", str(config))  # again: nothing left to remove, no error
