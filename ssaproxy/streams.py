"""Stream ends: the two halves a relay splices, plaintext TCP or TLS, behind one interface.

An end reports to its sink with four calls, each naming the end: ready (connected; for TLS,
handshake done and peer verified), data, eof (FIN; for TLS, close_notify) and lost (with how
it ended).  The relay and the connection lifecycle only ever see ends, so the outbound client,
a passthrough upstream, an inbound backend, the API's carrier (all `TCPEnd`) and every TLS
connection (`ssaproxy.tls.stream.TLSStream`) are interchangeable on either side of a splice.

Writes go straight to the TCP transport underneath (TLS records included), so its buffer is
the only buffer and Twisted's producer/consumer machinery gives backpressure: `tcp` is that
transport, for the relay to register producers on.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import functools
import socket
import struct
import termios
from typing import Any, Callable, Optional, TypeVar, cast
from typing import Protocol as TypingProtocol

from twisted.internet import error, interfaces
from twisted.internet import tcp as _tcp
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer


class How(enum.StrEnum):
    """How a stream end ended, as reported to its sink's `end_lost`."""

    CLEAN = "clean"  # orderly end (for TLS: close_notify received before the TCP close)
    TRUNCATED = "truncated"  # TCP closed without close_notify
    RESET = "reset"  # TCP reset, or a TLS error after the handshake
    HANDSHAKE_FAILED = "handshake-failed"
    VERIFY_FAILED = "verify-failed"
    ABORTED = "aborted"  # we aborted it ourselves


class TCPTransport(TypingProtocol):
    """What the relay uses of a Twisted TCP transport (ITCPTransport + IProducer + IConsumer)."""

    producer: object

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def loseWriteConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def getHandle(self) -> object: ...

    def getHost(self) -> Any: ...

    def getPeer(self) -> Any: ...


def tcp(transport: object) -> TCPTransport:
    """The transport Twisted gave a TCP protocol, typed for what the relay needs of it."""
    return cast(TCPTransport, transport)


_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST
_LINGER_OFF = struct.pack("ii", 0, 0)  # close() sends FIN (the default)


# TCP keepalive: a peer that vanished without a FIN or RST (a crashed host, a dropped NAT entry)
# is noticed after about two idle minutes (60 s, then 6 probes 10 s apart), not never.
KEEPALIVE = ((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1), (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60),
             (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10), (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6))
# No Nagle: a relay passes on what it has as soon as it has it (write_now sends within the event
# that produced the bytes, so two small writes of one event, such as a handshake's last flight
# and the first application data, must not wait for an ACK between them).
SOCKET_OPTIONS = (*KEEPALIVE, (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))


def _socket(transport: object) -> Optional[socket.socket]:
    handle = getattr(transport, "getHandle", lambda: None)()
    return handle if isinstance(handle, socket.socket) else None


def _linger(transport: object, value: bytes) -> None:
    sock = _socket(transport)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, value)


def unsent(transport: object) -> int:
    """Bytes written to a connection that the peer's kernel has not acknowledged yet: what
    Twisted still buffers plus the socket's send queue (SIOCOUTQ).  Once it is 0, a reset no
    longer destroys anything: the peer reads every byte, then ECONNRESET."""
    # Twisted keeps no public count of its write buffer; these are FileDescriptor's own fields
    # (tests/test_relay.py notices if they change).
    n = len(getattr(transport, "dataBuffer", b"")) - getattr(transport, "offset", 0)
    n += getattr(transport, "_tempDataLen", 0)
    sock = _socket(transport)
    if sock is not None:
        with contextlib.suppress(OSError):
            n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    return n


def write_now(transport: Any, data: bytes) -> None:
    """Write to a TCP transport, sending at once when nothing is queued before it.

    Twisted's write only queues: the bytes leave at the next writable event, which costs the
    relay an epoll registration, a poll round and a deregistration per write (half the events
    of a keep-alive request).  When the transport's buffer is empty, one send() now is the
    same bytes in the same order; whatever the kernel does not take (or an error) goes through
    Twisted's write as before, so its buffer, its backpressure and its error handling are
    unchanged.  Only a live, not-closing, plain Twisted socket transport takes the fast path
    (the attributes are FileDescriptor's own; tests/test_relay.py notices if they change).
    """
    cls: object = transport.__class__
    if (cls in _DIRECT and not transport._tempDataLen and not transport.dataBuffer
            and transport.connected and not transport.disconnecting and not transport._writeDisconnecting
            and not transport._aborting):
        try:
            n = transport.socket.send(data)
        except OSError:
            n = 0  # EAGAIN, or an error Twisted's own write path meets and reports as it always does
        if n == len(data):
            return
        data = data[n:]
    transport.write(data)


_DIRECT: frozenset[type] = frozenset({_tcp.Server, _tcp.Client})


def reset(transport: object) -> None:
    """Close a TCP connection with RST: SO_LINGER 0, then abort."""
    _linger(transport, _LINGER_RESET)
    tcp(transport).abortConnection()


def graceful_close(transport: object) -> None:
    """Close a TCP connection with FIN, after what is queued: the only way an end closes
    cleanly (see `End.connectionMade`)."""
    _linger(transport, _LINGER_OFF)
    tcp(transport).loseConnection()


class EndSink(TypingProtocol):
    """Who hears an end's events: the connection lifecycle while it sets up, then the relay."""

    def end_ready(self, end: "End") -> None: ...

    def end_data(self, end: "End", data: bytes) -> None: ...

    def end_eof(self, end: "End") -> None: ...

    def end_lost(self, end: "End", how: How, detail: Optional[str]) -> None: ...


C = TypeVar("C", bound=Callable[..., None])
_log = Logger()


def guarded(method: C) -> C:
    """A Twisted callback of a stream end that must never let an exception reach Twisted.

    Twisted answers an exception in a protocol callback by closing the connection in order:
    shutdown(), a FIN, which a program reads as a clean end even with SO_LINGER 0 set.  Here the
    end is reset instead, and its sink hears of it as a reset, so the other side is reset too.
    """

    @functools.wraps(method)
    def run(self: End, *args: Any) -> None:
        try:
            method(self, *args)
        except Exception:  # noqa: BLE001 - fail closed, whatever went wrong
            _log.failure("stream end: internal error in {method}", method=method.__name__)
            self._aborting = True
            if self.transport is not None and self.connected:
                reset(self.transport)
            sink, self.sink = self.sink, None
            if sink is not None:
                with contextlib.suppress(Exception):
                    sink.end_lost(self, How.RESET, f"internal error in {method.__name__}")

    return run  # type: ignore[return-value]


class End(Protocol):
    """One stream end on a TCP transport.

    From the moment it is connected, the socket is set to close with a reset (SO_LINGER 0);
    only a deliberate clean close (`graceful_close`) turns that off first.  So when the daemon
    dies however it dies (a signal, SIGKILL, the OOM killer), the kernel resets every
    connection it still held, and no program reads a clean end of a cut stream.  TCP keepalive
    is on, so a peer that vanished silently ends its relay too.
    """

    sink: Optional[EndSink] = None
    _aborting = False

    def connectionMade(self) -> None:
        # Twisted's own orderly close calls shutdown() before close(), which sends a FIN whatever
        # SO_LINGER says; without it, a close Twisted makes on its own is a reset, and our clean
        # closes (graceful_close, which turns linger off first) still end with a FIN.
        # (tests/test_relay.py notices if Twisted renames the attribute.)
        transport: Any = self.transport
        if hasattr(transport, "_shouldShutdown"):
            transport._shouldShutdown = False
        sock = _socket(transport)
        if sock is not None:
            with contextlib.suppress(OSError):  # not TCP after all (a socketpair): nothing to keep alive
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                for level, option, value in SOCKET_OPTIONS:
                    sock.setsockopt(level, option, value)

    @property
    def tcp(self) -> TCPTransport:
        return tcp(self.transport)

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def shutdown_write(self) -> None:
        """FIN (plain) or close_notify (TLS); reading goes on."""
        raise NotImplementedError

    def close(self) -> None:
        """Orderly full close: our write side ends, then the connection."""
        self.shutdown_write()
        if self.transport is not None:
            graceful_close(self.transport)

    def abort(self) -> None:
        """End with a reset; the sink hears `ABORTED` (if it is still listening)."""
        self._aborting = True
        if self.transport is not None and self.connected:
            reset(self.transport)

    def facts(self) -> dict[str, object]:
        """What the log record says of this end once it is ready (TLS version, cipher)."""
        return {}


class OneShotFactory(Factory):
    """Hands one prepared end to an endpoint's connect (or an adopted socket), quietly, and
    then lets go of it (the connector keeps its factory; the end must not outlive its
    connection)."""

    noisy = False

    def __init__(self, proto: End) -> None:
        self.proto: Optional[End] = proto

    def buildProtocol(self, addr: Any) -> Optional[End]:
        proto, self.proto = self.proto, None
        return proto


@implementer(interfaces.IHalfCloseableProtocol)
class TCPEnd(End):
    """Bytes as they are, with half-close both ways."""

    @guarded
    def connectionMade(self) -> None:
        super().connectionMade()
        if self.sink is not None:
            self.sink.end_ready(self)

    @guarded
    def dataReceived(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.end_data(self, data)

    def write(self, data: bytes) -> None:
        write_now(self.transport, data)

    def shutdown_write(self) -> None:
        self.tcp.loseWriteConnection()

    def close(self) -> None:
        graceful_close(self.transport)

    @guarded
    def readConnectionLost(self) -> None:
        if self.sink is not None:
            self.sink.end_eof(self)

    def writeConnectionLost(self) -> None:
        pass

    @guarded
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        sink, self.sink = self.sink, None
        if sink is None:
            return
        if self._aborting:
            sink.end_lost(self, How.ABORTED, None)
        elif reason.check(error.ConnectionDone):
            sink.end_lost(self, How.CLEAN, None)
        else:
            sink.end_lost(self, How.RESET, reason.getErrorMessage())
