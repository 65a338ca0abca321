"""Scenario: SIGTERM drains.  A real daemon on loopback terminates TLS in front of a plaintext
backend (tests/peers/backend.py); `[daemon] drain_timeout` is set per test.

- A 100 MB download in flight when SIGTERM arrives completes byte-exact with a clean end; a new
  connection during the drain is refused (the listener is gone); the daemon exits right after.
- A connection that does not finish within drain_timeout is reset (never a clean end), and the
  drain's last log line counts it.
- A second SIGTERM, or a SIGINT, during the drain resets what is left at once.
- drain_timeout = 0 resets live connections at once, as before drains existed.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.lab import poll
from tests.loopback import LoopbackDaemon
from tests.peers.pattern import pattern_digest
from tests.pki import PKI

BULK = 100_000_000


CONFIG = """[daemon]
drain_timeout = {drain_timeout}
[admin]
listen = "tcp:{admin_port}:interface=127.0.0.1"
[[inbound]]
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
{certificates}
"""


@pytest.fixture
def front(pki: PKI, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LoopbackDaemon]:
    mode, drain_timeout = request.param
    with LoopbackDaemon(pki, tmp_path, CONFIG, mode=mode, backend_args=("--bytes", str(BULK)),
                        stop_signal=signal.SIGKILL, drain_timeout=drain_timeout) as d:
        yield d


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def _echoing(front: LoopbackDaemon) -> ssl.SSLSocket:
    s = front.connect(timeout=20)
    s.sendall(b"still here")
    assert s.recv(100) == b"still here"
    return s


def _reset_within(s: ssl.SSLSocket, seconds: float) -> float:
    """Waits for the daemon to end `s`; asserts a reset (not a clean end), returns how long it took."""
    started = time.monotonic()
    s.settimeout(seconds + 10)
    with pytest.raises((ConnectionResetError, ssl.SSLEOFError)):  # a clean end would be b""
        s.recv(100)
    return time.monotonic() - started


@pytest.mark.parametrize("front", [("source", 30)], indirect=True)
def test_a_transfer_in_flight_completes_and_new_connections_are_refused(front: LoopbackDaemon) -> None:
    h, received = hashlib.sha256(), 0
    with front.connect(timeout=20) as s:
        while received < 5_000_000:  # the transfer is under way
            data = s.recv(65536)
            h.update(data)
            received += len(data)
        front.daemon.send_signal(signal.SIGTERM)
        line = front.wait_log("stopping: no longer accepting")
        assert "draining 1 live connections (inbound=1) for up to 30s" in line, line
        assert poll(lambda: _refused(front.port)), "a new connection was accepted during the drain"
        assert front.daemon.poll() is None  # still draining: our transfer is not done
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a slow-ish reader: about 10 ms of rest per MiB
            data = s.recv(65536)
            if not data:
                break  # close_notify, then FIN: a truncation would have raised SSLEOFError
            h.update(data)
            received += len(data)
            if received % (1 << 20) < 65536:
                time.sleep(0.01)
    assert received == BULK and h.hexdigest() == pattern_digest(BULK)
    assert front.daemon.wait(15) == -signal.SIGTERM  # out as soon as the last connection ended
    end = front.wait_log("drain ended")
    assert "(every connection finished)" in end and "1 connections finished, 0 reset" in end, end
    assert "Traceback" not in front.text()


@pytest.mark.parametrize("front", [("echo", 1)], indirect=True)
def test_a_connection_that_outlives_the_drain_timeout_is_reset(front: LoopbackDaemon) -> None:
    with _echoing(front) as s:
        front.daemon.send_signal(signal.SIGTERM)
        took = _reset_within(s, 1)
    assert 0.8 < took < 5, took
    assert front.daemon.wait(15) == -signal.SIGTERM
    end = front.wait_log("drain ended")
    assert "(drain_timeout 1s passed)" in end and "0 connections finished, 1 reset" in end, end
    assert " shutdown: " in front.text() and "Traceback" not in front.text()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("front", [("echo", 60)], indirect=True)
def test_a_second_signal_ends_the_drain_at_once(front: LoopbackDaemon, second: int) -> None:
    with _echoing(front) as s, _echoing(front) as other:
        front.daemon.send_signal(signal.SIGTERM)
        front.wait_log("stopping: no longer accepting")
        time.sleep(0.5)
        assert front.daemon.poll() is None  # draining: it would wait a minute
        front.daemon.send_signal(second)
        assert _reset_within(s, 0) < 5
        assert _reset_within(other, 0) < 5
    assert front.daemon.wait(15) == -signal.SIGTERM  # twistd re-raises the first signal
    end = front.wait_log("drain ended")
    assert f"({signal.Signals(second).name} received during the drain)" in end, end
    assert "0 connections finished, 2 reset" in end, end
    assert "Traceback" not in front.text()


@pytest.mark.parametrize("front", [("echo", 0)], indirect=True)
def test_drain_timeout_zero_resets_at_once(front: LoopbackDaemon) -> None:
    with _echoing(front) as s:
        front.daemon.send_signal(signal.SIGTERM)
        assert _reset_within(s, 0) < 3
    assert front.daemon.wait(15) == -signal.SIGTERM
    end = front.wait_log("drain ended")
    assert "(drain_timeout is 0)" in end and "0 connections finished, 1 reset" in end, end


def _http_status(port: int, path: str) -> int:
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                        f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=10)
    return int(r.stdout or 0)


@pytest.mark.parametrize("front", [("echo", 60)], indirect=True)
def test_while_draining_the_daemon_is_alive_but_not_ready(front: LoopbackDaemon) -> None:
    assert (_http_status(front.admin_port, "/healthz"), _http_status(front.admin_port, "/readyz")) == (200, 200)
    with _echoing(front) as s:
        front.daemon.send_signal(signal.SIGTERM)
        front.wait_log("stopping: no longer accepting")
        # Liveness holds (an orchestrator must not kill a draining daemon); readiness does not.
        assert (_http_status(front.admin_port, "/healthz"), _http_status(front.admin_port, "/readyz")) == (200, 503)
        front.daemon.send_signal(signal.SIGTERM)
        assert _reset_within(s, 0) < 5
    assert front.daemon.wait(15) == -signal.SIGTERM
