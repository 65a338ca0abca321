"""Checks across tables: the listening addresses of `[outbound]`, each `[[profile]]`,
`[[inbound]]` and `[admin]` taken together (a profile's listener covers its families on a port
of its own; no two listeners the kernel would refuse to bind together)."""

from __future__ import annotations

import ipaddress
from typing import Optional

from ssaproxy.config.endpoints import IPAddress, ListenAddress, parse_listener
from ssaproxy.config.host import Admin
from ssaproxy.config.inbound import Inbound
from ssaproxy.config.outbound import Outbound
from ssaproxy.config.profiles import Profile
from ssaproxy.errors import ConfigError


def check_listeners(outbound: Outbound, inbound: tuple[Inbound, ...], admin: Optional[Admin],
                    profiles: tuple[Profile, ...]) -> None:
    """The listeners of every table, together."""
    _profile_listeners(outbound, profiles)
    _no_shared_ports(outbound, inbound, admin, profiles)


def _profile_listeners(outbound: Outbound, profiles: tuple[Profile, ...]) -> None:
    """A profile's listener takes its programs' redirected connections for every routed address
    family (else the general rule would quietly give them the admin's policy), on a port of its
    own (the daemon tells profiles apart by the port a connection arrived on)."""
    general = {parse_listener(x).port for x in outbound.listen}
    for i, profile in enumerate(profiles):
        if not profile.listen:
            continue
        key = f"profile[{i}].listen"
        if not outbound.routes:
            raise ConfigError(key, "a profile's listener needs [[outbound.route]] tables (nothing is redirected)")
        families = {parse_listener(x).family for x in profile.listen}
        for family in sorted({r.destination.version for r in outbound.routes} - families):
            raise ConfigError(key, f"routes for IPv{family} destinations need a {'tcp6' if family == 6 else 'tcp'} "
                                   "listener in this profile too")
        clash = sorted(general & set(profile.ports))
        if clash:
            raise ConfigError(key, f"port(s) {clash} are [outbound] listen ports: a profile needs its own")


def _no_shared_ports(outbound: Outbound, inbound: tuple[Inbound, ...], admin: Optional[Admin],
                     profiles: tuple[Profile, ...] = ()) -> None:
    """Refuse two listeners the kernel would not let bind together: the same port on the same
    address, or on addresses that overlap (0.0.0.0 takes every IPv4 address; [::] takes every
    address of both families, IPv4 too, as Linux binds it by default).  The later one is named."""
    listeners = [("outbound.listen", text) for text in outbound.listen]
    listeners += [(f"profile[{i}].listen", text) for i, p in enumerate(profiles) for text in p.listen]
    listeners += [(f"inbound[{i}].listen", x.listen) for i, x in enumerate(inbound)]
    if admin is not None:
        listeners.append(("admin.listen", admin.listen))
    seen: list[tuple[str, str, ListenAddress]] = []
    for key, text in listeners:
        address = ListenAddress.parse(text, key)
        for other_key, other_text, other in seen:
            if other.port == address.port and _overlap(other.interface, address.interface):
                raise ConfigError(key, f"{text!r} and {other_key} {other_text!r} both listen on port "
                                       f"{address.port} (overlapping addresses): the daemon could bind only one")
        seen.append((key, text, address))


def _overlap(a: str, b: str) -> bool:
    """Whether binds on interface `a` and `b` (ListenAddress.interface) collide on one port."""
    x = ipaddress.ip_address(a or "0.0.0.0")
    y = ipaddress.ip_address(b or "0.0.0.0")
    return x == y or _covers(x, y) or _covers(y, x)


def _covers(wide: IPAddress, other: IPAddress) -> bool:
    return wide.is_unspecified and (wide.version == 6 or other.version == 4)
