"""The carrier: the TCP connection over loopback on which a program's socket reads and writes.

Protocol version 2 (CONNECT, LISTEN): the program's own socket is the carrier's program end,
so its descriptor never changes identity.  The library parks it before CONNECT, and the
daemon holds it (`Parked`, over `parking.Parking`) until the session's result is known;
LISTEN has the daemon connect to the program's loopback listener for each verified client
(`ssaproxy.api.listener`).  Only UPGRADE still makes a pair (`make_pair`) whose program end is
put in place of the program's descriptor, as in version 1.

Why TCP and not the Unix socket itself: a Unix stream has no reset.  When the peer's TLS
stream is truncated or reset, the program must read ECONNRESET, not a clean end of file, and
only a TCP connection closed with SO_LINGER 0 gives every reader that (read(2), select, a
Python file object, a C library that never heard of us).  The daemon makes the pair itself,
passes the program its end over the Unix socket (SCM_RIGHTS), and the library puts it in
place of the program's file descriptor number (dup2), so the number a program holds never
changes.

The pair is made with a listening socket on 127.0.0.1 that lives for one accept and is
checked: the accepted peer must be the very socket we connected, so a local process that
races to the port gets nothing.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Callable, Optional

from ssaproxy.api.completion import Completion, complete
from ssaproxy.api.handover import close_shared
from ssaproxy.api.parking import Parking, reset
from ssaproxy.streams import OneShotFactory, TCPEnd


def make_pair() -> tuple[socket.socket, socket.socket]:
    """(daemon end, program end) of a fresh loopback TCP connection."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(2.0)  # loopback connects complete at once; this only bounds a bug
        program = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            program.settimeout(2.0)
            program.connect(listener.getsockname())
            mine = program.getsockname()
            for _ in range(8):
                daemon, peer = listener.accept()
                if peer == mine:
                    for s in (daemon, program):
                        s.settimeout(None)
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return daemon, program
                daemon.close()  # someone else raced to the port
            raise OSError("could not make a carrier connection")
        except BaseException:
            program.close()
            raise
    finally:
        listener.close()


class Carrier(TCPEnd):
    """The daemon's end: the near end of the program's session.  Until the session is
    established, the lifecycle holds what the program writes (bounded; beyond that the program's
    writes block in its kernel buffer) and hears an early close at once, so a program that
    gives up mid-handshake leaves nothing behind."""


class Parked:
    """A program's socket passed with CONNECT, parked by the library (SYN_SENT, so it polls as
    a connect in progress) until the session's result.  The result frame goes on the control
    connection first (`send`), and only then is the socket completed or failed: once the
    program's socket polls writable, the frame is already waiting for the library.  Completing
    never blocks (`ssaproxy.api.completion`): its end comes later, through callbacks."""

    def __init__(self, parking: Parking, sock: socket.socket, send: Callable[[Any], None], reactor: Any) -> None:
        self.parking = parking
        self.sock: socket.socket | None = sock  # our reference to the program's socket, until it is decided
        self.send = send
        self.reactor = reactor
        self._completion: Optional[Completion] = None

    def establish(self, result: Any, ready: Callable[[Carrier], None], failed: Callable[[str], None]) -> None:
        """Send ESTABLISHED, then complete the program's socket: `ready(carrier)` with our end
        running, or `failed(why)` (the program's socket reset, or left as the program made it
        if it is not parked any more).  Neither runs after `abandon`."""
        sock = self.sock
        assert sock is not None
        try:
            self.send(result)
        except Exception as e:  # noqa: BLE001 - the control connection is gone: the program left
            self.abandon()
            failed(f"the result could not be sent: {e}")
            return

        def done(mine: Optional[socket.socket], why: str) -> None:
            self._completion = None
            self._release()
            if mine is None:
                failed(why)
                return
            carrier = Carrier()
            try:
                self.reactor.adoptStreamConnection(mine.fileno(), mine.family, OneShotFactory(carrier))
            except OSError as e:
                reset(mine)
                failed(e.strerror or str(e))
                return
            mine.close()  # the reactor holds its own duplicate
            ready(carrier)

        self._completion = complete(self.reactor, self.parking, sock, done)

    def fail(self, result: Any) -> None:
        """Send the ERROR, then end the program's connect with a reset."""
        if self.sock is not None:
            with contextlib.suppress(Exception):
                self.send(result)
            self.abandon()

    def abandon(self) -> None:
        """The program left (or the result could not be sent): reset its socket, let go of it.
        A completion under way is cancelled (our end reset); otherwise one is started only to be
        reset (fire and forget, bounded like any completion)."""
        completion, self._completion = self._completion, None
        if completion is not None:
            completion.cancel()
        elif self.sock is not None:
            complete(self.reactor, self.parking, self.sock, _reset_when_done)
        self._release()

    def _release(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            close_shared(sock)  # shared with the program: a linger it set must not make us wait


def _reset_when_done(mine: Optional[socket.socket], why: str) -> None:
    if mine is not None:
        reset(mine)
