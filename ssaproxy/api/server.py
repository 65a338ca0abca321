"""The local socket API server: one control connection per program socket, on a Unix socket.

Theory of operation: a control connection speaks the framed protocol of `ssaproxy.proto`
(docs/api.md).  After HELLO it takes options, then exactly one of CONNECT or UPGRADE (the
daemon answers CARRIER with the program's end of a fresh carrier; the session's result and
then its plaintext travel on the carrier) or LISTEN (the program passes its bound, listening
TCP socket; this connection then delivers ACCEPTED frames, each with a carrier, and takes one
ACK per ACCEPTED).  Anything malformed or out of order gets an ERROR frame and the connection
is closed; other programs are not affected.  The daemon never opens a file for a program:
certificates and keys come as PEM bytes, sockets as file descriptors.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import stat
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet import interfaces
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ssaproxy.api.carrier import Carrier
from ssaproxy.api.handover import Acceptor, close_fd, no_linger, take
from ssaproxy.api.session import Creds, Limits, TLSSession, adopt_carrier
from ssaproxy.api.settings import ApiError, Settings, apply, client_context, get, server_context
from ssaproxy.config import Api, Policy, is_valid_hostname
from ssaproxy.proto import wire
from ssaproxy.proto.state import DAEMON_PHASES
from ssaproxy.streams import OneShotFactory
from ssaproxy.tls.stream import TLSStream, ssl_text
from ssaproxy.tls.verify import ClientCheck

_MAX_FDS_HELD = 4
_MIN_UNACKED, _MAX_UNACKED = 16, 128  # accepted connections delivered, not yet taken: BACKLOG within these
_MAX_HANDSHAKES = 256  # per listener: TLS handshakes in progress
_MAX_LISTENERS = 128  # each has an accept thread
_control_ids = itertools.count(1)


class ApiFactory(Factory):
    noisy = False

    def __init__(self, api: Api, policy: Policy, reactor: Any) -> None:
        self.api = api
        self.policy = policy
        self.reactor = reactor
        self.limits = Limits(api.connect_timeout, api.handshake_timeout)
        self.active: set[Any] = set()  # TLS sessions and listeners, for shutdown
        self.controls = 0

    def buildProtocol(self, addr: Any) -> "Control":
        return Control(self)


@implementer(interfaces.IFileDescriptorReceiver, interfaces.IPushProducer)
class Control(Protocol):
    """One control connection.  It is its own transport's producer: a program that sends
    requests without reading the replies stops being read once the replies fill the
    transport's buffer, so it cannot grow the daemon's memory."""

    log = Logger()

    def __init__(self, factory: ApiFactory) -> None:
        self.factory = factory
        self.decoder = wire.Decoder()
        self.phase = "hello"
        self.settings = Settings()
        self.fds: list[int] = []
        self.creds: Optional[Creds] = None
        self.handed: list[socket.socket] = []  # program ends sent, closed once delivered
        self.listener: Optional[Listener] = None
        self.closed = False
        self.paused = False
        self.control_id = next(_control_ids) & 0x7FFFFFFF

    # ---- Twisted events
    def connectionMade(self) -> None:
        self.factory.controls += 1
        if self.factory.controls > self.factory.api.max_sessions:
            self._refuse(errno.EAGAIN, f"more than {self.factory.api.max_sessions} API connections")
            return
        assert self.transport is not None
        self.creds = Creds.of(self.transport.getHandle())  # type: ignore[attr-defined]
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.stopReading()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.closed and self.transport is not None:
            self.transport.startReading()  # type: ignore[attr-defined]
            self.dataReceived(b"")  # requests already read, held while paused

    def stopProducing(self) -> None:
        pass

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.fds.append(descriptor)
        if len(self.fds) > _MAX_FDS_HELD:
            self._refuse(errno.EPROTO, "too many file descriptors without a frame that takes them")

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self.decoder.receive_data(data)
        while not self.closed and not self.paused:
            try:
                message = self.decoder.next_message()
            except wire.ProtocolError as e:
                self._refuse(errno.EPROTO, f"malformed message: {e}")
                return
            if message is None:
                break
            self._handle(message)
        if not self.closed and not self.paused and self.fds and not self.decoder.buffered:
            self._refuse(errno.EPROTO, "a file descriptor came with a message that takes none")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.factory.controls -= 1
        self._close_fds()
        for sock in self.handed:
            sock.close()
        self.handed = []
        if self.listener is not None:
            self.listener.close("program closed its listening socket")

    # ---- messages
    def _handle(self, m: wire.Message) -> None:
        if m.kind not in DAEMON_PHASES[self.phase]:
            self._refuse(errno.EPROTO, f"{m.kind.name} not allowed now ({self.phase})")
            return
        needs_fd = wire.carries_fd(m.kind)
        fd: Optional[int] = None
        if needs_fd:
            if not self.fds:
                self._refuse(errno.EINVAL, f"{m.kind.name} needs a file descriptor (SCM_RIGHTS)")
                return
            fd = self.fds.pop(0)
        # A descriptor waiting while a message that takes none is handled may belong to a
        # later message in the same read (the kernel ends a read after the bytes that carried
        # descriptors); what no message takes is refused at the end of dataReceived.
        try:
            self._dispatch(m, fd)  # owns fd from here on: _adopt_socket closes it on every path
        except ApiError as e:
            self._reply(wire.Kind.ERROR, {wire.Tag.ERRNO: e.code, wire.Tag.TEXT: e.text})

    def _dispatch(self, m: wire.Message, fd: Optional[int]) -> None:
        policy = self.factory.policy
        if m.kind == wire.Kind.HELLO:
            version = m.int(wire.Tag.VERSION)
            if version != wire.VERSION:
                self._refuse(errno.EPROTONOSUPPORT, f"protocol version {version} unknown; this daemon speaks "
                                                    f"{wire.VERSION}")
                return
            self.phase = "options"
            self._reply(wire.Kind.WELCOME, {wire.Tag.VERSION: wire.VERSION, wire.Tag.SESSION: self.control_id})
        elif m.kind == wire.Kind.SETOPT:
            self.settings = apply(self.settings, policy, m.int(wire.Tag.OPTION), m.raw(wire.Tag.VALUE))
            self._reply(wire.Kind.OK)
        elif m.kind == wire.Kind.GETOPT:
            self._reply(wire.Kind.VALUE, {wire.Tag.VALUE: get(self.settings, policy, m.int(wire.Tag.OPTION))})
        elif m.kind == wire.Kind.CONNECT:
            self._connect(m)
        elif m.kind == wire.Kind.UPGRADE:
            assert fd is not None
            self._upgrade(m, fd)
        elif m.kind == wire.Kind.LISTEN:
            assert fd is not None
            self._listen(m, fd)
        elif m.kind == wire.Kind.ACK:
            if self.listener is None or not self.handed:
                self._refuse(errno.EPROTO, "ACK without an ACCEPTED")
                return
            self.handed.pop(0).close()
            self.listener.acked()

    def _connect(self, m: wire.Message) -> None:
        host, port, family = m.text(wire.Tag.HOST), m.int(wire.Tag.PORT), m.int(wire.Tag.FAMILY)
        if not 0 < port < 65536:
            raise ApiError(errno.EINVAL, f"port {port} out of range")
        if family not in (0, 4, 6):
            raise ApiError(errno.EINVAL, f"family {family} unknown")
        if family:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                raise ApiError(errno.EINVAL, f"{host!r} is not an IP address") from None
            if address.version != family:
                raise ApiError(errno.EAFNOSUPPORT, f"{host} is not an IPv{family} address")
        elif not is_valid_hostname(host):
            raise ApiError(errno.EINVAL, f"{host!r} is not a host name (letters, digits, hyphens, dots; "
                                         "IDNs in their xn-- form)")
        self._context(server=False)  # refused now, not after CARRIER
        session, carrier = self._start("connect")
        session.start_connect(carrier, host, port, family)

    def _upgrade(self, m: wire.Message, fd: int) -> None:
        sock = take(fd)
        try:
            role = m.int(wire.Tag.ROLE)
            if role not in (wire.ROLE_CLIENT, wire.ROLE_SERVER):
                raise ApiError(errno.EINVAL, f"role {role} unknown")
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                raise ApiError(errno.EOPNOTSUPP, "TCP_UPGRADE_TLS needs a TCP socket")
            try:
                sock.getpeername()
            except OSError:
                raise ApiError(errno.ENOTCONN, "the socket to upgrade is not connected") from None
            ctx: Optional[SSL.Context] = None
            if role == wire.ROLE_SERVER:
                ctx = self._context(server=True)
            else:
                self._context(server=False)
            session, carrier = self._start("upgrade-server" if ctx is not None else "upgrade-client")
            session.start_upgrade(carrier, sock, ctx)
        finally:
            sock.close()  # the reactor adopted its own duplicate

    def _listen(self, m: wire.Message, fd: int) -> None:
        sock = take(fd)
        try:
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                raise ApiError(errno.EOPNOTSUPP, "LISTEN needs a TCP socket")
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise ApiError(errno.EINVAL, "the socket passed with LISTEN is not listening")
            if sum(isinstance(x, Listener) for x in self.factory.active) >= _MAX_LISTENERS:
                raise ApiError(errno.EAGAIN, f"the daemon serves {_MAX_LISTENERS} listening sockets already")
            ctx = self._context(server=True)
            backlog = max(_MIN_UNACKED, min(m.int(wire.Tag.BACKLOG), _MAX_UNACKED))
        except BaseException:
            sock.close()
            raise
        self.listener = Listener(self, ctx, self.settings, sock, backlog)  # its acceptor owns sock now
        self.phase = "listening"
        self._reply(wire.Kind.OK)

    def _context(self, *, server: bool) -> SSL.Context:
        """The TLS context for these settings; EINVAL (nothing started) if OpenSSL refuses them,
        say a certificate whose key is below the policy's security level."""
        try:
            if server:
                return server_context(self.settings, self.factory.policy)
            return client_context(self.settings, self.factory.policy)
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - OpenSSL's verdict on the program's material
            why = ssl_text(e) or type(e).__name__
            raise ApiError(errno.EINVAL, f"the TLS settings cannot be used: {why}") from None

    # ---- helpers
    def _start(self, op: str) -> tuple[TLSSession, Carrier]:
        """A session and its carrier, the program's end sent with CARRIER; or ApiError."""
        assert self.creds is not None
        if len(self.factory.active) >= self.factory.api.max_sessions:
            raise ApiError(errno.EAGAIN, f"the daemon has {self.factory.api.max_sessions} TLS sessions open")
        session = TLSSession(reactor=self.factory.reactor, policy=self.factory.policy, settings=self.settings,
                             limits=self.factory.limits, creds=self.creds, op=op, active=self.factory.active)
        try:
            carrier, program_end = adopt_carrier(self.factory.reactor, session)
        except OSError as e:
            session.fail("no-carrier", f"cannot make the carrier connection: {e.strerror or e}")
            raise ApiError(errno.EAGAIN if e.errno in (errno.EMFILE, errno.ENFILE) else errno.EIO,
                           f"the daemon cannot make a carrier connection: {e.strerror or e}") from None
        self.phase = "handed"
        self._hand(program_end, wire.Kind.CARRIER)
        return session, carrier

    def _hand(self, program_end: socket.socket, kind: wire.Kind, fields: Optional[dict[int, object]] = None) -> None:
        """Send `program_end` with a frame; it stays open here until the program has it."""
        assert self.transport is not None
        self.handed.append(program_end)
        self.transport.sendFileDescriptor(program_end.fileno())  # type: ignore[attr-defined]
        self.transport.write(wire.encode(kind, fields))

    def _reply(self, kind: wire.Kind, fields: Optional[dict[int, object]] = None) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(wire.encode(kind, fields))

    def _refuse(self, code: int, text: str) -> None:
        if self.closed:
            return
        self.log.warn("api control connection refused: {text} pid={pid} uid={uid}", text=text,
                      pid=self.creds.pid if self.creds else None, uid=self.creds.uid if self.creds else None)
        self._reply(wire.Kind.ERROR, {wire.Tag.ERRNO: code, wire.Tag.TEXT: text})
        self.closed = True
        self._close_fds()
        if self.transport is not None:
            # A paused producer would be resumed instead of disconnected once the buffer
            # drains (Twisted's doWrite): stop producing first, or the connection never ends.
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.transport.loseConnection()

    def _close_fds(self) -> None:
        for fd in self.fds:
            close_fd(fd)
        self.fds = []


class _AcceptedStream(TLSStream):
    """Server-side TLS on a connection accepted for a program; tells its session the
    addresses once the transport exists."""

    session: Optional[TLSSession] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        session, self.session = self.session, None  # no cycle: freed by reference counting
        if session is not None:
            session._note_addresses()
            session.target = f"{session.peer[0]}:{session.peer[1]}"


class Listener:
    """A program's listening socket, taken over: connections accepted in a thread of their
    own (handover.Acceptor), handshakes here, verified connections to the program (ACCEPTED +
    carrier).  Once `backlog` of them wait for the program's ACK, accepting pauses."""

    def __init__(self, control: Control, ctx: SSL.Context, settings: Settings, sock: socket.socket,
                 backlog: int) -> None:
        self.control = control
        self.backlog = backlog
        self.ctx = ctx
        self.settings = settings
        self.factory = control.factory
        self.unacked = 0
        self.pending: set[TLSSession] = set()
        self.closed = False
        self.acceptor = Acceptor(self.factory.reactor, sock, self.accepted)
        self.factory.active.add(self)
        self.acceptor.start()

    def accepted(self, conn: socket.socket) -> None:
        """In the reactor thread: one connection from the acceptor (a file nobody else holds)."""
        try:
            if (self.closed or len(self.pending) >= _MAX_HANDSHAKES
                    or len(self.factory.active) >= self.factory.api.max_sessions):
                return  # closed below: the client sees its connection end at once
            conn.setblocking(False)
            no_linger(conn)  # inherited from the program's listening socket: close() must not wait
            self.factory.reactor.adoptStreamConnection(conn.fileno(), conn.family, OneShotFactory(
                self._stream()))
        except OSError as e:
            self.control.log.warn("api listener: cannot take a connection: {e}", e=e)
        finally:
            conn.close()  # the reactor holds its own duplicate

    def _stream(self) -> TLSStream:
        check = ClientCheck(required=self.settings.request_peer_auth, min_rsa_bits=self.factory.policy.min_rsa_bits)
        conn = SSL.Connection(self.ctx, None)
        conn.set_app_data(check)
        stream = _AcceptedStream(conn, check, server=True)
        assert self.control.creds is not None
        session = TLSSession(reactor=self.factory.reactor, policy=self.factory.policy, settings=self.settings,
                             limits=self.factory.limits, creds=self.control.creds, op="accept",
                             active=self.factory.active)
        session.on_ready = self._ready
        session.on_end = self.pending.discard
        session.start_accepted(stream, check)
        self.pending.add(session)
        stream.session = session
        return stream

    def _ready(self, session: TLSSession) -> None:
        self.pending.discard(session)
        session.on_end = None
        if self.closed or self.control.closed:
            session.fail("shutdown", "the program closed its listening socket")
            return
        try:
            carrier, program_end = adopt_carrier(self.factory.reactor, session)
        except OSError as e:
            session.fail("no-carrier", f"cannot make the carrier connection: {e.strerror or e}")
            return
        host, port = session.peer
        self.control._hand(program_end, wire.Kind.ACCEPTED, {
            wire.Tag.PEER_HOST: host, wire.Tag.PEER_PORT: port,
            wire.Tag.LOCAL_HOST: session.local[0], wire.Tag.LOCAL_PORT: session.local[1], **session.info_attrs})
        session.splice(carrier)
        self.unacked += 1
        if self.unacked >= self.backlog:
            self.acceptor.pause(True)

    def acked(self) -> None:
        self.unacked -= 1
        if self.unacked < self.backlog and not self.closed:
            self.acceptor.pause(False)

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.factory.active.discard(self)
        self.acceptor.stop()
        for session in list(self.pending):
            session.on_end = None
            session.fail("shutdown", why)
        self.pending.clear()

    def shut_down(self) -> None:
        self.close("daemon stopping")


def prepare_socket_path(api: Api) -> None:
    """Make the socket's directory; remove a stale socket file (nobody answers on it)."""
    path = api.socket
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: its daemon is gone
        else:
            raise OSError(errno.EADDRINUSE, f"another daemon already serves {path}")
        finally:
            probe.close()


def secure_socket_path(api: Api) -> None:
    """Apply the configured mode and group once the socket exists."""
    if api.group is not None:
        import grp

        os.chown(api.socket, -1, grp.getgrnam(api.group).gr_gid)
    os.chmod(api.socket, api.mode)
