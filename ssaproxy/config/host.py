"""How the daemon sits on its host: `[daemon]` (as whom it runs, how it stops, how often it
looks at its files, how many workers), `[admin]` (its HTTP endpoint) and `[iptables]` (what the
generated rules leave alone).  Names are checked for their shape only: whether the user and
group exist is a fact of the system (`ssaproxy.privileges`, `ssaproxy.tls.load`)."""

from __future__ import annotations

import re
from typing import Optional

import attrs

from ssaproxy.config.endpoints import ListenAddress
from ssaproxy.config.reader import Network, Reader


@attrs.frozen(kw_only=True)
class Iptables:
    """What the generated rules never redirect, besides the daemon's own traffic."""

    exclude_cidrs: tuple[Network, ...] = ()  # out: destinations; in: sources
    exclude_ports: tuple[int, ...] = ()  # outbound destination ports


def parse_iptables(r: Reader) -> Iptables:
    cidrs: list[Network] = []
    for text in r.take("exclude_cidrs", list, []):
        r.check("exclude_cidrs", isinstance(text, str), "must be an array of CIDR strings")
        cidrs.append(r.network("exclude_cidrs", text))
    ports = r.ports("exclude_ports", r.take("exclude_ports", list, []))
    r.done()
    return Iptables(exclude_cidrs=tuple(cidrs), exclude_ports=ports)


@attrs.frozen(kw_only=True)
class Daemon:
    """How the daemon process runs: as whom, how it stops, how often it looks at its files."""

    user: Optional[str] = None  # after binding as root, drop to this user for good (None: stay)
    group: Optional[str] = None  # and this group (None: the user's primary group)
    drain_timeout: float = 30.0  # SIGTERM: seconds live connections get to finish; the rest are reset
    watch_interval: float = 5.0  # seconds between looks at certificate files for changes (0: never)
    # Worker processes serving every listener (ssaproxy.supervisor); None: as many as CPUs.  1: one
    # process, no supervisor (the daemon as it always was).
    workers: Optional[int] = None


def parse_daemon(r: Reader) -> Daemon:
    d = Daemon()
    user: Optional[str] = r.take("user", str, None)
    group: Optional[str] = r.take("group", str, None)
    for name, value in (("user", user), ("group", group)):
        if value is not None:
            r.check(name, re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}", value) is not None,
                    f"must be a user or group name or number, got {value!r}")
    r.check("group", group is None or user is not None, "only applies with user (the identity to drop to)")
    daemon = Daemon(user=user, group=group,
                    drain_timeout=r.off_or_positive("drain_timeout", d.drain_timeout, 3600),
                    watch_interval=r.off_or_positive("watch_interval", d.watch_interval, 3600),
                    workers=_workers(r))
    r.done()
    return daemon


MAX_WORKERS = 256


def _workers(r: Reader) -> Optional[int]:
    value: Optional[int] = r.take("workers", int, None)
    if value is not None:
        r.check("workers", 1 <= value <= MAX_WORKERS,
                f"must be 1-{MAX_WORKERS} worker processes (omit it for one per CPU), got {value}")
    return value


DEFAULT_ADMIN_LISTEN = "tcp:9901:interface=127.0.0.1"


@attrs.frozen(kw_only=True)
class Admin:
    """The admin endpoint: metrics, health, readiness and status over HTTP (off without [admin])."""

    listen: str = DEFAULT_ADMIN_LISTEN


def parse_admin(r: Reader) -> Admin:
    listen: str = r.take("listen", str, DEFAULT_ADMIN_LISTEN)
    ListenAddress.parse(listen, r.key("listen"))  # a TCP listener Twisted can make, or a ConfigError naming it
    r.done()
    return Admin(listen=listen)
