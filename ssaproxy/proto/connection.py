"""The local socket API's conversation as one sans-IO object, for both ends (after h11).

`Connection(Role.CLIENT)` is the library's side of one session, `Connection(Role.DAEMON)`
the daemon's.  Bytes go in with `receive_data`, passed descriptors with `receive_fds`; typed
events come out of `next_event` (or `NEED_DATA`); `send(event)` checks that the event is
legal now and returns the frame's bytes.  Neither side reads or writes anything here, so the
daemon's Twisted protocol, the blocking library and `ssaproxy.testing` share one rulebook.

One session is one control connection.  After CONNECT (answered OK) the result, ESTABLISHED
or ERROR, arrives on it too; after UPGRADE (answered CARRIER) the result is the first frame on
the carrier, and the library feeds that frame to the same object.  After LISTEN (answered
OK{TOKEN}) nothing more travels on it; each accepted connection's ACCEPTED frame arrives on
that connection itself, and `Connection(Role.CLIENT, phase=Phase.LISTENING)` decodes it.

Two kinds of mistake are kept apart.  `RemoteProtocolError`: the peer sent something this
protocol does not allow; the connection is then dead, and a daemon answers with `refuse()`.
`LocalProtocolError`: we tried to send something that does not fit the phase; nothing was
sent and the phase is unchanged.  Both carry the errno a program should see.

Standard library only: the client library loads this into programs.
"""

from __future__ import annotations

import enum
import errno
from collections import deque
from typing import Iterable, Literal, NoReturn, Optional, Union

from ssaproxy.proto import wire
from ssaproxy.proto.events import (  # noqa: F401 - the events are part of this module's API
    KINDS,
    Accepted,
    Address,
    Carrier,
    Connect,
    ConnectionClosed,
    Error,
    Established,
    Event,
    GetOption,
    Hello,
    Listen,
    Ok,
    Redirect,
    Routes,
    SetOption,
    Upgrade,
    Value,
    Welcome,
    event_of,
    fields_of,
)
from ssaproxy.proto.wire import Kind, Tag


class Role(enum.Enum):
    CLIENT = "client"  # the program's library
    DAEMON = "daemon"


class Phase(enum.Enum):
    """Where one session is.  The library's socket states and the daemon's control
    connection states are the same thing seen from two ends."""

    FRESH = "fresh"  # no session yet: HELLO is the only request
    OPEN = "open"  # WELCOME seen: options, then one of CONNECT, UPGRADE, LISTEN
    CONNECTING = "connecting"  # CONNECT answered OK (result due here) or UPGRADE CARRIER (result on the carrier)
    CONNECTED = "connected"  # ESTABLISHED: the carrier carries plaintext; the protocol is done
    LISTENING = "listening"  # OK{TOKEN}: accepted connections arrive on the program's own listener
    FAILED = "failed"  # the result was ERROR; a new attempt needs a new session
    CLOSED = "closed"  # refused, broken, or closed by its owner


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA  # next_event(): no whole frame yet


class ProtocolViolation(Exception):
    """Base of the two protocol errors: `errno` is what a program gets, `text` why."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.errno = code
        self.text = text

    def __str__(self) -> str:
        return f"[{errno.errorcode.get(self.errno, self.errno)}] {self.text}"


class LocalProtocolError(ProtocolViolation):
    """We tried to send something this phase does not allow (nothing was sent)."""


class RemoteProtocolError(ProtocolViolation):
    """The peer sent something this protocol does not allow; the connection is dead."""


# ---- the rules ---------------------------------------------------------------------------
_PROGRAM_KINDS = frozenset({Kind.HELLO, Kind.SETOPT, Kind.GETOPT, Kind.CONNECT, Kind.LISTEN, Kind.UPGRADE, Kind.ROUTES,
                            Kind.REDIRECT})
# Requests a program may send in each phase (strictly one at a time).
_REQUESTS: dict[Phase, frozenset[Kind]] = {
    Phase.FRESH: frozenset({Kind.HELLO}),
    Phase.OPEN: frozenset({Kind.SETOPT, Kind.GETOPT, Kind.CONNECT, Kind.LISTEN, Kind.UPGRADE, Kind.ROUTES,
                           Kind.REDIRECT}),
}
# The frames that may answer each request.
_REPLIES: dict[Kind, frozenset[Kind]] = {
    Kind.HELLO: frozenset({Kind.WELCOME, Kind.ERROR}),
    Kind.SETOPT: frozenset({Kind.OK, Kind.ERROR}),
    Kind.GETOPT: frozenset({Kind.VALUE, Kind.ERROR}),
    Kind.CONNECT: frozenset({Kind.OK, Kind.ERROR}),
    Kind.UPGRADE: frozenset({Kind.CARRIER, Kind.ERROR}),
    Kind.LISTEN: frozenset({Kind.OK, Kind.ERROR}),
    Kind.ROUTES: frozenset({Kind.VALUE, Kind.ERROR}),
    Kind.REDIRECT: frozenset({Kind.OK, Kind.ERROR}),
}
# What the daemon sends unasked: the result (on the control connection after CONNECT, on the
# carrier after UPGRADE), and the ACCEPTED frame on a delivered connection.
_UNASKED: dict[Phase, frozenset[Kind]] = {
    Phase.CONNECTING: frozenset({Kind.ESTABLISHED, Kind.ERROR}),
    Phase.LISTENING: frozenset({Kind.ACCEPTED}),
}
# (request answered, reply) -> the phase it leads to; any other answer leaves the phase alone.
_AFTER_REPLY: dict[tuple[Kind, Kind], Phase] = {
    (Kind.HELLO, Kind.WELCOME): Phase.OPEN,
    (Kind.HELLO, Kind.ERROR): Phase.CLOSED,
    (Kind.CONNECT, Kind.OK): Phase.CONNECTING,
    (Kind.UPGRADE, Kind.CARRIER): Phase.CONNECTING,
    (Kind.LISTEN, Kind.OK): Phase.LISTENING,
    (Kind.REDIRECT, Kind.OK): Phase.CONNECTED,  # the socket is the outbound face's now: nothing more to say
}
_AFTER_UNASKED: dict[Kind, Phase] = {Kind.ESTABLISHED: Phase.CONNECTED, Kind.ERROR: Phase.FAILED}

# The socket calls a program makes, and the errno each gets in each phase (None: go ahead).
# The library checks before it sends, so a call in the wrong state costs no round trip.
_CALLS: dict[str, dict[Phase, Optional[int]]] = {
    "connect": {Phase.FRESH: None, Phase.OPEN: None, Phase.FAILED: None, Phase.CONNECTING: errno.EALREADY,
                Phase.CONNECTED: errno.EISCONN, Phase.LISTENING: errno.EISCONN, Phase.CLOSED: errno.EBADF},
    "listen": {Phase.FRESH: None, Phase.OPEN: None, Phase.LISTENING: None, Phase.CONNECTING: errno.EINVAL,
               Phase.CONNECTED: errno.EINVAL, Phase.FAILED: errno.EINVAL, Phase.CLOSED: errno.EBADF},
    "accept": {**{p: errno.EINVAL for p in Phase}, Phase.LISTENING: None, Phase.CLOSED: errno.EBADF},
    "setopt": {Phase.FRESH: None, Phase.OPEN: None, Phase.FAILED: None, Phase.CONNECTING: errno.EISCONN,
               Phase.CONNECTED: errno.EISCONN, Phase.LISTENING: errno.EISCONN, Phase.CLOSED: errno.EBADF},
}
_CALL_OF: dict[Kind, str] = {Kind.SETOPT: "setopt", Kind.GETOPT: "setopt", Kind.CONNECT: "connect",
                             Kind.UPGRADE: "connect", Kind.LISTEN: "listen", Kind.REDIRECT: "connect"}


def check(call: str, phase: Phase) -> Optional[int]:
    """The errno a program gets for socket call `call` in `phase`, or None when it may go ahead."""
    return _CALLS[call][phase]


# How a failed connect, upgrade or accepted handshake reaches the program: outcome -> errno.
OUTCOME_ERRNO: dict[str, int] = {
    "verify-failed": errno.EPROTO,
    "handshake-failed": errno.EPROTO,
    "refused": errno.ECONNREFUSED,
    "connect-timeout": errno.ETIMEDOUT,
    "handshake-timeout": errno.ETIMEDOUT,
    "unreachable": errno.EHOSTUNREACH,
    "no-address": errno.EHOSTUNREACH,
    "reset": errno.ECONNRESET,
    "shutdown": errno.ECONNABORTED,
    "overload": errno.EAGAIN,
    "invalid": errno.EINVAL,
}

MAX_FDS_HELD = {Role.DAEMON: 4, Role.CLIENT: 256}  # descriptors queued without their frame yet


class Connection:
    """One session of the API protocol, seen from `role`'s end.  See the module docstring."""

    def __init__(self, role: Role, *, phase: Phase = Phase.FRESH) -> None:
        """`phase` other than FRESH is for a session whose start happened elsewhere: the
        library's side of an accepted connection begins CONNECTED."""
        self.role = role
        self._phase = phase
        self._decoder = wire.Decoder()  # assembles the frames
        self._broken: Optional[RemoteProtocolError] = None
        self._fds: deque[int] = deque()
        self._owed: Optional[Kind] = None  # the request waiting for its reply
        self._eof = False
        self.session: Optional[int] = None  # the daemon's identifier, from WELCOME

    def __repr__(self) -> str:
        return f"<Connection {self.role.value} {self._phase.value}>"

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def awaiting(self) -> Optional[Kind]:
        """The request that has been sent and not answered yet."""
        return self._owed

    @property
    def wanted(self) -> int:
        """How many bytes complete the frame being assembled: see `wire.Decoder.wanted`."""
        return self._decoder.wanted

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken out as events (a partial frame, or frames waiting)."""
        return self._decoder.buffered

    @property
    def fds_held(self) -> int:
        """Descriptors received and not yet handed out with an event."""
        return len(self._fds)

    # ---- input
    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" is the end of its stream."""
        if not data:
            self._eof = True
        elif self._eof:
            raise RuntimeError("data after the end of the stream")
        else:
            self._decoder.receive_data(data)

    def receive_fds(self, fds: Iterable[int]) -> None:
        """Descriptors from SCM_RIGHTS, in arrival order.  They pair with descriptor-carrying
        frames first in, first out (docs/api.md).  The caller closes `discard_fds()` once a
        RemoteProtocolError ends the connection."""
        self._fds.extend(fds)
        if len(self._fds) > MAX_FDS_HELD[self.role]:
            self._break(errno.EPROTO, "too many file descriptors without a frame that takes them")

    def discard_fds(self) -> list[int]:
        """The descriptors received and not handed out with an event; the caller closes them."""
        out = list(self._fds)
        self._fds.clear()
        return out

    def next_event(self) -> Union[Event, Literal[NeedData.NEED_DATA]]:
        """The next event, or NEED_DATA.  Raises RemoteProtocolError (again on every later
        call) once the peer has broken the protocol."""
        if self._broken is not None:
            raise RemoteProtocolError(self._broken.errno, self._broken.text)
        if self.role == Role.DAEMON and self._owed is not None:
            raise LocalProtocolError(errno.EINVAL, f"reply to {self._owed.name} before reading on")
        try:
            message = self._decoder.next_message()
        except wire.ProtocolError as e:
            self._break(errno.EPROTO, f"malformed message: {e}")
        if message is None:
            if self._eof:
                if self._decoder.buffered:
                    self._break(errno.ECONNABORTED, "the peer closed the connection in the middle of a frame")
                self._phase = Phase.CLOSED
                return ConnectionClosed()
            if self.role == Role.DAEMON and self._fds and not self._decoder.buffered:
                # A program sends a descriptor on its request's first byte; with nothing
                # buffered, no frame can still claim it.
                self._break(errno.EPROTO, "a file descriptor came with a message that takes none")
            return NEED_DATA
        return self._received(message)

    def _received(self, m: wire.Message) -> Event:
        peer = Role.DAEMON if self.role == Role.CLIENT else Role.CLIENT
        problem = self._problem(m.kind, peer)
        if problem is not None:
            self._break(errno.EPROTO, problem)
        want = wire.fd_count(m.kind)
        if len(self._fds) < want:
            self._break(errno.EINVAL, f"{m.kind.name} needs {want} file descriptor{'s' * (want > 1)} (SCM_RIGHTS)")
        fds = tuple(self._fds.popleft() for _ in range(want))
        if self.role == Role.CLIENT and self._fds:
            # The library waits for each reply before the next request: nothing can follow.
            self._break(errno.EPROTO, f"a file descriptor came with {m.kind.name}, which takes none")
        if m.kind == Kind.HELLO and m.int(Tag.VERSION) != wire.VERSION:
            self._break(errno.EPROTONOSUPPORT, f"protocol version {m.int(Tag.VERSION)} unknown; this daemon "
                                               f"speaks {wire.VERSION}")
        event = event_of(m, fds)
        self._advance(m.kind)
        if isinstance(event, Welcome):
            self.session = event.session
        return event

    def _break(self, code: int, text: str) -> NoReturn:
        self._phase, self._owed = Phase.CLOSED, None
        self._broken = RemoteProtocolError(code, text)
        raise RemoteProtocolError(code, text)

    # ---- output
    def send(self, event: Event) -> bytes:
        """The frame for `event`, if it is legal now (LocalProtocolError otherwise, and nothing
        changes).  A descriptor-carrying event's fd is the caller's to pass, as SCM_RIGHTS on
        the frame's first byte."""
        kind = KINDS.get(type(event))
        if kind is None:
            raise LocalProtocolError(errno.EINVAL, f"{type(event).__name__} is not a message")
        problem = self._problem(kind, self.role)
        if problem is not None:
            call = _CALL_OF.get(kind)
            code = check(call, self._phase) if call is not None else None
            raise LocalProtocolError(code or errno.EINVAL, problem)
        try:
            frame = wire.encode(kind, fields_of(event))
        except (ValueError, TypeError, wire.ProtocolError) as e:
            raise LocalProtocolError(errno.EINVAL, f"cannot send {kind.name}: {e}") from None
        self._advance(kind)
        return frame

    def refuse(self, code: int, text: str) -> bytes:
        """The daemon's last word (after a RemoteProtocolError, or when it will not serve this
        connection at all): an ERROR frame.  The connection is CLOSED; close it after this."""
        if self.role != Role.DAEMON:
            raise LocalProtocolError(errno.EINVAL, "only the daemon refuses a connection")
        self._phase, self._owed = Phase.CLOSED, None
        return wire.encode(Kind.ERROR, {Tag.ERRNO: code, Tag.TEXT: text})

    def close(self) -> None:
        """Our end is closed: nothing more is sent or accepted."""
        self._phase, self._owed = Phase.CLOSED, None

    # ---- the one table both directions go through
    def _problem(self, kind: Kind, sender: Role) -> Optional[str]:  # noqa: PLR0911 - one return per case reads best
        """Why `sender` may not send `kind` now, or None."""
        phase = self._phase
        if (sender == Role.CLIENT) != (kind in _PROGRAM_KINDS):
            return f"{kind.name} is not a {sender.value}'s message"
        if sender == Role.CLIENT:
            if self._owed is not None:
                return f"{kind.name} before the reply to {self._owed.name}"
            if kind not in _REQUESTS.get(phase, frozenset()):
                return f"{kind.name} not allowed now ({phase.value})"
            return None
        if self._owed is not None:
            if kind not in _REPLIES[self._owed]:
                return f"{kind.name} does not answer {self._owed.name}"
            return None
        if kind not in _UNASKED.get(phase, frozenset()):
            return f"{kind.name} not allowed now ({phase.value})"
        return None

    def _advance(self, kind: Kind) -> None:
        """Move on after `kind` went (either way); `_problem` has allowed it."""
        if kind in _PROGRAM_KINDS:
            self._owed = kind
            return
        if self._owed is not None:
            request, self._owed = self._owed, None
            self._phase = _AFTER_REPLY.get((request, kind), self._phase)
        elif kind != Kind.ACCEPTED:  # one ACCEPTED per delivered connection: its phase stays
            self._phase = _AFTER_UNASKED[kind]



__all__ = [
    "MAX_FDS_HELD", "NEED_DATA", "OUTCOME_ERRNO", "Accepted", "Address", "Carrier", "Connect", "Connection",
    "ConnectionClosed", "Error", "Established", "Event", "GetOption", "Hello", "Listen", "LocalProtocolError",
    "NeedData", "Ok", "Phase", "ProtocolViolation", "Redirect", "RemoteProtocolError", "Role", "Routes", "SetOption",
    "Upgrade", "Value",
    "Welcome", "check",
]
