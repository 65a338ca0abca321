"""The lifecycle's vocabulary without its machinery: the states of a connection, the legal
moves between them, and the one set of words for why a far end could not be reached.

```
accepted ──> deciding ──> connecting ──> handshaking ──> relaying ──> done
    └──> handshaking (inbound, API accept: the near end's handshake comes first)
```
An illegal move is a bug, and `ssaproxy.lifecycle` turns a bug into a reset.
"""

from __future__ import annotations

import enum
import errno

from twisted.internet import error
from twisted.python.failure import Failure


class State(enum.Enum):
    ACCEPTED = "accepted"
    DECIDING = "deciding"  # waiting for the program's first bytes to tell what to do
    CONNECTING = "connecting"  # TCP connect to the far end in flight
    HANDSHAKING = "handshaking"  # a TLS handshake in flight (either end)
    RELAYING = "relaying"
    DONE = "done"


_S = State
_LEGAL: dict[State, frozenset[State]] = {
    _S.ACCEPTED: frozenset({_S.DECIDING, _S.CONNECTING, _S.HANDSHAKING, _S.DONE}),
    _S.DECIDING: frozenset({_S.CONNECTING, _S.DONE}),
    # Back to DECIDING: outbound learnt from a late ClientHello that its upstream is the wrong kind.
    _S.CONNECTING: frozenset({_S.HANDSHAKING, _S.RELAYING, _S.DECIDING, _S.DONE}),
    _S.HANDSHAKING: frozenset({_S.CONNECTING, _S.RELAYING, _S.DECIDING, _S.DONE}),
    _S.RELAYING: frozenset({_S.DECIDING, _S.DONE}),
    _S.DONE: frozenset(),
}


def connect_outcome(reason: Failure) -> str:
    """One vocabulary for a far end that could not be reached.  Out of file descriptors for the
    far end's socket (Twisted's ConnectBindError carries the errno) is the daemon's overload, not
    the peer's fault."""
    if getattr(reason.value, "osError", None) in (errno.EMFILE, errno.ENFILE):
        return "overload"
    if reason.check(error.ConnectionRefusedError):
        return "connect-refused"
    if reason.check(error.TimeoutError):
        return "connect-timeout"
    if reason.check(error.DNSLookupError):
        return "no-address"
    if reason.check(error.NoRouteError) or getattr(reason.value, "osError", None) in (
            errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "connect-failed"



def legal(now: State, then: State) -> bool:
    """Whether a connection in state `now` may move to `then`."""
    return then in _LEGAL[now]
