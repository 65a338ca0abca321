"""C servers through the daemon (protocol 2), with real clients: curl against the pre-fork and
threaded examples, openssl s_client choosing between the echo server's two chains by SNI, a
Python ssl client that leaves without close_notify (the server goes on), a stranger on the
listener's loopback port (reset, never delivered), and the STARTTLS example against a Python
SMTP server."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.api_harness import ApiDaemon, free_port
from tests.clib import EXAMPLES, compile_c, probe_binary, run
from tests.lab import PEERS, stop, wait_for_text
from tests.pki import PKI


def _combined(creds: Any, path: Path) -> Path:
    path.write_bytes(Path(creds.chain).read_bytes() + Path(creds.key).read_bytes())
    return path


def _start(api: ApiDaemon, binary: Path, args: list[str], log: Path) -> subprocess.Popen[Any]:
    proc = api.spawn([str(binary), *args], log)
    wait_for_text(log, "listening", proc, 20)
    return proc


def _curl(pki: PKI, port: int, path: str = "/") -> subprocess.CompletedProcess[str]:
    return run(["curl", "-sS", "--cacert", str(pki.root_pem), "--resolve", f"localhost:{port}:127.0.0.1",
                f"https://localhost:{port}{path}"], timeout=60)


def test_prefork_server_serves_every_client_from_some_child(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    binary = compile_c(EXAMPLES / "prefork_server_ssa.c", tmp_path)
    port = free_port()
    server = _start(api, binary, [str(port), "4", str(_combined(pki.server("good_localhost"), tmp_path / "c.pem"))],
                    tmp_path / "prefork.log")
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: _curl(pki, port), range(12)))
        for r in answers:
            assert r.returncode == 0, r.stderr
            assert re.fullmatch(r"served by pid \d+\n", r.stdout), r.stdout
        pids = {r.stdout.split()[-1] for r in answers}
        assert 1 <= len(pids) <= 4 and str(server.pid) not in pids  # children answer, never the parent
    finally:
        stop(server)


def test_threaded_server_serves_concurrent_clients_intact(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    binary = compile_c(EXAMPLES / "threaded_server_ssa.c", tmp_path)
    port = free_port()
    server = _start(api, binary, [str(port), "4", str(_combined(pki.server("good_localhost"), tmp_path / "c.pem"))],
                    tmp_path / "threaded.log")
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _curl(pki, port), range(16)))
        for r in answers:
            assert r.returncode == 0 and re.fullmatch(r"served by thread [0-3]\n", r.stdout), (r.stdout, r.stderr)
    finally:
        stop(server)


def _subject(port: int, name: str, root: Path) -> str:
    """The common name of the certificate the server showed for SNI `name` (Python's ssl,
    verifying against the test root), after one echoed line."""
    ctx = ssl.create_default_context(cafile=str(root))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(f"line for {name}\n".encode())
        assert tls.recv(100) == f"echo: line for {name}\n".encode()
        subject = dict(item[0] for item in tls.getpeercert()["subject"])  # type: ignore[index]
        tls.unwrap()
    return str(subject["commonName"])


def test_echo_server_picks_the_chain_by_sni_and_survives_a_ragged_client(api: ApiDaemon, pki: PKI,
                                                                          tmp_path: Path) -> None:
    binary = compile_c(EXAMPLES / "echo_server_ssa.c", tmp_path)
    port = free_port()
    one = _combined(pki.server("good_localhost"), tmp_path / "localhost.pem")
    two = _combined(pki.server("good"), tmp_path / "backend.pem")
    log = tmp_path / "echo.log"
    server = _start(api, binary, [str(port), str(one), str(two)], log)
    try:
        assert _subject(port, "localhost", pki.root_pem) == "localhost"
        assert _subject(port, "backend.test", pki.root_pem) == "backend.test"
        # A Python ssl client that ends with a bare TCP FIN: the server reports the reset and goes on.
        ctx = ssl.create_default_context(cafile=str(pki.root_pem))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ragged\n")
            assert tls.recv(100) == b"echo: ragged\n"
            tls.shutdown(socket.SHUT_RDWR)  # the TCP connection ends, no close_notify
        wait_for_text(log, "client reset", server, 20)
        assert _subject(port, "localhost", pki.root_pem) == "localhost"
        # accept() gave the client's real address, not the daemon's loopback end.
        assert re.search(r"client 127\.0\.0\.1:\d+", log.read_text())
    finally:
        stop(server)


def _listener_ports(pid: int) -> set[int]:
    out = run(["ss", "-Hltnp"]).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if f"pid={pid}," in line}


def test_an_idle_stranger_on_the_loopback_listener_does_not_hold_up_verified_clients(api: ApiDaemon, pki: PKI,
                                                                                      tmp_path: Path) -> None:
    """Any local user can connect to the listener's loopback port.  A connection that sends
    nothing is not even handed to accept() (TCP_DEFER_ACCEPT), so the one acceptor serves the
    verified client first, and the stranger is still waiting (not reset) once it has."""
    binary = compile_c(EXAMPLES / "threaded_server_ssa.c", tmp_path)
    port = free_port()
    server = _start(api, binary, [str(port), "1", str(_combined(pki.server("good_localhost"), tmp_path / "c.pem"))],
                    tmp_path / "threaded.log")
    try:
        inner = _listener_ports(server.pid) - {port}
        assert len(inner) == 1, inner
        with socket.create_connection(("127.0.0.1", inner.pop()), timeout=30) as stranger:
            r = _curl(pki, port)
            assert r.returncode == 0 and r.stdout == "served by thread 0\n", r.stderr
            stranger.setblocking(False)
            try:
                data = stranger.recv(100)
            except BlockingIOError:
                data = b"still waiting"
            except ConnectionResetError:
                data = b"reset"
        assert data == b"still waiting", f"the stranger was taken (and reset) before the client: {data!r}"
    finally:
        stop(server)


def test_a_stranger_on_the_loopback_listener_is_reset_and_never_delivered(api: ApiDaemon, pki: PKI,
                                                                          tmp_path: Path) -> None:
    binary = compile_c(EXAMPLES / "threaded_server_ssa.c", tmp_path)
    port = free_port()
    server = _start(api, binary, [str(port), "1", str(_combined(pki.server("good_localhost"), tmp_path / "c.pem"))],
                    tmp_path / "threaded.log")
    try:
        inner = _listener_ports(server.pid) - {port}
        assert len(inner) == 1, inner  # N, on loopback; the daemon holds the public socket
        with socket.create_connection(("127.0.0.1", inner.pop()), timeout=30) as stranger:
            stranger.sendall(b"X" * 36 + b"GET / HTTP/1.0\r\n\r\n")
            try:
                data = stranger.recv(100)
            except ConnectionResetError:
                data = b"reset"
        assert data in (b"reset", b""), data  # never an answer from the program
        r = _curl(pki, port)
        assert r.returncode == 0 and r.stdout == "served by thread 0\n", r.stderr
    finally:
        stop(server)


def test_starttls_example_upgrades_its_socket(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    binary = compile_c(EXAMPLES / "smtp_starttls_client_ssa.c", tmp_path)
    creds = pki.server("good_localhost")
    port = free_port()
    log = tmp_path / "smtp.log"
    peer = api.spawn([sys.executable, str(PEERS / "starttls_server.py"), "--port", str(port),
                      "--cert", str(creds.chain), "--key", str(creds.key)], log)
    wait_for_text(log, "READY", peer, 15)
    r = run([str(binary), "localhost", str(port)], env=api.env)
    assert r.returncode == 0 and r.stdout == "sent\n", r.stderr
    peer.wait(15)
    seen = json.loads(log.read_text().splitlines()[-1])
    assert seen["version"] == "TLSv1.3" and "sent over STARTTLS" in seen["data"]
    assert seen["commands"][:3] == ["EHLO", "MAIL", "RCPT"]
    # A server that agrees to STARTTLS with a certificate for another name: no plaintext afterwards.
    wrong = pki.server("good")
    port = free_port()
    log = tmp_path / "smtp-wrong.log"
    peer = api.spawn([sys.executable, str(PEERS / "starttls_server.py"), "--port", str(port),
                      "--cert", str(wrong.chain), "--key", str(wrong.key)], log)
    wait_for_text(log, "READY", peer, 15)
    r = run([str(binary), "localhost", str(port)], env=api.env)
    assert r.returncode == 1 and r.stdout == "" and "STARTTLS: Protocol error" in r.stderr, r


def test_a_server_socket_asks_for_client_certificates_and_answers_for_the_client(api: ApiDaemon, pki: PKI,
                                                                                tmp_path: Path) -> None:
    """The probe as a server: TLS_REQUEST_PEER_AUTH with the client CA, accept4 with flags, and
    the accepted socket's getsockopt and getpeername answering for curl's session."""
    creds = pki.server("good_localhost")
    chain = tmp_path / "server.pem"
    chain.write_bytes(Path(creds.chain).read_bytes() + Path(creds.key).read_bytes())
    port = free_port()
    log = tmp_path / "probe.log"
    binary = probe_binary(tmp_path)
    server = api.spawn([str(binary), "socket", "inet", "nonblock", "settext", "88", str(chain), "bind", "127.0.0.1",
                        str(port), "listen", "accept", "close"], log)
    server.wait(30)
    rows = [line.split(" ", 3) for line in log.read_text().splitlines()]
    assert rows[3][:3] == ["listen", "0", "0"] and rows[4][:3] == ["accept", "-1", "EAGAIN"], rows  # nobody yet
    client = pki.client("client_good")
    port = free_port()
    log = tmp_path / "probe-blocking.log"
    server = api.spawn([str(binary), "socket", "inet", "settext", "88", str(chain), "setint", "94", "1",
                        "settext", "87", str(pki.client_ca_pem), "bind", "127.0.0.1", str(port), "listen",
                        "accept", "nonblock", "gettext", "93", "getint", "113", "peer",
                        "send", "HTTP/1.0 200 OK\r\n\r\nfrom the C server\n", "shutwr", "sleep", "100", "close"], log)
    wait_for_text(log, "listen 0 0", server, 20)
    r = run(["curl", "-sS", "--cacert", str(pki.root_pem), "--cert", str(client.chain), "--key", str(client.key),
             "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/"], timeout=60)
    assert r.returncode == 0 and r.stdout == "from the C server\n", r.stderr
    server.wait(30)
    rows = [line.split(" ", 3) for line in log.read_text().splitlines()]
    accepted = rows[6]
    assert accepted[:3] == ["accept", "0", "0"] and accepted[3].startswith("127.0.0.1:"), rows
    assert rows[7][:3] == ["gettext", "0", "0"] and "client.test" in rows[7][3], rows  # the client's SANs
    assert rows[8][3] == str(0x0304) and rows[9][3] == accepted[3], rows  # peer: the real client
