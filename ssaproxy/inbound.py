"""The inbound face: TLS termination (optionally mutual TLS) in front of a local backend.

Per connection: the TLS handshake (certificate chosen by SNI, client certificate checked
against `client_ca` and the allow-list) must finish before the backend is even connected, so a
refused client never reaches it.  Then the backend connection opens (with a PROXY v2 header
first, if configured) and the shared lifecycle relays.  With `backend = "original"`
(transparent inbound, iptables PREROUTING REDIRECT) the backend is loopback at the
connection's original port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from ssaproxy import proxyproto
from ssaproxy.addresses import host_port, ip_version, plain_address
from ssaproxy.config import Inbound, Policy
from ssaproxy.kernel import original_destination
from ssaproxy.lifecycle import Lifecycle, State
from ssaproxy.streams import How, TCPEnd, guarded
from ssaproxy.tls.connection import server_stream
from ssaproxy.tls.context import negotiated_alpn
from ssaproxy.tls.revcheck import for_connection, start_stapling
from ssaproxy.tls.server import TICKET_KEY_ROTATION, resumes, server_context
from ssaproxy.tls.stream import TLSStream
from ssaproxy.tls.verify import ClientCheck

if TYPE_CHECKING:
    from OpenSSL import SSL


class InboundStream(TLSStream):
    """The accepted TCP connection's protocol: server-side TLS that tells its owner it exists."""

    owner: Optional[InboundConnection] = None

    @guarded
    def connectionMade(self) -> None:
        super().connectionMade()
        if self.owner is not None:
            self.owner.accepted()


class InboundFactory(Factory):
    noisy = False
    face = "inbound"  # for the drain's counts

    def __init__(self, inbound: Inbound, policy: Policy, reactor: Any, context: Optional["SSL.Context"] = None) -> None:
        self.inbound = inbound
        self.policy = policy
        self.reactor = reactor
        # A reload passes a context it built from the files as they are now (the cache is keyed
        # by paths, which a rotated certificate keeps).
        self.context = context if context is not None else server_context(inbound, policy)
        start_stapling(self.context, reactor, policy)
        self.active: set[InboundConnection] = set()
        # Session tickets are encrypted with keys OpenSSL makes with the context: a new context
        # is a new key, and tickets issued under the old one no longer resume.
        self.rotate_at = reactor.seconds() + TICKET_KEY_ROTATION if resumes(inbound, policy) else None

    def rotate_ticket_keys(self) -> None:
        """Rebuild the context (from the files as they are, read as the daemon's user, as a reload
        reads them) once its ticket keys are due, and start its stapler; on failure keep serving
        with the old one and try again in an hour."""
        assert self.rotate_at is not None
        now = self.reactor.seconds()
        try:
            context = server_context.__wrapped__(self.inbound, self.policy)
        except Exception as e:  # noqa: BLE001 - the reload path reports file problems; keep serving
            self.rotate_at = now + 3600
            InboundConnection.log.warn("inbound {inbound}: ticket keys not rotated (the context did not build: "
                                       "{error}); retrying in an hour", inbound=self.inbound.name, error=e)
            return
        start_stapling(context, self.reactor, self.policy)  # the new context staples, as the old one did
        self.context = context
        self.rotate_at = now + TICKET_KEY_ROTATION

    def buildProtocol(self, addr: Any) -> InboundStream:
        if self.rotate_at is not None and self.reactor.seconds() >= self.rotate_at:
            self.rotate_ticket_keys()
        check = ClientCheck(allow=self.inbound.allow, required=self.inbound.client_auth == "require",
                            min_rsa_bits=self.policy.min_rsa_bits)
        revocation = (for_connection(self.reactor, self.policy, self.inbound.revocation, "inbound")
                      if self.inbound.client_auth != "none" else None)
        stream = server_stream(self.context, check, InboundStream, revocation)
        stream.owner = InboundConnection(self, stream, check)
        return stream


class InboundConnection(Lifecycle):
    log = Logger()
    kind = "inbound"
    log_format = ("inbound {conn_id} {outcome}: listener={inbound} peer={peer} sni={sni} alpn={alpn} "
                  "tls={tls_version} cipher={cipher} resumed={resumed} client={client_identity} verified={verified} "
                  "backend={backend} bytes_in={bytes_in} bytes_out={bytes_out} duration={duration}s detail={detail}")

    def __init__(self, factory: InboundFactory, stream: InboundStream, check: ClientCheck) -> None:
        super().__init__(factory.reactor, factory.active)
        self.inbound = factory.inbound
        self.idle_timeout = self.inbound.idle_timeout or None
        self.near = self.stream = stream
        stream.sink = self
        self.check = check
        self.backend_addr: Optional[tuple[str, int]] = None
        self.peer: tuple[str, int] = ("", 0)
        self.orig: Optional[tuple[str, int]] = None
        self.local: tuple[str, int] = ("", 0)

    # ---- the TLS client
    def accepted(self) -> None:
        t = self.stream.tcp
        peer, here = t.getPeer(), t.getHost()
        self.peer = (plain_address(peer.host), peer.port)
        self.local = (plain_address(here.host), here.port)
        if not self.admit(self.inbound.max_connections):
            return
        if self.inbound.backend.original:
            try:
                ip, port = original_destination(t.getHandle())  # type: ignore[arg-type]
            except OSError as e:
                self.refuse("no-orig-dst", f"SO_ORIGINAL_DST failed: {e.strerror or e}")
                return
            if port == self.local[1] and str(ip) == self.local[0]:
                self.refuse("not-redirected", "original destination is this listener")
                return
            if port not in self.inbound.ports:
                self.refuse("not-redirected", f"original port {port} is not one of this listener's ports")
                return
            self.orig = (str(ip), port)
            self.backend_addr = ("::1" if ip.version == 6 else "127.0.0.1", port)
        else:
            assert self.inbound.backend.host is not None and self.inbound.backend.port is not None
            self.backend_addr = (self.inbound.backend.host, self.inbound.backend.port)
        self.go(State.HANDSHAKING)
        self.arm("handshake", self.inbound.handshake_timeout, "handshake-timeout", "no TLS handshake in time")

    def near_ready(self) -> None:
        """Handshake done and the client accepted: only now does the backend hear of it."""
        self.disarm("handshake")
        tls = self.stream.tls
        raw_sni = tls.get_servername()
        self.facts.update(sni=raw_sni.decode("ascii", "replace") if raw_sni else None, alpn=negotiated_alpn(tls),
                          tls_version=tls.get_protocol_version_name(), cipher=tls.get_cipher_name(),
                          resumed=self.check.resumed)
        assert self.backend_addr is not None
        host, port = self.backend_addr
        timeout = self.inbound.connect_timeout
        family = ip_version(host)
        endpoint: Any
        if family is None:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=timeout)
        else:
            endpoint = (TCP6ClientEndpoint if family == 6 else TCP4ClientEndpoint)(self.reactor, host, port,
                                                                                   timeout=timeout)
        self.connect(endpoint, TCPEnd())

    def near_lost(self, how: How, detail: Optional[str]) -> None:
        outcome = {How.VERIFY_FAILED: "client-refused", How.HANDSHAKE_FAILED: "handshake-failed"}.get(
            how, "client-gone")
        self.abandon_far()
        self.finish(outcome, detail, reset_near=False)

    def timed_out(self, name: str, outcome: str, detail: str) -> None:
        failure = self.stream.failure
        if self.state is State.HANDSHAKING and failure is not None:
            self.near_lost(*failure)  # refused already, while the client reads our alert
        else:
            super().timed_out(name, outcome, detail)

    # ---- the backend
    def far_ready(self) -> None:
        if self.inbound.proxy_protocol == "v2":
            try:
                header = self._proxy_header()
            except Exception as e:  # noqa: BLE001 - a header we cannot build is a refusal, not a hang
                self.refuse("internal-error", f"PROXY header: {type(e).__name__}: {e}")
                return
            assert self.far is not None
            self.far.write(header)
        self.begin_relay()

    def connect_failed(self, outcome: str, detail: str) -> None:
        self.refuse(outcome.replace("connect-", "backend-"), detail)

    def far_lost(self, how: How, detail: Optional[str]) -> None:
        self.far = None
        self.refuse(f"backend-{how}", detail)

    def _proxy_header(self) -> bytes:
        facts = self.facts
        tls = self.stream.tls
        cert = tls.get_peer_certificate()
        cn = cert.get_subject().CN if cert is not None else None
        # The destination the client meant: the original one under transparent inbound.
        return proxyproto.v2_header(
            self.peer, self.orig or self.local, authority=tls.get_servername(), alpn=facts.get("alpn"),  # type: ignore[arg-type]
            tls_version=facts.get("tls_version"), cipher=facts.get("cipher"),  # type: ignore[arg-type]
            client_cert=self.check.presented, client_verified=self.check.verified, client_cn=cn,
            client_sans=self.check.identities)

    # ---- the record
    def quiet(self, outcome: str) -> bool:
        # A probe (a health check connecting and leaving, or a direct connection) is no warning.
        return outcome in ("closed", "not-redirected") or (
            outcome == "client-gone" and not self.facts.get("sni") and not self.check.presented)

    def ended(self, outcome: str, detail: Optional[str]) -> None:
        tls = self.stream.tls
        if not self.facts and tls is not None:
            raw_sni = tls.get_servername()
            refused = outcome == "client-refused"  # the handshake got as far as the certificate
            self.facts.update(sni=raw_sni.decode("ascii", "replace") if raw_sni else None,
                              tls_version=tls.get_protocol_version_name() if refused else None)
        self.stream.owner = None
        super().ended(outcome, detail)

    def record(self, outcome: str, detail: Optional[str]) -> dict[str, object]:
        fields = super().record(outcome, detail)
        return {**fields, "inbound": self.inbound.name, "peer": host_port(*self.peer),
                "sni": self.facts.get("sni"), "alpn": self.facts.get("alpn"),
                "tls_version": self.facts.get("tls_version"), "cipher": self.facts.get("cipher"),
                "resumed": self.facts.get("resumed"), "client_identity": ",".join(self.check.identities) or None,
                "verified": self.check.verified if self.check.presented else None,
                "backend": host_port(*self.backend_addr) if self.backend_addr else None,
                # Seen from the client: what it sent in, what it got out.
                "bytes_in": self.bytes_out, "bytes_out": self.bytes_in}
