"""The decision core: what happens to one redirected connection, as a value.

`decide` is pure: given where the program meant to go, the route that matched (or none) and
what its first bytes have told so far, it returns a `Decision`.  The outbound listener asks it
when the connection arrives and again whenever the first bytes tell something new (a
ClientHello, a complete request head), and does what it says.  Nothing here does I/O, so every
routing rule is testable without a socket (tests/test_policy.py).
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Optional

import attrs

from ssaproxy.addresses import IPAddress
from ssaproxy.config import Action, HostnameSource, Route


class Step(enum.StrEnum):
    REFUSE = "refuse"  # reset the program's connection
    PASSTHROUGH = "passthrough"  # bytes as they are, to the original destination
    UPGRADE = "upgrade"  # verified TLS to the destination, plaintext to the program
    WAIT = "wait"  # nothing can be decided before the program's request head


@attrs.frozen(kw_only=True)
class Identity:
    """Whom the peer's certificate must name: a DNS name or an IP address (never both)."""

    dns_name: Optional[str] = None
    ip: Optional[str] = None

    @classmethod
    def of(cls, host: str) -> Identity:
        """An IP literal is checked as an IP address (and sent no SNI), anything else as a name."""
        try:
            return cls(ip=str(ipaddress.ip_address(host)))
        except ValueError:
            return cls(dns_name=host)

    def __str__(self) -> str:
        return self.dns_name or self.ip or ""


@attrs.frozen(kw_only=True)
class FirstBytes:
    """What the program's first bytes have told so far.

    `tls`: None while undecided (nothing yet, or an ambiguous prefix), True for a ClientHello.
    `head_complete`: the request head is complete (or can never be); then `host` is its Host
    header, or None with `host_error` saying why.
    """

    tls: Optional[bool] = None
    head_complete: bool = False
    host: Optional[str] = None
    host_error: Optional[str] = None


NOTHING_YET = FirstBytes()


@attrs.frozen(kw_only=True)
class Decision:
    step: Step
    outcome: Optional[str] = None  # REFUSE: the log's outcome
    detail: Optional[str] = None
    identity: Optional[Identity] = None  # UPGRADE: the name to verify (and send as SNI)
    port: int = 0  # PASSTHROUGH/UPGRADE: the port to connect to
    client_certificate: Optional[str] = None  # UPGRADE: an identity to present (mTLS)
    client_key: Optional[str] = None


def decide(destination: tuple[IPAddress, int], route: Optional[Route], first: FirstBytes = NOTHING_YET,
           resolved: Optional[str] = None) -> Decision:
    """The one place that says what a redirected connection becomes.  `resolved`: the host
    name the program itself resolved to this address, known only for a connection the client
    library redirected (REDIRECT with NAME); never for one iptables redirected."""
    ip, port = destination
    if route is None:
        return Decision(step=Step.REFUSE, outcome="no-route")
    if route.action == Action.REJECT:
        return Decision(step=Step.REFUSE, outcome="rejected")
    if first.tls or route.action == Action.PASSTHROUGH:
        # A program that speaks TLS itself is passed through untouched: never TLS inside TLS.
        return Decision(step=Step.PASSTHROUGH, port=port)
    if route.hostname is not None:
        name: Optional[str] = route.hostname
    elif route.hostname_from == HostnameSource.ADDRESS:
        name = str(ip)
    elif route.hostname_from == HostnameSource.RESOLVED:
        if resolved is None:
            return Decision(step=Step.REFUSE, outcome="no-name",
                            detail='hostname_from = "resolved" needs the name the program resolved; only a '
                                   "connection handed over by the client library (ssaproxy run) carries one")
        name = resolved
    elif first.host is not None:
        name = first.host
    elif first.head_complete:
        return Decision(step=Step.REFUSE, outcome="no-host", detail=first.host_error)
    else:
        return Decision(step=Step.WAIT)
    assert name is not None
    return Decision(step=Step.UPGRADE, identity=Identity.of(name), port=route.tls_port or port,
                    client_certificate=route.client_certificate, client_key=route.client_key)
