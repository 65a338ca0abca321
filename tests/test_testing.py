"""ssaproxy.testing.FakeDaemon: the client library against the in-memory fake daemon, in this
process (no twistd, no root, no certificates).  These cover the library's own behaviour —
errno mapping, wrong-state calls, non-blocking connect, the fd that never changes, half-close
and reset on the carrier — which otherwise only the twistd tests reach."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import selectors
import socket
import struct
import subprocess
import sys
import threading
from typing import Callable, Iterator

import pytest

import ssaproxy
from ssaproxy.proto import wire
from ssaproxy.testing import FakeDaemon


def _server(handler: Callable[[socket.socket], None]) -> tuple[int, socket.socket]:
    """A plain TCP server on loopback; `handler` runs per connection in a thread."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1]), listener


def _stop(listener: socket.socket) -> None:
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close() alone would not)
    listener.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _reset_after_hello(conn: socket.socket) -> None:
    conn.sendall(b"hello")
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.recv(1)  # after the program's first byte, so the bytes above are surely there
    conn.close()


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    with FakeDaemon() as daemon:
        yield daemon


@pytest.fixture
def echo_port() -> Iterator[int]:
    port, listener = _server(_echo)
    yield port
    _stop(listener)


def test_connect_relays_plaintext_on_the_same_fd(fake: FakeDaemon, echo_port: int) -> None:
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    fd = s.fileno()
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
    s.connect(("127.0.0.1", echo_port))
    assert s.fileno() == fd
    s.sendall(b"ping")
    assert s.recv(10) == b"ping"
    assert s.getpeername() == ("127.0.0.1", echo_port)
    assert s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_SERVER_NAME) == b"backend.test"
    assert s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_VERSION_CONN) == 0  # no TLS: the fake says so
    s.shutdown(socket.SHUT_WR)
    assert s.recv(10) == b""  # the server's FIN after ours, as EOF
    s.close()
    assert [(a.host, a.port, a.outcome) for a in fake.connections] == [("127.0.0.1", echo_port, "connected")]
    assert fake.connections[0].options[ssaproxy.TLS_HOSTNAME] == b"backend.test"


def test_outcomes_become_errnos_and_tls_error(fake: FakeDaemon, echo_port: int) -> None:
    fake.outcomes[("127.0.0.1", echo_port)] = "verify-failed"
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    with pytest.raises(OSError, match="verify-failed: fake") as e:
        s.connect(("127.0.0.1", echo_port))
    assert e.value.errno == errno.EPROTO
    assert s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR) == b"verify-failed: fake"
    with pytest.raises(OSError, match="verify-failed: fake") as e:  # ENOTCONN carries the failed attempt's text
        s.recv(1)
    assert e.value.errno == errno.ENOTCONN
    del fake.outcomes[("127.0.0.1", echo_port)]
    s.connect(("127.0.0.1", echo_port))  # a new attempt after a failed one
    s.sendall(b"again")
    assert s.recv(10) == b"again"
    s.close()


def test_refused_target_is_ECONNREFUSED(fake: FakeDaemon) -> None:
    with socket.socket() as bound:  # bound, not listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
        with pytest.raises(ConnectionRefusedError):
            s.connect(bound.getsockname())
        s.close()
    assert fake.connections[-1].outcome == "refused"


def test_wrong_state_calls_and_options(fake: FakeDaemon, echo_port: int) -> None:
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    for number in (ssaproxy.TLS_SESSION_TTL, 999, ssaproxy.TLS_CHOSEN_CIPHER):
        with pytest.raises(OSError, match=f"IPPROTO_TLS option {number}: ") as e:
            s.setsockopt(ssaproxy.IPPROTO_TLS, number, b"x")
        assert e.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError, match="TLS_CHOSEN_CIPHER has a value once connected") as e:
        s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CHOSEN_CIPHER)
    assert e.value.errno == errno.ENOTCONN
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ALPN, b"h2")
    assert s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ALPN) == b"h2"  # a round trip to the fake
    s.connect(("127.0.0.1", echo_port))
    with pytest.raises(OSError, match=r"options are set before connect/listen \(connected\)") as e:
        s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ALPN, b"h2")
    assert e.value.errno == errno.EISCONN
    with pytest.raises(OSError, match=r"connect\(\) while connected") as e:
        s.connect(("127.0.0.1", echo_port))
    assert e.value.errno == errno.EISCONN
    with pytest.raises(OSError, match=r"listen\(\) while connected") as e:
        s.listen()
    assert e.value.errno == errno.EINVAL
    s.close()


def test_nonblocking_connect_reports_through_writability(fake: FakeDaemon, echo_port: int) -> None:
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setblocking(False)
    assert s.connect_ex(("127.0.0.1", echo_port)) == errno.EINPROGRESS
    with selectors.DefaultSelector() as sel:
        sel.register(s, selectors.EVENT_WRITE)
        assert sel.select(5)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    assert s.connect_ex(("127.0.0.1", echo_port)) == 0  # as TCP: 0 once, then EISCONN
    assert s.connect_ex(("127.0.0.1", echo_port)) == errno.EISCONN
    s.sendall(b"x")
    s.setblocking(True)
    assert s.recv(1) == b"x"
    s.close()


def test_an_edge_triggered_registration_and_a_dup_made_before_connect_stay_valid(fake: FakeDaemon,
                                                                                 echo_port: int) -> None:
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setblocking(False)
    copy = os.dup(s.fileno())
    edge = select.epoll()
    try:
        edge.register(copy, select.EPOLLOUT | select.EPOLLET)
        edge.poll(0)  # an unconnected socket's one OUT|HUP
        assert s.connect_ex(("127.0.0.1", echo_port)) == errno.EINPROGRESS
        events = []
        for _ in range(40):  # bounded: 6 s, the completion is due in milliseconds
            events += edge.poll(0.05)
            if events:
                more = edge.poll(0.1)  # anything after the first edge counts too
                events += more
                if not more:
                    break
        assert events == [(copy, select.EPOLLOUT)], events  # one edge, on the dup
        os.write(copy, b"via dup")
        s.setblocking(True)
        assert s.recv(16) == b"via dup"
    finally:
        edge.close()
        os.close(copy)
        s.close()


def test_a_reset_reaches_the_program_as_ECONNRESET(fake: FakeDaemon) -> None:
    port, listener = _server(_reset_after_hello)
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    got = b""
    while len(got) < 5:
        got += s.recv(5 - len(got))
    s.sendall(b"!")

    def read_to_the_end() -> None:
        while s.recv(100):
            pass

    with pytest.raises(ConnectionResetError):
        read_to_the_end()
    s.close()
    _stop(listener)


def test_listen_delivers_plain_clients_with_their_address_and_upgrade_is_not_faked(fake: FakeDaemon,
                                                                                   echo_port: int) -> None:
    srv = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    address = srv.getsockname()
    assert address != socket.socket.getsockname(srv)  # the program's address, not the loopback listener's
    clients = [socket.create_connection(address, timeout=10) for _ in range(2)]
    for i, client in enumerate(clients):
        client.sendall(b"client %d" % i)
    srv.settimeout(10)
    for _ in clients:
        conn, peer = srv.accept()
        i = [cl.getsockname() for cl in clients].index(peer)  # accept gives the client's real address
        conn.settimeout(10)
        assert conn.recv(100) == b"client %d" % i  # and nothing of the token or the frame
        assert conn.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_VERSION_CONN) == 0  # no TLS: the fake
        conn.close()
    intruder = socket.create_connection(socket.socket.getsockname(srv), timeout=10)
    intruder.sendall(b"x" * 40)
    srv.setblocking(False)
    with pytest.raises(BlockingIOError):
        srv.accept()  # the intruder was reset, and nothing else waits
    with pytest.raises(ConnectionResetError):
        intruder.recv(10)
    for sock in (*clients, intruder):
        sock.close()
    srv.close()
    plain = socket.create_connection(("127.0.0.1", echo_port))
    with pytest.raises(OSError, match="the fake daemon does not do UPGRADE") as e:
        ssaproxy.upgrade(plain)
    assert e.value.errno == errno.EOPNOTSUPP
    plain.close()


def test_a_subprocess_finds_it_through_the_environment(fake: FakeDaemon, echo_port: int) -> None:
    code = ("import socket, ssaproxy\nssaproxy.install()\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)\n"
            f"s.connect(('127.0.0.1', {echo_port})); s.sendall(b'sub'); print(s.recv(3).decode())\n")
    out = subprocess.run([sys.executable, "-c", code], env=fake.env, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "sub", out.stderr


def test_a_malformed_request_is_refused_like_the_daemon_does(fake: FakeDaemon) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.connect(fake.path)
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
        data = b""
        while chunk := raw.recv(4096):
            data += chunk
    decoder = wire.Decoder()
    decoder.receive_data(data)
    message = decoder.next_message()
    assert message is not None and message.kind == wire.Kind.ERROR
    assert message.int(wire.Tag.ERRNO) == errno.EPROTO


def test_an_asyncio_loop_connects_a_nonblocking_tls_socket_as_a_tcp_one(fake: FakeDaemon, echo_port: int) -> None:
    """What asyncio's sock_connect does once the address is resolved: connect, EINPROGRESS, a
    writer callback on writability, then SO_ERROR.  (sock_connect itself resolves through
    getaddrinfo with the socket's proto, which refuses IPPROTO_TLS.)"""

    async def connect(s: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        assert s.connect_ex(("127.0.0.1", echo_port)) == errno.EINPROGRESS
        writable = loop.create_future()
        loop.add_writer(s.fileno(), lambda: writable.done() or writable.set_result(None))
        try:
            await asyncio.wait_for(writable, 10)
        finally:
            loop.remove_writer(s.fileno())
        return int(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    async def main() -> tuple[int, bytes, int]:
        s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
        s.setblocking(False)
        code = await connect(s)
        reader, writer = await asyncio.open_connection(sock=s)
        writer.write(b"from asyncio")
        got = await asyncio.wait_for(reader.read(100), 10)
        writer.close()
        fake.outcomes[("127.0.0.1", echo_port)] = "verify-failed"
        bad = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
        bad.setblocking(False)
        try:
            return code, got, await connect(bad)
        finally:
            bad.close()

    assert asyncio.run(main()) == (0, b"from asyncio", errno.EPROTO)
