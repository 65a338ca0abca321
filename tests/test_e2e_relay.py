"""Scenario: the relay's promises, with a legacy client and real TLS servers.

Byte-exact bulk transfer both ways, half-close from either side, honest endings (truncation
and reset upstream become RST for the client; a client reset reaches the server), bounded
memory under backpressure, server-first protocols, and a client that already speaks TLS
being passed through untouched.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.lab import CLIENT_PY, NOBODY, PEERS, SERVER_V4, Lab, log_events, poll, stop
from tests.peers.pattern import pattern_digest
from tests.pki import PKI

PORTS = {"sink": 22001, "source": 22002, "halfclose": 22003, "truncate": 22004, "reset": 22005,
         "banner": 22006, "echo": 22007, "bigsource": 22008, "passthrough": 22009,
         "tlsecho": 22010}
BIG = 256 * 1024 * 1024


@pytest.fixture(scope="module")
def scene(lab: Lab, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("relay")
    good = pki.server("good")
    config = d / "ssaproxy.toml"
    tls_ports = sorted(p for name, p in PORTS.items() if name != "passthrough")
    config.write_text(f"""
[policy]
trust_store = "{pki.root_pem}"

[outbound]
listen = "tcp:15001:interface=127.0.0.1"

[[outbound.route]]
name = "plain"
destination = "{SERVER_V4}/32"
ports = [{PORTS["passthrough"]}]
action = "passthrough"

[[outbound.route]]
name = "backend"
destination = "{SERVER_V4}/32"
ports = {tls_ports}
hostname = "backend.test"
""")
    lab.tls_server("sink", good, PORTS["sink"], d / "sink.log")
    lab.tls_server("source", good, PORTS["source"], d / "source.log", extra=["--bytes", str(64 << 20)])
    lab.tls_server("halfclose", good, PORTS["halfclose"], d / "halfclose.log")
    lab.tls_server("truncate", good, PORTS["truncate"], d / "truncate.log")
    lab.tls_server("reset", good, PORTS["reset"], d / "reset.log")
    lab.tls_server("banner", good, PORTS["banner"], d / "banner.log")
    lab.tls_server("echo", good, PORTS["echo"], d / "echo.log")
    lab.tls_server("echo", good, PORTS["tlsecho"], d / "tlsecho.log")
    lab.tls_server("source", good, PORTS["bigsource"], d / "bigsource.log",
                   extra=["--bytes", str(BIG), "--status", str(d / "bigsource.status")])
    lab.tls_server("plainecho", None, PORTS["passthrough"], d / "passthrough.log")
    lab.apply_rules(config)
    daemon = lab.start_daemon(config, d / "daemon.log")
    # `ip netns exec` execs the command in place, so this PID is twistd's own.
    (d / "daemon.pid").write_text(str(daemon.pid))
    return d


def _reports(scene: Path, name: str, count: int = 1) -> list[dict[str, object]]:
    log = scene / f"{name}.log"

    def enough() -> list[str]:
        reports = [x for x in log.read_text().splitlines() if x.startswith("{")]
        return reports if len(reports) >= count else []

    lines = poll(enough, 10 if count else 0)
    assert lines or not count, f"fewer than {count} reports from the {name} server"
    return [json.loads(x) for x in lines]


def _event(scene: Path, name: str) -> str:
    """The daemon's last event for a connection to the `name` server."""
    port = f"{SERVER_V4}:{PORTS[name]} "
    events = poll(lambda: [e for e in log_events(scene / "daemon.log") if f"orig_dst={port}" in e])
    assert events, f"no event for {port} in the daemon log"
    return events[-1]


def test_bulk_client_to_server_is_byte_exact(lab: Lab, scene: Path) -> None:
    size = 48 * 1024 * 1024 + 12345
    r = lab.client(SERVER_V4, PORTS["sink"], "--send-bytes", str(size), "--shutdown")
    assert r["end"] == "eof", r
    assert r["head"] == f"{size} {pattern_digest(size)}\n"  # the server's verdict, sent after our FIN


def test_bulk_server_to_client_is_byte_exact(lab: Lab, scene: Path) -> None:
    r = lab.client(SERVER_V4, PORTS["source"])
    assert r["end"] == "eof", r
    assert r["received"] == 64 << 20
    assert r["sha256"] == pattern_digest(64 << 20)


def test_server_half_close_keeps_client_direction_open(lab: Lab, scene: Path) -> None:
    # The server sends its response and close_notify first; the client sees EOF (FIN), then
    # still sends 100000 bytes, which must all reach the server before its close_notify.
    r = lab.client(SERVER_V4, PORTS["halfclose"], "--then-send", "100000")
    assert r["end"] == "eof" and r["head"] == "response", r
    assert r["after_then_send"] == "eof", r
    rep = _reports(scene, "halfclose")[-1]
    assert rep == {"mode": "halfclose", "received_after_close_notify": 100000, "end": "close_notify"}


@pytest.mark.parametrize("name", ["truncate", "reset"])
def test_upstream_truncation_or_reset_resets_client(lab: Lab, scene: Path, name: str) -> None:
    r = lab.client(SERVER_V4, PORTS[name], "--send", "request\n")
    assert r["received"] == 1000, r  # what came before the bad ending is delivered ...
    assert r["end"] == "reset", r  # ... and the ending is an error, not a clean EOF
    assert f" {'truncated' if name == 'truncate' else 'reset'}: " in _event(scene, name)


def test_client_reset_reaches_server(lab: Lab, scene: Path) -> None:
    r = lab.client(SERVER_V4, PORTS["echo"], "--send", "abc", "--reset")
    assert r["end"] == "sent-reset"
    rep = _reports(scene, "echo")[-1]
    # The server must not see a clean close_notify: its peer vanished.
    assert rep.get("end") != "close_notify", rep
    assert " client-reset: " in _event(scene, "echo")


def test_server_first_protocol_gets_banner_before_client_speaks(lab: Lab, scene: Path) -> None:
    r = lab.client(SERVER_V4, PORTS["banner"], "--max-read", "11", "--timeout", "10")
    assert r["head"] == "220 ready\r\n", r
    assert r["end"] == "max-read"


@pytest.mark.parametrize("delay", ["0", "0.5"])
def test_tls_speaking_client_is_passed_through(lab: Lab, scene: Path, pki: PKI, delay: str) -> None:
    # The route's upstream TLS session opens at once; with a delay it is already up when the
    # ClientHello arrives.  Either way it must be dropped and replaced by a plain connection
    # carrying the client's own TLS, never used to wrap TLS in TLS.
    before = len(_reports(scene, "tlsecho", 0))
    r = lab.client(SERVER_V4, PORTS["tlsecho"], "--tls-ca-pem", pki.root_pem.read_text(), "--sni", "backend.test",
                   "--tls-delay", delay, "--send", "inner\n", "--max-read", "6")
    assert r["end"] == "max-read" and r["head"] == "inner\n", r
    assert r["tls_version"] == "TLSv1.3"
    new = _reports(scene, "tlsecho", before + 2)[before:]
    # One session carried the client's 6 bytes (the client's own TLS), the other (ours,
    # abandoned) carried nothing.
    assert sorted(rep.get("received", 0) for rep in new) == [0, 6], new  # type: ignore[type-var]
    event = _event(scene, "tlsecho")
    assert " closed: " in event and "action=passthrough" in event


def test_passthrough_route_forwards_bytes_unchanged(lab: Lab, scene: Path) -> None:
    r = lab.client(SERVER_V4, PORTS["passthrough"], "--send", "as-is\n", "--shutdown")
    assert r["end"] == "eof" and r["head"] == "as-is\n", r


def test_backpressure_bounds_memory(lab: Lab, scene: Path) -> None:
    """A client that stops reading stops the server (through the proxy) long before 256 MiB,
    the daemon's memory stays flat, and once it reads again every byte arrives intact."""
    daemon_pid = int((scene / "daemon.pid").read_text())
    rss_before = _rss_kib(daemon_pid)
    out = scene / "bigclient.json"
    client = lab.spawn(lab.c, [CLIENT_PY, str(PEERS / "client.py"), SERVER_V4, str(PORTS["bigsource"]),
                               "--read-delay", "8", "--timeout", "60"], log=out, user=NOBODY)
    status = scene / "bigsource.status"
    poll(lambda: status.exists() and int(status.read_text() or 0) > 0)
    # The client sleeps 8 s from its connect; the server's first byte came after our upstream
    # handshake, so 2.5 s later the client is surely still asleep, and the server stuck.
    time.sleep(2.5)
    stalled_at = int(status.read_text())
    time.sleep(0.5)
    still = int(status.read_text())
    rss_stalled = _rss_kib(daemon_pid)
    assert client.wait(120) == 0
    stop(client)
    r = json.loads(out.read_text().strip().splitlines()[-1])
    assert r["end"] == "eof" and r["received"] == BIG and r["sha256"] == pattern_digest(BIG), r
    # Kernel socket buffers on three sockets plus one relay chunk: far below 256 MiB.
    assert stalled_at < 48 * 1024 * 1024, stalled_at
    assert still - stalled_at < 4 * 1024 * 1024, (stalled_at, still)
    assert rss_stalled - rss_before < 32 * 1024, (rss_before, rss_stalled)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
