"""ROUTES and REDIRECT: a program's plain TCP connect handed to the outbound face, no iptables.

Theory of operation.  `ssaproxy run` preloads the client library into an unmodified program.
The library asks ROUTES once (one text line per outbound route: `<action> <cidr> <port>`), and
for a plain connect() whose destination one of them covers it sends REDIRECT{HOST, PORT, FAMILY,
[NAME]} with the program's own, still unconnected socket N.  Here:

1. N is checked: a TCP socket, not connected, not listening, in the daemon's network namespace,
   parked by the library (SYN_SENT: `Parking.check`; the daemon never calls connect() on it).
2. The destination is looked up with the outbound face's own match (`Handover.route`): no route
   (the config changed since ROUTES) is ENOENT, and the library connects N directly, as a program
   without an iptables rule would; a `hostname_from = "resolved"` upgrade route with no NAME is
   ECONNREFUSED (never plaintext).
3. One of the program's uid's API sessions is taken (EAGAIN beyond its share), N is completed
   (`ssaproxy.api.completion`, never blocking: N becomes ESTABLISHED, exactly as a connect that
   iptables redirected to a local listener), and the daemon's end D goes to the outbound face as
   an accepted connection whose original destination is (HOST, PORT).  Only then is OK sent:
   anything that failed before is an ERROR with nothing started, and the library never reports
   success for a socket nobody serves.  The session slot comes back when that connection ends.

From D on, the decision, verification, sniffing, metrics and the log record are the outbound
face's (`ssaproxy.redirected`); the record also names the program (pid, uid, gid, exe).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import socket
import struct
from typing import Any, Callable, Optional, Protocol

from ssaproxy.addresses import IPAddress, host_port
from ssaproxy.api.completion import complete
from ssaproxy.api.handover import no_linger, take
from ssaproxy.api.parking import Parking, reset
from ssaproxy.api.quota import Ledger, Resource
from ssaproxy.api.settings import ApiError
from ssaproxy.config import Action, HostnameSource, Profile, Route, is_valid_hostname
from ssaproxy.kernel import Creds
from ssaproxy.proto import connection as c

__all__ = ["OutboundFace", "redirect", "routes_text"]

class OutboundFace(Protocol):
    """What the API sees of the outbound face (`ssaproxy.redirected.Handover`)."""

    @property
    def routes(self) -> tuple[Route, ...]: ...

    def route(self, ip: IPAddress, port: int) -> Optional[Route]: ...

    def take(self, sock: socket.socket, destination: tuple[IPAddress, int], *, name: Optional[str], creds: Creds,
             profile: Optional[Profile], on_finish: Optional[Callable[[], None]] = None) -> None: ...


def routes_text(outbound: Optional[OutboundFace]) -> bytes:
    """ROUTES' answer: `<action> <network-cidr> <port>` per route and port (0: any port), in
    the order the routes are matched."""
    lines = []
    for route in outbound.routes if outbound is not None else ():
        for port in route.ports or (0,):
            lines.append(f"{route.action.value} {route.destination.with_prefixlen} {port}\n")
    return "".join(lines).encode()


def redirect(event: c.Redirect, outbound: Optional[OutboundFace], parking: Parking, ledger: Ledger, creds: Creds,
             profile: Optional[Profile], reactor: Any, done: Callable[[Optional[ApiError]], None]) -> None:
    """Do REDIRECT (see the module docstring).  ApiError for what is refused at once; else the
    completion is started and `done(None)` (OK may be sent: the outbound face runs D) or
    `done(ApiError)` follows, maybe before this returns.  Owns `event.fd` and closes it on every
    path (the program keeps its own)."""
    sock = take(event.fd)
    try:
        destination = _destination(event, sock)
        _check(sock, parking)
        route = outbound.route(*destination) if outbound is not None else None
        if outbound is None or route is None:
            raise ApiError(errno.ENOENT, f"no outbound route covers {host_port(str(destination[0]), destination[1])}")
        name = _name(event.name, route)
        why = ledger.take(creds.uid, Resource.SESSIONS)
        if why is not None:
            raise ApiError(errno.EAGAIN, f"too many TLS sessions open: {why}")
    except BaseException:
        _close(sock)
        raise
    give = functools.partial(ledger.give, creds.uid, Resource.SESSIONS)
    face = outbound

    def completed(mine: Optional[socket.socket], why: str) -> None:
        _close(sock)
        if mine is None:
            give()
            done(ApiError(errno.EIO, f"cannot take the socket over: {why}"))
            return
        try:
            face.take(mine, destination, name=name, creds=creds, profile=profile, on_finish=give)
        except Exception as e:  # noqa: BLE001 - the outbound face refused it: an error for this program
            reset(mine)  # the program reads a reset, not an end
            give()
            done(ApiError(errno.EIO, f"the outbound face cannot take the connection: {type(e).__name__}"))
            return
        mine.close()  # the reactor holds its own duplicate
        done(None)

    complete(reactor, parking, sock, completed)


def _close(sock: socket.socket) -> None:
    """Close our copy of the program's socket.  A lingering SO_LINGER (on, with a timeout) would
    make close() wait if the program has closed its own copy meanwhile: that one is turned off;
    a reset-on-close (on, 0 s) is the program's choice and never waits, so it stays."""
    with contextlib.suppress(OSError):
        onoff, seconds = struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
        if onoff and seconds:
            no_linger(sock)
    sock.close()


def _destination(event: c.Redirect, sock: socket.socket) -> tuple[IPAddress, int]:
    if not 0 < event.port < 65536:
        raise ApiError(errno.EINVAL, f"port {event.port} out of range")
    if event.family not in (4, 6):
        raise ApiError(errno.EINVAL, f"family {event.family} unknown (REDIRECT takes 4 or 6)")
    try:
        ip = ipaddress.ip_address(event.host)
    except ValueError:
        raise ApiError(errno.EINVAL, f"{event.host!r} is not an IP address") from None
    if ip.version != event.family:
        raise ApiError(errno.EAFNOSUPPORT, f"{event.host} is not an IPv{event.family} address")
    if sock.family == socket.AF_INET and ip.version == 6:
        raise ApiError(errno.EAFNOSUPPORT, "an IPv4 socket cannot connect to an IPv6 address")
    return ip, event.port


def _check(sock: socket.socket, parking: Parking) -> None:
    """N must be a TCP socket, not connected, not listening, in our network namespace, parked."""
    try:
        tcp = (sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
               and sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP)
        listening = tcp and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as e:
        raise ApiError(errno.EINVAL, f"unusable socket: {e.strerror or e}") from None
    if not tcp:
        raise ApiError(errno.EINVAL, "REDIRECT needs a TCP socket")
    if listening:
        raise ApiError(errno.EINVAL, "the socket passed with REDIRECT is listening")
    if _connected(sock):
        raise ApiError(errno.EISCONN, "the socket passed with REDIRECT is connected already")
    if not parking.same_netns(sock):
        raise ApiError(errno.EXDEV, "the program is in another network namespace than the daemon")
    try:
        parking.check(sock)  # only looks: the library parked it (docs/api.md)
    except OSError:
        raise ApiError(errno.EINVAL, "the socket was not parked (the library connects it to the parking address "
                                     "from WELCOME before REDIRECT)") from None


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _name(given: Optional[str], route: Route) -> Optional[str]:
    """The name the program resolved, checked; ECONNREFUSED if the route needs one and there is none."""
    name = given.rstrip(".").lower() if given else None
    if name is not None and not is_valid_hostname(name):
        raise ApiError(errno.EINVAL, f"{given!r} is not a host name (letters, digits, hyphens, dots; IDNs in "
                                     "their xn-- form)")
    if route.action == Action.UPGRADE and route.hostname_from == HostnameSource.RESOLVED and name is None:
        raise ApiError(errno.ECONNREFUSED, f'no name: route {route.name!r} verifies the name the program resolved '
                                           '(hostname_from = "resolved"), and none came with this connection')
    return name
