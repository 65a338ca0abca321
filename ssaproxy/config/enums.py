"""The closed vocabularies of the configuration, as `StrEnum`s.

They are `str` subclasses, so code that still compares with plain strings (`route.action ==
"reject"`) keeps working while it moves to the members.  `TLSVersion` carries the one order of
protocol versions for the whole package: use `rank`, `lowest` and `highest` rather than a
private tuple of version names.
"""

from __future__ import annotations

import enum


class Action(enum.StrEnum):
    """What an outbound route does with a matching connection."""

    UPGRADE = "upgrade"
    PASSTHROUGH = "passthrough"
    REJECT = "reject"


class HostnameSource(enum.StrEnum):
    """Where an upgrade route finds the name the server's certificate must prove."""

    HTTP_HOST = "http-host"
    ADDRESS = "address"
    RESOLVED = "resolved"  # the name the program resolved (given by the client library with REDIRECT)


class TLSVersion(enum.StrEnum):
    """A protocol version ssaproxy will speak, oldest first (definition order is the order)."""

    TLSv1_2 = "TLSv1.2"
    TLSv1_3 = "TLSv1.3"

    @property
    def rank(self) -> int:
        """Position in the version order: a higher rank is a newer protocol."""
        return list(TLSVersion).index(self)

    @classmethod
    def lowest(cls, *versions: str) -> TLSVersion:
        """The oldest of `versions` (plain strings are accepted and converted)."""
        return min((cls(v) for v in versions), key=lambda v: v.rank)

    @classmethod
    def highest(cls, *versions: str) -> TLSVersion:
        """The newest of `versions` (plain strings are accepted and converted)."""
        return max((cls(v) for v in versions), key=lambda v: v.rank)

    @classmethod
    def span(cls, low: str, high: str) -> tuple[TLSVersion, ...]:
        """Every version from `low` to `high`, both included (empty if low is above high)."""
        lo, hi = cls(low).rank, cls(high).rank
        return tuple(v for v in cls if lo <= v.rank <= hi)


# The spellings the configuration accepts, as plain strings (error messages show them with repr).
ACTIONS: tuple[str, ...] = tuple(a.value for a in Action)
HOSTNAME_SOURCES: tuple[str, ...] = tuple(h.value for h in HostnameSource)
TLS_VERSIONS: tuple[str, ...] = tuple(v.value for v in TLSVersion)


# [policy] revocation, and its per-route and per-listener overrides (docs/revocation.md).
REVOCATION_MODES = ("off", "soft", "hard")
