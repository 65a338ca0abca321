"""The outbound face for connections the client library hands over (REDIRECT), not iptables.

A program run under `ssaproxy run` connects a plain TCP socket to a destination one of the
outbound routes covers; the library passes that socket to the API (docs/api.md, REDIRECT), which
parks it, completes it to a socket of the daemon's own and gives that socket here with the
destination the program asked for.  From then on it is an `OutboundConnection` like any that
iptables redirected: the same route, the same `policy.decide` (with one more fact, the name the
program resolved, for `hostname_from = "resolved"`), verification, sniffing, metrics and log
record, which also names the program (pid, uid, gid, executable from the control connection's
SO_PEERCRED).  The API face cannot import this face (the faces stay independent); the wiring
(`ssaproxy.service`, `ssaproxy.reload`) gives it a `Handover`.
"""

from __future__ import annotations

import socket
from typing import Callable, ClassVar, Optional

from ssaproxy.addresses import IPAddress, host_port, normalize, plain_address
from ssaproxy.config import Profile, Route
from ssaproxy.kernel import Creds
from ssaproxy.outbound import ClientEnd, OutboundConnection, OutboundFactory
from ssaproxy.streams import OneShotFactory

__all__ = ["Handover", "ProgramConnection"]


class ProgramConnection(OutboundConnection):
    """A connection handed over by a program's library: its original destination is what the
    program asked for, its profile the one the API chose for the program's credentials."""

    log_format: ClassVar[str] = OutboundConnection.log_format.replace(
        " bytes_out=", " via=api pid={pid} uid={uid} gid={gid} exe={exe} resolved={resolved} bytes_out=")

    def __init__(self, factory: OutboundFactory, near: ClientEnd, destination: tuple[IPAddress, int],
                 name: Optional[str], creds: Creds, profile: Optional[Profile],
                 on_finish: Optional[Callable[[], None]]) -> None:
        super().__init__(factory, near)
        self.orig = (normalize(destination[0]), destination[1])
        self.resolved = name
        self.creds = creds
        self.profile = profile
        self.on_finish = on_finish  # the program's API session slot back, once

    def near_ready(self) -> None:
        near = self.near
        assert near is not None
        peer = near.tcp.getPeer()
        self.client = host_port(plain_address(getattr(peer, "host", "")), getattr(peer, "port", 0))
        if self.admit(self.config.outbound.max_connections):
            self.route_and_act()

    def ended(self, outcome: str, detail: Optional[str]) -> None:
        on_finish, self.on_finish = self.on_finish, None
        try:
            super().ended(outcome, detail)
        finally:
            if on_finish is not None:
                on_finish()

    def record(self, outcome: str, detail: Optional[str]) -> dict[str, object]:
        return {**super().record(outcome, detail), "via": "api", "resolved": self.resolved, **self.creds.fields()}


# One numbering of "conn N" in the log for both kinds of outbound connection.
ProgramConnection._ids = OutboundConnection._ids  # noqa: SLF001


class Handover:
    """What the API face sees of the outbound face: the routes in force, and `take`."""

    def __init__(self, factory: OutboundFactory) -> None:
        self.factory = factory

    @property
    def routes(self) -> tuple[Route, ...]:
        return self.factory.config.outbound.routes

    def route(self, ip: IPAddress, port: int) -> Optional[Route]:
        """The route a connection to (ip, port) takes: the outbound face's own match."""
        return self.factory.config.outbound.match(normalize(ip), port)

    def take(self, sock: socket.socket, destination: tuple[IPAddress, int], *, name: Optional[str], creds: Creds,
             profile: Optional[Profile], on_finish: Optional[Callable[[], None]] = None) -> None:
        """Run `sock` (the daemon's connected end, which nobody else holds) as a connection
        redirected to `destination`.  `sock` stays the caller's to close (the reactor takes
        a duplicate).  OSError: the reactor could not take it (nothing was started)."""
        end = ClientEnd()
        conn = ProgramConnection(self.factory, end, destination, name, creds, profile, on_finish)
        end.owner = conn
        sock.setblocking(False)
        try:
            self.factory.reactor.adoptStreamConnection(sock.fileno(), sock.family, OneShotFactory(end))
        except BaseException:
            conn.on_finish = None  # the caller gives the session back: nothing was started
            conn.finish("overload", "the reactor could not take the socket", reset_near=False)
            raise
