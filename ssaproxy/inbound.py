"""Inbound TLS termination: a TLS client in, verified (optionally by client certificate), then
plaintext to the local backend, with the same relay semantics as outbound mode.

Per connection: the TLS handshake (certificate chosen by SNI, client certificate checked
against `client_ca` and the allow-list) must finish before the backend is even connected, so a
refused client never reaches it.  Then the backend connection opens (with a PROXY v2 header
first, if configured) and the relay splices the two.  With `backend = "original"` (transparent
inbound, iptables PREROUTING REDIRECT) the backend is 127.0.0.1 at the connection's original
port.  Every connection ends in exactly one log event.
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssaproxy import proxyproto, relay
from ssaproxy.config import Inbound, Policy
from ssaproxy.outbound import original_destination, plain_address
from ssaproxy.tls.server import negotiated_alpn, server_context
from ssaproxy.tls.stream import TLSStream
from ssaproxy.tls.verify import ClientCheck

_SETUP_BUFFER = 65536
_ids = itertools.count(1)


class TLSEnd:
    """The relay's "client" side as a TLS stream: FIN becomes close_notify, reset stays reset,
    and producer/consumer calls go to the TCP transport underneath (TLS writes go straight to
    it, so its buffer is the one that fills)."""

    def __init__(self, stream: TLSStream) -> None:
        self.stream = stream
        self.tcp = relay.tcp(stream.transport)

    @property
    def producer(self) -> object:
        return getattr(self.tcp, "producer", None)

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def loseWriteConnection(self) -> None:
        self.stream.shutdown_write()

    def loseConnection(self) -> None:
        self.stream.shutdown_write()
        self.tcp.loseConnection()

    def abortConnection(self) -> None:
        self.stream.abort()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.tcp.unregisterProducer()

    def pauseProducing(self) -> None:
        self.tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self.tcp.resumeProducing()

    def getHandle(self) -> object:
        return self.tcp.getHandle()

    def getHost(self) -> Any:
        return self.tcp.getHost()


class _ClientSide:
    """Receives the TLS client's stream events and hands them to the connection."""

    def __init__(self, owner: "InboundConnection") -> None:
        self.owner = owner

    def upstream_ready(self) -> None:
        self.owner.client_ready()

    def upstream_data(self, data: bytes) -> None:
        self.owner.client_data(data)

    def upstream_eof(self) -> None:
        self.owner.client_eof()

    def upstream_lost(self, how: str, detail: Optional[str]) -> None:
        self.owner.client_lost(how, detail)


class InboundStream(TLSStream):
    """The accepted TCP connection's protocol: server-side TLS that tells its owner it exists."""

    owner: "InboundConnection"

    def connectionMade(self) -> None:
        super().connectionMade()
        self.owner.connected()


class InboundFactory(Factory):
    noisy = False

    def __init__(self, inbound: Inbound, policy: Policy, reactor: Any) -> None:
        self.inbound = inbound
        self.policy = policy
        self.reactor = reactor
        self.context = server_context(inbound, policy)
        self.active: set["InboundConnection"] = set()

    def buildProtocol(self, addr: Any) -> InboundStream:
        check = ClientCheck(allow=self.inbound.allow, required=self.inbound.client_auth == "require",
                            min_rsa_bits=self.policy.min_rsa_bits)
        conn = SSL.Connection(self.context, None)
        conn.set_app_data(check)
        stream = InboundStream(conn, check, server=True)
        owner = InboundConnection(self, stream, check)
        stream.owner = owner
        stream.sink = _ClientSide(owner)
        return stream


class InboundConnection:
    log = Logger()

    def __init__(self, factory: InboundFactory, stream: InboundStream, check: ClientCheck) -> None:
        self.factory = factory
        self.inbound = factory.inbound
        self.reactor = factory.reactor
        self.stream = stream
        self.check = check
        self.conn_id = next(_ids)
        self.started = self.reactor.seconds()
        self.mode = "handshake"  # handshake -> connecting -> relay -> done
        self.buffer = bytearray()
        self.eof = False
        self.backend: Optional[relay.PlainUpstream] = None
        self.backend_addr: Optional[tuple[str, int]] = None
        self.relay: Optional[relay.Relay] = None
        self.peer: tuple[str, int] = ("", 0)
        self.orig: Optional[tuple[str, int]] = None
        self.local: tuple[str, int] = ("", 0)
        self._connecting: Optional[defer.Deferred[Any]] = None
        self._timer: Any = None
        self._facts: dict[str, object] = {}

    # ---- client (TLS) side
    def connected(self) -> None:
        self.factory.active.add(self)
        if len(self.factory.active) > self.inbound.max_connections:
            self._refuse("overload", f"more than {self.inbound.max_connections} connections")
            return
        t = relay.tcp(self.stream.transport)
        peer: Any = self.stream.transport.getPeer()  # type: ignore[union-attr]
        here: Any = t.getHost()
        self.peer = (plain_address(peer.host), peer.port)
        self.local = (plain_address(here.host), here.port)
        if self.inbound.backend.original:
            try:
                ip, port = original_destination(t.getHandle())  # type: ignore[arg-type]
            except OSError as e:
                self._refuse("no-orig-dst", f"SO_ORIGINAL_DST failed: {e.strerror or e}")
                return
            if port == self.local[1] and str(ip) == self.local[0]:
                self._refuse("not-redirected", "original destination is this listener")
                return
            if port not in self.inbound.ports:
                self._refuse("not-redirected", f"original port {port} is not one of this listener's ports")
                return
            self.orig = (str(ip), port)
            self.backend_addr = ("::1" if ip.version == 6 else "127.0.0.1", port)
        else:
            assert self.inbound.backend.host is not None and self.inbound.backend.port is not None
            self.backend_addr = (self.inbound.backend.host, self.inbound.backend.port)
        self._timer = self.reactor.callLater(self.inbound.handshake_timeout, self._handshake_timeout)

    def client_ready(self) -> None:
        """Handshake done and the client accepted: only now does the backend hear of it."""
        self._cancel_timer()
        tls = self.stream.tls
        raw_sni = tls.get_servername()
        self._facts = {
            "sni": raw_sni.decode("ascii", "replace") if raw_sni else None,
            "alpn": negotiated_alpn(tls),
            "tls_version": tls.get_protocol_version_name(),
            "cipher": tls.get_cipher_name(),
        }
        self.mode = "connecting"
        assert self.backend_addr is not None
        host, port = self.backend_addr
        endpoint: Any
        try:
            family = ipaddress.ip_address(host).version
            endpoint = (TCP6ClientEndpoint if family == 6 else TCP4ClientEndpoint)(
                self.reactor, host, port, timeout=self.inbound.connect_timeout)
        except ValueError:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.inbound.connect_timeout)
        self.backend = relay.PlainUpstream()
        self.backend.sink = _BackendSide(self)
        d = endpoint.connect(relay.OneShotFactory(self.backend))
        self._connecting = d
        d.addCallbacks(lambda _: None, self._backend_failed)

    def client_data(self, data: bytes) -> None:
        if self.mode == "relay" and self.relay is not None:
            self.relay.from_client(data)
            return
        self.buffer += data
        if len(self.buffer) >= _SETUP_BUFFER:
            relay.tcp(self.stream.transport).pauseProducing()

    def client_eof(self) -> None:
        if self.mode == "relay" and self.relay is not None:
            self.relay.client_read_eof()
        else:
            self.eof = True

    def client_lost(self, how: str, detail: Optional[str]) -> None:
        if self.mode == "relay" and self.relay is not None:
            reason = Failure(error.ConnectionDone()) if how == relay.CLEAN else Failure(error.ConnectionLost(detail))
            self.relay.client_lost(reason)
            return
        if self.mode == "done":
            return
        outcome = {relay.VERIFY_FAILED: "client-refused", relay.HANDSHAKE_FAILED: "handshake-failed"}.get(
            how, "client-gone")
        self._abandon_backend()
        self._finish(outcome, detail, reset_client=False)

    # ---- backend side
    def backend_ready(self) -> None:
        if self.mode != "connecting" or self.backend is None:
            return
        self._connecting = None
        if self.inbound.proxy_protocol == "v2":
            try:
                header = self._proxy_header()
            except Exception as e:  # noqa: BLE001 - a header we cannot build is a refusal, not a hang
                self._refuse("internal-error", f"PROXY header: {type(e).__name__}: {e}")
                return
            self.backend.write(header)
        self.mode = "relay"
        self.relay = rl = relay.Relay(TLSEnd(self.stream), self.backend, self._relay_done)  # type: ignore[arg-type]
        self.stream.sink = _ClientSide(self)
        pending, self.buffer = bytes(self.buffer), bytearray()
        rl.client_eof = self.eof
        rl.start(pending)
        if not rl.finished:
            relay.tcp(self.stream.transport).resumeProducing()

    def _proxy_header(self) -> bytes:
        facts = self._facts
        cn = None
        cert = self.stream.tls.get_peer_certificate()
        if cert is not None:
            cn = cert.get_subject().CN
        # The destination the client meant: the original one under transparent inbound.
        dst = self.orig or self.local
        return proxyproto.v2_header(
            self.peer, dst, authority=self.stream.tls.get_servername(), alpn=facts.get("alpn"),  # type: ignore[arg-type]
            tls_version=facts.get("tls_version"), cipher=facts.get("cipher"),  # type: ignore[arg-type]
            client_cert=self.check.presented, client_verified=self.check.verified, client_cn=cn,
            client_sans=self.check.identities)

    def _backend_failed(self, reason: Failure) -> None:
        self._connecting = None
        if self.mode != "connecting" or reason.check(defer.CancelledError):
            return
        outcome = {error.ConnectionRefusedError: "backend-refused", error.TimeoutError: "backend-timeout"}.get(
            reason.type, "backend-failed")  # type: ignore[call-overload]
        self._refuse(outcome, reason.getErrorMessage())

    def backend_lost(self, how: str, detail: Optional[str]) -> None:
        if self.mode == "connecting":
            self._refuse("backend-" + how, detail)

    # ---- endings
    def shut_down(self) -> None:
        if self.mode != "done":
            self._refuse("shutdown", "daemon stopping")

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.mode != "handshake":
            return
        failure = self.stream.failure
        if failure is not None:  # refused already, while the client reads our alert
            self.client_lost(*failure)
            return
        self._refuse("handshake-timeout", "no TLS handshake in time")

    def _relay_done(self, outcome: str, detail: Optional[str]) -> None:
        self._finish(outcome, detail, reset_client=False)

    def _refuse(self, outcome: str, detail: Optional[str]) -> None:
        self._abandon_backend()
        self._finish(outcome, detail, reset_client=True)

    def _abandon_backend(self) -> None:
        if self._connecting is not None:
            d, self._connecting = self._connecting, None
            d.cancel()
        if self.relay is not None:
            self.relay.detach()  # we end both sides ourselves: the backend must see a reset too
        if self.backend is not None:
            self.backend.sink = None
            self.backend.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _finish(self, outcome: str, detail: Optional[str], *, reset_client: bool) -> None:
        if self.mode == "done":
            return
        self.mode = "done"
        self._cancel_timer()
        self.factory.active.discard(self)
        if reset_client:
            self.stream.sink = None
            self.stream.abort()
        rl = self.relay
        if not self._facts and self.stream.tls is not None:
            raw_sni = self.stream.tls.get_servername()
            refused = outcome == "client-refused"  # the handshake got as far as the certificate
            self._facts = {"sni": raw_sni.decode("ascii", "replace") if raw_sni else None,
                           "tls_version": self.stream.tls.get_protocol_version_name() if refused else None}
        fields = dict(
            conn_id=self.conn_id, inbound=self.inbound.name, peer=_addr(self.peer),
            sni=self._facts.get("sni"), alpn=self._facts.get("alpn"),
            tls_version=self._facts.get("tls_version"), cipher=self._facts.get("cipher"),
            client_identity=",".join(self.check.identities) or None,
            verified=self.check.verified if self.check.presented else None,
            backend=_addr(self.backend_addr) if self.backend_addr else None,
            bytes_in=rl.bytes_out if rl else 0,  # client -> backend
            bytes_out=rl.bytes_in if rl else 0,  # backend -> client
            duration=round(self.reactor.seconds() - self.started, 4), outcome=outcome, detail=detail)
        self.relay = None
        self.backend = None
        # A probe (a health check connecting and leaving, or a direct connection) is no warning.
        quiet = outcome in ("closed", "not-redirected") or (outcome == "client-gone" and not self._facts.get("sni")
                                                            and not self.check.presented)
        emit = self.log.info if quiet else self.log.warn
        emit("inbound {conn_id} {outcome}: listener={inbound} peer={peer} sni={sni} alpn={alpn} "
             "tls={tls_version} cipher={cipher} client={client_identity} verified={verified} "
             "backend={backend} bytes_in={bytes_in} bytes_out={bytes_out} duration={duration}s detail={detail}",
             **fields)


class _BackendSide:
    def __init__(self, owner: InboundConnection) -> None:
        self.owner = owner

    def upstream_ready(self) -> None:
        self.owner.backend_ready()

    def upstream_data(self, data: bytes) -> None:  # never before the relay takes over
        pass

    def upstream_eof(self) -> None:
        pass

    def upstream_lost(self, how: str, detail: Optional[str]) -> None:
        self.owner.backend_lost(how, detail)


def _addr(a: tuple[str, int]) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"

