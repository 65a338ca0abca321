"""iptables rules for transparent outbound mode: pure generation, plus apply/remove.

Rules live in ssaproxy's own nat chain (`SSAPROXY_OUTPUT`), reached by a single jump from
OUTPUT, so removing them never touches anything an admin wrote.  `apply` replaces the chain
in one iptables-restore transaction per family, so there is no window without redirection.  The daemon's own uid is
excluded with an owner match first, so its upstream connections are not redirected back to
it; loopback destinations are excluded too (local services are not upgraded).  Routes are
emitted in config order, so iptables selects the same connections the daemon's first-match
routing then classifies.  A `[[profile]]` with its own listener comes before the general rules:
its users' and groups' connections (owner match) go to its port, in profile order, so the
daemon knows by the port which profile's policy applies.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Sequence

from ssaproxy.config import Config, Listener, Profile, parse_listener

__all__ = ["CHAIN", "INBOUND", "Listener", "parse_listener", "chain_rules", "inbound_rules", "rules", "render",
           "restore_script", "apply", "remove"]

CHAIN = "SSAPROXY_OUTPUT"
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
_TOOLS = {4: "iptables", 6: "ip6tables"}
_MULTIPORT_MAX = 15


def _multiport(ports: Sequence[int]) -> list[list[str]]:
    """Matches for `ports`, at most the 15 a multiport match takes in each (none for no ports)."""
    text = [str(p) for p in ports]
    return [["-m", "multiport", "--dports", ",".join(text[i:i + _MULTIPORT_MAX])]
            for i in range(0, len(text), _MULTIPORT_MAX)]


OUTBOUND, INBOUND = CHAIN, "SSAPROXY_INBOUND"
# Our chains and the built-in chain that jumps to each.
_CHAINS = ((OUTBOUND, "OUTPUT"), (INBOUND, "PREROUTING"))


def chain_rules(config: Config, uid: int, family: int) -> list[list[str]]:
    """The outbound chain for one address family, as arguments after `-A SSAPROXY_OUTPUT`."""
    routes = [r for r in config.outbound.routes if r.destination.version == family]
    if not routes:
        return []
    # Config loading guarantees a listener of each routed family.
    listener = next(x for x in map(parse_listener, config.outbound.listen) if x.family == family)
    out = [["-m", "owner", "--uid-owner", str(uid), "-j", "RETURN"],
           ["-d", _LOOPBACK[family], "-j", "RETURN"]]
    out += [["-d", str(net), "-j", "RETURN"] for net in config.iptables.exclude_cidrs if net.version == family]
    out += [["-p", "tcp", *group, "-j", "RETURN"] for group in _multiport(config.iptables.exclude_ports)]
    for profile in config.profiles:
        # Config loading guarantees a profile's listeners cover every routed family.
        ports = [x.port for x in map(parse_listener, profile.listen) if x.family == family]
        for owner in _owners(profile) if ports else []:
            for route in routes:
                for group in _multiport(route.ports) or [[]]:
                    out.append(["-p", "tcp", "-d", str(route.destination), *group, "-m", "owner", *owner,
                                "-m", "comment", "--comment", f"ssaproxy profile {profile.name} route {route.name}",
                                "-j", "REDIRECT", "--to-ports", str(ports[0])])
    for route in routes:
        for group in _multiport(route.ports) or [[]]:  # no ports: every port
            out.append(["-p", "tcp", "-d", str(route.destination), *group,
                        "-m", "comment", "--comment", f"ssaproxy route {route.name}",
                        "-j", "REDIRECT", "--to-ports", str(listener.port)])
    return out


def _owners(profile: Profile) -> list[list[str]]:
    """The owner matches of a profile's programs: each user, each group, or each pair of both
    (a profile that names both kinds wants both to match, as its API selection does)."""
    users = [["--uid-owner", u] for u in profile.users] or [[]]
    groups = [["--gid-owner", g] for g in profile.groups] or [[]]
    return [u + g for u in users for g in groups]


def inbound_rules(config: Config, family: int) -> list[list[str]]:
    """The inbound chain (nat PREROUTING) for transparent inbound listeners: connections
    arriving for their ports go to the listener, which forwards to 127.0.0.1:<original port>."""
    listeners = [i for i in config.inbound if i.backend.original and family in i.families]
    if not listeners:
        return []
    out = [["-s", str(net), "-j", "RETURN"] for net in config.iptables.exclude_cidrs if net.version == family]
    for inbound in listeners:
        for group in _multiport(inbound.ports):
            # Only connections addressed to this host: traffic a router or container host merely
            # forwards to some other address on these ports is not ours to take.
            out.append(["-p", "tcp", "-m", "addrtype", "--dst-type", "LOCAL", *group,
                        "-m", "comment", "--comment", f"ssaproxy inbound {inbound.name}",
                        "-j", "REDIRECT", "--to-ports", str(inbound.listen_port)])
    return out


def _bodies(config: Config, uid: int, family: int) -> dict[str, list[list[str]]]:
    return {OUTBOUND: chain_rules(config, uid, family), INBOUND: inbound_rules(config, family)}


def rules(config: Config, uid: int) -> list[list[str]]:
    """The commands an admin would run to install the rules by hand, in order."""
    out: list[list[str]] = []
    for family in (4, 6):
        bodies = _bodies(config, uid, family)
        for chain, parent in _CHAINS:
            if bodies[chain]:
                tool = [_TOOLS[family], "-w", "-t", "nat"]
                out.append(tool + ["-N", chain])
                out += [tool + ["-A", chain, *args] for args in bodies[chain]]
                out.append(tool + ["-A", parent, "-p", "tcp", "-j", chain])
    return out


def render(commands: Sequence[Sequence[str]]) -> str:
    return "".join(shlex.join(c) + "\n" for c in commands)


def restore_script(bodies: dict[str, list[list[str]]], jumps: dict[str, int]) -> str:
    """iptables-restore --noflush input that replaces our chains in one transaction.

    Declaring a chain creates it or empties it, and the new rules go in with it atomically:
    unlike deleting and re-adding rules one command at a time, there is no moment in which
    redirected ports are not redirected (and would leave in plaintext).  A chain with no rules
    for this config goes away, jump and all.  `jumps` counts each chain's existing jumps, so
    exactly one remains.
    """
    lines = ["*nat"]
    for chain, parent in _CHAINS:
        jump = ["-p", "tcp", "-j", chain]
        if bodies.get(chain):
            lines.append(f":{chain} - [0:0]")
            lines += [_restore_line(["-A", chain, *args]) for args in bodies[chain]]
            if jumps.get(chain, 0) == 0:
                lines.append(_restore_line(["-A", parent, *jump]))
            lines += [_restore_line(["-D", parent, *jump])] * max(0, jumps.get(chain, 0) - 1)
        elif chain in jumps:  # present from an earlier config: remove it
            lines += [_restore_line(["-D", parent, *jump])] * jumps[chain]
            lines += [f"-F {chain}", f"-X {chain}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _restore_line(args: Sequence[str]) -> str:
    # iptables-restore knows double quotes only; route names cannot contain any (config checks).
    return " ".join(f'"{a}"' if " " in a else a for a in args)


def apply(config: Config, uid: int) -> None:
    """Install the rules for this config; idempotent; chains an earlier config left are removed."""
    for family in (4, 6):
        bodies, jumps = _bodies(config, uid, family), _existing(family)
        if any(bodies.values()) or jumps:
            _restore(family, restore_script(bodies, jumps))


def remove(config: Config | None = None) -> None:
    """Remove our chains and their jumps from both families, whatever the config says: rules
    from an earlier config must not survive."""
    for family in (4, 6):
        jumps = _existing(family)
        if jumps:
            _restore(family, restore_script({}, jumps))


def _existing(family: int) -> dict[str, int]:
    """Our chains that exist now, each with its number of jumps from the built-in chain."""
    saved = subprocess.run([_TOOLS[family], "-w", "-t", "nat", "-S"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return {chain: saved.count(f"-A {parent} -p tcp -j {chain}")
            for chain, parent in _CHAINS if f"-N {chain}" in saved}


def _restore(family: int, script: str) -> None:
    subprocess.run([f"{_TOOLS[family]}-restore", "-w", "--noflush"], input=script, text=True,
                   capture_output=True, check=True)
