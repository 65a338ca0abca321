"""The API's messages as typed, frozen events (one class per message kind) and their
conversion to and from `wire` frames.  `ssaproxy.proto.connection` decides when each may go.
Standard library only."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union, cast

from ssaproxy.proto import wire
from ssaproxy.proto.wire import Kind, Tag

Address = tuple[str, int]


@dataclass(frozen=True)
class Hello:
    version: int = wire.VERSION


@dataclass(frozen=True)
class SetOption:
    option: int
    value: bytes = field(repr=False)  # may be a private key: never in a repr


@dataclass(frozen=True)
class GetOption:
    option: int


@dataclass(frozen=True)
class Connect:
    host: str
    port: int
    family: int  # 4, 6, or 0 (a host name the daemon resolves)
    fd: int  # the program's own socket (SCM_RIGHTS on the frame's first byte): the carrier to be


@dataclass(frozen=True)
class Listen:
    backlog: int
    fds: tuple[int, ...]  # (B, N): bound to the program's address, and on loopback; one SCM_RIGHTS


@dataclass(frozen=True)
class Upgrade:
    role: int  # wire.ROLE_CLIENT or wire.ROLE_SERVER
    fd: int


@dataclass(frozen=True)
class Routes:
    """Which destinations the daemon's outbound routes cover (answered with VALUE: text lines)."""


@dataclass(frozen=True)
class Redirect:
    """Hand the program's unconnected TCP socket to the outbound face, as if iptables had
    redirected its connection to (host, port)."""

    host: str  # an IP literal
    port: int
    family: int  # 4 or 6
    name: Optional[str] = None  # what the program resolved to `host` (hostname_from = "resolved")
    fd: int = -1


@dataclass(frozen=True)
class Welcome:
    version: int
    session: int
    # Where the library parks a socket before CONNECT or REDIRECT (docs/api.md): the ports of
    # the parking listeners on 127.0.0.1 and ::1 of the worker serving this connection.  The
    # daemon always sends both (0: that family cannot be parked); None only from a peer that
    # left them out.
    park_port4: Optional[int] = None
    park_port6: Optional[int] = None


@dataclass(frozen=True)
class Ok:
    token: Optional[bytes] = field(default=None, repr=False)  # LISTEN's answer: wire.TOKEN_SIZE bytes


@dataclass(frozen=True)
class Value:
    value: bytes = field(repr=False)


@dataclass(frozen=True)
class Error:
    errno: int
    text: str


@dataclass(frozen=True)
class Carrier:
    fd: int


@dataclass(frozen=True)
class Established:
    peer: Address
    local: Optional[Address] = None
    info: Mapping[int, bytes] = field(default_factory=dict, hash=False, repr=False)  # option number -> value


@dataclass(frozen=True)
class Accepted:
    peer: Address
    local: Optional[Address]
    info: Mapping[int, bytes] = field(default_factory=dict, hash=False, repr=False)


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer ended the stream at a frame boundary."""


Event = Union[Hello, SetOption, GetOption, Connect, Listen, Upgrade, Welcome, Ok, Value, Error, Carrier,
              Established, Accepted, ConnectionClosed, Routes, Redirect]

KINDS: dict[type, Kind] = {
    Hello: Kind.HELLO, SetOption: Kind.SETOPT, GetOption: Kind.GETOPT, Connect: Kind.CONNECT, Listen: Kind.LISTEN,
    Upgrade: Kind.UPGRADE, Welcome: Kind.WELCOME, Ok: Kind.OK, Value: Kind.VALUE, Error: Kind.ERROR,
    Carrier: Kind.CARRIER, Established: Kind.ESTABLISHED, Accepted: Kind.ACCEPTED,
    Routes: Kind.ROUTES, Redirect: Kind.REDIRECT,
}
_CLASSES: dict[Kind, type] = {kind: cls for cls, kind in KINDS.items()}


# One rule instead of a converter per message: a field travels in the tag of its own name
# (`Connect.host` in Tag.HOST), except `fd`/`fds` (SCM_RIGHTS, not attributes) and the
# addresses and info of ESTABLISHED and ACCEPTED, which `fields_of` spells out.  A field that
# is None (an optional attribute) is left out.
def _tagged(cls: type) -> tuple[tuple[str, Tag], ...]:
    tagged = _TAGGED.get(cls)  # per message class, computed once: every frame sent or received asks
    if tagged is None:
        tagged = _TAGGED[cls] = tuple((f.name, Tag[f.name.upper()]) for f in dataclasses.fields(cls)
                                      if f.name not in ("fd", "fds"))
    return tagged


_TAGGED: dict[type, tuple[tuple[str, Tag], ...]] = {}


def fields_of(event: Event) -> dict[int, object]:
    if isinstance(event, (Established, Accepted)):
        fields: dict[int, object] = {Tag.PEER_HOST: event.peer[0], Tag.PEER_PORT: event.peer[1]}
        if event.local is not None:
            fields[Tag.LOCAL_HOST], fields[Tag.LOCAL_PORT] = event.local
        for number, raw in event.info.items():
            fields[wire.INFO_BASE + number] = raw
        return fields
    values = {tag: getattr(event, name) for name, tag in _tagged(type(event))}
    return {tag: value for tag, value in values.items() if value is not None}


def event_of(m: wire.Message, fds: tuple[int, ...] = ()) -> Event:
    """The event for a frame; `fds` are the descriptors it carries (the connection has
    checked that as many came as the kind takes)."""
    cls = _CLASSES[m.kind]
    carried: dict[str, Any] = {}
    if wire.fd_count(m.kind) == 1:
        carried["fd"] = fds[0]
    elif wire.fd_count(m.kind) > 1:
        carried["fds"] = tuple(fds)
    if cls in (Established, Accepted):
        peer = (m.text(Tag.PEER_HOST), m.int(Tag.PEER_PORT))
        local = (m.text(Tag.LOCAL_HOST), m.int(Tag.LOCAL_PORT)) if Tag.LOCAL_HOST in m.attrs and Tag.LOCAL_PORT in \
            m.attrs else None
        return cast(Event, cls(peer, local, m.info, **carried))
    return cast(Event, cls(**{name: m.value(tag) for name, tag in _tagged(cls) if tag in m.attrs}, **carried))
