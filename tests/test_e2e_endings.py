"""Scenario: how relays end when a peer falls silent or fails, seen by a real TLS client.

A real daemon on loopback terminates TLS in front of a plaintext backend (tests/peers/backend.py).
- With `idle_timeout = 1`, a client that keeps talking more often than that is served; one that
  falls silent is reset, the backend sees a reset too, and the log says `idle-timeout`.
- A client that trickles its handshake a byte at a time is reset at `handshake_timeout`, and
  the backend never hears of it: progress, not activity, is what keeps a connection.
- A backend that sends a large response and then resets: a slow-reading client still gets every
  byte the daemon received before the reset, then the reset (never a clean end), and the log's
  byte count is what the client was sent.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.lab import poll
from tests.loopback import LoopbackDaemon, tls_client
from tests.pki import PKI

TOTAL = 6_000_000


CONFIG = """[[inbound]]
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
idle_timeout = 1
handshake_timeout = 2
{certificates}
"""


@pytest.fixture(params=["echo"])
def front(pki: PKI, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, Path, Path]]:
    extra = ("--bytes", str(TOTAL)) if request.param == "reset" else ()
    with LoopbackDaemon(pki, tmp_path, CONFIG, mode=request.param, backend_args=extra) as d:
        yield d.port, d.log, d.backend_log


def test_a_chatty_client_is_served_and_a_silent_one_is_reset(pki: PKI, front: tuple[int, Path, Path]) -> None:
    port, log, backend_log = front
    with tls_client(pki, port) as s:
        for n in range(6):  # 6 round trips 0.4 s apart: 2.4 s in all, never 1 s of silence
            s.sendall(b"ping%d" % n)
            assert s.recv(100) == b"ping%d" % n
            time.sleep(0.4)
        started = time.monotonic()
        with pytest.raises((ConnectionResetError, ssl.SSLEOFError)):
            s.recv(100)  # silence: the daemon resets us between 1 and 1.25 s (+ scheduling)
        assert time.monotonic() - started < 5
    event = poll(lambda: [e for e in log.read_text().splitlines() if " idle-timeout: " in e])
    assert event and "bytes_in=30" in event[-1] and "bytes_out=30" in event[-1], log.read_text()[-2000:]
    backend: list[dict[str, Any]] = poll(lambda: [json.loads(x) for x in backend_log.read_text().splitlines()
                                                  if x.startswith("{")])
    assert backend and "error" in backend[-1], backend  # the backend saw a reset, not a FIN


@pytest.mark.parametrize("front", ["reset"], indirect=True)
def test_a_slow_reader_gets_every_byte_before_the_reset(pki: PKI, front: tuple[int, Path, Path]) -> None:
    port, log, backend_log = front
    received, error = 0, None
    with tls_client(pki, port) as s:
        s.settimeout(20)
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:  # about 1 MB/s: the pipe stays full while the backend resets
                data = s.recv(16384)
                if not data:
                    break
                received += len(data)
                time.sleep(0.01)
        except (ConnectionResetError, ssl.SSLEOFError) as e:
            error = e
    backend: list[dict[str, Any]] = poll(lambda: [json.loads(x) for x in backend_log.read_text().splitlines()
                                                  if x.startswith("{")])
    assert backend and "error" not in backend[-1], backend  # it sent everything, then reset
    assert error is not None, received  # never a clean end
    event = poll(lambda: [e for e in log.read_text().splitlines() if "inbound 1 " in e])
    assert event and " reset: " in event[-1], event
    # The backend's reset discards what its own kernel had not sent yet; everything that did
    # reach the daemon (megabytes, with the client reading slowly) reached the client.
    relayed = int(re.search(r" bytes_out=(\d+) ", event[-1]).group(1))  # type: ignore[union-attr]
    assert received == relayed > 1_000_000, (received, relayed)


def test_a_trickling_handshake_is_cut_at_the_handshake_timeout(pki: PKI, front: tuple[int, Path, Path]) -> None:
    port, log, backend_log = front
    out = ssl.MemoryBIO()
    hello = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname="backend.test")
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    client_hello = out.read()
    started = time.monotonic()

    def trickle(s: socket.socket) -> None:
        for byte in client_hello:  # one byte every 0.1 s: always active, never done
            s.send(bytes([byte]))
            time.sleep(0.1)
        s.recv(1)

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s, \
            pytest.raises((ConnectionResetError, BrokenPipeError)):
        trickle(s)
    assert time.monotonic() - started < 6
    event = poll(lambda: [e for e in log.read_text().splitlines() if " handshake-timeout: " in e])
    assert event, log.read_text()[-2000:]
    assert "READY" in backend_log.read_text() and "{" not in backend_log.read_text()  # never connected


def test_a_bad_record_after_the_handshake_gets_an_alert_not_a_bare_reset(pki: PKI,
                                                                          front: tuple[int, Path, Path]) -> None:
    port, log, _ = front
    with tls_client(pki, port) as s:
        s.sendall(b"ping")
        assert s.recv(100) == b"ping"
        # A record that cannot be decrypted (TLS 1.3 application data, wrong tag), bypassing TLS.
        socket.socket.sendall(s, b"\x17\x03\x03\x00\x20" + bytes(32))
        with pytest.raises(ssl.SSLError) as info:
            s.recv(100)
    assert "ALERT" in str(info.value) or "alert" in str(info.value), info.value  # told why, not just reset
    event = poll(lambda: [e for e in log.read_text().splitlines() if "inbound 1 " in e])
    assert event and " client-reset: " in event[-1], log.read_text()[-2000:]


def test_a_client_leaving_without_close_notify_is_truncation_and_the_backend_is_reset(
        pki: PKI, front: tuple[int, Path, Path]) -> None:
    port, log, backend_log = front
    before = len([x for x in backend_log.read_text().splitlines() if x.startswith("{")])
    with tls_client(pki, port) as s:
        s.sendall(b"ping")
        assert s.recv(100) == b"ping"
        socket.socket.shutdown(s, socket.SHUT_WR)  # a FIN, no close_notify
        with pytest.raises((ConnectionResetError, ssl.SSLError)):  # a reset, never a clean end
            _read_to_the_end(s)
    event = poll(lambda: [e for e in log.read_text().splitlines() if " client-truncated: " in e])
    assert event and "#warn" in event[-1] and "without close_notify" in event[-1], log.read_text()[-2000:]
    backend: list[dict[str, Any]] = poll(lambda: [json.loads(x) for x in backend_log.read_text().splitlines()
                                                  if x.startswith("{")][before:])
    assert backend and "error" in backend[-1], backend  # the backend saw a reset, never a clean end


def _read_to_the_end(s: ssl.SSLSocket) -> None:
    for _ in range(100):
        if not s.recv(100):
            return
