"""A TLS connection (client or server side) over a memory BIO, with the endings a relay needs.

Theory of operation: the TCP transport's bytes go into OpenSSL through `bio_write`, whatever
OpenSSL wants to send comes out of `bio_read` and is written to the transport at once, so the
TCP transport's own buffer is the only buffer and its producer/consumer machinery gives
backpressure.  We do not use Twisted's TLSMemoryBIOProtocol because a relay needs what it does
not offer: half-close (send close_notify and keep reading; receive close_notify and keep
writing) and a precise account of how the stream ended (close_notify, truncation, reset,
handshake or verification failure), which decides whether the plaintext side gets FIN or RST.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet import error, interfaces
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from ssaproxy.streams import End, How, graceful_close, guarded, reset, tcp, write_now
from ssaproxy.tls._openssl import BATCH, read_batch, take_output, write_all
from ssaproxy.tls.reasons import ssl_text
from ssaproxy.tls.sessions import SessionSaver
from ssaproxy.tls.verify import PeerCheck, Verifier

_PENDING_MAX = 1 << 20
_ALERT_LINGER = 2.0  # seconds a refused peer has to read our alert before the reset


@implementer(interfaces.IHalfCloseableProtocol)
class TLSStream(End):
    """One TLS connection on a TCP transport, as a stream end.  Events go to `sink`: ready
    once the handshake and our verification passed, then data, eof (close_notify) and lost.

    `server=True` takes the accepting side.  On either side, a TLS error (a failed handshake
    or verification, or a bad record after the handshake) sends OpenSSL's alert with a FIN and
    lets the peer read it before the connection is reset, because a peer deserves to learn
    why.  The sink of a server side hears of the failure when the connection ends (its refused
    client is still reading the alert); a client side's sink hears at once, so the program
    behind it gets its reset without waiting for the server.
    """

    def __init__(self, connection: SSL.Connection, verifier: PeerCheck, *, server: bool = False) -> None:
        self.tls = connection
        self.verifier = verifier
        self.server = server
        self.handshake_done = False
        self.peer_closed = False  # close_notify received
        self.sent_close = False  # close_notify sent
        self._failed: Optional[tuple[How, Optional[str]]] = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._tcp_eof = False
        self._close_after_pending = False
        self._linger: Any = None
        self.saver: Optional[SessionSaver] = None  # a client's session, kept for resumption once verified
        self._checking = False  # handshake over, revocation check running
        self._paused_for_check = False

    # ---- Twisted events
    @guarded
    def connectionMade(self) -> None:
        super().connectionMade()
        if self.server:
            self.tls.set_accept_state()
        else:
            self.tls.set_connect_state()
            self._handshake()

    @guarded
    def dataReceived(self, data: bytes) -> None:
        if self._failed or self._aborting:
            return
        self.tls.bio_write(data)
        if self._checking:
            return  # held in OpenSSL until the revocation check is over
        if not self.handshake_done:
            self._handshake()
            if not self.handshake_done:
                return
        self._read_plaintext()
        if self._pending and not self._failed:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            for chunk in pending:
                self.write(chunk)
            if self._close_after_pending and not self._pending:
                self.shutdown_write()

    @guarded
    def readConnectionLost(self) -> None:
        self._tcp_eof = True
        if self._failed:
            if self.transport is not None:  # a refused peer that has read our alert and left
                graceful_close(self.transport)
            return
        if not self.peer_closed:
            # FIN without close_notify: let OpenSSL see the EOF, then call it truncation.
            self.tls.bio_shutdown()
            if self.handshake_done:
                self._read_plaintext()
            if not self.peer_closed and not self._failed:
                self._fail(How.TRUNCATED if self.handshake_done else How.HANDSHAKE_FAILED,
                           "connection closed without close_notify")
                return
        if self.peer_closed and self.sent_close and self.transport is not None:
            graceful_close(self.transport)

    def writeConnectionLost(self) -> None:
        pass

    @guarded
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()  # the peer left: no reason to keep this stream (and its buffers) for the timer
        sink, self.sink = self.sink, None
        if sink is None:
            return
        if self._failed:
            how, detail = self._failed
        elif self._aborting:
            how, detail = How.ABORTED, None
        elif not self.handshake_done:
            how, detail = How.HANDSHAKE_FAILED, reason.getErrorMessage()
        elif self.peer_closed and reason.check(error.ConnectionDone):
            how, detail = How.CLEAN, None
        elif reason.check(error.ConnectionDone):
            how, detail = How.TRUNCATED, "connection closed without close_notify"
        else:
            how, detail = How.RESET, reason.getErrorMessage()
        sink.end_lost(self, how, detail)

    @property
    def failure(self) -> Optional[tuple[How, Optional[str]]]:
        """(how, detail) once the stream has failed (for example while a refused peer reads
        our alert), else None."""
        return self._failed

    # ---- End
    def write(self, data: bytes) -> None:
        if self._failed or self._aborting or self.sent_close:
            return
        if not self.handshake_done or self._pending:
            self._hold(data)
            return
        written, failure = write_all(self.tls, data)
        if isinstance(failure, SSL.WantReadError):
            # OpenSSL wants to read first (it should not, with renegotiation off): hold the rest.
            self._hold(bytes(data[written:]))
        elif isinstance(failure, SSL.Error):
            self._fail(How.RESET, f"TLS error while sending: {ssl_text(failure)}")
            return
        elif failure is not None:
            raise failure
        self._flush()

    def _hold(self, data: bytes) -> None:
        """Plaintext that cannot be encrypted yet: held, but never without bound (it is not in
        the TCP transport's buffer, so backpressure does not see it)."""
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > _PENDING_MAX:
            self._fail(How.RESET, "TLS layer stalled with too much unsent data")

    def shutdown_write(self) -> None:
        if self.sent_close or self._failed or self._aborting:
            return
        if self._pending:
            # Still waiting to send: the close_notify goes after the pending data.
            self._close_after_pending = True
            return
        self.sent_close = True
        with contextlib.suppress(SSL.Error):
            self.tls.shutdown()
        self._flush()
        if self.peer_closed and self.transport is not None:
            graceful_close(self.transport)

    def facts(self) -> dict[str, object]:
        if not self.handshake_done:
            return {}
        return {"tls_version": self.tls.get_protocol_version_name(), "cipher": self.tls.get_cipher_name(),
                "resumed": self.verifier.resumed}

    # ---- internals
    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as e:
            self._flush()  # the alert, if OpenSSL produced one
            why = self.verifier.explain(ssl_text(e))
            if why is not None:
                self._fail(How.VERIFY_FAILED, why, alert=True)
            else:
                self._fail(How.HANDSHAKE_FAILED, ssl_text(e), alert=True)
            return
        self._flush()
        if not self.verifier.accept(self.tls):
            # Belt and braces: a handshake that finished without our leaf check passing is
            # refused, whatever OpenSSL thought.
            reason = str(self.verifier.error or "certificate was not verified")
            self._fail(How.VERIFY_FAILED, reason, alert=True)
            return
        revocation = self.verifier.revocation
        if revocation is not None:  # ready once the revocation check passed (tls/revcheck.py)
            self._checking = True
            # A resumed session ran no callback: its chain is the one its cache entry carries.
            carried = [c.to_cryptography() for c in self.verifier.resumed_chain]
            revocation.after_handshake(self.tls, self._revocation_verdict, client=not self.server, chain=carried)
            if self._checking:  # a fetch: what the peer sends meanwhile waits in the kernel, not here
                self._paused_for_check = True
                self.tcp.pauseProducing()
            return
        self._ready()

    def _ready(self) -> None:
        self.handshake_done = True
        saver = self.saver
        if saver is not None and isinstance(self.verifier, Verifier):
            chain = tuple(self.tls.get_verified_chain() or ()) or self.verifier.resumed_chain
            saver.verified(self.tls, self.verifier.identity, chain)
        self.verifier.settled()
        if self.sink is not None:
            self.sink.end_ready(self)

    @guarded
    def _revocation_verdict(self, why: Optional[str]) -> None:
        if not self._checking:
            return
        self._checking = False
        if self._failed or self._aborting or self.transport is None:
            return
        if self._paused_for_check:
            self._paused_for_check = False
            self.tcp.resumeProducing()
        if why is not None:
            if self.saver is not None:
                self.saver.refused()
            self.verifier.fail_revocation(why)
            # After a finished handshake OpenSSL sends no alert but close_notify: a reset says it.
            self._fail(How.VERIFY_FAILED, str(self.verifier.error))
            return
        self._ready()
        if self.handshake_done and not self._failed:  # what arrived meanwhile, both ways
            self._read_plaintext()
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            for chunk in pending:
                self.write(chunk)

    def _read_plaintext(self) -> None:
        # Every complete record in the BIO is decrypted in one batch and handed on in one call.
        while not self._failed and not self._aborting:
            data, failure = read_batch(self.tls)
            if data and self.sink is not None:
                self.sink.end_data(self, data)
            if failure is None:
                if len(data) < BATCH:
                    break
                continue
            if self._failed or self._aborting:
                break
            if isinstance(failure, SSL.ZeroReturnError):
                self._on_close_notify()
                break
            if not isinstance(failure, SSL.Error):
                raise failure
            self._flush()
            if self._tcp_eof:
                self._fail(How.TRUNCATED, "connection closed without close_notify")
            else:
                # The peer sent something OpenSSL refuses (a bad record, a KeyUpdate out of
                # place): its alert goes out before the end, as after a failed handshake.
                if self.saver is not None:
                    self.saver.failed()
                self._fail(How.RESET, f"TLS error: {ssl_text(failure)}", alert=True)
            return
        saver = self.saver
        if saver is not None and saver.waiting:  # a TLS 1.3 ticket may have come with what was read
            saver.poll(self.tls)
        self._flush()

    def _on_close_notify(self) -> None:
        if self.peer_closed:
            return
        self.peer_closed = True
        if self.sink is not None:
            self.sink.end_eof(self)
        if self.sent_close and self.transport is not None:
            graceful_close(self.transport)

    def _flush(self) -> None:
        """Write what OpenSSL has to send."""
        if self.transport is None:
            return
        while True:
            out = take_output(self.tls)
            if out:
                write_now(self.transport, out)
            if len(out) < BATCH:
                return

    def _fail(self, how: How, detail: Optional[str], *, alert: bool = False) -> None:
        if self._failed is None:
            self._failed = (how, detail)
        if self.transport is None:
            return
        if alert and self.connected:
            # The alert is in the TCP transport's buffer: send it with a FIN, keep reading (and
            # discarding) so the peer's in-flight data cannot turn our close into an early RST
            # that destroys the alert, and reset only if the peer lingers.
            tcp(self.transport).loseWriteConnection()
            reactor = getattr(self.transport, "reactor", None)
            if reactor is not None:
                self._linger = reactor.callLater(_ALERT_LINGER, self._linger_over)
            if not self.server:
                # Our side of a relay (an upstream, the API's peer): the program must not wait
                # for the server to read the alert; it hears of the failure now, and this end
                # goes on alone until the peer closes or the linger ends.
                sink, self.sink = self.sink, None
                if sink is not None:
                    sink.end_lost(self, *self._failed)
            return
        reset(self.transport)

    def _linger_over(self) -> None:
        if self.connected and self.transport is not None:
            reset(self.transport)

