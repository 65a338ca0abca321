"""What the API's requests do: CONNECT (the program's parked socket held, the result on the control
connection), UPGRADE (a carrier in place of the program's socket), LISTEN (the program's two
listening sockets served), and the sessions and TLS contexts they start.  A mixin of
`ssaproxy.api.server.Control`, which owns the connection's I/O, deadlines and shares."""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
from typing import Any, Optional

from OpenSSL import SSL

from ssaproxy.api.carrier import Carrier, Parked
from ssaproxy.api.handover import close_fd, take
from ssaproxy.api.listener import Listener, adopt_carrier_or_fail, check_listening
from ssaproxy.api.quota import Resource
from ssaproxy.api.session import Creds, TLSSession, identity_of
from ssaproxy.api.settings import ApiError, Settings, client_context, server_context
from ssaproxy.config import Policy, Profile, is_valid_hostname
from ssaproxy.proto import connection as c
from ssaproxy.proto import wire
from ssaproxy.tls.reasons import ssl_text

_MIN_BACKLOG, _MAX_BACKLOG = 16, 128  # deliveries in flight per listener: BACKLOG within these


class Requests:
    """The request handlers of a control connection (see the module docstring)."""

    # What the control connection (ssaproxy.api.server.Control) provides.
    factory: Any
    conn: c.Connection
    settings: Settings
    policy: Policy
    profile: Optional[Profile]
    creds: Optional[Creds]
    uid: int
    transport: Any
    closed: bool
    handed: list[socket.socket]
    listener: Optional[Listener]
    pending: Optional[TLSSession]

    def _reply(self, event: c.Event) -> None:
        raise NotImplementedError

    def _disarm(self, *names: str) -> None:
        raise NotImplementedError

    def _connect(self, event: c.Connect) -> None:
        sock = take(event.fd)
        try:
            self._check_connect(event)
            self._program_socket(sock)
            self._context(server=False)  # refused now, not after OK
            self.factory.check_accepting()
            why = self.factory.ledger.over(self.uid, Resource.SESSIONS, 1)
            if why is not None:
                raise ApiError(errno.EAGAIN, f"too many TLS sessions open: {why}")
        except BaseException:
            sock.close()
            raise
        parked = Parked(self.factory.parking, sock, self._result, self.factory.reactor)  # owns sock now
        try:
            session = self._session("connect", self.settings)
        except BaseException:
            parked.abandon()
            raise
        self._reply(c.Ok())
        self.pending = session
        session.start_connect(parked, event.host, event.port, event.family)

    def _program_socket(self, sock: socket.socket) -> None:
        """CONNECT's descriptor: a TCP socket, not connected, not listening, in our network
        namespace, parked by the library (SYN_SENT)."""
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) \
                or sock.proto not in (0, socket.IPPROTO_TCP):
            raise ApiError(errno.EINVAL, "CONNECT needs a TCP socket")
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ApiError(errno.EINVAL, "the socket passed with CONNECT is listening")
        try:
            sock.getpeername()
        except OSError:
            pass
        else:
            raise ApiError(errno.EISCONN, "the socket passed with CONNECT is connected already")
        if not self.factory.parking.same_netns(sock):
            raise ApiError(errno.EXDEV, "the program is in another network namespace than the daemon")
        try:
            self.factory.parking.check(sock)  # only looks: the library parked it (docs/api.md)
        except OSError:
            raise ApiError(errno.EINVAL, "the socket was not parked (the library connects it to the parking "
                                         "address from WELCOME before CONNECT)") from None

    def _result(self, event: c.Event) -> None:
        """A CONNECT's result (ESTABLISHED or ERROR), sent now (not queued: the program's socket
        is completed right after, and the frame must be there first); then this connection's
        job is done, and it is closed."""
        self.pending = None
        if self.closed or self.transport is None:
            raise ConnectionError("the control connection is gone")
        frame = self.conn.send(event)
        transport: Any = self.transport
        if not transport.dataBuffer and not transport._tempDataLen and not getattr(transport, "_sendmsgQueue", None):
            try:
                sent = transport.socket.send(frame, socket.MSG_DONTWAIT)
            except OSError:
                sent = 0
            frame = frame[sent:]
        if frame:
            transport.write(frame)
        self.closed = True
        self._disarm()
        transport.unregisterProducer()
        transport.loseConnection()

    def _check_connect(self, event: c.Connect) -> None:
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
        socks: list[socket.socket] = []
        try:
            for i, fd in enumerate(event.fds):
                try:
                    socks.append(take(fd))
                except ApiError:
                    for rest in event.fds[i + 1:]:
                        close_fd(rest)
                    raise
            public, loopback = socks
            for sock in socks:
                check_listening(sock, self.factory.parking)
            if public.family != loopback.family:
                raise ApiError(errno.EINVAL, "LISTEN's two sockets are of different families")
            self.factory.check_accepting()
            self._check_listener_shares()
            ctx = self._context(server=True)
            backlog = max(_MIN_BACKLOG, min(event.backlog, _MAX_BACKLOG))
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        token = os.urandom(wire.TOKEN_SIZE)
        self.listener = Listener(self, ctx, self.settings, public, loopback, backlog, token)  # owns both now
        self._reply(c.Ok(token))

    def _check_listener_shares(self) -> None:
        """The daemon's listening sockets, all users together, and each user's share: half of
        them, as for every other limit, so that one user cannot take every slot."""
        listeners = self.factory.caps.listeners
        serving = [x for x in self.factory.active if isinstance(x, Listener)]
        if len(serving) >= listeners:
            raise ApiError(errno.EAGAIN, f"the daemon serves {listeners} listening sockets already")
        uid = self.creds.uid if self.creds is not None else None
        share = max(1, listeners // 2)
        if sum(getattr(x.control.creds, "uid", None) == uid for x in serving) >= share:
            raise ApiError(errno.EAGAIN, f"this user's programs serve {share} listening sockets already "
                                         f"(each user's share: half of the daemon's {listeners})")

    def _context(self, *, server: bool) -> SSL.Context:
        """The TLS context for these settings; EINVAL (nothing started) if OpenSSL refuses them,
        say a certificate whose key is below the policy's security level."""
        try:
            if server:
                return server_context(self.settings, self.policy)
            return client_context(self.settings, self.policy, identity_of(self.profile))
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - OpenSSL's verdict on the program's material
            why = ssl_text(e) or type(e).__name__
            raise ApiError(errno.EINVAL, f"the TLS settings cannot be used: {why}") from None

    # ---- helpers
    def _start(self, op: str) -> tuple[TLSSession, Carrier]:
        """UPGRADE: a session and its carrier, the program's end sent with CARRIER; or ApiError."""
        self.factory.check_accepting()
        why = self.factory.ledger.over(self.uid, Resource.FDS, 1)
        if why is not None:
            raise ApiError(errno.EAGAIN, f"too many descriptors in flight: {why}")
        session = self._session(op, self.settings)
        try:
            carrier, program_end = adopt_carrier_or_fail(self.factory.reactor, session)
        except OSError as e:
            raise ApiError(errno.EAGAIN if e.errno in (errno.EMFILE, errno.ENFILE) else errno.EIO,
                           f"the daemon cannot make a carrier connection: {e.strerror or e}") from None
        self._hand(program_end, c.Carrier(program_end.fileno()))
        return session, carrier

    def _owner(self) -> tuple[int, Optional[str]]:
        """Whose TLS_CONTEXT ids these are: the uid, under its profile (one profile's settings
        are checked against its policy, and must not reach a program under another)."""
        return self.uid, self.profile.name if self.profile is not None else None

    def _session(self, op: str, settings: Settings) -> TLSSession:
        """A session, holding one of its uid's sessions until it ends; ApiError(EAGAIN) if none is left."""
        assert self.creds is not None
        ledger = self.factory.ledger
        why = ledger.take(self.uid, Resource.SESSIONS)
        if why is not None:
            raise ApiError(errno.EAGAIN, f"too many TLS sessions open: {why}")
        try:
            session = TLSSession(reactor=self.factory.reactor, policy=self.policy, settings=settings,
                                 limits=self.factory.limits, creds=self.creds, op=op, active=self.factory.active,
                                 profile=self.profile)
        except BaseException:
            ledger.give(self.uid, Resource.SESSIONS)
            raise
        session.on_finish = functools.partial(ledger.give, self.uid, Resource.SESSIONS)
        return session

    def _hand(self, program_end: socket.socket, event: c.Carrier) -> None:
        """Send `program_end` with its frame; it stays open here until the program has it."""
        assert self.transport is not None
        frame = self.conn.send(event)
        self.handed.append(program_end)
        self.transport.sendFileDescriptor(program_end.fileno())
        self.transport.write(frame)
