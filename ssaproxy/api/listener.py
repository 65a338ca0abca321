"""A program's listening socket, served by the daemon (LISTEN, protocol version 2).

The program passes two listening sockets: B, bound to the address it asked for, and N, on
loopback, which the program itself accepts on.  The daemon accepts raw TLS clients on B in a
thread of its own (handover.Acceptor), handshakes and verifies them in the reactor, and for
each verified client opens a TCP connection to N's address and writes, before any plaintext,
the listener's TOKEN and one ACCEPTED frame.  N is a kernel listener, so fork() and threads in
accept() behave as on TCP; its backlog is the back-pressure, and deliveries in flight are
bounded per listener.  The daemon keeps its copies of B and N until the control connection
closes (nobody else may take N's port while deliveries may still go there).  Its sessions
count against the program's user's fair share like any other (`quota`).
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint

from ssaproxy.addresses import host_port
from ssaproxy.api.carrier import Carrier
from ssaproxy.api.handover import Acceptor, close_shared, no_linger
from ssaproxy.api.parking import Parking
from ssaproxy.api.quota import Resource
from ssaproxy.api.session import TLSSession, adopt_carrier
from ssaproxy.api.settings import ApiError, Settings
from ssaproxy.proto import events, wire
from ssaproxy.streams import OneShotFactory
from ssaproxy.tls.connection import server_stream
from ssaproxy.tls.revcheck import for_connection
from ssaproxy.tls.stream import TLSStream
from ssaproxy.tls.verify import ClientCheck

_MAX_HANDSHAKES = 256  # per listener: TLS handshakes in progress
_LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def check_listening(sock: socket.socket, parking: Parking) -> None:
    """One of LISTEN's sockets: a listening TCP socket in the daemon's network namespace."""
    if sock.type != socket.SOCK_STREAM or sock.family not in _LOOPBACK or sock.proto not in (0, socket.IPPROTO_TCP):
        raise ApiError(errno.EOPNOTSUPP, "LISTEN needs TCP sockets")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ApiError(errno.EINVAL, "a socket passed with LISTEN is not listening")
    if not parking.same_netns(sock):
        raise ApiError(errno.EXDEV, "the program is in another network namespace than the daemon")


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
    """See the module docstring.  Once `backlog` deliveries are in flight (connecting to the
    program's loopback listener, whose own queue is full), accepting on B pauses."""

    def __init__(self, control: Any, ctx: SSL.Context, settings: Settings, public: socket.socket,
                 loopback: socket.socket, backlog: int, token: bytes) -> None:
        self.control = control
        self.backlog = backlog
        self.ctx = ctx
        self.settings = settings
        self.factory = control.factory
        self.token = token
        self.loopback = loopback  # N: kept so that its port stays the program's while we may deliver
        host, port = loopback.getsockname()[:2]
        if host not in ("127.0.0.1", "::1") and not host.startswith("127."):
            loopback.close()
            public.close()
            raise ApiError(errno.EINVAL, "the listener for accepted connections must be on loopback")
        self.target = (host, port)
        self.pending: set[TLSSession] = set()  # handshaking
        self.delivering: set[TLSSession] = set()  # connecting to N
        self.closed = False
        self.acceptor = Acceptor(self.factory.reactor, public, self.accepted)
        try:
            self.acceptor.start()  # first: if its thread cannot start, nothing was counted
        except RuntimeError:  # no thread to be had: the sockets are ours to close
            public.close()
            loopback.close()
            raise
        self.factory.active.add(self)

    def accepted(self, conn: socket.socket) -> None:
        """In the reactor thread: one connection from the acceptor (a file nobody else holds)."""
        try:
            if self.closed or len(self.pending) >= _MAX_HANDSHAKES:
                return  # closed below: the client sees its connection end at once
            why = self.factory.ledger.over(self.control.uid, Resource.SESSIONS, 1)
            if why is not None:
                self._refused(f"a connection for the program's listener: too many TLS sessions: {why}")
                return
            conn.setblocking(False)
            no_linger(conn)  # inherited from the program's listening socket: close() must not wait
            stream = self._stream()
            try:
                self.factory.reactor.adoptStreamConnection(conn.fileno(), conn.family, OneShotFactory(stream))
            except OSError as e:  # its session must not hold a slot until the handshake deadline
                if stream.session is not None:
                    stream.session.fail("overload", f"cannot take the connection: {e.strerror or e}")
                raise
        except (OSError, ApiError) as e:
            self.control.log.warn("api listener: cannot take a connection: {e}", e=e)
        finally:
            conn.close()  # the reactor holds its own duplicate

    def _stream(self) -> _AcceptedStream:
        policy = self.control.policy
        check = ClientCheck(required=self.settings.request_peer_auth, min_rsa_bits=policy.min_rsa_bits)
        revocation = (for_connection(self.factory.reactor, policy, self.settings.revocation_mode(policy), "api session")
                      if self.settings.request_peer_auth else None)
        stream = server_stream(self.ctx, check, _AcceptedStream, revocation)
        session = self.control._session("accept", self.settings)
        session.on_ready = self._ready
        session.on_end = self.pending.discard
        session.start_accepted(stream, check)
        self.pending.add(session)
        stream.session = session
        return stream

    def _ready(self, session: TLSSession) -> None:
        """A verified client: connect to the program's loopback listener (N) for it."""
        self.pending.discard(session)
        if self.closed or self.control.closed:
            session.on_end = None
            session.fail("shutdown", "the program closed its listening socket")
            return
        session.on_end = self._undelivered
        self.delivering.add(session)
        self._pace()
        carrier = Carrier()
        host, port = self.target
        kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = kind(self.factory.reactor, host, port, timeout=self.factory.limits.handshake_timeout)
        d = endpoint.connect(OneShotFactory(carrier))
        d.addCallbacks(self._delivered, self._not_delivered, callbackArgs=(session,), errbackArgs=(session,))

    def _delivered(self, carrier: Carrier, session: TLSSession) -> None:
        self.delivering.discard(session)
        self._pace()
        if session.done:  # the client went away meanwhile: the program gets a reset, never a half
            carrier.abort()
            return
        session.on_end = None
        info = {tag - wire.INFO_BASE: raw for tag, raw in session.info_attrs.items()}
        frame = wire.encode(wire.Kind.ACCEPTED, events.fields_of(events.Accepted(session.peer, session.local, info)))
        carrier.write(self.token + frame)  # one write, before any plaintext
        session.splice(carrier)

    def _not_delivered(self, failure: Any, session: TLSSession) -> None:
        self.delivering.discard(session)
        self._pace()
        session.on_end = None
        session.fail("overload", f"the program's listener did not take the connection: {failure.getErrorMessage()}")

    def _undelivered(self, session: TLSSession) -> None:
        self.delivering.discard(session)
        self._pace()

    def _pace(self) -> None:
        if not self.closed:
            self.acceptor.pause(len(self.delivering) >= self.backlog)

    def _refused(self, detail: str) -> None:
        self.control.log.warn("api listener refused {detail} conn_id={conn_id} pid={pid} uid={uid} gid={gid} exe={exe}",
                              detail=detail, conn_id=self.control.control_id, **self.control._who())

    def stop_accepting(self) -> None:
        """The daemon drains: take no more connections from the program's socket; handshakes
        under way finish and are handed over as usual."""
        self.acceptor.stop()

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.factory.active.discard(self)
        self.acceptor.stop()
        close_shared(self.loopback)
        for session in list(self.pending) + list(self.delivering):
            session.on_end = None
            session.fail("shutdown", why)
        self.pending.clear()
        self.delivering.clear()

    def shut_down(self) -> None:
        self.close("daemon stopping")


def adopt_carrier_or_fail(reactor: Any, session: TLSSession) -> tuple[Carrier, socket.socket]:
    """`adopt_carrier`, or the session failed as "no-carrier" and the OSError raised."""
    try:
        return adopt_carrier(reactor, session)
    except OSError as e:
        session.fail("no-carrier", f"cannot make the carrier connection: {e.strerror or e}")
        raise
