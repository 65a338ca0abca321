"""Capacity: listen backlogs from the config or somaxconn, the fd budget of the connection caps,
the spare descriptor that turns a waiting connection into a reset, and one log line per burst."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher

from ssaproxy import kernel
from ssaproxy.capacity import REPORT_WINDOW, FdBudget, Overload
from ssaproxy.config import Config, ListenAddress
from ssaproxy.errors import ConfigError

TCP_CLOSE = 7


@pytest.mark.parametrize(("description", "expected"), [
    ("tcp:15001:interface=127.0.0.1", ListenAddress(port=15001, interface="127.0.0.1", backlog=None)),
    ("tcp:15001:interface=127.0.0.1:backlog=512", ListenAddress(port=15001, interface="127.0.0.1", backlog=512)),
    ("tcp:15001:127.0.0.1:64", ListenAddress(port=15001, interface="127.0.0.1", backlog=64)),
    ("tcp6:443", ListenAddress(port=443, interface="::", backlog=None)),
    ("tcp6:443:128:\\:\\:1", ListenAddress(port=443, interface="::1", backlog=128)),
    ("tcp:8443", ListenAddress(port=8443, interface="", backlog=None)),
])
def test_listen_address_and_backlog(description: str, expected: ListenAddress) -> None:
    assert ListenAddress.parse(description, "inbound.web.listen") == expected


@pytest.mark.parametrize("bad", ["0", "-1", "lots", "99999999"])
def test_a_bad_backlog_names_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match="backlog") as e:
        Config.from_toml(f'[outbound]\nlisten = ["tcp:15001:interface=127.0.0.1:backlog={bad}"]\n')
    assert e.value.key == "outbound.listen"


def test_somaxconn_is_read_or_falls_back(tmp_path: Path) -> None:
    good = tmp_path / "somaxconn"
    good.write_text("8192\n")
    assert kernel.somaxconn(str(good)) == 8192
    (tmp_path / "junk").write_text("n/a\n")
    assert kernel.somaxconn(str(tmp_path / "junk")) == kernel.SOMAXCONN_FALLBACK
    assert kernel.somaxconn(str(tmp_path / "missing")) == kernel.SOMAXCONN_FALLBACK


CAPS = """
[outbound]
listen = ["tcp:15001:interface=127.0.0.1"]
max_connections = 300

[[inbound]]
name = "web"
listen = "tcp:8443"
backend = "tcp:127.0.0.1:8080"
certificates = [ { chain = "/x/chain.pem", key = "/x/key.pem" } ]
max_connections = 200

[api]
max_sessions = 100
"""


def test_the_fd_budget_of_the_caps_and_its_warning() -> None:
    budget = FdBudget.from_config(Config.from_toml(CAPS))
    assert budget.caps == (("outbound.max_connections", 300), ("inbound.web.max_connections", 200),
                           ("api.max_sessions", 100))
    assert budget.needed == 2 * 600 + budget.reserve
    assert budget.shortfall(budget.needed) is None
    assert budget.shortfall(65536) is None
    warning = budget.shortfall(1024)
    assert warning is not None
    assert "outbound.max_connections=300, inbound.web.max_connections=200, api.max_sessions=100" in warning
    assert f"need {budget.needed} file descriptors" in warning and "open files limit is 1024" in warning
    assert f"about {(1024 - budget.reserve) // 2} connections" in warning


def test_only_what_is_configured_counts() -> None:
    config = Config.from_toml('[outbound]\nlisten = ["tcp:15001:interface=127.0.0.1"]\n')
    assert FdBudget.from_config(config).caps == (("outbound.max_connections", 10000),)  # no [api], no inbound


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    code = "from ssaproxy import kernel; print(*kernel.raise_open_files_limit(), kernel.open_files_limit())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))  # noqa: PLW1509
    expected = hard if hard != resource.RLIM_INFINITY else int(Path("/proc/sys/fs/nr_open").read_text())
    assert out.stdout.split() == ["256", str(expected), str(hard), str(expected)]


def _listener() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    return srv


def test_waiting_connections_are_reset_with_the_spare_descriptor() -> None:
    reserve = kernel.FdReserve()
    assert reserve.acquire()
    spare = reserve.fd
    with _listener() as srv:
        clients = [socket.create_connection(srv.getsockname(), timeout=2) for _ in range(3)]
        try:
            assert kernel.reset_waiting(srv, reserve, limit=10) == 3
            for c in clients:
                assert c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_CLOSE  # RST, not FIN
                with pytest.raises(ConnectionResetError):
                    c.recv(1)
            assert kernel.reset_waiting(srv, reserve, limit=10) == 0  # nothing left: EAGAIN
        finally:
            for c in clients:
                c.close()
    assert reserve.fd is not None and reserve.fd == spare  # taken back (the same slot: it was the lowest free)
    reserve.release()
    assert reserve.fd is None


def test_one_line_per_burst_with_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    clock = MemoryReactorClock()
    overload = Overload(clock)
    calls = iter([2, 5, None, 1])
    monkeypatch.setattr(kernel, "reset_waiting", lambda listener, reserve, limit: next(calls))
    try:
        assert overload.exhausted(None, 15001, 24)  # type: ignore[arg-type]
        assert overload.exhausted(None, 8443, 24)  # type: ignore[arg-type]
        assert not overload.exhausted(None, 8443, 23)  # type: ignore[arg-type]  # no spare: pause
        assert not [e for e in events if e.get("outcome") == "overload"]
        clock.advance(REPORT_WINDOW)
        lines = [e for e in events if e.get("outcome") == "overload"]
        assert len(lines) == 1 and lines[0]["log_level"] is LogLevel.warn
        assert (lines[0]["count"], lines[0]["paused"], lines[0]["listeners"], lines[0]["cause"]) == (
            7, 1, "8443,15001", "EMFILE/ENFILE")
        assert overload.exhausted(None, 15001, 24)  # type: ignore[arg-type]  # a later burst: a new line
        overload.stop()  # flushed at shutdown, not lost
        lines = [e for e in events if e.get("outcome") == "overload"]
        assert len(lines) == 2 and lines[1]["count"] == 1
        assert not clock.getDelayedCalls()
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_memory_goes_back_after_a_burst_has_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.task import Clock  # noqa: PLC0415

    from ssaproxy import capacity  # noqa: PLC0415

    trimmed: list[int] = []
    monkeypatch.setattr(capacity.kernel, "trim_free_memory", lambda: trimmed.append(1) or True)

    class Face:
        active: set[object] = set()

    face, clock = Face(), Clock()
    face.active = set(range(1000))
    trim = capacity.MemoryTrim([face], clock)
    trim.startService()
    clock.advance(capacity.TRIM_EVERY)
    assert trimmed == [] and trim.peak == 1000  # busy: nothing to give back
    face.active = set(range(800))
    clock.advance(capacity.TRIM_EVERY)
    assert trimmed == []  # 200 ended: fewer than TRIM_AFTER, and not half
    face.active = set(range(10))
    clock.advance(capacity.TRIM_EVERY)
    assert trimmed == [1] and trim.trims == 1 and trim.peak == 10
    clock.advance(capacity.TRIM_EVERY)
    assert trimmed == [1]  # once per burst, not at every look
    trim.stopService()
    assert not clock.getDelayedCalls()
