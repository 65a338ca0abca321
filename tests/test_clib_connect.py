"""C client programs through the daemon (protocol 2), against real TLS peers: the HTTPS and
edge-triggered epoll examples, and the probe program (tests/peers/ssa_probe.c) for every errno
of docs/api.md's table a C client can meet, truncation and reset, dup() and non-blocking
connects, and the daemon going away mid-connect."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.api_harness import ApiDaemon, free_port
from tests.clib import EXAMPLES, compile_c, probe, probe_binary, run
from tests.lab import PEERS, poll, stop, wait_for_text
from tests.pki import PKI


def _ok(row: list[str]) -> None:
    assert row[1] == "0" and row[2] == "0", row


def test_https_client_example_gets_a_verified_page(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    port = api.tls_server("http", pki.server("good_localhost"))
    binary = compile_c(EXAMPLES / "https_client_ssa.c", tmp_path)
    r = run([str(binary), "localhost", str(port), "/c"], env=api.env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HTTP/1.1 200 OK") and r.stdout.endswith("hello from the TLS server\n")
    wrong = api.tls_server("http", pki.server("good"))  # its certificate names backend.test
    r = run([str(binary), "localhost", str(wrong)], env=api.env)
    assert r.returncode == 1 and r.stdout == "", r
    assert "connect: Protocol error" in r.stderr and "TLS_ERROR: verify-failed" in r.stderr, r.stderr


def test_a_connected_socket_answers_from_the_result(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    port = api.tls_server("echo", pki.server("good_localhost"))
    out = probe(probe_binary(tmp_path), "socket", "inet", "settext", "85", "localhost", "dup",
                "connect", "127.0.0.1", str(port), "peer", "getint", "113", "gettext", "85", "gettext", "98",
                "gettext", "95", "getint", "107", "setint", "111", "771", "gettext", "100",
                "usedup", "send", "hello\n", "shutwr", "recvall", env=api.env)
    for row in out[:4]:
        _ok(row)
    assert out[4][3] == f"127.0.0.1:{port}"  # the real peer, not the daemon's end
    assert out[5][3] == str(0x0304) and out[6][3] == "localhost" and out[7][3].startswith("TLS_")
    assert out[8][3].startswith("-----BEGIN CERTIFICATE-----") and out[8][3].count("BEGIN CERTIFICATE") == 3
    assert out[9][:3] == ["getint", "-1", "EOPNOTSUPP"]  # TLS_CONTEXT is for before connecting
    assert out[10][:3] == ["setint", "-1", "EISCONN"]
    assert out[11][3] == "options are set before connect/listen"
    # The dup() made before connect() carries the session too: the fd was never replaced.
    assert out[-1][:3] == ["recvall", "6", "EOF"] and out[-1][3] == "hello|"


def test_the_control_connection_is_not_inherited_across_exec(api: ApiDaemon, tmp_path: Path) -> None:
    out = probe(probe_binary(tmp_path), "socket", "inet", "settext", "85", "localhost", "execfds", env=api.env)
    _ok(out[1])  # the control connection is open now
    assert out[2] == ["execfds", "0", "0", "1"], out  # the child has the program's socket, not ours


def test_ipv6_sockets_connect_and_report_the_real_peer(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "tls6.log"
    creds = pki.server("good_localhost")
    server = api.spawn([sys.executable, str(PEERS / "tls_server.py"), "--host", "::1", "--port", str(port),
                        "--mode", "echo", "--cert", str(creds.chain), "--key", str(creds.key)], log)
    wait_for_text(log, "READY", server, 15)
    out = probe(probe_binary(tmp_path), "socket", "inet6", "settext", "85", "localhost", "connect", "::1", str(port),
                "peer", "send", "six\n", "shutwr", "recvall", env=api.env)
    _ok(out[2])
    assert out[3][3] == f"::1:{port}" and out[-1][:4] == ["recvall", "4", "EOF", "six|"], out


def test_af_hostname_lets_the_daemon_resolve_and_verify_the_name(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    port = api.tls_server("echo", pki.server("good_localhost"))
    out = probe(probe_binary(tmp_path), "socket", "hostname", "connect", "localhost", str(port), "gettext", "93",
                "socket", "hostname", "connect", "no-such-host.invalid", str(port), "gettext", "100", env=api.env)
    _ok(out[1])
    assert out[2][3] == "localhost"
    assert out[4][:3] == ["connect", "-1", "EHOSTUNREACH"] and out[5][3], out


def test_errnos_of_the_table_a_client_meets(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    binary = probe_binary(tmp_path)
    good = api.tls_server("echo", pki.server("good_localhost"))
    expired = api.tls_server("echo", pki.server("expired"))
    hold = api.tls_server("hold", None)
    refused = free_port()
    out = probe(binary,
                "socket", "inet", "connect", "127.0.0.1", str(refused),                      # ECONNREFUSED
                "socket", "inet", "settext", "85", "backend.test", "connect", "127.0.0.1", str(expired),
                "gettext", "100",                                                           # EPROTO + reason
                "socket", "inet", "setint", "111", "769",                                   # EPERM (TLS 1.0)
                "setint", "108", "5",                                                       # EINVAL
                "setint", "999", "1",                                                       # ENOPROTOOPT
                "socket", "inet", "bind", "127.0.0.1", "0", "connect", "127.0.0.1", str(good),  # EOPNOTSUPP
                "socket", "inet", "nonblock", "connect", "127.0.0.1", str(hold),            # EINPROGRESS
                "connect", "127.0.0.1", str(hold),                                          # EALREADY
                "listen",                                                                   # EINVAL
                env=api.env)
    codes = [(row[0], row[2]) for row in out if row[0] != "socket"]
    assert codes == [("connect", "ECONNREFUSED"), ("settext", "0"), ("connect", "EPROTO"), ("gettext", "0"),
                     ("setint", "EPERM"), ("setint", "EINVAL"), ("setint", "ENOPROTOOPT"), ("bind", "0"),
                     ("connect", "EOPNOTSUPP"), ("connect", "EINPROGRESS"), ("connect", "EALREADY"),
                     ("listen", "EINVAL")], out
    reason = [row for row in out if row[0] == "gettext"][0][3]
    assert reason.startswith("verify-failed") and "expired" in reason, reason


def test_a_handshake_that_never_finishes_times_out(api_quick_timeouts: ApiDaemon, tmp_path: Path) -> None:
    hold = api_quick_timeouts.tls_server("hold", None)
    out = probe(probe_binary(tmp_path), "socket", "inet", "connect", "127.0.0.1", str(hold), "gettext", "100",
                env=api_quick_timeouts.env)
    assert out[1][:3] == ["connect", "-1", "ETIMEDOUT"] and out[2][3], out


def test_truncation_and_reset_reach_the_program_as_econnreset(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    binary = probe_binary(tmp_path)
    for mode in ("truncate", "reset"):
        port = api.tls_server(mode, pki.server("good_localhost"))
        out = probe(binary, "socket", "inet", "settext", "85", "localhost", "connect", "127.0.0.1", str(port),
                    "send", "request\n", "recvall", env=api.env)
        assert out[-1][:3] == ["recvall", "1000", "ECONNRESET"], (mode, out)  # every byte, then never a clean EOF


def test_non_blocking_connect_reports_through_writability_and_so_error(api: ApiDaemon, pki: PKI,
                                                                       tmp_path: Path) -> None:
    binary = probe_binary(tmp_path)
    good = api.tls_server("echo", pki.server("good_localhost"))
    bad = api.tls_server("echo", pki.server("wrong_host"))
    out = probe(binary, "socket", "inet", "nonblock", "settext", "85", "localhost",
                "connect", "127.0.0.1", str(good), "wait-out", "soerror", "connect", "127.0.0.1", str(good),
                "connect", "127.0.0.1", str(good), "peer", env=api.env)
    assert out[2][:3] == ["connect", "-1", "EINPROGRESS"] and out[3][3] == "OUT" and out[4][3] == "0", out
    # As Linux answers for TCP: 0 the first time after success, then EISCONN.
    assert out[5][:3] == ["connect", "0", "0"] and out[6][:3] == ["connect", "-1", "EISCONN"], out
    assert out[7][3] == f"127.0.0.1:{good}", out
    out = probe(binary, "socket", "inet", "nonblock", "settext", "85", "localhost",
                "connect", "127.0.0.1", str(bad), "wait-out", "soerror", "soerror", "gettext", "100", env=api.env)
    assert out[2][2] == "EINPROGRESS" and "OUT" in out[3][3], out  # the program wakes as for TCP
    assert out[4][3] == "EPROTO" and out[5][3] == "0", out  # the attempt's errno once, as the kernel's SO_ERROR
    assert "verify-failed" in out[6][3], out
    out = probe(binary, "socket", "inet", "nonblock", "settext", "85", "localhost",
                "connect", "127.0.0.1", str(bad), "wait-out", "connect", "127.0.0.1", str(bad), env=api.env)
    assert out[4][:3] == ["connect", "-1", "EPROTO"], out  # or through connect(), once


def test_edge_triggered_epoll_client_registered_before_connect(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    port = api.tls_server("http", pki.server("good_localhost"))
    binary = compile_c(EXAMPLES / "epoll_client_ssa.c", tmp_path)
    r = run([str(binary), "localhost", str(port)], env=api.env)
    assert r.returncode == 0, r.stderr
    assert "connected after 1 wake-up(s)" in r.stderr and "end of response" in r.stderr, r.stderr
    assert r.stdout.endswith("hello from the TLS server\n")


def _established_to_list(port: int) -> list[str]:
    return run(["ss", "-Htn", "state", "established", f"dport = :{port}"]).stdout.splitlines()


def _established_to(port: int) -> bool:
    return bool(_established_to_list(port))


def test_the_daemon_going_away_mid_connect_aborts_and_then_refuses(pki: PKI, tmp_path: Path) -> None:
    daemon = ApiDaemon(tmp_path / "daemon", pki).start()
    pending = None
    try:
        hold = daemon.tls_server("hold", None)
        binary = probe_binary(tmp_path)
        pending = subprocess.Popen([str(binary), "socket", "inet", "connect", "127.0.0.1", str(hold),
                                    "gettext", "100"], env=daemon.env, stdout=subprocess.PIPE, text=True)
        assert poll(lambda: _established_to(hold), 20), "the daemon never reached the peer"
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        out, _ = pending.communicate(timeout=60)
        rows = [line.split(" ", 3) for line in out.splitlines()]
        assert rows[1][:3] == ["connect", "-1", "ECONNABORTED"], rows
        daemon.proc.wait(20)
        after = probe(binary, "socket", "inet", "connect", "127.0.0.1", str(hold), env=daemon.env)
        assert after[1][2] in ("ECONNREFUSED", "ENOENT"), after
    finally:
        if pending is not None:
            stop(pending)
        daemon.stop()


def test_a_stopping_daemon_refuses_new_connects_with_eshutdown(pki: PKI, tmp_path: Path) -> None:
    daemon = ApiDaemon(tmp_path / "daemon", pki, extra="[daemon]\ndrain_timeout = 60\n").start()
    holder = asking = None
    go = tmp_path / "go"
    try:
        echo = daemon.tls_server("echo", pki.server("good_localhost"))
        binary = probe_binary(tmp_path)
        # A live session keeps the drain going while the new connect arrives.
        holder = subprocess.Popen([str(binary), "socket", "inet", "settext", "85", "localhost", "connect",
                                   "127.0.0.1", str(echo), "waitfile", str(tmp_path / "never")], env=daemon.env,
                                  stdout=subprocess.DEVNULL)
        # A program whose control connection is open (it set an option) and connects once the drain began.
        asking = subprocess.Popen([str(binary), "socket", "inet", "settext", "85", "localhost", "waitfile", str(go),
                                   "connect", "127.0.0.1", str(echo), "gettext", "100"], env=daemon.env,
                                  stdout=subprocess.PIPE, text=True)
        assert poll(lambda: len(_established_to_list(echo)) >= 1, 20)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        assert poll(lambda: "draining" in daemon.log.read_text(), 20)
        go.touch()
        out, _ = asking.communicate(timeout=60)
        rows = [line.split(" ", 3) for line in out.splitlines()]
        assert rows[1][:3] == ["settext", "0", "0"] and rows[3][:3] == ["connect", "-1", "ESHUTDOWN"], rows
        assert "stopping" in rows[4][3], rows
    finally:
        for p in (holder, asking):
            if p is not None:
                stop(p)
        daemon.stop()


def test_a_session_cut_by_the_daemon_stopping_is_a_reset(pki: PKI, tmp_path: Path) -> None:
    daemon = ApiDaemon(tmp_path / "daemon", pki, extra="[daemon]\ndrain_timeout = 1\n").start()
    reader = None
    try:
        echo = daemon.tls_server("echo", pki.server("good_localhost"))
        reader = subprocess.Popen([str(probe_binary(tmp_path)), "socket", "inet", "settext", "85", "localhost",
                                   "connect", "127.0.0.1", str(echo), "send", "before the stop\n", "recvall"],
                                  env=daemon.env, stdout=subprocess.PIPE, text=True)
        assert poll(lambda: _established_to(echo), 20)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)  # the drain ends after 1 s and resets what is left
        out, _ = reader.communicate(timeout=60)
        rows = [line.split(" ", 3) for line in out.splitlines()]
        assert rows[-1][:4] == ["recvall", "16", "ECONNRESET", "before the stop|"], rows  # never a clean EOF
    finally:
        if reader is not None:
            stop(reader)
        daemon.stop()


def test_a_signal_interrupts_a_blocking_connect_with_eintr_and_the_attempt_goes_on(api: ApiDaemon, pki: PKI,
                                                                                    tmp_path: Path) -> None:
    """alarm() as a connect timeout: the handler runs while the daemon is still waiting for a
    server that starts its handshake 2 s late, and connect() fails with EINTR as the kernel's
    does (it used to wait for the result whatever the signal); the attempt goes on."""
    port = api.tls_server("echo", pki.server("good_localhost"), "--delay", "2")  # < handshake_timeout, 3
    binary = compile_c(PEERS / "connect_eintr.c", tmp_path)
    r = run([str(binary), str(port)], env=api.env, timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.splitlines() == ["connect -1 EINTR", "poll 1 so_error 0", "echo ping"], r.stdout
