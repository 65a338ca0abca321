"""Hostile programs against the parking of protocol version 2 (docs/api.md, "Parking"), with a
real daemon under twistd: the library parks its own socket N, the daemon only checks it and
completes it without ever blocking its event loop.  A program that passes a blocking, unparked
socket, clears O_NONBLOCK on N from another thread in a tight loop, or turns N into a listener
with a full accept queue before the result must get a clear error (or its own session, where it
did park), never anyone's plaintext, while another user's CONNECT to a real TLS server
(Python's ssl) completes meanwhile."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from ssaproxy.client import _io
from ssaproxy.client.park import park, unpark
from ssaproxy.client.values import encode
from ssaproxy.proto import connection as c
from ssaproxy.proto import options as o
from ssaproxy.proto import wire
from tests.api_harness import ApiDaemon, free_port
from tests.pki import PKI

BOUND = 60  # seconds: generous, never a measure


class Daemon:
    def __init__(self, api: ApiDaemon, echo: int, gate: "Gate") -> None:
        self.api = api
        self.echo = echo  # a TLS echo server whose certificate names localhost (a routed port too)
        self.gate = gate


class Gate:
    """A TCP relay in front of the TLS echo server that holds each connection (so the daemon's
    handshake) until `release()`: the window in which a hostile program changes its socket."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.arrived = threading.Event()
        self.go = threading.Event()
        self.threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def release(self) -> None:
        self.go.set()

    def _accept(self) -> None:
        for _ in range(16):  # bounded in count
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.arrived.set()
            self.go.wait(BOUND)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), 10)
            except OSError:
                client.close()
                continue
            self._spawn(_pump, client, upstream)
            self._spawn(_pump, upstream, client)

    def close(self) -> None:
        self.go.set()
        self.listener.close()


def _pump(a: socket.socket, b: socket.socket) -> None:
    a.settimeout(BOUND)
    try:
        while data := a.recv(65536):
            b.sendall(data)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        with contextlib.suppress(OSError):
            b.close()


@pytest.fixture(scope="module")
def daemon(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    api = ApiDaemon(tmp_path_factory.mktemp("park-hostile"), pki, connect_timeout=10, handshake_timeout=10)
    gate: Optional[Gate] = None
    try:
        echo = api.tls_server("echo", pki.server("good_localhost"))
        api.config.write_text(api.config.read_text() + f'[outbound]\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n'
                              f'[[outbound.route]]\nname = "echo"\ndestination = "127.0.0.1/32"\nports = [{echo}]\n'
                              'hostname = "localhost"\n')
        api.start()
        gate = Gate(echo)
        yield Daemon(api, echo, gate)
    finally:
        if gate is not None:
            gate.close()
        api.stop()


class Raw:
    """A hostile program's control connection, spoken frame by frame."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(BOUND)
        self.sock.connect(path)
        self.sock.settimeout(0.0)
        self.conn = c.Connection(c.Role.CLIENT)
        welcome = self.request(c.Hello(wire.VERSION))
        assert isinstance(welcome, c.Welcome)
        assert welcome.park_port4 and welcome.park_port6  # always sent by the daemon
        self.ports = (welcome.park_port4, welcome.park_port6)

    def request(self, event: c.Event, fds: tuple[int, ...] = ()) -> Optional[c.Event]:
        _io.send_frame(self.sock, self.conn.send(event), fds)
        return self.next()

    def next(self) -> Optional[c.Event]:
        return _io.next_event(self.sock, self.conn, BOUND)

    def close(self) -> None:
        self.sock.close()


VICTIM = """
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.settimeout(30)
s.connect(("localhost", {port}))
s.sendall(b"victim\\n")
got = b""
while not got.endswith(b"\\n") and len(got) < 100:
    chunk = s.recv(100)
    if not chunk:
        break
    got += chunk
result["echo"] = got.decode()
result["verified"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_VERSION_CONN)
"""


def _victim(d: Daemon) -> dict[str, Any]:
    """Another user's (nobody's) CONNECT to the real TLS echo server: it must complete."""
    out = d.api.program(VICTIM.format(port=d.echo), user="nobody", timeout=BOUND)
    assert out.get("echo") == "victim\n", out
    assert out["verified"], out  # a real TLS version: the daemon made the handshake
    return out


def _error(reply: Optional[c.Event], code: int, text: str) -> None:
    assert isinstance(reply, c.Error), reply
    assert reply.errno == code and text in reply.text, reply


def test_a_blocking_unparked_socket_is_refused_and_blocks_nobody(daemon: Daemon) -> None:
    """(a) CONNECT and REDIRECT with a blocking socket the program never parked: the daemon
    looks (TCP_INFO) and says so; it never calls connect() on it."""
    for kind in ("connect", "redirect"):
        raw = Raw(daemon.api.socket)
        n = socket.socket()  # blocking, unconnected: the old daemon would have connected it itself
        try:
            event: c.Event = (c.Connect("127.0.0.1", daemon.echo, 4, n.fileno()) if kind == "connect"
                              else c.Redirect("127.0.0.1", daemon.echo, 4, None, n.fileno()))
            _error(raw.request(event, (n.fileno(),)), errno.EINVAL, "the socket was not parked")
            assert n.getblocking()
            with pytest.raises(OSError, match="not connected") as caught:
                n.getpeername()  # untouched: still unconnected
            assert caught.value.errno == errno.ENOTCONN
            _victim(daemon)
        finally:
            n.close()
            raw.close()


class Toggler:
    """A thread clearing O_NONBLOCK on fd in a tight loop (bounded in time)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.stop = threading.Event()
        self.turns = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_NONBLOCK
        while not self.stop.is_set() and self.turns < 50_000_000:
            try:
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags)
            except OSError:
                return
            self.turns += 1

    def end(self) -> None:
        self.stop.set()
        self.thread.join(BOUND)
        assert self.turns > 0


def test_clearing_o_nonblock_from_another_thread_changes_nothing_for_the_daemon(daemon: Daemon) -> None:
    """(b) While a thread keeps N blocking: an unparked N is refused (EINVAL), a parked N gets
    its own session (CONNECT: ESTABLISHED and its echo; REDIRECT: OK), and another user's
    CONNECT completes meanwhile."""
    unparked, parked, redirected = socket.socket(), socket.socket(), socket.socket()
    raws = [Raw(daemon.api.socket) for _ in range(3)]
    togglers = []
    try:
        park(parked.fileno(), raws[1].ports)  # the program parks first, as the library does
        park(redirected.fileno(), raws[2].ports)
        togglers = [Toggler(s.fileno()) for s in (unparked, parked, redirected)]
        _error(raws[0].request(c.Connect("127.0.0.1", daemon.echo, 4, unparked.fileno()), (unparked.fileno(),)),
               errno.EINVAL, "not parked")
        assert isinstance(raws[1].request(c.SetOption(*_hostname("localhost"))), c.Ok)
        assert isinstance(raws[1].request(c.Connect("127.0.0.1", daemon.echo, 4, parked.fileno()),
                                          (parked.fileno(),)), c.Ok)
        assert isinstance(raws[2].request(c.Redirect("127.0.0.1", daemon.echo, 4, None, redirected.fileno()),
                                          (redirected.fileno(),)), c.Ok)
        _victim(daemon)
        result = raws[1].next()
        assert isinstance(result, c.Established), result
        for s in (parked, redirected):  # each its own session, through the daemon's TLS
            assert _echo(s, b"own\n") == b"own\n"
    finally:
        for t in togglers:
            t.end()
        for s in (unparked, parked, redirected):
            s.close()
        for raw in raws:
            raw.close()


def _hostname(name: str) -> tuple[int, bytes]:
    return o.TLS_REMOTE_HOSTNAME, encode(o.TLS_REMOTE_HOSTNAME, name)


def _echo(s: socket.socket, data: bytes) -> bytes:
    """Send and read back on a socket whose blocking mode someone else keeps changing: poll,
    then calls that never wait."""
    poller = select.poll()
    poller.register(s.fileno(), select.POLLOUT)
    assert poller.poll(BOUND * 1000)
    s.send(data, socket.MSG_DONTWAIT)
    got = b""
    poller.modify(s.fileno(), select.POLLIN)
    for _ in range(100):
        if got.endswith(b"\n") or not poller.poll(BOUND * 1000):
            break
        chunk = s.recv(100, socket.MSG_DONTWAIT)
        if not chunk:
            break
        got += chunk
    return got


def _fill(listener: socket.socket, fillers: list[socket.socket]) -> None:
    """Connect to `listener` until a connection is no longer taken: its accept queue is full."""
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
        if not select.select([], [filler], [], 0.5)[1]:
            return
    raise AssertionError("the accept queue does not fill up")


def test_a_socket_turned_into_a_full_listener_before_the_result_is_failed_closed(daemon: Daemon) -> None:
    """(c) The program parks N, sends CONNECT, and while the daemon's handshake is held at the
    gate disconnects N (AF_UNSPEC) and makes it a listener whose accept queue is full.  The
    daemon sends the result, finds N not parked (or its connect to N unanswered, bounded in
    the reactor), and fails closed: nothing it relays ever reaches N, and another user's
    CONNECT completes meanwhile."""
    raw = Raw(daemon.api.socket)
    n = socket.socket()
    fillers: list[socket.socket] = []
    daemon.gate.go.clear()
    daemon.gate.arrived.clear()
    try:
        n.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        park(n.fileno(), raw.ports)
        assert isinstance(raw.request(c.SetOption(*_hostname("localhost"))), c.Ok)
        assert isinstance(raw.request(c.Connect("127.0.0.1", daemon.gate.port, 4, n.fileno()), (n.fileno(),)), c.Ok)
        assert daemon.gate.arrived.wait(BOUND)  # the daemon's TCP connect is made; its handshake waits
        unpark(n.fileno())
        n.listen(0)
        _fill(n, fillers)
        daemon.gate.release()
        _victim(daemon)  # while the hostile's completion fails
        result = raw.next()
        # The result frame goes before the completion: ESTABLISHED (the TLS session was made)
        # or an ERROR; either way the daemon's end was never connected to N.
        assert isinstance(result, (c.Established, c.Error)), result
        line = daemon.api.wait_event("no-carrier", BOUND)
        assert "not parked" in line or "did not complete" in line or "not to the program" in line, line
        mine = {f.getsockname() for f in fillers}
        n.setblocking(False)
        for _ in range(16):  # whatever waits in N's queue: only our fillers, or a dead connection
            try:
                conn, peer = n.accept()
            except BlockingIOError:
                break
            with conn:
                if peer in mine:
                    continue
                conn.settimeout(5)
                with contextlib.suppress(ConnectionResetError):
                    assert conn.recv(100) == b""  # never a byte of the session
    finally:
        daemon.gate.release()
        for s in (n, *fillers):
            s.close()
        raw.close()

