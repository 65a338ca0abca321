"""Twisted endpoint strings and DNS names, read without touching the network.

`endpoint_facts` is shared by the outbound listeners, the inbound listeners and the inbound
backends; `parse_listener` adds what REDIRECT needs of an outbound listener.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional

import attrs

from ssaproxy.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def is_valid_hostname(name: str) -> bool:
    """A DNS name we are willing to put in SNI and verify against (no wildcards)."""
    return bool(_HOSTNAME_RE.fullmatch(name)) and not name.startswith("*")


@attrs.frozen(kw_only=True)
class Listener:
    """What the iptables rules need of an outbound listener."""

    family: int  # 4 or 6
    port: int
    interface: Optional[str]


def endpoint_facts(description: str, key: str) -> tuple[str, int, Optional[IPAddress]]:
    """Kind ("tcp" or "tcp6"), port and interface address of a Twisted TCP server endpoint
    string; errors name `key`."""
    kind, positional, keywords = endpoint_fields(description)
    if kind not in ("tcp", "tcp6"):
        raise ConfigError(key, f"needs a tcp or tcp6 endpoint, got {description!r}")
    port_text = keywords.get("port") or (positional[0] if positional else "")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
        raise ConfigError(key, f"no usable port in {description!r}")
    # Twisted's positional order: tcp:PORT:INTERFACE:BACKLOG but tcp6:PORT:BACKLOG:INTERFACE.
    slot = 1 if kind == "tcp" else 2
    interface = keywords.get("interface") or (positional[slot] if len(positional) > slot else None)
    if set(keywords) - {"port", "interface", "backlog"} or len(positional) > 3:
        raise ConfigError(key, f"cannot parse {description!r} (IPv6 addresses need their colons escaped: "
                               "interface=\\:\\:1)")
    listen_backlog(description, key)
    if interface is None:
        return kind, int(port_text), None
    try:
        return kind, int(port_text), ipaddress.ip_address(interface)
    except ValueError:
        raise ConfigError(key, f"interface {interface!r} in {description!r} is not an IP address") from None


def listen_backlog(description: str, key: str) -> Optional[int]:
    """The listen queue length the admin wrote in a listener's endpoint string (None: not given,
    the daemon uses the kernel's somaxconn)."""
    kind, positional, keywords = endpoint_fields(description)
    slot = 2 if kind == "tcp" else 1  # tcp:PORT:INTERFACE:BACKLOG, tcp6:PORT:BACKLOG:INTERFACE
    text = keywords.get("backlog") or (positional[slot] if len(positional) > slot else None)
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]{1,7}", text) or not 0 < int(text) <= 1_000_000:
        raise ConfigError(key, f"backlog {text!r} in {description!r} must be a positive integer")
    return int(text)


@attrs.frozen(kw_only=True)
class ListenAddress:
    """Where a TCP listener binds, and its queue: what Twisted's tcp/tcp6 server endpoints take."""

    port: int
    interface: str  # "" (every IPv4 address), "::" (every address, IPv4 and IPv6), or an address
    backlog: Optional[int]

    @classmethod
    def parse(cls, description: str, key: str) -> ListenAddress:
        kind, port, address = endpoint_facts(description, key)
        interface = str(address) if address is not None else "::" if kind == "tcp6" else ""
        return cls(port=port, interface=interface, backlog=listen_backlog(description, key))


def parse_listener(description: str) -> Listener:
    """Family and port of an outbound listener ("tcp:15001:interface=127.0.0.1")."""
    kind, port, address = endpoint_facts(description, "outbound.listen")
    if address is not None and not (address.is_loopback or address.is_unspecified):
        # REDIRECT in the OUTPUT chain delivers to 127.0.0.1 / ::1: anything else never sees a
        # redirected connection.
        raise ConfigError("outbound.listen", f"interface {address} would never receive redirected "
                                             "connections: listen on the loopback address (127.0.0.1 or ::1)")
    family = 6 if kind == "tcp6" or (address is not None and address.version == 6) else 4
    return Listener(family=family, port=port, interface=str(address) if address is not None else None)


def endpoint_fields(description: str) -> tuple[str, list[str], dict[str, str]]:
    """The kind, positional fields and keyword fields of an endpoint string, backslash escapes
    resolved."""
    parts: list[str] = []
    current = ""
    chars = iter(description)
    for ch in chars:
        if ch == "\\":
            current += next(chars, ch)
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts[0], [p for p in parts[1:] if "=" not in p], dict(p.split("=", 1) for p in parts[1:] if "=" in p)
