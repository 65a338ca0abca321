"""Addresses as text: the one spelling of each, and the one test of "is this an IP literal"."""

from __future__ import annotations

import functools
import ipaddress
from typing import Optional

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_version(host: str) -> Optional[int]:
    """4 or 6 for an IP literal, None for anything else (a DNS name)."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def is_ip_literal(host: str) -> bool:
    return ip_version(host) is not None


def normalize(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=4096)
def plain_address(text: str) -> str:
    """One spelling per address (IPv4-mapped IPv6 as IPv4, no zone), so 4-tuples compare
    exactly; anything that is not an address comes back as it is.  Cached: it runs several
    times per connection, and the peers of a busy daemon are few (a pure function of a str)."""
    try:
        return str(normalize(ipaddress.ip_address(text.split("%", maxsplit=1)[0])))
    except ValueError:
        return text


def host_port(host: str, port: int) -> str:
    """`host:port`, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
