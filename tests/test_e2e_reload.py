"""Scenario: a running daemon reloads (SIGHUP, `ssaproxy reload`, a certificate file renamed
over) while a TLS stream is open through it.

New connections get the new configuration; the stream opened before goes on byte-exact both
ways to its clean end.  A configuration that does not load, or whose listener cannot bind, is
refused as a whole with one log line, and the old one keeps serving.  Real daemon processes on
loopback (tests/reload_harness.py); no network namespace.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.api_harness import free_port
from tests.pki import PKI
from tests.reload_harness import Echo, Front, file_serial, serial

TOTAL = 2_000_000


@pytest.fixture
def front(pki: PKI, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Front]:
    f = Front(pki, tmp_path, watch_interval=getattr(request, "param", 0))
    try:
        yield f
    finally:
        f.stop()


def _rotate_mid_stream(front: Front, pki: PKI, trigger: str) -> None:
    port = free_port()
    front.start(("app", port))
    old_serial = file_serial(pki.server("good").chain)
    with front.connect(port) as s:
        assert serial(s) == old_serial
        stream = Echo(s, TOTAL)
        stream.exchange(TOTAL // 2)
        front.install(pki.server("good_renewed"))
        if trigger == "hup":
            front.hup()
        front.wait_log("reloaded (")
        log = front.log.read_text()
        assert re.search(r"changed=1 .* certificate_files_changed=[12] ", log), log[-2000:]
        if trigger == "watch":
            assert "changed on disk: " + str(front.chain) in log, log[-2000:]
        with front.connect(port) as fresh:
            assert serial(fresh) == file_serial(pki.server("good_renewed").chain) != old_serial
            Echo(fresh, 1000).finish()
        stream.finish()  # the old stream: the rest of its bytes both ways, then a clean end
    front.wait_log(" closed: ", 2)
    assert "inbound 1 closed: " in front.log.read_text()
    assert "Traceback" not in front.log.read_text()


def test_sighup_rotates_the_certificate_and_a_live_stream_carries_on(front: Front, pki: PKI) -> None:
    _rotate_mid_stream(front, pki, "hup")


@pytest.mark.parametrize("front", [0.2], indirect=True)
def test_a_certificate_renamed_over_is_picked_up_without_a_signal(front: Front, pki: PKI) -> None:
    _rotate_mid_stream(front, pki, "watch")


def test_a_broken_config_is_refused_in_one_line_and_the_old_one_serves(front: Front, pki: PKI) -> None:
    port = free_port()
    front.start(("app", port))
    with front.connect(port) as s:
        stream = Echo(s, 200_000)
        stream.exchange(100_000)
        front.config.write_text(front.config.read_text() + "\n[policy]\nmin_version = \"TLSv1.9\"\n")
        front.hup()
        front.wait_log("reload refused (SIGHUP)")
        refusals = [line for line in front.log.read_text().splitlines() if "reload refused" in line]
        assert len(refusals) == 1, refusals
        assert "policy.min_version (line " in refusals[0], refusals
        with front.connect(port) as fresh:
            assert serial(fresh) == file_serial(pki.server("good").chain)
            Echo(fresh, 1000).finish()
        stream.finish()
    # A listener that cannot bind (its port is taken) refuses the whole reload, naming it and why.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        front.write_config(("app", port), ("extra", taken))
        front.hup()
        front.wait_log("reload refused (SIGHUP)", 2)
        line = [x for x in front.log.read_text().splitlines() if "reload refused" in x][-1]
        assert f"listener inbound.extra (tcp:{taken}:interface=127.0.0.1) cannot listen" in line, line
        assert "Address already in use" in line, line
    with front.connect(port) as again:
        Echo(again, 1000).finish()
    assert "reloaded (" not in front.log.read_text()


def test_listeners_added_and_removed_by_reload(front: Front, pki: PKI) -> None:
    first, second = free_port(), free_port()
    front.start(("first", first))
    with front.connect(first) as s:
        stream = Echo(s, TOTAL)
        stream.exchange(TOTAL // 2)
        front.write_config(("second", second))
        front.hup()
        front.wait_log("reloaded (SIGHUP)")
        line = [x for x in front.log.read_text().splitlines() if "reloaded (" in x][-1]
        assert "added=1 removed=1 changed=0" in line, line
        with front.connect(second) as fresh:
            Echo(fresh, 1000).finish()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", first), timeout=5).close()
        stream.finish()  # the removed listener's live connection carries on to its clean end
    front.wait_log("inbound 1 closed: ")


def test_ssaproxy_reload_by_pid(front: Front, pki: PKI) -> None:
    port = free_port()
    front.start(("app", port))
    assert front.daemon is not None
    front.install(pki.server("good_renewed"))
    cli = [sys.executable, "-m", "ssaproxy.cli", "reload"]
    r = subprocess.run([*cli, "--pid", str(front.daemon.pid)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    front.wait_log("reloaded (SIGHUP)")
    with front.connect(port) as s:
        assert serial(s) == file_serial(pki.server("good_renewed").chain)
    # A pid that is not a daemon is not signalled.
    r = subprocess.run([*cli, "--pid", str(subprocess.os.getpid())], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not an ssaproxy daemon" in r.stderr, r.stderr


def test_an_unchanged_client_stream_survives_many_reloads(front: Front, pki: PKI) -> None:
    port = free_port()
    front.start(("app", port))
    with front.connect(port) as s:
        stream = Echo(s, TOTAL)
        for n in range(1, 4):
            front.hup()
            front.wait_log("reloaded (SIGHUP)", n)
            stream.exchange(TOTAL // 4)
        stream.finish()
    assert isinstance(s, ssl.SSLSocket)


def test_a_profile_listener_comes_and_goes_with_reload(front: Front, pki: PKI) -> None:
    """A [[profile]] with its own listener is one more outbound listener: a reload that adds the
    profile binds it (a connection to it is that profile's), one that removes it closes it."""
    port, profile_port = free_port(), free_port()
    outbound = (f'[outbound]\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n'
                '[[outbound.route]]\nname = "all"\ndestination = "0.0.0.0/0"\nhostname_from = "address"\n')
    profile = (f'[[profile]]\nname = "strict"\nmatch_users = [4242]\nmin_version = "TLSv1.3"\n'
               f'listen = "tcp:{profile_port}:interface=127.0.0.1"\n')
    front.write_config(("app", port), extra=outbound)
    front.start_as_written()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", profile_port), timeout=5).close()
    front.write_config(("app", port), extra=outbound + profile)
    front.hup()
    front.wait_log("reloaded (SIGHUP)")
    socket.create_connection(("127.0.0.1", profile_port), timeout=5).close()  # not redirected: refused, logged
    front.wait_log("profile=strict")
    front.write_config(("app", port), extra=outbound)
    front.hup()
    front.wait_log("reloaded (SIGHUP)", 2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", profile_port), timeout=5).close()
    assert "Traceback" not in front.log.read_text()


def _backlog(port: int) -> int:
    """The accept queue's length the kernel gives the listener on `port` (ss: Send-Q)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    return int(out.split()[2])


def test_a_kept_listener_takes_a_new_backlog_on_reload(front: Front, pki: PKI) -> None:
    """The same address with another backlog is the same listener (its connections go on), asked
    to listen again with the new queue length."""
    port, outbound_port = free_port(), free_port()
    outbound = (f'[outbound]\nlisten = "tcp:{outbound_port}:interface=127.0.0.1:backlog={{}}"\n'
                '[[outbound.route]]\nname = "all"\ndestination = "0.0.0.0/0"\nhostname_from = "address"\n')
    front.write_config(("app", port), extra=outbound.format(64))
    front.start_as_written()
    assert _backlog(outbound_port) == 64
    front.write_config(("app", port), extra=outbound.format(200))
    front.hup()
    front.wait_log("reloaded (SIGHUP)")
    assert _backlog(outbound_port) == 200
    line = [x for x in front.log.read_text().splitlines() if "reloaded (" in x][-1]
    assert "outbound_listen_changed=True" in line, line  # its text changed, its address did not
