"""The carrier: the TCP connection over loopback on which a program's socket reads and writes.

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

import socket
from typing import Optional

from twisted.internet import interfaces
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ssaproxy import relay

_SETUP_BUFFER = 65536


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


class CarrierOwner:
    """What a carrier reports to (a session)."""

    def program_data(self, data: bytes) -> None: ...

    def program_eof(self) -> None: ...

    def program_lost(self, reason: Failure) -> None: ...


@implementer(interfaces.IHalfCloseableProtocol)
class Carrier(Protocol):
    """The daemon's end.  Until the session is established, what the program writes is held
    (bounded; beyond that the program's writes block in its kernel buffer) and an early close
    is reported at once, so a program that gives up mid-handshake leaves nothing behind."""

    def __init__(self, owner: CarrierOwner) -> None:
        self.owner: Optional[CarrierOwner] = owner
        self.held = bytearray()
        self.eof = False
        self.relay: Optional[relay.Relay] = None

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.from_client(data)
            return
        self.held += data
        if len(self.held) >= _SETUP_BUFFER and self.transport is not None:
            relay.tcp(self.transport).pauseProducing()

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.client_read_eof()
            return
        self.eof = True
        if self.owner is not None:
            self.owner.program_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.relay is not None:
            self.relay.client_lost(reason)
            return
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.program_lost(reason)

    def splice(self, rl: relay.Relay) -> None:
        """Hand the connection to a relay, with what the program wrote so far."""
        self.relay = rl
        self.owner = None
        held, self.held = bytes(self.held), bytearray()
        rl.client_eof = self.eof
        rl.start(held)
        if not rl.finished and self.transport is not None:
            relay.tcp(self.transport).resumeProducing()
