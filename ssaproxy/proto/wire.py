"""The local socket API's framing: pure encode/decode, shared by the daemon and the library.

A frame is `u32 length` (big-endian, counting the bytes after it), `u16 kind`, then
attributes, each `u16 tag`, `u32 length`, value.  Integers are 4-byte big-endian, text is
UTF-8, and any other value is raw bytes.  docs/api.md is the specification; this module is
one implementation of it and must stay small enough to check against it by eye.

Every decoding step checks a bound before it trusts a length, so a hostile peer can make us
raise `ProtocolError` and nothing else.
"""

from __future__ import annotations

import builtins
import enum
import struct
from typing import Mapping, Optional

VERSION = 2  # the daemon answers only this version
MAX_FRAME = 1 << 20  # certificate chains and keys fit easily; anything larger is hostile
MAX_ATTRS = 64
_LEN = struct.Struct("!I")
_KIND = struct.Struct("!H")
_ATTR = struct.Struct("!HI")
_INT = struct.Struct("!i")


class ProtocolError(Exception):
    """The bytes received are not a valid frame of this protocol version."""


class Kind(enum.IntEnum):
    # program -> daemon
    HELLO = 1
    SETOPT = 2
    GETOPT = 3
    CONNECT = 4
    LISTEN = 5
    UPGRADE = 6
    # 7 was ACK (version 1): not used again
    ROUTES = 8  # the outbound routes, for redirection without iptables (docs/api.md)
    REDIRECT = 9
    # daemon -> program
    WELCOME = 64
    OK = 65
    VALUE = 66
    ERROR = 67
    CARRIER = 68
    ESTABLISHED = 69
    ACCEPTED = 70


class Tag(enum.IntEnum):
    VERSION = 1
    ERRNO = 2
    TEXT = 3
    OPTION = 4
    VALUE = 5
    HOST = 6
    PORT = 7
    ROLE = 8
    BACKLOG = 9
    PEER_HOST = 10
    PEER_PORT = 11
    LOCAL_HOST = 12
    LOCAL_PORT = 13
    SESSION = 14
    FAMILY = 15
    TOKEN = 16
    NAME = 17  # REDIRECT: the host name the program resolved to HOST
    PARK_PORT4 = 18  # WELCOME: the port of this worker's parking listener on 127.0.0.1 (0: none)
    PARK_PORT6 = 19  # WELCOME: the same on ::1


INFO_BASE = 0x1000  # tag INFO_BASE + N carries getsockopt(IPPROTO_TLS, N)'s value
ROLE_CLIENT, ROLE_SERVER = 1, 2

_INTS = {Tag.VERSION, Tag.ERRNO, Tag.OPTION, Tag.PORT, Tag.ROLE, Tag.BACKLOG, Tag.PEER_PORT,
         Tag.LOCAL_PORT, Tag.SESSION, Tag.FAMILY, Tag.PARK_PORT4, Tag.PARK_PORT6}
_TEXTS = {Tag.TEXT, Tag.HOST, Tag.PEER_HOST, Tag.LOCAL_HOST, Tag.NAME}

TOKEN_SIZE = 32  # LISTEN's OK{TOKEN}: what precedes each ACCEPTED frame on a delivered connection

# kind -> (required tags, optional tags, carries info attributes, how many file descriptors)
_SCHEMA: dict[Kind, tuple[frozenset[Tag], frozenset[Tag], bool, int]] = {
    Kind.HELLO: (frozenset({Tag.VERSION}), frozenset(), False, 0),
    Kind.SETOPT: (frozenset({Tag.OPTION, Tag.VALUE}), frozenset(), False, 0),
    Kind.GETOPT: (frozenset({Tag.OPTION}), frozenset(), False, 0),
    Kind.CONNECT: (frozenset({Tag.HOST, Tag.PORT, Tag.FAMILY}), frozenset(), False, 1),  # the program's socket
    Kind.LISTEN: (frozenset({Tag.BACKLOG}), frozenset(), False, 2),  # [B (bound to the address), N (loopback)]
    Kind.UPGRADE: (frozenset({Tag.ROLE}), frozenset(), False, 1),
    Kind.ROUTES: (frozenset(), frozenset(), False, 0),
    Kind.REDIRECT: (frozenset({Tag.HOST, Tag.PORT, Tag.FAMILY}), frozenset({Tag.NAME}), False, 1),  # its socket
    Kind.WELCOME: (frozenset({Tag.VERSION, Tag.SESSION}), frozenset({Tag.PARK_PORT4, Tag.PARK_PORT6}), False, 0),
    Kind.OK: (frozenset(), frozenset({Tag.TOKEN}), False, 0),
    Kind.VALUE: (frozenset({Tag.VALUE}), frozenset(), False, 0),
    Kind.ERROR: (frozenset({Tag.ERRNO, Tag.TEXT}), frozenset(), False, 0),
    Kind.CARRIER: (frozenset(), frozenset(), False, 1),
    Kind.ESTABLISHED: (frozenset({Tag.PEER_HOST, Tag.PEER_PORT}), frozenset({Tag.LOCAL_HOST, Tag.LOCAL_PORT}),
                       True, 0),
    Kind.ACCEPTED: (frozenset({Tag.PEER_HOST, Tag.PEER_PORT}), frozenset({Tag.LOCAL_HOST, Tag.LOCAL_PORT}),
                    True, 0),
}


def fd_count(kind: Kind) -> int:
    """How many file descriptors travel with a frame of this kind (one SCM_RIGHTS message on
    its first byte, in the order the kind defines)."""
    return _SCHEMA[kind][3]


def carries_fd(kind: Kind) -> bool:
    """Whether a frame of this kind travels with file descriptors."""
    return _SCHEMA[kind][3] > 0


class Message:
    """One decoded frame: its kind and attributes (tag -> raw value)."""

    __slots__ = ("kind", "attrs")

    def __init__(self, kind: Kind, attrs: Mapping[int, bytes]) -> None:
        self.kind = kind
        self.attrs = dict(attrs)

    def __repr__(self) -> str:
        shown = {(Tag(t).name if t in Tag._value2member_map_ else t): v for t, v in self.attrs.items()
                 if t != Tag.VALUE}  # option values may be keys: never in a repr
        return f"Message({self.kind.name}, {shown})"

    def int(self, tag: Tag) -> builtins.int:
        return builtins.int(_INT.unpack(self.attrs[tag])[0])

    def text(self, tag: Tag) -> str:
        return self.attrs[tag].decode("utf-8")

    def value(self, tag: Tag) -> builtins.int | str | bytes:
        """The attribute decoded as its tag's type says (int, text or bytes)."""
        if tag in _INTS:
            return self.int(tag)
        return self.text(tag) if tag in _TEXTS else self.attrs[tag]

    @property
    def info(self) -> dict[builtins.int, bytes]:
        """The getsockopt values carried by ESTABLISHED and ACCEPTED, by option number."""
        return {t - INFO_BASE: v for t, v in self.attrs.items() if t >= INFO_BASE}


def encode(kind: Kind, fields: Optional[Mapping[int, object]] = None) -> bytes:
    """One frame.  Field values: int (for integer tags), str (for text tags), bytes.  What we
    send obeys the schema we enforce: each attribute passes the checks `decode_body` makes
    (`_attr_problem`), else ProtocolError and nothing is sent."""
    required, optional, info, _ = _SCHEMA[kind]
    body = bytearray(_KIND.pack(kind))
    fields = fields or {}
    if len(fields) > MAX_ATTRS:
        raise ProtocolError(f"more than {MAX_ATTRS} attributes")
    for tag, value in fields.items():
        if isinstance(value, bool) or (isinstance(value, int) and tag not in _INTS):
            raise TypeError(f"tag {tag}: unexpected int")
        if isinstance(value, int):
            raw = _INT.pack(value)
        elif isinstance(value, str):
            raw = value.encode("utf-8")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:
            raise TypeError(f"tag {tag}: cannot encode {type(value).__name__}")
        problem = _attr_problem(kind, tag, raw, required, optional, info)
        if problem is not None:
            raise ProtocolError(problem)
        body += _ATTR.pack(tag, len(raw)) + raw
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes is over the {MAX_FRAME}-byte limit")
    missing = required - fields.keys()
    if missing:
        raise ProtocolError(f"{kind.name} lacks {', '.join(sorted(t.name for t in missing))}")
    return _LEN.pack(len(body)) + bytes(body)


def _attr_problem(kind: Kind, tag: int, value: bytes, required: frozenset[Tag], optional: frozenset[Tag],
                  info: bool) -> Optional[str]:
    """Why attribute `tag` with `value` may not be in a frame of `kind`, or None."""
    if tag >= INFO_BASE:
        if not info or tag > INFO_BASE + 0xFFF:
            return f"attribute {tag} not allowed in {kind.name}"
    elif tag not in required and tag not in optional:
        return f"attribute {tag} not allowed in {kind.name}"
    elif tag in _INTS and len(value) != _INT.size:
        return f"attribute {Tag(tag).name} must be {_INT.size} bytes, got {len(value)}"
    elif tag in _TEXTS:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return f"attribute {Tag(tag).name} is not UTF-8"
    return None


def decode_body(body: bytes) -> Message:
    if len(body) < _KIND.size:
        raise ProtocolError("frame shorter than its kind field")
    (number,) = _KIND.unpack_from(body)
    try:
        kind = Kind(number)
    except ValueError:
        raise ProtocolError(f"unknown message kind {number}") from None
    required, optional, info, _ = _SCHEMA[kind]
    attrs: dict[int, bytes] = {}
    at = _KIND.size
    while at < len(body):
        if len(attrs) >= MAX_ATTRS:
            raise ProtocolError(f"more than {MAX_ATTRS} attributes")
        if len(body) - at < _ATTR.size:
            raise ProtocolError("truncated attribute header")
        tag, size = _ATTR.unpack_from(body, at)
        at += _ATTR.size
        if size > len(body) - at:
            raise ProtocolError(f"attribute {tag} claims {size} bytes, {len(body) - at} left")
        value = body[at:at + size]
        at += size
        if tag in attrs:
            raise ProtocolError(f"attribute {tag} repeated")
        problem = _attr_problem(kind, tag, value, required, optional, info)
        if problem is not None:
            raise ProtocolError(problem)
        attrs[tag] = value
    missing = required - attrs.keys()
    if missing:
        raise ProtocolError(f"{kind.name} lacks {', '.join(sorted(t.name for t in missing))}")
    return Message(kind, attrs)


class Decoder:
    """Feed bytes with `receive_data`, take whole messages with `next_message` (None: need
    more).  After a ProtocolError the decoder is dead: the stream has lost its framing."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max = max_frame
        self._broken = False

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> Optional[Message]:
        if self._broken:
            raise ProtocolError("stream already broken")
        if len(self._buffer) < _LEN.size:
            return None
        try:
            size = _frame_size(self._buffer, self._max)
            if len(self._buffer) < size:
                return None
            body = bytes(self._buffer[_LEN.size:size])
            del self._buffer[:size]
            return decode_body(body)
        except ProtocolError:
            self._broken = True
            raise

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held so far."""
        return len(self._buffer)

    @property
    def wanted(self) -> int:
        """How many bytes complete the frame being assembled (at least 1).  A reader that
        reads no more than this never leaves a whole frame waiting in its buffer while the
        socket looks empty, and never swallows what follows the frame."""
        if len(self._buffer) < _LEN.size:
            return _LEN.size - len(self._buffer)
        try:
            return max(1, _frame_size(self._buffer, self._max) - len(self._buffer))
        except ProtocolError:
            return 1  # next_message() will say so

    def pending(self) -> bytes:
        """Bytes received after the last whole frame (plaintext that followed it)."""
        out, self._buffer = bytes(self._buffer), bytearray()
        return out


def _frame_size(header: bytes | bytearray, limit: int) -> int:
    (size,) = _LEN.unpack_from(header)
    if size > limit or size < _KIND.size:
        raise ProtocolError(f"frame length {size} outside 2..{limit}")
    return _LEN.size + int(size)


def frame_size(header: bytes) -> int:
    """The whole frame's size from its first four bytes (for readers that take exactly one
    frame off a socket and leave what follows in the kernel)."""
    return _frame_size(header, MAX_FRAME)
