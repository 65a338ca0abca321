"""The `[outbound]` table and its `[[outbound.route]]` rules: transparent outbound upgrade.

A route's `client_certificate` and `client_key` are only paths here; `ssaproxy.tls.load`
reads them (and names these keys if they do not load).
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

from ssaproxy.config.endpoints import IPAddress, is_valid_hostname, parse_listener
from ssaproxy.config.enums import ACTIONS, HOSTNAME_SOURCES, REVOCATION_MODES, Action, HostnameSource
from ssaproxy.config.reader import Network, Reader
from ssaproxy.errors import ConfigError


def _action(value: str) -> Action:
    return Action(value)


def _hostname_source(value: Optional[str]) -> Optional[HostnameSource]:
    return None if value is None else HostnameSource(value)


@attrs.frozen(kw_only=True)
class Route:
    """One outbound rule; the first whose destination and port match wins."""

    name: str
    destination: Network
    ports: tuple[int, ...] = ()  # empty: every port
    action: Action = attrs.field(default=Action.UPGRADE, converter=_action)
    tls_port: Optional[int] = None  # None: the original port
    hostname: Optional[str] = None
    hostname_from: Optional[HostnameSource] = attrs.field(default=None, converter=_hostname_source)
    client_certificate: Optional[str] = None  # an identity to present upstream (mTLS)
    client_key: Optional[str] = None
    session_resumption: Optional[bool] = None  # None: policy.session_resumption
    revocation: Optional[str] = None  # None: [policy] revocation

    def matches(self, ip: IPAddress, port: int) -> bool:
        return (
            ip.version == self.destination.version
            and ip in self.destination
            and (not self.ports or port in self.ports)
        )


@attrs.frozen(kw_only=True)
class Outbound:
    listen: tuple[str, ...] = ("tcp:15001:interface=127.0.0.1",)
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    sniff_timeout: float = 5.0
    max_header_bytes: int = 8192
    max_connections: int = 10000
    idle_timeout: float = 3600.0  # a relay with no bytes either way this long is reset; 0: never
    routes: tuple[Route, ...] = ()

    def match(self, ip: IPAddress, port: int) -> Optional[Route]:
        for route in self.routes:
            if route.matches(ip, port):
                return route
        return None


def parse_outbound(r: Reader) -> Outbound:
    d = Outbound()
    listen_raw: str | list[Any] = r.take("listen", (str, list), list(d.listen), "a string or an array of strings")
    listen = (listen_raw,) if isinstance(listen_raw, str) else tuple(listen_raw)
    r.check("listen", bool(listen) and all(isinstance(x, str) and x for x in listen),
            "must be a Twisted server endpoint string, or a non-empty array of them")
    listeners = [parse_listener(x) for x in listen]
    connect_timeout = r.timeout("connect_timeout", d.connect_timeout)
    handshake_timeout = r.timeout("handshake_timeout", d.handshake_timeout)
    sniff_timeout = r.timeout("sniff_timeout", d.sniff_timeout)
    max_header = r.bounded("max_header_bytes", d.max_header_bytes, 256, 65536)
    max_conns = r.bounded("max_connections", d.max_connections, 1, 1_000_000)
    idle = r.idle("idle_timeout", d.idle_timeout)
    routes: list[Route] = []
    for i, table in enumerate(r.tables("route", "an array of tables ([[outbound.route]])")):
        route = parse_route(table, i)
        if route.name in {x.name for x in routes}:
            raise ConfigError(table.key("name"), f"duplicate route name {route.name!r}")
        routes.append(route)
    for family in {route.destination.version for route in routes}:
        r.check("listen", any(x.family == family for x in listeners),
                f"routes for IPv{family} destinations need a {'tcp6' if family == 6 else 'tcp'} listener "
                "(REDIRECT delivers them to the loopback address of their own family)")
    r.done()
    return Outbound(listen=listen, connect_timeout=connect_timeout, handshake_timeout=handshake_timeout,
                    max_connections=max_conns, idle_timeout=idle,
                    sniff_timeout=sniff_timeout, max_header_bytes=max_header, routes=tuple(routes))


def parse_route(r: Reader, index: int) -> Route:
    name = r.name(f"route{index}")
    dest_raw: Optional[str] = r.take("destination", str, None)
    r.check("destination", dest_raw is not None, "is required (a CIDR such as 10.0.0.0/8 or ::/0)")
    assert dest_raw is not None
    destination = r.network("destination", dest_raw)
    ports_raw: Optional[list[Any]] = r.take("ports", list, None)
    if ports_raw is not None:
        r.check("ports", bool(ports_raw), "must list at least one port (omit the key for every port)")
    ports = r.ports("ports", ports_raw or [])
    action: str = r.one_of("action", r.take("action", str, Action.UPGRADE.value), ACTIONS)
    tls_port: Optional[int] = r.take("tls_port", int, None)
    if tls_port is not None:
        r.port("tls_port", tls_port)
    hostname: Optional[str] = r.take("hostname", str, None)
    hostname_from: Optional[str] = r.take("hostname_from", str, None)
    client_cert: Optional[str] = r.take("client_certificate", str, None)
    client_key: Optional[str] = r.take("client_key", str, None)
    resumption: Optional[bool] = r.take("session_resumption", bool, None)
    r.check("client_key" if client_cert else "client_certificate", (client_cert is None) == (client_key is None),
            "client_certificate and client_key go together")
    revocation: Optional[str] = r.take("revocation", str, None)
    if revocation is not None:
        r.one_of("revocation", revocation, REVOCATION_MODES)
    if hostname is not None:
        r.check("hostname", is_valid_hostname(hostname), f"not a valid DNS name: {hostname!r}")
        r.check("hostname", hostname_from is None, "give either hostname or hostname_from, not both")
    if hostname_from is not None:
        r.one_of("hostname_from", hostname_from, HOSTNAME_SOURCES)
    if action == Action.UPGRADE:
        r.check("hostname", hostname is not None or hostname_from is not None,
                "an upgrade route needs hostname or hostname_from (the name to verify)")
    else:
        for key, value in (("hostname", hostname), ("hostname_from", hostname_from), ("tls_port", tls_port),
                           ("client_certificate", client_cert), ("session_resumption", resumption),
                           ("revocation", revocation)):
            r.check(key, value is None, f"only applies to action = \"upgrade\", not {action!r}")
    r.done()
    return Route(name=name, destination=destination, ports=ports, action=Action(action), tls_port=tls_port,
                 hostname=hostname.rstrip(".") if hostname else None,
                 hostname_from=HostnameSource(hostname_from) if hostname_from is not None else None,
                 client_certificate=client_cert, client_key=client_key, session_resumption=resumption,
                 revocation=revocation)
