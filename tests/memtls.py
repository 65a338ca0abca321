"""In-memory pieces for protocol tests: a recording TCP transport and a pyOpenSSL TLS server
that is pumped against it (no sockets, no threads)."""

from __future__ import annotations

from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import StringTransport

from tests.pki import ServerCreds


class Transport(StringTransport):
    """A StringTransport that records aborts and write-side half-closes, with an optional
    socket-like handle (for SO_ORIGINAL_DST)."""

    aborted = False
    write_closed = False

    def __init__(self, sock: Any = None, host: Optional[IPv4Address] = None,
                 peer: Optional[IPv4Address] = None) -> None:
        super().__init__(hostAddress=host or IPv4Address("TCP", "127.0.0.1", 15001),
                         peerAddress=peer or IPv4Address("TCP", "127.0.0.1", 40000))
        self.sock = sock

    def getHandle(self) -> Any:
        return self.sock

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class TLSServer:
    """A pyOpenSSL server connection in memory-BIO mode, talking to `proto` over `transport`."""

    def __init__(self, creds: ServerCreds) -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.use_certificate_chain_file(str(creds.chain))
        ctx.use_privatekey_file(str(creds.key))
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_accept_state()
        self.received = b""
        self.closed = False  # the client's close_notify arrived

    def pump(self, transport: Transport, proto: IProtocol, rounds: int = 20) -> None:
        """Move bytes both ways until neither side has anything more to say (bounded)."""
        for _ in range(rounds):
            out = transport.value()
            transport.clear()
            if out:
                self.conn.bio_write(out)
            try:
                self.conn.do_handshake()
                while True:
                    self.received += self.conn.recv(65536)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                self.closed = True
            except SSL.Error:
                pass  # the handshake failed: what the client makes of it is under test
            back = b""
            try:
                while True:
                    back += self.conn.bio_read(65536)
            except SSL.WantReadError:
                pass
            if back and not transport.aborted:
                proto.dataReceived(back)
            if not out and not back:
                return
