"""Redirection without iptables, for one socket: what the C library does for a plain connect()
under `ssaproxy run` (docs/api.md, ROUTES and REDIRECT), for Python programs and tests.

    table = routes()                                  # the daemon's outbound routes, once
    s = socket.socket()
    connect(s, ("192.0.2.10", 80), name="api.test", table=table)
    s.sendall(b"plaintext, leaving as verified TLS")  # if a route covers 192.0.2.10:80

A destination no route covers is an ordinary connect (no daemon involved); one a route covers
goes to the daemon, and if the daemon is absent or refuses, connect fails (ECONNREFUSED or the
daemon's errno): never a plaintext connection the admin meant to be upgraded or rejected.
Standard library only.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Optional, Union

from ssaproxy.client._io import Control, control_timeout, error
from ssaproxy.client.park import refusal, try_park, unpark
from ssaproxy.proto import connection as c

__all__ = ["ENV_ROUTES", "RouteLine", "connect", "match", "parse_routes", "redirect", "routes"]

ENV_ROUTES = "SSAPROXY_ROUTES"  # the table `ssaproxy run` passes to the program
_ACTIONS = ("upgrade", "passthrough", "reject")
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class RouteLine:
    """One line of ROUTES: `<action> <network-cidr> <port>` (port 0: any port)."""

    action: str
    network: Network
    port: int

    def covers(self, ip: Union[ipaddress.IPv4Address, ipaddress.IPv6Address], port: int) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4-mapped destination matches the IPv4 lines
        return ip.version == self.network.version and ip in self.network and self.port in (0, port)


def parse_routes(text: str) -> tuple[RouteLine, ...]:
    """The lines of a ROUTES answer (or $SSAPROXY_ROUTES); ValueError names a malformed line."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            action, network, port = parts
            entry = RouteLine(action, ipaddress.ip_network(network), int(port))
        except ValueError:
            raise ValueError(f"route line {number} is not '<action> <cidr> <port>': {line!r}") from None
        if action not in _ACTIONS or not 0 <= entry.port < 65536:
            raise ValueError(f"route line {number} is not '<action> <cidr> <port>': {line!r}")
        out.append(entry)
    return tuple(out)


def match(table: tuple[RouteLine, ...], host: str, port: int) -> Optional[RouteLine]:
    """The first line covering (host, port); None for a host that is not an IP literal."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return next((line for line in table if line.covers(ip, port)), None)


def _session(path: Optional[str]) -> Control:
    """A greeted control connection; a daemon that cannot be reached is ECONNREFUSED (never
    ENOENT, which from REDIRECT means "no route": connect directly)."""
    return Control(c.Connection(c.Role.CLIENT), path, unreachable=errno.ECONNREFUSED)


def routes(path: Optional[str] = None) -> tuple[RouteLine, ...]:
    """The daemon's outbound routes (ROUTES); OSError (ECONNREFUSED) if it does not answer."""
    return parse_routes(routes_text(path))


def routes_text(path: Optional[str] = None) -> str:
    with _session(path) as session:
        reply = session.request(c.Routes())
    assert isinstance(reply, c.Value)  # the connection allows nothing else
    return reply.value.decode("utf-8")


def redirect(sock: socket.socket, address: tuple[str, int], *, name: Optional[str] = None,
             path: Optional[str] = None) -> bool:
    """Hand the unconnected TCP socket `sock` to the daemon as a connection to `address` (an IP
    literal), as if iptables had redirected it.  True: connected (through the daemon's outbound
    face); False: no route covers `address` any more (ENOENT), `sock` is untouched.  OSError
    for anything else (`sock` unconnected, except for a failure after the daemon took it)."""
    host, port = address[0], address[1]
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    with _session(path) as session:
        unparked = try_park(sock.fileno(), session.park_ports)  # the daemon only checks it, then completes it
        try:
            session.request(c.Redirect(str(ip), port, ip.version, name), (sock.fileno(),))
        except OSError as e:
            if unparked is None:  # only what we parked: AF_UNSPEC would cut a connected socket
                unpark(sock.fileno())  # unconnected again: the program's own connect may follow
            if e.errno == errno.ENOENT:
                return False
            if unparked and e.errno == errno.EINVAL:
                raise error(e.errno, refusal(e, unparked)) from None
            raise
    _wait_connected(sock)
    return True


def _wait_connected(sock: socket.socket) -> None:
    """The daemon completed the socket before it said OK: it polls writable now (bounded wait).
    SO_ERROR is left alone: a connection the outbound face reset at once (a reject route, say)
    is connected and then reset, as with iptables, and the program's next read or write says so
    (reading SO_ERROR here would clear it, and a later read would see a clean end)."""
    deadline = time.monotonic() + control_timeout()
    poller = select.poll()  # not select(): any descriptor number, 1024 and above included
    poller.register(sock.fileno(), select.POLLOUT)
    while True:
        if poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            break
        if time.monotonic() >= deadline:
            raise error(errno.ETIMEDOUT, "the redirected socket did not become connected")


def connect(sock: socket.socket, address: tuple[str, int], *, name: Optional[str] = None,
            table: Optional[tuple[RouteLine, ...]] = None, path: Optional[str] = None) -> None:
    """connect() as a program under `ssaproxy run` makes it: `table` (default: $SSAPROXY_ROUTES,
    else asked from the daemon) says whether the daemon takes the destination."""
    if table is None:
        env = os.environ.get(ENV_ROUTES)
        table = parse_routes(env) if env is not None else routes(path)
    if match(table, address[0], address[1]) is None or not redirect(sock, address, name=name, path=path):
        sock.connect(address)
