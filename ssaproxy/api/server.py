"""The local socket API server: one control connection per program socket, on a Unix socket.

Theory of operation: a control connection speaks the framed protocol of docs/api.md, whose
rules (phases, order, descriptor pairing, version) live in one `Connection(Role.DAEMON)` of
`ssaproxy.proto.connection`: this shell feeds it bytes and descriptors, acts on the events it
gives, and writes what its `send` returns.  After HELLO it takes options, then exactly one of
CONNECT or UPGRADE (the daemon answers CARRIER with the program's end of a fresh carrier; the
session's result and then its plaintext travel on the carrier) or LISTEN (the program passes
its bound, listening TCP socket; this connection then delivers ACCEPTED frames, each with a
carrier, and takes one ACK per ACCEPTED).  Anything malformed or out of order gets an ERROR
frame and the connection is closed; other programs are not affected.  The daemon never opens
a file for a program: certificates and keys come as PEM bytes, sockets as file descriptors.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet import interfaces
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ssaproxy.addresses import host_port
from ssaproxy.api.carrier import Carrier
from ssaproxy.api.handover import Acceptor, close_fd, no_linger, take
from ssaproxy.api.session import Creds, Limits, TLSSession, adopt_carrier
from ssaproxy.api.settings import ApiError, Settings, apply, client_context, get, server_context
from ssaproxy.config import Api, Policy, is_valid_hostname
from ssaproxy.proto import connection as c
from ssaproxy.proto import wire
from ssaproxy.streams import OneShotFactory
from ssaproxy.tls.connection import server_stream
from ssaproxy.tls.stream import TLSStream, ssl_text
from ssaproxy.tls.verify import ClientCheck

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
        self.conn = c.Connection(c.Role.DAEMON)
        self.settings = Settings()
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
        if self.closed:
            close_fd(descriptor)
            return
        try:
            self.conn.receive_fds([descriptor])
        except c.RemoteProtocolError as e:
            self._refuse(e.errno, e.text)

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        if data:
            self.conn.receive_data(data)
        while not self.closed and not self.paused:
            try:
                event = self.conn.next_event()
            except c.RemoteProtocolError as e:
                self._refuse(e.errno, e.text)
                return
            if event is c.NEED_DATA:
                break
            self._handle(event)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.factory.controls -= 1
        self._close_fds()
        for sock in self.handed:
            sock.close()
        self.handed = []
        if self.listener is not None:
            self.listener.close("program closed its listening socket")

    # ---- events (the connection has checked phase, order, descriptors and version)
    def _handle(self, event: c.Event) -> None:
        try:
            self._dispatch(event)  # owns an event's fd from here on: take() and close on every path
        except ApiError as e:
            if self.conn.awaiting is not None:
                self._reply(c.Error(e.code, e.text))
            else:  # the request was answered already (CARRIER went): nothing left to say but goodbye
                self._refuse(e.code, e.text)

    def _dispatch(self, event: c.Event) -> None:
        policy = self.factory.policy
        if isinstance(event, c.Hello):
            self._reply(c.Welcome(wire.VERSION, self.control_id))
        elif isinstance(event, c.SetOption):
            self.settings = apply(self.settings, policy, event.option, event.value)
            self._reply(c.Ok())
        elif isinstance(event, c.GetOption):
            self._reply(c.Value(get(self.settings, policy, event.option)))
        elif isinstance(event, c.Connect):
            self._connect(event)
        elif isinstance(event, c.Upgrade):
            self._upgrade(event)
        elif isinstance(event, c.Listen):
            self._listen(event)
        elif isinstance(event, c.Ack):
            assert self.listener is not None and self.handed  # the connection counts ACCEPTED and ACK
            self.handed.pop(0).close()
            self.listener.acked()
        # c.ConnectionClosed: connectionLost follows

    def _connect(self, event: c.Connect) -> None:
        host, port, family = event.host, event.port, event.family
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

    def _upgrade(self, event: c.Upgrade) -> None:
        sock = take(event.fd)
        try:
            role = event.role
            if role not in (wire.ROLE_CLIENT, wire.ROLE_SERVER):
                raise ApiError(errno.EINVAL, f"role {role} unknown")
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                raise ApiError(errno.EOPNOTSUPP, "TCP_UPGRADE_TLS needs a TCP socket")
            try:
                sock.getpeername()
            except OSError:
                raise ApiError(errno.ENOTCONN, "the socket to upgrade is not connected") from None
            server = role == wire.ROLE_SERVER
            ctx = self._context(server=server)
            session, carrier = self._start("upgrade-server" if server else "upgrade-client")
            session.start_upgrade(carrier, sock, ctx if server else None)
        finally:
            sock.close()  # the reactor adopted its own duplicate

    def _listen(self, event: c.Listen) -> None:
        sock = take(event.fd)
        try:
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                raise ApiError(errno.EOPNOTSUPP, "LISTEN needs a TCP socket")
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise ApiError(errno.EINVAL, "the socket passed with LISTEN is not listening")
            if sum(isinstance(x, Listener) for x in self.factory.active) >= _MAX_LISTENERS:
                raise ApiError(errno.EAGAIN, f"the daemon serves {_MAX_LISTENERS} listening sockets already")
            ctx = self._context(server=True)
            backlog = max(_MIN_UNACKED, min(event.backlog, _MAX_UNACKED))
        except BaseException:
            sock.close()
            raise
        self.listener = Listener(self, ctx, self.settings, sock, backlog)  # its acceptor owns sock now
        self._reply(c.Ok())

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
        if len(self.factory.active) >= self.factory.api.max_sessions:
            raise ApiError(errno.EAGAIN, f"the daemon has {self.factory.api.max_sessions} TLS sessions open")
        session = self._session(op, self.settings)
        try:
            carrier, program_end = _adopt_carrier(self.factory.reactor, session)
        except OSError as e:
            raise ApiError(errno.EAGAIN if e.errno in (errno.EMFILE, errno.ENFILE) else errno.EIO,
                           f"the daemon cannot make a carrier connection: {e.strerror or e}") from None
        self._hand(program_end, c.Carrier(program_end.fileno()))
        return session, carrier

    def _session(self, op: str, settings: Settings) -> TLSSession:
        assert self.creds is not None
        return TLSSession(reactor=self.factory.reactor, policy=self.factory.policy, settings=settings,
                          limits=self.factory.limits, creds=self.creds, op=op, active=self.factory.active)

    def _hand(self, program_end: socket.socket, event: c.Carrier | c.Accepted) -> None:
        """Send `program_end` with its frame; it stays open here until the program has it."""
        assert self.transport is not None
        frame = self.conn.send(event)
        self.handed.append(program_end)
        self.transport.sendFileDescriptor(program_end.fileno())  # type: ignore[attr-defined]
        self.transport.write(frame)

    def _reply(self, event: c.Event) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(self.conn.send(event))

    def _refuse(self, code: int, text: str) -> None:
        if self.closed:
            return
        self.log.warn("api control connection refused: {text} pid={pid} uid={uid}", text=text,
                      pid=self.creds.pid if self.creds else None, uid=self.creds.uid if self.creds else None)
        self.closed = True
        self._close_fds()
        if self.transport is not None:
            self.transport.write(self.conn.refuse(code, text))
            # A paused producer would be resumed instead of disconnected once the buffer
            # drains (Twisted's doWrite): stop producing first, or the connection never ends.
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.transport.loseConnection()

    def _close_fds(self) -> None:
        for fd in self.conn.discard_fds():
            close_fd(fd)


class _AcceptedStream(TLSStream):
    """Server-side TLS on a connection accepted for a program; tells its session the
    addresses once the transport exists."""

    session: Optional[TLSSession] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        session, self.session = self.session, None  # no cycle: freed by reference counting
        if session is not None:
            session._note_addresses()
            session.target = host_port(*session.peer)


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
        stream = server_stream(self.ctx, check, _AcceptedStream)
        session = self.control._session("accept", self.settings)
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
            carrier, program_end = _adopt_carrier(self.factory.reactor, session)
        except OSError:
            return
        info = {tag - wire.INFO_BASE: raw for tag, raw in session.info_attrs.items()}
        self.control._hand(program_end, c.Accepted(session.peer, session.local, info, program_end.fileno()))
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


def _adopt_carrier(reactor: Any, session: TLSSession) -> tuple[Carrier, socket.socket]:
    """`adopt_carrier`, or the session failed as "no-carrier" and the OSError raised."""
    try:
        return adopt_carrier(reactor, session)
    except OSError as e:
        session.fail("no-carrier", f"cannot make the carrier connection: {e.strerror or e}")
        raise
