"""Which request is legal in which state, for both ends of the API.

The library checks before it sends (so a program gets POSIX's errno for a call in the wrong
state without a round trip); the daemon checks what it receives (a message out of order is a
protocol violation: error reply, connection closed).
"""

from __future__ import annotations

import enum
import errno
from typing import Optional

from ssaproxy.proto.wire import Kind


class State(enum.Enum):
    FRESH = "fresh"  # no session with the daemon yet
    OPEN = "open"  # session open, options being set
    CONNECTING = "connecting"  # CONNECT/UPGRADE sent, result not read yet
    CONNECTED = "connected"  # the stream carries plaintext
    LISTENING = "listening"
    FAILED = "failed"  # the last connect failed; connect may be tried again
    CLOSED = "closed"


_OPS: dict[str, dict[State, Optional[int]]] = {  # type: ignore[dict-item]
    # op -> state -> errno (None: allowed)
    "connect": {State.FRESH: None, State.OPEN: None, State.FAILED: None, State.CONNECTING: errno.EALREADY,
                State.CONNECTED: errno.EISCONN, State.LISTENING: errno.EISCONN, State.CLOSED: errno.EBADF},
    "listen": {State.FRESH: None, State.OPEN: None, State.LISTENING: None, State.CONNECTING: errno.EINVAL,
               State.CONNECTED: errno.EINVAL, State.FAILED: errno.EINVAL, State.CLOSED: errno.EBADF},
    "accept": {**{s: errno.EINVAL for s in State}, State.LISTENING: None, State.CLOSED: errno.EBADF},
    "setopt": {State.FRESH: None, State.OPEN: None, State.FAILED: None, State.CONNECTING: errno.EISCONN,
               State.CONNECTED: errno.EISCONN, State.LISTENING: errno.EISCONN, State.CLOSED: errno.EBADF},
}


def check(op: str, state: State) -> Optional[int]:
    """The errno a program gets for `op` in `state`, or None when it may go ahead."""
    return _OPS[op][state]


# Daemon side: the kinds a control connection may send in each phase.
DAEMON_PHASES: dict[str, frozenset[Kind]] = {
    "hello": frozenset({Kind.HELLO}),
    "options": frozenset({Kind.SETOPT, Kind.GETOPT, Kind.CONNECT, Kind.LISTEN, Kind.UPGRADE}),
    "handed": frozenset(),  # the carrier has the session now; the library closes this socket
    "listening": frozenset({Kind.ACK}),
}

# How a failed connect or upgrade reaches the program (outcome -> errno).
OUTCOME_ERRNO = {
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
