"""Scenario: a hostile TLS client (tlslite-ng, tests/peers/hostile_tls.py) in front of an inbound
listener completes a handshake and one echo, then sends a record the daemon must refuse.  Every
such error gets its alert on the wire (decrypted and named by the client), and the plaintext
backend behind the daemon sees a reset, never a clean end.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.lab import PEERS, poll
from tests.loopback import LoopbackDaemon
from tests.pki import PKI

CONFIG = """[[inbound]]
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
{certificates}
"""

# The alert each bad record earns (OpenSSL's choice, as RFC 8446 and 5246 name them).
CASES = [
    ("bad-mac", "1.3", {"bad_record_mac"}),
    ("bad-mac", "1.2", {"bad_record_mac"}),
    ("oversized", "1.3", {"record_overflow"}),
    ("oversized", "1.2", {"record_overflow"}),
    ("ccs", "1.3", {"unexpected_message"}),
    ("ccs", "1.2", {"unexpected_message"}),
    ("empty-alert", "1.3", {"decode_error", "unexpected_message"}),
    ("empty-alert", "1.2", {"decode_error", "unexpected_message"}),
    ("zero-type", "1.3", {"unexpected_message"}),
    ("keyupdate", "1.3", {"illegal_parameter"}),
]


@pytest.fixture(scope="module")
def front(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackDaemon]:
    with LoopbackDaemon(pki, tmp_path_factory.mktemp("alerts-in"), CONFIG, mode="echo") as d:
        yield d


def _backend_reports(d: LoopbackDaemon) -> list[dict[str, Any]]:
    return [json.loads(x) for x in d.backend_log.read_text().splitlines() if x.startswith("{")]


@pytest.mark.parametrize(("case", "version", "alerts"), CASES, ids=[f"{c}-tls{v}" for c, v, _ in CASES])
def test_a_bad_record_after_the_handshake_gets_its_alert(front: LoopbackDaemon, case: str, version: str,
                                                         alerts: set[str]) -> None:
    before = len(_backend_reports(front))
    out = subprocess.run([sys.executable, str(PEERS / "hostile_tls.py"), "client", "127.0.0.1", str(front.port),
                          "--case", case, "--version", version], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["echo"] == "ping", report  # a real session first
    assert report["end"] == "alert" and report["alert"] in alerts, report
    # The backend's connection ends with a reset: the plaintext side never reads a clean end.
    reports = poll(lambda: _backend_reports(front)[before:])
    assert reports and "error" in reports[-1], reports
    event = front.wait_log(f"tls=TLSv{version}")
    assert " client-reset: " in event or " reset: " in event, event


HANGING = """[[inbound]]
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{hanging_port}"
connect_timeout = 8
{certificates}
"""


def test_a_client_tls_error_while_the_backend_connect_hangs_is_logged_as_itself(pki: PKI, tmp_path: Path) -> None:
    """The backend's listen queue is full, so the daemon's connect to it hangs; the client's bad
    record meanwhile is the reason the record gives (not `backend-failed detail=IPv4Address(...)`)."""
    hanging = socket.socket()
    fillers: list[socket.socket] = []
    try:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(0)
        for _ in range(4):  # fill the queue: further SYNs are dropped, connects hang
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(hanging.getsockname())
            fillers.append(s)
        with LoopbackDaemon(pki, tmp_path, HANGING, hanging_port=hanging.getsockname()[1]) as d, \
                d.connect() as client:
            socket.socket.sendall(client, b"\x17\x03\x03\x00\x20" + bytes(32))  # a bad tag
            with pytest.raises(ssl.SSLError) as info:
                client.recv(10)
            assert "BAD_RECORD_MAC" in str(info.value), info.value
            event = d.wait_log("inbound 1 ")
    finally:
        for s in (*fillers, hanging):
            s.close()
    assert " client-gone: " in event and "bad record mac" in event, event
    assert "IPv4Address" not in event and " backend-failed" not in event, event
