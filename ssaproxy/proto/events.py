"""The API's messages as typed, frozen events (one class per message kind) and their
conversion to and from `wire` frames.  `ssaproxy.proto.connection` decides when each may go.
Standard library only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

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


@dataclass(frozen=True)
class Listen:
    backlog: int
    fd: int  # travels as SCM_RIGHTS on the frame's first byte; the sender passes it


@dataclass(frozen=True)
class Upgrade:
    role: int  # wire.ROLE_CLIENT or wire.ROLE_SERVER
    fd: int


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Welcome:
    version: int
    session: int


@dataclass(frozen=True)
class Ok:
    pass


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
    info: Mapping[int, bytes] = field(hash=False, repr=False)
    fd: int = -1


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer ended the stream at a frame boundary."""


Event = Union[Hello, SetOption, GetOption, Connect, Listen, Upgrade, Ack, Welcome, Ok, Value, Error, Carrier,
              Established, Accepted, ConnectionClosed]

KINDS: dict[type, Kind] = {
    Hello: Kind.HELLO, SetOption: Kind.SETOPT, GetOption: Kind.GETOPT, Connect: Kind.CONNECT, Listen: Kind.LISTEN,
    Upgrade: Kind.UPGRADE, Ack: Kind.ACK, Welcome: Kind.WELCOME, Ok: Kind.OK, Value: Kind.VALUE, Error: Kind.ERROR,
    Carrier: Kind.CARRIER, Established: Kind.ESTABLISHED, Accepted: Kind.ACCEPTED,
}


def _addresses(peer: Address, local: Optional[Address], info: Mapping[int, bytes]) -> dict[int, object]:
    fields: dict[int, object] = {Tag.PEER_HOST: peer[0], Tag.PEER_PORT: peer[1]}
    if local is not None:
        fields[Tag.LOCAL_HOST], fields[Tag.LOCAL_PORT] = local
    for number, raw in info.items():
        fields[wire.INFO_BASE + number] = raw
    return fields


def fields_of(event: Event) -> dict[int, object]:  # noqa: PLR0911 - one return per case reads best
    if isinstance(event, Hello):
        return {Tag.VERSION: event.version}
    if isinstance(event, SetOption):
        return {Tag.OPTION: event.option, Tag.VALUE: event.value}
    if isinstance(event, GetOption):
        return {Tag.OPTION: event.option}
    if isinstance(event, Connect):
        return {Tag.HOST: event.host, Tag.PORT: event.port, Tag.FAMILY: event.family}
    if isinstance(event, Listen):
        return {Tag.BACKLOG: event.backlog}
    if isinstance(event, Upgrade):
        return {Tag.ROLE: event.role}
    if isinstance(event, Welcome):
        return {Tag.VERSION: event.version, Tag.SESSION: event.session}
    if isinstance(event, Value):
        return {Tag.VALUE: event.value}
    if isinstance(event, Error):
        return {Tag.ERRNO: event.errno, Tag.TEXT: event.text}
    if isinstance(event, (Established, Accepted)):
        return _addresses(event.peer, event.local, event.info)
    return {}


def event_of(m: wire.Message, fd: Optional[int]) -> Event:  # noqa: PLR0911 - one return per case reads best
    k = m.kind
    if k == Kind.HELLO:
        return Hello(m.int(Tag.VERSION))
    if k == Kind.SETOPT:
        return SetOption(m.int(Tag.OPTION), m.raw(Tag.VALUE))
    if k == Kind.GETOPT:
        return GetOption(m.int(Tag.OPTION))
    if k == Kind.CONNECT:
        return Connect(m.text(Tag.HOST), m.int(Tag.PORT), m.int(Tag.FAMILY))
    if k == Kind.LISTEN:
        assert fd is not None
        return Listen(m.int(Tag.BACKLOG), fd)
    if k == Kind.UPGRADE:
        assert fd is not None
        return Upgrade(m.int(Tag.ROLE), fd)
    if k == Kind.ACK:
        return Ack()
    if k == Kind.WELCOME:
        return Welcome(m.int(Tag.VERSION), m.int(Tag.SESSION))
    if k == Kind.OK:
        return Ok()
    if k == Kind.VALUE:
        return Value(m.raw(Tag.VALUE))
    if k == Kind.ERROR:
        return Error(m.int(Tag.ERRNO), m.text(Tag.TEXT))
    if k == Kind.CARRIER:
        assert fd is not None
        return Carrier(fd)
    peer = (m.text(Tag.PEER_HOST), m.int(Tag.PEER_PORT))
    local = (m.text(Tag.LOCAL_HOST), m.int(Tag.LOCAL_PORT)) if Tag.LOCAL_HOST in m.attrs and Tag.LOCAL_PORT in \
        m.attrs else None
    if k == Kind.ESTABLISHED:
        return Established(peer, local, m.info)
    assert fd is not None
    return Accepted(peer, local, m.info, fd)
