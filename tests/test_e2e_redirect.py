"""Redirection without iptables (ROUTES, REDIRECT): a plain TCP socket handed to a real daemon
with `ssaproxy.client.redirect`, exactly as the C library does under `ssaproxy run`, against real
TLS servers (Python's ssl, openssl s_server) and plaintext peers on loopback.  No root, no
iptables rule: the outbound face applies the same routes as to redirected traffic."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssaproxy.addresses import host_port, plain_address
from ssaproxy.client import redirect as r
from ssaproxy.proto.connection import Redirect
from tests.api_harness import ApiDaemon, free_port
from tests.lab import PEERS, poll, wait_for_text
from tests.pki import PKI

LOCAL = "127.0.0.1"


class Lab:
    """The daemon, its peers, and the ports of each route."""

    def __init__(self, api: ApiDaemon, ports: dict[str, int]) -> None:
        self.api = api
        self.ports = ports
        self.socket = api.socket

    def conns(self) -> list[str]:
        return [x for x in self.api.log.read_text(errors="replace").splitlines() if " conn " in x]

    def wait_conn(self, text: str, timeout: float = 10) -> str:
        found = poll(lambda: [x for x in self.conns() if text in x], timeout)
        assert found, "no conn record with " + repr(text) + ":\n" + "\n".join(self.conns()[-10:])
        return found[-1]

    def open(self, route: str, *, name: str | None = None) -> socket.socket:
        """A plain socket connected through REDIRECT to `route`'s port."""
        s = socket.socket()
        s.settimeout(10)
        try:
            assert r.redirect(s, (LOCAL, self.ports[route]), name=name, path=self.socket)
        except BaseException:
            s.close()
            raise
        return s


@pytest.fixture(scope="module")
def lab(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    api = ApiDaemon(tmp_path_factory.mktemp("redirect"), pki, extra="max_sessions_per_uid = 3\n")
    try:
        good, untrusted = pki.server("good"), pki.server("untrusted_root")
        ports = {
            "echo": api.tls_server("echo", good),
            "rev": api.s_server(good, "-rev", "-quiet")[0],
            "web": api.tls_server("http", good),
            "raw": api.tls_server("plainecho", None),
            "reject": free_port(),
            "untrusted": api.tls_server("echo", untrusted),
            "unrouted": api.tls_server("plainecho", None),
        }
        routes = [("echo", 'hostname = "backend.test"'), ("rev", 'hostname_from = "resolved"'),
                  ("web", 'hostname_from = "http-host"'), ("raw", 'action = "passthrough"'),
                  ("reject", 'action = "reject"'), ("untrusted", 'hostname = "backend.test"')]
        text = f'[outbound]\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n'
        for name, setting in routes:
            text += (f'[[outbound.route]]\nname = "{name}"\ndestination = "127.0.0.1/32"\n'
                     f"ports = [{ports[name]}]\n{setting}\n")
        # IPv6: an echo server on ::1 behind a route of its own (the outbound face needs a tcp6 listener).
        six = free_port()
        log6 = api.directory / "tls-echo6.log"
        api.procs.append(p6 := subprocess.Popen(
            [sys.executable, str(PEERS / "tls_server.py"), "--host", "::1", "--port", str(six), "--mode", "echo",
             "--cert", str(good.chain), "--key", str(good.key)], stdout=log6.open("ab"), stderr=subprocess.STDOUT))
        wait_for_text(log6, "READY", p6, 15)
        ports["six"] = six
        text = text.replace('"\n', f'", \'tcp6:{free_port()}:interface=\\:\\:1\']\n', 1).replace(
            "listen = ", "listen = [", 1)
        text += (f'[[outbound.route]]\nname = "six"\ndestination = "::1/128"\nports = [{six}]\n'
                 'hostname = "backend.test"\n')
        api.config.write_text(api.config.read_text() + text)
        api.start()
        yield Lab(api, ports)
    finally:
        api.stop()


def _read_all(s: socket.socket, limit: int = 1 << 20) -> bytes:
    out = b""
    while len(out) < limit:
        data = s.recv(65536)
        if not data:
            break
        out += data
    return out


def test_routes_lists_the_outbound_routes_in_order(lab: Lab) -> None:
    table = r.routes(lab.socket)
    p = lab.ports
    assert [(x.action, str(x.network), x.port) for x in table] == [
        ("upgrade", "127.0.0.1/32", p["echo"]), ("upgrade", "127.0.0.1/32", p["rev"]),
        ("upgrade", "127.0.0.1/32", p["web"]), ("passthrough", "127.0.0.1/32", p["raw"]),
        ("reject", "127.0.0.1/32", p["reject"]), ("upgrade", "127.0.0.1/32", p["untrusted"]),
        ("upgrade", "::1/128", p["six"])]
    assert r.match(table, "::ffff:127.0.0.1", p["echo"]) == table[0]  # IPv4-mapped matches the IPv4 lines
    assert r.match(table, LOCAL, p["unrouted"]) is None


def test_a_plain_socket_gets_verified_tls_through_a_fixed_hostname_route(lab: Lab) -> None:
    with lab.open("echo") as s:
        fd = s.fileno()
        s.sendall(b"hello through REDIRECT\n")
        s.shutdown(socket.SHUT_WR)
        assert _read_all(s) == b"hello through REDIRECT\n"  # the Python ssl server echoed, then close_notify
        assert s.fileno() == fd
        here = s.getsockname()
    record = lab.wait_conn(f"client={here[0]}:{here[1]} ")
    assert " closed: " in record and f"orig_dst=127.0.0.1:{lab.ports['echo']}" in record
    assert "route=echo action=upgrade hostname=backend.test" in record and "verified=True" in record
    # The record names the program, as for any API session.
    assert "via=api" in record and "uid=0 " in record and "exe=" in record and "pid=" in record


def test_resolved_route_verifies_the_name_the_program_resolved(lab: Lab) -> None:
    with lab.open("rev", name="backend.test") as s:
        s.sendall(b"abc\n")
        got = b""
        while not got.endswith(b"\n") and len(got) < 100:
            data = s.recv(100)
            assert data, "the connection ended before openssl's answer"
            got += data
        assert got == b"cba\n"  # openssl s_server -rev answered over TLS
        here = s.getsockname()
    record = lab.wait_conn(f"client={here[0]}:{here[1]} ")
    assert "hostname=backend.test" in record and "verified=True" in record and "resolved=backend.test" in record


def test_resolved_route_without_a_name_is_refused_before_anything_starts(lab: Lab) -> None:
    with socket.socket() as s:
        with pytest.raises(ConnectionRefusedError) as e:
            r.redirect(s, (LOCAL, lab.ports["rev"]), path=lab.socket)
        assert "no name" in str(e.value)
        # Not handed over: the socket is as unconnected as before (a second try may still connect).
        with pytest.raises(OSError, match="not connected") as nc:
            s.getpeername()
        assert nc.value.errno == errno.ENOTCONN


def _send_then_read(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    return _read_all(s)


def test_a_wrong_resolved_name_fails_verification_and_the_program_reads_a_reset(lab: Lab) -> None:
    with lab.open("rev", name="other.test") as s:
        with pytest.raises(ConnectionResetError):  # the reset may come before our write, or after
            _send_then_read(s, b"secret\n")  # never a byte, never a clean end
        here = s.getsockname()
    record = lab.wait_conn(f"client={here[0]}:{here[1]} ")
    assert " verify-failed: " in record and "hostname=other.test" in record


def test_http_host_route_takes_the_name_from_the_request(lab: Lab) -> None:
    with lab.open("web") as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: backend.test\r\nConnection: close\r\n\r\n")
        answer = _read_all(s)
        here = s.getsockname()
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"hello from the TLS server\n")
    record = lab.wait_conn(f"client={here[0]}:{here[1]} ")
    assert "route=web action=upgrade hostname=backend.test" in record and "verified=True" in record
    server = [json.loads(x) for x in _server_log(lab, "http").splitlines() if x.startswith("{")]
    assert server and server[-1]["sni"] == "backend.test" and "Host: backend.test" in server[-1]["request"]


def _server_log(lab: Lab, mode: str) -> str:
    return "".join(p.read_text(errors="replace") for p in Path(lab.api.directory).glob(f"tls-{mode}-*.log"))


def test_passthrough_route_forwards_plaintext(lab: Lab) -> None:
    with lab.open("raw") as s:
        s.sendall(b"as it is")
        s.shutdown(socket.SHUT_WR)
        assert _read_all(s) == b"as it is"
        here = s.getsockname()
    record = lab.wait_conn(f"client={here[0]}:{here[1]} ")
    assert "action=passthrough" in record and " closed: " in record


def test_reject_route_resets_the_program(lab: Lab) -> None:
    with lab.open("reject") as s:
        here = s.getsockname()
        try:
            s.sendall(b"x")
            _read_all(s)
        except OSError as e:
            ended: OSError | None = e
        else:
            ended = None
        assert isinstance(ended, ConnectionResetError)  # a reset, never a clean end
    assert " rejected: " in lab.wait_conn(f"client={here[0]}:{here[1]} ")


def test_verification_failure_is_a_reset_never_data(lab: Lab) -> None:
    with lab.open("untrusted") as s:
        s.sendall(b"secret\n")
        with pytest.raises(ConnectionResetError):
            _read_all(s)
        here = s.getsockname()
    record = lab.wait_conn(f"client={here[0]}:{here[1]} ")
    assert " verify-failed: " in record and "verified=False" in record
    assert "secret" not in _server_log(lab, "echo")


def test_an_unrouted_destination_is_enoent_and_connects_directly(lab: Lab) -> None:
    port = lab.ports["unrouted"]
    with socket.socket() as s:
        assert r.redirect(s, (LOCAL, port), path=lab.socket) is False
        with pytest.raises(OSError, match="not connected"):
            s.getpeername()  # untouched
    with socket.socket() as s:  # the library's connect: the daemon's table says no route, so plain TCP
        s.settimeout(10)
        r.connect(s, (LOCAL, port), path=lab.socket)
        s.sendall(b"direct")
        s.shutdown(socket.SHUT_WR)
        assert _read_all(s) == b"direct"


def test_connect_refuses_a_routed_destination_when_the_daemon_is_absent(lab: Lab, tmp_path: Path) -> None:
    table = r.routes(lab.socket)
    with socket.socket() as s, pytest.raises(ConnectionRefusedError) as e:
        r.connect(s, (LOCAL, lab.ports["echo"]), table=table, path=str(tmp_path / "nobody.sock"))
    assert "nobody.sock" in str(e.value)


@pytest.mark.parametrize(("family", "kind"), [(socket.AF_INET, socket.SOCK_DGRAM),
                                              (socket.AF_UNIX, socket.SOCK_STREAM)])
def test_redirect_refuses_a_socket_that_is_not_tcp(lab: Lab, family: int, kind: int) -> None:
    with socket.socket(family, kind) as s, pytest.raises(OSError, match="needs a TCP socket") as e:
        r.redirect(s, (LOCAL, lab.ports["echo"]), path=lab.socket)
    assert e.value.errno == errno.EINVAL


def test_redirect_refuses_a_connected_or_listening_socket(lab: Lab) -> None:
    with socket.socket() as listener, socket.socket() as s:
        listener.bind((LOCAL, 0))
        listener.listen(1)
        s.connect(listener.getsockname())
        with pytest.raises(OSError, match="connected already") as e:
            r.redirect(s, (LOCAL, lab.ports["echo"]), path=lab.socket)
        assert e.value.errno == errno.EISCONN
        with pytest.raises(OSError, match="is listening") as e:
            r.redirect(listener, (LOCAL, lab.ports["echo"]), path=lab.socket)
        assert e.value.errno == errno.EINVAL


def test_redirected_connections_count_under_the_uids_session_share(lab: Lab) -> None:
    held = [lab.open("echo") for _ in range(3)]  # max_sessions_per_uid = 3
    try:
        with socket.socket() as s, pytest.raises(OSError, match="too many TLS sessions") as e:
            r.redirect(s, (LOCAL, lab.ports["echo"]), path=lab.socket)
        assert e.value.errno == errno.EAGAIN
    finally:
        for s in held:
            s.close()
    # The connections' ends give the slots back.
    def again() -> bool:
        with socket.socket() as s:
            try:
                r.redirect(s, (LOCAL, lab.ports["echo"]), path=lab.socket)
            except BlockingIOError:
                return False
            return True
    assert poll(again, 10)


@pytest.mark.parametrize("blocking", [True, False])
def test_the_programs_blocking_mode_is_kept(lab: Lab, blocking: bool) -> None:
    # O_NONBLOCK lives on the file the program shares with the daemon: the library's non-blocking
    # park must not leave a blocking program with a non-blocking socket (or the other way round).
    with socket.socket() as s:
        s.setblocking(blocking)
        assert r.redirect(s, (LOCAL, lab.ports["raw"]), path=lab.socket)
        assert os.get_blocking(s.fileno()) is blocking
        s.setblocking(True)
        s.settimeout(10)
        s.sendall(b"mode")
        s.shutdown(socket.SHUT_WR)
        assert _read_all(s) == b"mode"


@pytest.mark.netns
def test_a_program_in_another_network_namespace_gets_exdev(lab: Lab) -> None:
    # The daemon's loopback is not the program's there: parking could never complete the socket.
    code = ("import errno, socket, sys\nfrom ssaproxy.client import redirect as r\n"
            "s = socket.socket()\n"
            "try:\n    r.redirect(s, ('127.0.0.1', int(sys.argv[1])), path=sys.argv[2])\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno], e.strerror)\n")
    out = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", code, str(lab.ports["echo"]), lab.socket],
                         capture_output=True, text=True, timeout=30, env=lab.api.env)
    assert out.stdout.startswith("EXDEV the program is in another network namespace"), out.stderr


def test_a_reload_changes_what_routes_and_redirect_see(pki: PKI, tmp_path: Path) -> None:
    # Both a reload that keeps the API's generation and one that replaces it (an [api] key
    # changed) hand over to the outbound face with the new routes.
    api = ApiDaemon(tmp_path, pki)
    try:
        echo = api.tls_server("plainecho", None)
        base = api.config.read_text()
        outbound = f'[outbound]\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n'
        route = f'[[outbound.route]]\nname = "raw"\ndestination = "127.0.0.1/32"\nports = [{echo}]\n' \
                'action = "passthrough"\n'
        api.config.write_text(base + outbound)
        api.start()
        assert r.routes(api.socket) == ()
        with socket.socket() as s:
            assert r.redirect(s, (LOCAL, echo), path=api.socket) is False  # ENOENT: no route yet
        for n, extra in enumerate(("", "idle_timeout = 30\n")):
            api.config.write_text(base + extra + outbound + route)
            assert api.proc is not None
            api.proc.send_signal(signal.SIGHUP)
            assert poll(lambda n=n: api.log.read_text().count("reloaded (SIGHUP)") > n, 15), api.log.read_text()
            assert [x.port for x in r.routes(api.socket)] == [echo]
            with socket.socket() as s:
                s.settimeout(10)
                assert r.redirect(s, (LOCAL, echo), path=api.socket)
                s.sendall(b"after reload")
                s.shutdown(socket.SHUT_WR)
                assert _read_all(s) == b"after reload"
        assert "api=changed" in api.log.read_text()  # the second reload made a new API generation
    finally:
        api.stop()


@pytest.mark.parametrize(("host", "route"), [("::1", "six"), ("::ffff:127.0.0.1", "echo")])
def test_an_ipv6_socket_is_handed_over_too(lab: Lab, host: str, route: str) -> None:
    # A dual-stack socket to an IPv4-mapped address takes the IPv4 route, as the kernel would route it.
    with socket.socket(socket.AF_INET6) as s:
        s.settimeout(10)
        assert r.redirect(s, (host, lab.ports[route]), path=lab.socket)
        s.sendall(b"over six\n")
        s.shutdown(socket.SHUT_WR)
        assert _read_all(s) == b"over six\n"
        here = s.getsockname()
    record = lab.wait_conn(f"client={host_port(plain_address(here[0]), here[1])} ")
    assert f"route={route} action=upgrade" in record and "verified=True" in record


def test_the_programs_reset_on_close_is_kept(lab: Lab) -> None:
    # SO_LINGER is the program's (a shared socket): the daemon turns off only a lingering close
    # that could make its own close wait, never a program's reset-on-close.
    linger = struct.pack("ii", 1, 0)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        assert r.redirect(s, (LOCAL, lab.ports["raw"]), path=lab.socket)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) == linger


def test_a_draining_daemon_refuses_redirect_and_lets_handed_over_connections_finish(pki: PKI,
                                                                                    tmp_path: Path) -> None:
    api = ApiDaemon(tmp_path, pki)
    try:
        echo = api.tls_server("plainecho", None)
        api.config.write_text(api.config.read_text() + "[daemon]\ndrain_timeout = 20\n" +
                              f'[outbound]\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n'
                              f'[[outbound.route]]\nname = "raw"\ndestination = "127.0.0.1/32"\nports = [{echo}]\n'
                              'action = "passthrough"\n')
        api.start()
        held = socket.socket()
        held.settimeout(10)
        assert r.redirect(held, (LOCAL, echo), path=api.socket)
        with r._session(api.socket) as session, socket.socket() as late:  # greeted before the stop
            assert api.proc is not None
            api.proc.send_signal(signal.SIGTERM)
            assert poll(lambda: "draining 1 live connections (outbound=1" in api.log.read_text(), 10), \
                api.log.read_text()[-2000:]
            with pytest.raises(OSError, match="the daemon is stopping") as e:
                session.request(Redirect(LOCAL, echo, 4), (late.fileno(),))
            assert e.value.errno == errno.ESHUTDOWN
        # The connection handed over before the stop is served to its end, then the drain ends.
        held.sendall(b"still served")
        held.shutdown(socket.SHUT_WR)
        assert _read_all(held) == b"still served"
        held.close()
        assert api.proc.wait(20) == -signal.SIGTERM  # twistd re-raises the signal, once the drain ended
        assert "drain ended (every connection finished)" in api.log.read_text()
    finally:
        api.stop()


def test_a_socket_numbered_above_1023_is_handed_over(lab: Lab) -> None:
    """The wait for the completed socket polls: select() cannot take descriptor 1024 or above
    (it raised ValueError after the daemon had already taken the socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), max(hard, 2048)))  # root may raise both
    try:
        plain = socket.socket()
        high = os.dup2(plain.fileno(), 1500)
        plain.close()
        with socket.socket(fileno=high) as s:
            s.settimeout(10)
            assert r.redirect(s, (LOCAL, lab.ports["echo"]), path=lab.socket)
            s.sendall(b"numbered high\n")
            s.shutdown(socket.SHUT_WR)
            assert _read_all(s) == b"numbered high\n"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
