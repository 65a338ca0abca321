"""C programs and the daemon's rules that are not about one handshake: trust anchors given as a
file or a hashed-style directory and read in the program's process, TLS_ERROR cleared by the
next call, what a listening socket answers, bind's own errors, the per-user session limit
(EAGAIN), an address of the wrong family, and a program in another network namespace (EXDEV)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_harness import ApiDaemon, free_port
from tests.clib import probe, probe_binary, run
from tests.pki import PKI


def _last_certificate(chain: Path) -> str:
    text = chain.read_text()
    return text[text.rindex("-----BEGIN CERTIFICATE-----"):]


def test_trust_anchors_from_a_file_or_a_directory_are_added(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    creds = pki.server("untrusted_root")  # chains to a root the daemon's policy does not trust
    port = api.tls_server("echo", creds)
    anchor = tmp_path / "private-ca.pem"
    anchor.write_text(_last_certificate(Path(creds.chain)))
    directory = tmp_path / "cadir"
    directory.mkdir()
    (directory / "0a1b2c3d.0").write_text(anchor.read_text())
    (directory / "README").write_text("not a certificate\n")
    binary = probe_binary(tmp_path)
    connect = ("connect", "127.0.0.1", str(port), "send", "anchored\n", "shutwr", "recvall")
    without = probe(binary, "socket", "inet", "settext", "85", "backend.test", "connect", "127.0.0.1", str(port),
                    "gettext", "100", env=api.env)
    assert without[2][:3] == ["connect", "-1", "EPROTO"] and "verify-failed" in without[3][3], without
    for given in (anchor, directory):
        out = probe(binary, "socket", "inet", "settext", "85", "backend.test", "settext", "87", str(given), *connect,
                    env=api.env)
        assert out[2][:3] == ["settext", "0", "0"] and out[3][:3] == ["connect", "0", "0"], (given, out)
        assert out[-1][:4] == ["recvall", "9", "EOF", "anchored|"], (given, out)
    missing = probe(binary, "socket", "inet", "settext", "87", str(tmp_path / "absent.pem"), "gettext", "100",
                    env=api.env)
    assert missing[1][:3] == ["settext", "-1", "ENOENT"] and "absent.pem" in missing[2][3], missing


def test_tls_error_is_cleared_by_the_next_call(api: ApiDaemon, tmp_path: Path) -> None:
    out = probe(probe_binary(tmp_path), "socket", "inet", "setint", "108", "7", "gettext", "100", "gettext", "100",
                "getint", "111", "gettext", "100", env=api.env)
    assert out[1][:3] == ["setint", "-1", "EINVAL"] and out[2][3] and out[3][3] == out[2][3], out  # reading keeps it
    assert out[4][:3] == ["getint", "0", "0"] and out[5][3] == "", out  # any other call clears it


def test_a_listening_socket_and_bind(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    chain = tmp_path / "chain.pem"
    creds = pki.server("good_localhost")
    chain.write_bytes(Path(creds.chain).read_bytes() + Path(creds.key).read_bytes())
    taken = socket.create_server(("127.0.0.1", 0))
    busy = taken.getsockname()[1]
    port = free_port()
    try:
        out = probe(probe_binary(tmp_path),
                    "socket", "inet", "bind", "127.0.0.1", str(busy),                   # the program's own error
                    "socket", "inet", "settext", "88", str(chain), "bind", "127.0.0.1", str(port), "listen",
                    "sockname", "getint", "111", "settext", "85", "x.test", "gettext", "100", env=api.env)
    finally:
        taken.close()
    assert out[1][:3] == ["bind", "-1", "EADDRINUSE"], out
    assert [row[:3] for row in out[3:6]] == [["settext", "0", "0"], ["bind", "0", "0"], ["listen", "0", "0"]], out
    assert out[6][3] == f"127.0.0.1:{port}", out  # the address the program bound, not the loopback one
    assert out[7][:3] == ["getint", "-1", "EOPNOTSUPP"] and out[8][:3] == ["settext", "-1", "EISCONN"], out
    assert out[9][3], out


def test_an_address_of_another_family_is_eafnosupport(api: ApiDaemon, tmp_path: Path) -> None:
    out = probe(probe_binary(tmp_path), "socket", "inet", "connect6", "::1", "443", env=api.env)
    assert out[1][:3] == ["connect6", "-1", "EAFNOSUPPORT"], out


@pytest.fixture
def one_session(pki: PKI, tmp_path: Path) -> Iterator[ApiDaemon]:
    daemon = ApiDaemon(tmp_path / "limited", pki, extra="max_sessions_per_uid = 1\n").start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_a_users_session_share_is_eagain(one_session: ApiDaemon, tmp_path: Path) -> None:
    hold = one_session.tls_server("hold", None)
    out = probe(probe_binary(tmp_path), "socket", "inet", "nonblock", "connect", "127.0.0.1", str(hold),
                "socket", "inet", "nonblock", "connect", "127.0.0.1", str(hold), "gettext", "100",
                env=one_session.env)
    assert out[1][:3] == ["connect", "-1", "EINPROGRESS"], out  # the one session this user may hold
    assert out[3][:3] == ["connect", "-1", "EAGAIN"] and out[4][3], out


@pytest.mark.netns
def test_a_program_in_another_network_namespace_gets_exdev(api: ApiDaemon, tmp_path: Path) -> None:
    binary = probe_binary(tmp_path)
    r = run(["unshare", "--net", "--", str(binary), "socket", "inet", "connect", "127.0.0.1", "443",
             "gettext", "100"], env=api.env)
    rows = [line.split(" ", 3) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and rows[1][:3] == ["connect", "-1", "EXDEV"], (rows, r.stderr)
    assert "namespace" in rows[2][3], rows


def test_a_pem_value_that_fills_a_frame_is_einval_not_a_crash(api: ApiDaemon, tmp_path: Path) -> None:
    """A trust file of exactly 1 MiB (the library's own PEM limit) with the option's framing
    would not fit one frame: the call is EINVAL with a reason, never heap corruption."""
    big = tmp_path / "big.pem"
    head = b"-----BEGIN CERTIFICATE-----\n"
    big.write_bytes(head + b"A" * ((1 << 20) - len(head)))
    out = probe(probe_binary(tmp_path), "socket", "inet", "settext", "87", str(big), "gettext", "100",
                env=api.env)
    assert out[1][:3] == ["settext", "-1", "EINVAL"], out
    assert "big.pem" in out[2][3], out
