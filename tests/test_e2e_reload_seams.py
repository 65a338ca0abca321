"""Scenario: where the privilege drop, reload and drain meet.

A real daemon started as root drops to `nobody`; reloads it can no longer carry out are refused
whole, in one line, and leave nothing behind (no half-applied generation, no stray socket).  A
daemon that drains ignores a SIGHUP (a logrotate or `systemctl reload` habit) and ends the
drain at once on SIGUSR1/SIGUSR2/SIGQUIT, never dying of a signal's default action mid-drain.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.api_harness import free_port
from tests.lab import poll
from tests.pki import PKI
from tests.reload_harness import Front


@pytest.fixture
def base() -> Iterator[Path]:
    # Outside pytest's private tree: the daemon's user (nobody) must reach the socket's directory.
    directory = Path(tempfile.mkdtemp(prefix="ssaproxy-seams-"))
    os.chmod(directory, 0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _front(pki: PKI, base: Path, daemon: str, api: str = "") -> tuple[Front, int]:
    front = Front(pki, base)
    for p in front.certs.iterdir():
        os.chmod(p, 0o644)  # readable by nobody: reloads read them after the drop
    os.chmod(front.certs, 0o755)
    port = free_port()
    front.config.write_text(f"[daemon]\nwatch_interval = 0\n{daemon}{api}" + front.listener("app", port))
    front.start_as_written()
    return front, port


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def test_a_reload_the_dropped_user_cannot_carry_out_is_refused_whole(pki: PKI, base: Path) -> None:
    sock, other = base / "run" / "api.sock", base / "other"
    other.mkdir()
    os.chown(other, 65534, 65534)  # nobody may bind here, but not give the socket to group adm
    daemon = 'user = "nobody"\n'
    front, port = _front(pki, base, daemon, f'[api]\nsocket = "{sock}"\n')
    try:
        listener = front.listener("app", port)
        front.config.write_text(f'[daemon]\nwatch_interval = 0\n{daemon}[api]\nsocket = "{other}/api.sock"\n'
                                f'group = "adm"\n{listener}')
        front.hup()
        front.wait_log("reload refused")
        text = front.log.read_text()
        assert "api.group: the daemon's user cannot give the socket to group 'adm'" in text, text[-2000:]
        assert "Traceback" not in text
        assert not _answers(other / "api.sock") and _answers(sock)  # nothing half-made; the old one serves
        # Without the group, the same move is applied, and the new socket serves.
        front.config.write_text(f'[daemon]\nwatch_interval = 0\n{daemon}[api]\nsocket = "{other}/api.sock"\n'
                                f"{listener}")
        front.hup()
        front.wait_log("reloaded (SIGHUP)")
        assert "api=rebound" in front.log.read_text()
        assert poll(lambda: _answers(other / "api.sock"))
    finally:
        front.stop()


def test_a_low_port_added_after_the_drop_is_refused_in_one_line(pki: PKI, base: Path) -> None:
    front, port = _front(pki, base, 'user = "nobody"\n')
    try:
        front.config.write_text('[daemon]\nwatch_interval = 0\nuser = "nobody"\n' + front.listener("app", port)
                                + front.listener("low", 444))
        front.hup()
        front.wait_log("reload refused")
        text = front.log.read_text()
        assert "listener inbound.low" in text and "Permission denied" in text, text[-2000:]
        assert "Traceback" not in text
        s = front.connect(port)  # the old generation serves on
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        s.close()
    finally:
        front.stop()


def test_during_a_drain_hup_is_ignored_and_usr1_ends_it(pki: PKI, base: Path) -> None:
    front, port = _front(pki, base, "drain_timeout = 20\n")
    try:
        s = front.connect(port)
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        assert front.daemon is not None
        front.daemon.send_signal(signal.SIGTERM)
        front.wait_log("stopping: no longer accepting")
        front.daemon.send_signal(signal.SIGHUP)
        front.wait_log("SIGHUP ignored: the daemon is stopping")
        assert front.daemon.poll() is None  # still draining
        front.daemon.send_signal(signal.SIGUSR1)
        assert poll(lambda: front.daemon is not None and front.daemon.poll() is not None, 10)
        assert front.daemon.returncode == -signal.SIGTERM  # twistd re-raises the first signal
        front.wait_log("drain ended (SIGUSR1 received during the drain)")
        with pytest.raises((ConnectionResetError, OSError)):
            s.recv(1)  # reset, not a clean end
        s.close()
    finally:
        front.stop()
