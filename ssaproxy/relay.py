"""The relay: a plaintext client connection spliced to an upstream connection.

It adds to a naive port-forwarder the three things a TLS proxy owes its users:

* backpressure: each TCP transport is registered as the other's streaming producer, so a slow
  reader on one side stops reads on the other; nothing is buffered without bound;
* half-close both ways: the client's FIN becomes a close_notify upstream (and the other way
  round), while the other direction keeps flowing;
* honest endings: only a clean end upstream (close_notify, then FIN) ends the client
  connection with a FIN.  An upstream that resets, or stops without close_notify (truncation),
  makes us reset the client (RST), so a legacy program sees an error, never a silently
  truncated response.  A client that resets makes us reset upstream.

Upstream ends (`Upstream`) report to a sink with four calls: ready, data, eof, lost.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Callable, Optional, cast
from typing import Protocol as TypingProtocol

from twisted.internet import error, interfaces
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

# How an upstream connection ended, as reported to the sink's `upstream_lost`.
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


def tcp(transport: object) -> TCPTransport:
    """The transport Twisted gave a TCP protocol, typed for what the relay needs of it."""
    return cast(TCPTransport, transport)


class UpstreamSink(TypingProtocol):
    def upstream_ready(self) -> None: ...

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_eof(self) -> None: ...

    def upstream_lost(self, how: str, detail: Optional[str]) -> None: ...


class OneShotFactory(Factory):
    """Hands one prepared upstream protocol to an endpoint's connect, quietly, and then lets go
    of it (the connector keeps its factory; the protocol must not outlive its connection)."""

    noisy = False

    def __init__(self, proto: "Upstream") -> None:
        self.proto: Optional[Upstream] = proto

    def buildProtocol(self, addr: Any) -> Optional["Upstream"]:
        proto, self.proto = self.proto, None
        return proto


class Upstream(Protocol):
    """Base of the two upstream kinds: plain TCP (passthrough) and TLS."""

    sink: Optional[UpstreamSink] = None
    _aborting = False

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def shutdown_write(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        self._aborting = True
        if self.transport is not None and self.connected:
            reset(self.transport)

    def facts(self) -> dict[str, object]:
        return {}


@implementer(interfaces.IHalfCloseableProtocol)
class PlainUpstream(Upstream):
    """Bytes as they are: used to pass a client's own TLS through untouched."""

    _eof = False

    def connectionMade(self) -> None:
        if self.sink is not None:
            self.sink.upstream_ready()

    def dataReceived(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.upstream_data(data)

    def write(self, data: bytes) -> None:
        tcp(self.transport).write(data)

    def shutdown_write(self) -> None:
        tcp(self.transport).loseWriteConnection()

    def readConnectionLost(self) -> None:
        self._eof = True
        if self.sink is not None:
            self.sink.upstream_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        if self.sink is None:
            return
        if self._aborting:
            self.sink.upstream_lost(ABORTED, None)
        elif reason.check(error.ConnectionDone):
            self.sink.upstream_lost(CLEAN, None)
        else:
            self.sink.upstream_lost(RESET, reason.getErrorMessage())


def reset(transport: object) -> None:
    """Close a TCP connection with RST: SO_LINGER 0, then abort."""
    handle = getattr(transport, "getHandle", lambda: None)()
    if isinstance(handle, socket.socket):
        try:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    tcp(transport).abortConnection()


class _PauseOnly:
    """A transport as the other side's streaming producer, for backpressure only.

    When a consumer's connection is lost, Twisted calls its producer's stopProducing, which on a
    TCP transport means loseConnection: a FIN for the other side, before the relay has even
    heard why.  Endings are the relay's business, so stopProducing does nothing here.
    """

    def __init__(self, transport: TCPTransport) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


def _unregister(transport: object) -> None:
    if transport is not None and getattr(transport, "producer", None) is not None:
        tcp(transport).unregisterProducer()


class Relay:
    """Splices an accepted client transport and a ready upstream until both ends are done."""

    def __init__(self, client: TCPTransport, upstream: Upstream,
                 done: Callable[[str, Optional[str]], None]) -> None:
        self.client = client
        self.upstream = upstream
        self._done = done
        self.bytes_out = 0  # client -> peer
        self.bytes_in = 0  # peer -> client
        self.client_eof = False
        self.upstream_eof_seen = False
        self.finished = False

    def start(self, pending: bytes) -> None:
        upstream = tcp(self.upstream.transport)
        self.upstream.sink = self
        self.client.registerProducer(_PauseOnly(upstream), True)
        upstream.registerProducer(_PauseOnly(self.client), True)
        if pending:
            self.from_client(pending)
        if self.client_eof:  # the client finished before the upstream was ready
            self.client_read_eof()

    # ---- client side
    def from_client(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.upstream.write(data)

    def client_read_eof(self) -> None:
        self.client_eof = True
        # Nothing more will come from the client: stop it producing into the upstream
        # transport, or a paused producer could hold back the half-close (Twisted resumes a
        # paused producer instead of closing when the buffer drains).
        _unregister(self.upstream.transport)
        self.upstream.shutdown_write()
        self._maybe_close()

    def client_lost(self, reason: Failure) -> None:
        if self.finished:
            return
        if reason.check(error.ConnectionDone) and self.client_eof and self.upstream_eof_seen:
            self._finish("closed", None)
            return
        self.upstream.abort()
        self._finish("client-reset", reason.getErrorMessage())

    # ---- upstream side (UpstreamSink)
    def upstream_ready(self) -> None:  # already ready when the relay starts
        pass

    def upstream_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.client.write(data)

    def upstream_eof(self) -> None:
        self.upstream_eof_seen = True
        if not self.finished:
            _unregister(self.client)
            self.client.loseWriteConnection()
            self._maybe_close()

    def upstream_lost(self, how: str, detail: Optional[str]) -> None:
        if self.finished:
            return
        if how == CLEAN:
            # Orderly end upstream: whatever the client still sends has nowhere to go.
            self.upstream_eof_seen = True
            self._close_client()
            self._finish("closed", None)
        else:
            self._unregister()
            reset(self.client)
            self._finish(how, detail)

    # ---- endings
    def _maybe_close(self) -> None:
        if self.client_eof and self.upstream_eof_seen and not self.finished:
            self._close_client()
            tcp(self.upstream.transport).loseConnection()
            self._finish("closed", None)

    def _close_client(self) -> None:
        self._unregister()
        self.client.loseConnection()

    def _unregister(self) -> None:
        _unregister(self.client)
        _unregister(self.upstream.transport)

    def detach(self) -> None:
        """Stop splicing without ending either side (the owner is replacing the upstream)."""
        self._unregister()
        self.finished = True
        self._done = _ignore

    def _finish(self, outcome: str, detail: Optional[str]) -> None:
        self.finished = True
        done, self._done = self._done, _ignore
        # Break the reference cycles (owner -> relay -> owner, relay <-> upstream) so a finished
        # connection is freed by reference counting, not at the next full garbage collection.
        self.upstream.sink = None
        done(outcome, detail)


def _ignore(outcome: str, detail: Optional[str]) -> None:
    pass
