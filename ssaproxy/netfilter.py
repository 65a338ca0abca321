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
from typing import Sequence

from ssaproxy.config import Config, Listener, Route, parse_listener

__all__ = ["CHAIN", "Listener", "parse_listener", "rules", "removal", "render", "apply", "remove"]

CHAIN = "SSAPROXY_OUTPUT"
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
_TOOLS = {4: "iptables", 6: "ip6tables"}
_MULTIPORT_MAX = 15


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
        # Config loading guarantees a listener of each routed family.
        listener = next(x for x in listeners if x.family == family)
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
