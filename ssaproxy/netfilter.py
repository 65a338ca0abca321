"""iptables rules for transparent outbound mode: pure generation, plus apply/remove.

Rules live in ssaproxy's own nat chain (`SSAPROXY_OUTPUT`), reached by a single jump from
OUTPUT, so removing them never touches anything an admin wrote.  `apply` replaces the chain
in one iptables-restore transaction per family, so there is no window without redirection.  The daemon's own uid is
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

__all__ = ["CHAIN", "Listener", "parse_listener", "chain_rules", "rules", "render", "restore_script", "apply",
           "remove"]

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


def chain_rules(config: Config, uid: int, family: int) -> list[list[str]]:
    """The rules of our chain for one address family, as arguments after `-A SSAPROXY_OUTPUT`."""
    routes = [r for r in config.outbound.routes if r.destination.version == family]
    if not routes:
        return []
    # Config loading guarantees a listener of each routed family.
    listener = next(x for x in map(parse_listener, config.outbound.listen) if x.family == family)
    out = [["-m", "owner", "--uid-owner", str(uid), "-j", "RETURN"],
           ["-d", _LOOPBACK[family], "-j", "RETURN"]]
    for route in routes:
        for ports in _port_groups(route):
            out.append(["-p", "tcp", "-d", str(route.destination), *ports,
                        "-m", "comment", "--comment", f"ssaproxy route {route.name}",
                        "-j", "REDIRECT", "--to-ports", str(listener.port)])
    return out


def rules(config: Config, uid: int) -> list[list[str]]:
    """The commands an admin would run to install the rules by hand, in order."""
    out: list[list[str]] = []
    for family in (4, 6):
        body = chain_rules(config, uid, family)
        if body:
            tool = [_TOOLS[family], "-w", "-t", "nat"]
            out.append(tool + ["-N", CHAIN])
            out += [tool + ["-A", CHAIN, *args] for args in body]
            out.append(tool + ["-A", "OUTPUT", "-p", "tcp", "-j", CHAIN])
    return out


def render(commands: Sequence[Sequence[str]]) -> str:
    return "".join(shlex.join(c) + "\n" for c in commands)


def restore_script(body: Sequence[Sequence[str]], *, add_jump: bool) -> str:
    """iptables-restore --noflush input that replaces our chain's rules in one transaction.

    Declaring the chain creates it or empties it, and the new rules go in with it atomically:
    unlike deleting and re-adding rules one command at a time, there is no moment in which
    redirected ports are not redirected (and would leave in plaintext).
    """
    lines = ["*nat", f":{CHAIN} - [0:0]"]
    lines += [_restore_line(["-A", CHAIN, *args]) for args in body]
    if add_jump:
        lines.append(_restore_line(["-A", "OUTPUT", "-p", "tcp", "-j", CHAIN]))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _restore_line(args: Sequence[str]) -> str:
    # iptables-restore knows double quotes only; route names cannot contain any (config checks).
    return " ".join(f'"{a}"' if " " in a else a for a in args)


def apply(config: Config, uid: int) -> None:
    """Install the rules for this config; idempotent.  A family without routes loses any
    chain an earlier config left behind."""
    for family in (4, 6):
        body = chain_rules(config, uid, family)
        if not body:
            _remove_family(family)
            continue
        jumps = _jump_count(family)
        _restore(family, restore_script(body, add_jump=jumps == 0))
        if jumps > 1:  # duplicates from hand-made rules: keep exactly one
            _restore(family, "*nat\n" + "".join(f"-D OUTPUT -p tcp -j {CHAIN}\n" for _ in range(jumps - 1))
                     + "COMMIT\n")


def remove(config: Config | None = None) -> None:
    """Remove our chain and its jump from both families, whatever the config routes: rules
    from an earlier config must not survive."""
    for family in (4, 6):
        _remove_family(family)


def _remove_family(family: int) -> None:
    tool = _TOOLS[family]
    if subprocess.run([tool, "-w", "-t", "nat", "-S", CHAIN], capture_output=True).returncode != 0:
        return  # no chain, nothing of ours
    script = ["*nat"] + [f"-D OUTPUT -p tcp -j {CHAIN}"] * _jump_count(family) + [f"-F {CHAIN}", f"-X {CHAIN}",
                                                                                "COMMIT"]
    _restore(family, "\n".join(script) + "\n")


def _jump_count(family: int) -> int:
    out = subprocess.run([_TOOLS[family], "-w", "-t", "nat", "-S", "OUTPUT"], capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines().count(f"-A OUTPUT -p tcp -j {CHAIN}")


def _restore(family: int, script: str) -> None:
    subprocess.run([f"{_TOOLS[family]}-restore", "-w", "--noflush"], input=script, text=True,
                   capture_output=True, check=True)
