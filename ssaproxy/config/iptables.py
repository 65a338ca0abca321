"""The `[iptables]` table: what the generated rules never redirect."""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs

from ssaproxy.config.reader import Reader
from ssaproxy.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen(kw_only=True)
class Iptables:
    """What the generated rules never redirect, besides the daemon's own traffic."""

    exclude_cidrs: tuple[Network, ...] = ()  # out: destinations; in: sources
    exclude_ports: tuple[int, ...] = ()  # outbound destination ports


def parse_iptables(r: Reader) -> Iptables:
    raw_cidrs: list[Any] = r.take("exclude_cidrs", list, [])
    cidrs: list[Network] = []
    for text in raw_cidrs:
        r.check("exclude_cidrs", isinstance(text, str), "must be an array of CIDR strings")
        try:
            cidrs.append(ipaddress.ip_network(text, strict=True))
        except ValueError as e:
            raise ConfigError(r.key("exclude_cidrs"), f"not a CIDR network: {e}") from None
    ports = r.ports("exclude_ports", r.take("exclude_ports", list, []))
    r.done()
    return Iptables(exclude_cidrs=tuple(cidrs), exclude_ports=ports)
