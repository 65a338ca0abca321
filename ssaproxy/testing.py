"""A fake ssaproxy daemon for testing programs that use the client library (`ssaproxy.socket`,
`ssaproxy.install()`, the `ssa:` endpoint) without root, twistd or certificates.

    from ssaproxy.testing import FakeDaemon

    with FakeDaemon() as fake:            # $SSAPROXY_SOCKET points at it until the block ends
        s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
        s.connect(("127.0.0.1", test_server_port))   # a plain TCP server of the test's
        ...
        assert fake.connections[0].host == "127.0.0.1"

What is real: the wire protocol.  The fake speaks it through the same
`ssaproxy.proto.connection.Connection` (DAEMON role) as the real daemon, on a Unix socket in
a temporary directory, with descriptors passed as SCM_RIGHTS (protocol version 2): WELCOME names
the fake's parking ports, the library parks the program's own socket there as a TCP connect in
progress and the fake checks it (`ssaproxy.api.parking`, as in the daemon),
the ESTABLISHED or ERROR frame goes on the control connection, and then the socket is
completed (the fake's end of it relays) or reset, exactly as from the daemon.  Half-close
and reset are relayed as the daemon does: the server's FIN reaches the program as EOF, the
server's reset as ECONNRESET, the program's FIN as the server's EOF.

What is fake, so a passing test proves nothing about them:
  * **No TLS at all.** CONNECT makes a plain TCP connection to the target (or to where
    `targets` redirects it); nothing is encrypted and no certificate is checked.  The getters
    that describe a handshake answer honestly for no handshake: TLS_VERSION_CONN 0, empty
    cipher, chain, identity and ALPN.  TLS_REMOTE_HOSTNAME and TLS_SERVER_NAME give the name
    the program set (or the host it connected to).
  * **No policy.** Every known settable option is accepted and stored (OK), whatever its
    value: nothing is EPERM or EINVAL here.  Unknown, unsupported and read-only options are
    ENOPROTOOPT, as with the daemon.
  * **Failures are what the test says.** `outcomes={(host, port): "verify-failed"}` makes a
    CONNECT to that target fail with that outcome's errno (`OUTCOME_ERRNO`, the daemon's
    table) and the text `"<outcome>: fake"`; a refused or unreachable TCP connection fails as
    `refused` / `unreachable` would.
  * **LISTEN without TLS.** The fake accepts plain TCP clients on the program's bound socket
    and delivers each to its loopback listener with the token and an ACCEPTED frame, as the
    daemon does (no handshake, no client certificate; the same honest "no handshake" info).
  * **No UPGRADE** (STARTTLS): answered ERROR(EOPNOTSUPP).
  * No credentials, no logs, no limits, no timeouts beyond `connect_timeout`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import struct
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ssaproxy.api.parking import Parking
from ssaproxy.client import _io
from ssaproxy.client._io import ENV_SOCKET as ENV
from ssaproxy.proto import connection as c
from ssaproxy.proto import options as o
from ssaproxy.proto import wire
from ssaproxy.proto.events import fields_of

Target = tuple[str, int]


@dataclass(frozen=True)
class Attempt:
    """One CONNECT the fake served: what the program asked for, and how it ended."""

    host: str
    port: int
    family: int
    options: Mapping[int, bytes]
    outcome: str  # "connected", or an OUTCOME_ERRNO key


class FakeDaemon:
    """See the module docstring.  Use as a context manager, or call start() and stop()."""

    def __init__(self, *, targets: Optional[Mapping[Target, Target]] = None,
                 outcomes: Optional[Mapping[Target, str]] = None, connect_timeout: float = 5.0) -> None:
        self.targets = dict(targets or {})
        self.outcomes = dict(outcomes or {})
        self.connect_timeout = connect_timeout
        self.connections: list[Attempt] = []
        self._dir = tempfile.mkdtemp(prefix="ssaproxy-fake-")
        self.path = os.path.join(self._dir, "api.sock")
        self._listener: Optional[socket.socket] = None
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._saved_env: Optional[str] = None
        self._session_ids = iter(range(1, 1 << 30))
        self._parking = Parking()

    # ---- life
    @property
    def env(self) -> dict[str, str]:
        """The environment for a subprocess that should use this fake."""
        return {**os.environ, ENV: self.path}

    def start(self) -> FakeDaemon:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(16)
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        self._parking.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FakeDaemon:
        self._saved_env = os.environ.get(ENV)
        os.environ[ENV] = self.path
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self._saved_env is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self._saved_env

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="ssaproxy-fake")
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket, on: bool) -> None:
        with self._lock:
            (self._open.add if on else self._open.discard)(sock)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            self._spawn(self._serve_control, sock)

    # ---- one control connection
    def _serve_control(self, sock: socket.socket) -> None:
        conn = c.Connection(c.Role.DAEMON)
        settings: dict[int, bytes] = {}
        self._track(sock, True)
        listening: list[socket.socket] = []  # a LISTEN's two sockets, until this connection closes
        try:
            while conn.phase != c.Phase.CLOSED:
                try:
                    event = conn.next_event()
                except c.RemoteProtocolError as e:
                    sock.sendall(conn.refuse(e.errno, e.text))
                    return
                if event is c.NEED_DATA:
                    # Whatever is there, as the daemon reads (not the library's frame-at-a-time
                    # reads): a refused stream is then closed with nothing unread, so no reset.
                    data, fds = _recv(sock)
                    if fds:
                        conn.receive_fds(fds)
                    conn.receive_data(data)
                    continue
                if isinstance(event, c.ConnectionClosed):
                    return
                if isinstance(event, c.Connect):
                    self._connect(sock, conn, event, dict(settings))
                    return  # the result went: the control connection has no further use
                if isinstance(event, c.Listen):
                    listening += self._listen(sock, conn, event, dict(settings))
                    continue
                _io.send_frame(sock, self._answer(conn, event, settings))
        except OSError:
            return
        finally:
            for fd in conn.discard_fds():
                os.close(fd)
            for i, held in enumerate(listening):  # the program closed its listening socket: it stops
                if i == 0:  # B, which only the listener thread accepts on (N is the program's own)
                    with contextlib.suppress(OSError):
                        held.shutdown(socket.SHUT_RDWR)
                held.close()
            self._track(sock, False)
            sock.close()

    def _answer(self, conn: c.Connection, event: c.Event, settings: dict[int, bytes]) -> bytes:
        if isinstance(event, c.Hello):
            return conn.send(c.Welcome(wire.VERSION, next(self._session_ids), *self._parking.ports()))
        if isinstance(event, c.SetOption):
            option = o.OPTIONS.get(event.option)
            if option is None or option.unsupported or not option.settable:
                return conn.send(c.Error(errno.ENOPROTOOPT, f"IPPROTO_TLS option {event.option} (fake daemon)"))
            settings[event.option] = event.value
            return conn.send(c.Ok())
        if isinstance(event, c.GetOption):
            option = o.OPTIONS.get(event.option)
            if option is None or option.unsupported or not option.gettable:
                return conn.send(c.Error(errno.ENOPROTOOPT, f"IPPROTO_TLS option {event.option} (fake daemon)"))
            default = o.pack_int(int(event.option == o.TLS_SESSION_REUSE)) if option.kind == o.INT else b""
            return conn.send(c.Value(settings.get(event.option, default)))
        assert isinstance(event, c.Upgrade)  # the connection lets nothing else through now
        os.close(event.fd)
        return conn.send(c.Error(errno.EOPNOTSUPP, "the fake daemon does not do UPGRADE"))

    # ---- a listener: plain TCP clients delivered to the program's loopback listener
    def _listen(self, control: socket.socket, conn: c.Connection, event: c.Listen,
                settings: dict[int, bytes]) -> list[socket.socket]:
        public, loopback = (socket.socket(fileno=fd) for fd in event.fds)
        if not all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in (public, loopback)):
            public.close()
            loopback.close()
            control.sendall(conn.send(c.Error(errno.EINVAL, "LISTEN needs two listening sockets (fake daemon)")))
            return []
        token = os.urandom(wire.TOKEN_SIZE)
        control.sendall(conn.send(c.Ok(token)))
        self._spawn(self._serve_listener, public, loopback.getsockname()[:2], token, settings)
        return [public, loopback]

    def _serve_listener(self, public: socket.socket, target: Target, token: bytes, settings: dict[int, bytes]) -> None:
        while True:
            try:
                client, peer = public.accept()  # ends when the control connection's end shuts it down
            except OSError:
                return
            try:
                program = socket.create_connection(target, self.connect_timeout)
                program.settimeout(None)
                info = _info(settings, b"")
                frame = wire.encode(wire.Kind.ACCEPTED, fields_of(c.Accepted(peer[:2], client.getsockname()[:2], info)))
                program.sendall(token + frame)
            except OSError:
                client.close()
                continue
            self._relay(client, program)

    # ---- one connection's result and relay
    def _connect(self, control: socket.socket, conn: c.Connection, event: c.Connect,
                 settings: dict[int, bytes]) -> None:
        """Check the program's socket is parked, answer OK, connect to the target, send the
        result on the control connection, then complete the socket (and relay) or reset it
        (each a bounded wait in this connection's own thread)."""
        program = socket.socket(fileno=event.fd)
        try:
            self._parking.check(program)  # the library parked it, as for the daemon
        except OSError as e:
            program.close()
            control.sendall(conn.send(c.Error(errno.EINVAL, f"{e.strerror} (fake daemon)")))
            return
        control.sendall(conn.send(c.Ok()))
        try:
            self._run(control, conn, event, settings, program)
        finally:
            program.close()

    def _run(self, control: socket.socket, conn: c.Connection, event: c.Connect, settings: dict[int, bytes],
             program: socket.socket) -> None:
        target = (event.host, event.port)
        outcome = self.outcomes.get(target)
        upstream: Optional[socket.socket] = None
        if outcome is None:
            try:
                upstream = socket.create_connection(self.targets.get(target, target), self.connect_timeout)
                upstream.settimeout(None)
                outcome = "connected"
            except ConnectionRefusedError:
                outcome = "refused"
            except TimeoutError:
                outcome = "connect-timeout"
            except OSError:
                outcome = "unreachable"
        self.connections.append(Attempt(event.host, event.port, event.family, settings, outcome))
        if upstream is None:
            code = c.OUTCOME_ERRNO.get(outcome, errno.ECONNRESET)
            try:
                control.sendall(conn.send(c.Error(code, f"{outcome}: fake")))
            finally:
                self._parking.fail_waiting(program)  # after the result, as the daemon does
            return
        info = _info(settings, settings.get(o.TLS_REMOTE_HOSTNAME, event.host.encode()).rstrip(b"\0"))
        peer = upstream.getpeername()[:2]
        local = upstream.getsockname()[:2]
        try:
            control.sendall(conn.send(c.Established((peer[0], peer[1]), (local[0], local[1]), info)))
            carrier = self._parking.complete_waiting(program)
            carrier.setblocking(True)
        except OSError:
            upstream.close()
            self._parking.fail_waiting(program)
            return
        self._relay(carrier, upstream)

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        self._track(a, True)
        self._track(b, True)
        done = threading.Barrier(2, action=lambda: self._close_pair(a, b))
        self._spawn(_pump, a, b, done)
        self._spawn(_pump, b, a, done)

    def _close_pair(self, a: socket.socket, b: socket.socket) -> None:
        for sock in (a, b):
            self._track(sock, False)
            sock.close()


def _info(settings: Mapping[int, bytes], name: bytes) -> dict[int, bytes]:
    """The getsockopt values of a connection with no handshake: honest zeros and blanks."""
    info = {n: b"" for n in o.INFO_OPTIONS}
    info.update({o.TLS_REMOTE_HOSTNAME: name, o.TLS_SERVER_NAME: name, o.TLS_VERSION_CONN: o.pack_int(0),
                 o.TLS_RESUMED_SESSION: o.pack_int(0),
                 o.TLS_SESSION_REUSE: settings.get(o.TLS_SESSION_REUSE, o.pack_int(1)),
                 o.TLS_REQUEST_PEER_AUTH: settings.get(o.TLS_REQUEST_PEER_AUTH, o.pack_int(0)),
                 o.TLS_VERSION_MIN: settings.get(o.TLS_VERSION_MIN, o.pack_int(o.TLS1_2_VERSION)),
                 o.TLS_VERSION_MAX: settings.get(o.TLS_VERSION_MAX, o.pack_int(o.TLS1_3_VERSION)),
                 o.TLS_ALPN: b"", o.TLS_TRUSTED_CIPHERS: settings.get(o.TLS_TRUSTED_CIPHERS, b"")})
    return info


def _pump(src: socket.socket, dst: socket.socket, done: threading.Barrier) -> None:
    """One direction: bytes, then the end as it came (FIN as FIN, reset as reset)."""
    try:
        while True:
            try:
                data = src.recv(65536)
            except ConnectionResetError:
                # A reset goes on as a reset, never as a FIN: linger 0, and SHUT_RD (which sends
                # nothing) to end the other direction's read; close() then sends the RST.
                dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                dst.shutdown(socket.SHUT_RD)
                break
            if not data:
                dst.shutdown(socket.SHUT_WR)
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait(60)


def _recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    data, ancillary, _flags, _ = sock.recvmsg(65536, socket.CMSG_SPACE(4 * 8), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int(x) for x in struct.unpack(f"{len(raw) // 4}i", raw[: len(raw) - len(raw) % 4])]
    return data, fds
