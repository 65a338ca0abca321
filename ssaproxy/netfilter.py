"""iptables rules for transparent outbound mode: pure generation, plus apply/remove.

Rules live in ssaproxy's own nat chain (`SSAPROXY_OUTPUT`), reached by a single jump from
OUTPUT, so removing them never touches anything an admin wrote.  The daemon's own uid is
excluded with an owner match first, so its upstream connections are not redirected back to
it; loopback destinations are excluded too (local services are not upgraded).  Routes are
emitted in config order, so iptables selects the same connections the daemon's first-match
routing then classifies.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Optional, Sequence

import attrs

from ssaproxy.config import Config, Route
from ssaproxy.errors import ConfigError

CHAIN = "SSAPROXY_OUTPUT"
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
_TOOLS = {4: "iptables", 6: "ip6tables"}
_MULTIPORT_MAX = 15


@attrs.frozen
class Listener:
    family: int  # 4 or 6
    port: int
    interface: Optional[str]


def parse_listener(description: str) -> Listener:
    """Family and port of a Twisted server endpoint string ("tcp:15001:interface=127.0.0.1")."""
    parts = _split_endpoint(description)
    kind = parts[0]
    if kind not in ("tcp", "tcp6"):
        raise ConfigError("outbound.listen", f"transparent mode needs a tcp or tcp6 endpoint, got {description!r}")
    positional = [p for p in parts[1:] if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port_text = keywords.get("port") or (positional[0] if positional else "")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError("outbound.listen", f"no usable port in {description!r}")
    interface = keywords.get("interface") or (positional[2] if len(positional) > 2 else None)
    family = 6 if kind == "tcp6" or (interface is not None and ":" in interface) else 4
    return Listener(family=family, port=int(port_text), interface=interface)


def _split_endpoint(description: str) -> list[str]:
    parts, current, i = [], "", 0
    while i < len(description):
        ch = description[i]
        if ch == "\\" and i + 1 < len(description):
            current += description[i + 1]
            i += 2
            continue
        if ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    parts.append(current)
    return parts


def _port_groups(route: Route) -> list[list[str]]:
    if not route.ports:
        return [[]]
    ports = [str(p) for p in route.ports]
    return [["-m", "multiport", "--dports", ",".join(ports[i:i + _MULTIPORT_MAX])]
            for i in range(0, len(ports), _MULTIPORT_MAX)]


def rules(config: Config, uid: int) -> list[list[str]]:
    """The argv of every command that installs the rules, in order (after `remove`)."""
    listeners = [parse_listener(d) for d in config.outbound.listen]
    out: list[list[str]] = []
    for family in (4, 6):
        routes = [r for r in config.outbound.routes if r.destination.version == family]
        if not routes:
            continue
        listener = next((x for x in listeners if x.family == family), None)
        if listener is None:
            raise ConfigError("outbound.listen",
                              f"routes for IPv{family} destinations need a {'tcp6' if family == 6 else 'tcp'} "
                              "listener to redirect to")
        tool = [_TOOLS[family], "-w", "-t", "nat"]
        out.append(tool + ["-N", CHAIN])
        out.append(tool + ["-A", CHAIN, "-m", "owner", "--uid-owner", str(uid), "-j", "RETURN"])
        out.append(tool + ["-A", CHAIN, "-d", _LOOPBACK[family], "-j", "RETURN"])
        for route in routes:
            for ports in _port_groups(route):
                out.append(tool + ["-A", CHAIN, "-p", "tcp", "-d", str(route.destination), *ports,
                                   "-m", "comment", "--comment", f"ssaproxy route {route.name}",
                                   "-j", "REDIRECT", "--to-ports", str(listener.port)])
        out.append(tool + ["-A", "OUTPUT", "-p", "tcp", "-j", CHAIN])
    return out


def removal(config: Config) -> list[list[str]]:
    """Commands that remove everything `rules` installs; each may fail if already gone."""
    out = []
    for family in (4, 6):
        if any(r.destination.version == family for r in config.outbound.routes):
            tool = [_TOOLS[family], "-w", "-t", "nat"]
            out += [tool + ["-D", "OUTPUT", "-p", "tcp", "-j", CHAIN], tool + ["-F", CHAIN], tool + ["-X", CHAIN]]
    return out


def render(commands: Sequence[Sequence[str]]) -> str:
    return "".join(shlex.join(c) + "\n" for c in commands)


def apply(config: Config, uid: int) -> None:
    """Install the rules; running it twice leaves the same rules (it removes first)."""
    remove(config)
    for argv in rules(config, uid):
        subprocess.run(argv, check=True, capture_output=True, text=True)


def remove(config: Config) -> None:
    for argv in removal(config):
        # Delete the jump as often as it appears (bounded), then the chain; absent pieces are fine.
        for _ in range(64 if argv[4] == "-D" else 1):
            if subprocess.run(argv, capture_output=True).returncode != 0:
                break
