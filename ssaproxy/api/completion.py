"""Completing a parked socket in the reactor, without ever blocking it.

`ssaproxy.api.parking` says how a program's parked socket N is completed: a socket D of ours
connects to it (a TCP simultaneous open).  On loopback that takes microseconds, but only if N
is still what the program parked: a program can disconnect N, make it a listener whose accept
queue is full, and D's SYN then waits for an answer that never comes.  So D is non-blocking
from birth, and its end is awaited here as any other connect: D registered for writability,
a deadline (`COMPLETE_TIMEOUT`) after which D is reset and the completion failed, and a check
that D is N's other end (`Parking.verified`) before anyone uses it.  The caller learns the end
through `done(D or None, why)`, exactly once unless it cancels first.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IWriteDescriptor
from zope.interface import implementer

from ssaproxy.api.parking import COMPLETE_TIMEOUT, Parking, reset

__all__ = ["Completion", "complete"]

Done = Callable[[Optional[socket.socket], str], None]


@implementer(IWriteDescriptor)
class Completion:
    """One completion of a parked socket (see the module docstring)."""

    def __init__(self, reactor: Any, parking: Parking, sock: socket.socket, done: Done) -> None:
        self.reactor = reactor
        self.parking = parking
        self.sock = sock
        self._done: Optional[Done] = done
        self._mine: Optional[socket.socket] = None
        self._timer: Any = None
        self._registered = False

    def start(self, timeout: float = COMPLETE_TIMEOUT) -> None:
        try:
            self._mine = self.parking.begin(self.sock)
        except OSError as e:
            self._finish(False, e.strerror or str(e))
            return
        if self.parking.finished(self._mine) is not None:  # completed within the connect call
            self.doWrite()
            return
        self._timer = self.reactor.callLater(timeout, self._timed_out, timeout)
        self.reactor.addWriter(self)
        self._registered = True

    def cancel(self) -> None:
        """Stop waiting; D (if any) is reset and `done` is never called."""
        self._done = None
        self._finish(False, "cancelled")

    # ---- IWriteDescriptor
    def fileno(self) -> int:
        return self._mine.fileno() if self._mine is not None else -1

    def logPrefix(self) -> str:
        return "ssaproxy-completion"

    def doWrite(self) -> None:
        mine = self._mine
        if mine is None:
            return
        try:
            state = self.parking.finished(mine)
        except OSError as e:
            self._finish(False, e.strerror or str(e))
            return
        if state is None:
            return  # not yet: wait for the next writability
        if not state:
            self._finish(False, "the program's socket did not answer as a parked one")
        elif not self.parking.verified(self.sock, mine):
            self._finish(False, "the connection made is not to the program's parked socket")
        else:
            self._finish(True, "")

    def connectionLost(self, reason: Any) -> None:
        """The reactor saw an error or hang-up on D (a reset: N was not waiting for it), or
        it is stopping: either way no carrier."""
        if self._mine is not None and self._done is not None:
            self._finish(False, "the program's socket did not answer as a parked one")

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        self._finish(False, f"the program's socket did not complete in {timeout:g}s")

    # ---- the end
    def _finish(self, ok: bool, why: str) -> None:
        if self._registered:  # while fileno() still names D
            self._registered = False
            self.reactor.removeWriter(self)
        mine, self._mine = self._mine, None
        if self._timer is not None:
            timer, self._timer = self._timer, None
            if timer.active():
                timer.cancel()
        if not ok and mine is not None:
            reset(mine)
            mine = None
        done, self._done = self._done, None
        if done is not None:
            done(mine, why)
        elif mine is not None:
            reset(mine)


def complete(reactor: Any, parking: Parking, sock: socket.socket, done: Done,
             timeout: float = COMPLETE_TIMEOUT) -> Completion:
    """Start completing the parked `sock`; `done(D, "")` with our end (non-blocking, verified,
    the caller's to close), or `done(None, why)` with D reset.  `done` may run before this
    returns."""
    completion = Completion(reactor, parking, sock, done)
    completion.start(timeout)
    return completion
