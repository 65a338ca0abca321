"""A program's listening socket, taken over by the daemon (LISTEN): connections accepted in a
thread of their own (handover.Acceptor), their TLS handshakes in the reactor, and each verified
connection handed to the program as ACCEPTED with a carrier, through the control connection
that owns the listener (`ssaproxy.api.server.Control`).  Its sessions count against the
program's user's fair share like any other (`quota`).
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from OpenSSL import SSL

from ssaproxy.addresses import host_port
from ssaproxy.api.carrier import Carrier
from ssaproxy.api.handover import Acceptor, no_linger
from ssaproxy.api.quota import Resource
from ssaproxy.api.session import TLSSession, adopt_carrier
from ssaproxy.api.settings import ApiError, Settings
from ssaproxy.proto import connection as c
from ssaproxy.proto import wire
from ssaproxy.streams import OneShotFactory
from ssaproxy.tls.connection import server_stream
from ssaproxy.tls.revcheck import for_connection
from ssaproxy.tls.stream import TLSStream
from ssaproxy.tls.verify import ClientCheck

_MAX_HANDSHAKES = 256  # per listener: TLS handshakes in progress


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

    def __init__(self, control: Any, ctx: SSL.Context, settings: Settings, sock: socket.socket,
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
        try:
            self.acceptor.start()  # first: if its thread cannot start, nothing was counted
        except RuntimeError:  # no thread to be had: the socket is ours to close
            sock.close()
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
        self.pending.discard(session)
        session.on_end = None
        if self.closed or self.control.closed:
            session.fail("shutdown", "the program closed its listening socket")
            return
        why = self.factory.ledger.over(self.control.uid, Resource.FDS, 1)
        if why is not None:  # the program is not taking its connections (no ACKs)
            self._refused(f"an accepted connection: too many descriptors in flight: {why}")
            session.fail("overload", why)
            return
        try:
            carrier, program_end = adopt_carrier_or_fail(self.factory.reactor, session)
        except OSError:
            return
        info = {tag - wire.INFO_BASE: raw for tag, raw in session.info_attrs.items()}
        self.control._hand(program_end, c.Accepted(session.peer, session.local, info, program_end.fileno()))
        self.control._recharge()  # within the share: checked above
        session.splice(carrier)
        self.unacked += 1
        if self.unacked >= self.backlog:
            self.acceptor.pause(True)

    def _refused(self, detail: str) -> None:
        self.control.log.warn("api listener refused {detail} conn_id={conn_id} pid={pid} uid={uid} gid={gid} exe={exe}",
                              detail=detail, conn_id=self.control.control_id, **self.control._who())

    def acked(self) -> None:
        self.unacked -= 1
        if self.unacked < self.backlog and not self.closed:
            self.acceptor.pause(False)

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
        for session in list(self.pending):
            session.on_end = None
            session.fail("shutdown", why)
        self.pending.clear()

    def shut_down(self) -> None:
        self.close("daemon stopping")


def adopt_carrier_or_fail(reactor: Any, session: TLSSession) -> tuple[Carrier, socket.socket]:
    """`adopt_carrier`, or the session failed as "no-carrier" and the OSError raised."""
    try:
        return adopt_carrier(reactor, session)
    except OSError as e:
        session.fail("no-carrier", f"cannot make the carrier connection: {e.strerror or e}")
        raise
