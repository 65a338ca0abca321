"""The transparent outbound face: redirected plaintext in, verified TLS out.

Per connection: read the original destination (SO_ORIGINAL_DST), match a route, and ask the
decision core (`ssaproxy.policy.decide`) what to do: refuse (RST), pass bytes through, upgrade
to TLS, or wait for the request head.  It is asked again whenever the program's first bytes
tell something new: a ClientHello (the program speaks TLS itself: passed through untouched,
never TLS inside TLS) or a complete request head (the Host header names the peer).  Routes that
need no head connect upstream at once, so server-first protocols work; their program's first
bytes are still classified on the way through.  The rest is the shared lifecycle.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Callable, Optional

import attrs
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from ssaproxy import sniff
from ssaproxy.addresses import IPAddress, host_port, normalize, plain_address
from ssaproxy.config import Action, Config, HostnameSource, Policy, Profile, Route
from ssaproxy.kernel import original_destination
from ssaproxy.lifecycle import Lifecycle, State
from ssaproxy.policy import NOTHING_YET, Decision, FirstBytes, Step, decide
from ssaproxy.streams import End, How, TCPEnd
from ssaproxy.tls.connection import client_stream, session_key
from ssaproxy.tls.context import client_context
from ssaproxy.tls.revcheck import for_connection
from ssaproxy.tls.revocation import stricter
from ssaproxy.tls.stream import TLSStream

if TYPE_CHECKING:
    from OpenSSL import SSL

_FourTuple = tuple[str, int, str, int]
# (policy, client certificate, client key) -> the context for an upgrade's upstream TLS
ClientContexts = Callable[[Policy, Optional[str], Optional[str]], "SSL.Context"]


class OutboundFactory(Factory):
    noisy = False
    face = "outbound"  # for the drain's counts

    def __init__(self, config: Config, reactor: Any) -> None:
        # A reload (ssaproxy.reload) replaces both for new connections; each connection keeps
        # the pair it was accepted with.
        self.config = config
        self.client_context: ClientContexts = client_context
        self.reactor = reactor
        self.active: set[OutboundConnection] = set()
        # Our own upstream traffic redirected back to us (the daemon's uid is not excluded from
        # the rules) arrives as an accepted connection whose (peer, original destination) is
        # one of our upstream sockets' (local, remote) 4-tuples.  The whole 4-tuple is needed:
        # Linux reuses a local port for connections to different destinations.  Whichever of
        # the two sockets is seen second detects it.
        self.upstream_tuples: set[_FourTuple] = set()
        self.accepted: dict[_FourTuple, OutboundConnection] = {}

    def buildProtocol(self, addr: Any) -> ClientEnd:
        end = ClientEnd()
        end.owner = OutboundConnection(self, end)
        return end


class ClientEnd(TCPEnd):
    """The redirected program's connection; `owner` is its lifecycle."""

    owner: Optional[OutboundConnection] = None


class OutboundConnection(Lifecycle):
    log = Logger()
    kind = "conn"
    log_format = ("conn {conn_id} {outcome}: client={client} orig_dst={orig_dst} route={route} action={action} "
                  "hostname={hostname} tls={tls_version} cipher={cipher} verified={verified} resumed={resumed} "
                  "profile={profile} bytes_out={bytes_out} bytes_in={bytes_in} duration={duration}s detail={detail}")

    def __init__(self, factory: OutboundFactory, near: End) -> None:
        super().__init__(factory.reactor, factory.active)
        self.factory = factory
        self.config = factory.config
        self.client_context = factory.client_context
        self.idle_timeout = self.config.outbound.idle_timeout or None
        self.near = near
        near.sink = self
        self.route: Optional[Route] = None
        self.orig: Optional[tuple[IPAddress, int]] = None
        self.hostname: Optional[str] = None
        self.first: FirstBytes = NOTHING_YET
        self.passthrough = False
        self.far_up = False  # the far end is ready (TLS: handshake done and verified)
        self.verified = False
        self.verify_error: Optional[str] = None
        self._upstream_tuple: Optional[_FourTuple] = None
        self._accepted_tuple: Optional[_FourTuple] = None
        self.client: Optional[str] = None  # the program's address, as the listener saw it
        # The [[profile]] whose listener took this connection (its programs' owner-match rule
        # leads there), else None: the admin's [policy].
        self.profile: Optional[Profile] = None
        # The name the program resolved to the original destination: only a connection the client
        # library handed over (ssaproxy.redirected) has one; iptables tells no names.
        self.resolved: Optional[str] = None

    # ---- accepted
    def near_ready(self) -> None:
        near = self.near
        assert near is not None
        peer = near.tcp.getPeer()
        self.client = host_port(plain_address(getattr(peer, "host", "")), getattr(peer, "port", 0))
        self.profile = self.config.profile_for_port(getattr(near.tcp.getHost(), "port", 0))
        if not self.admit(self.config.outbound.max_connections):
            return
        try:
            ip, port = original_destination(near.tcp.getHandle())  # type: ignore[arg-type]
        except OSError as e:
            self.refuse("no-orig-dst", f"SO_ORIGINAL_DST failed: {e.strerror or e}")
            return
        ip = normalize(ip)
        self.orig = (ip, port)
        key = (plain_address(getattr(peer, "host", "")), getattr(peer, "port", 0), str(ip), port)
        if key in self.factory.upstream_tuples:
            self.own_traffic()
            return
        self._accepted_tuple = key
        self.factory.accepted[key] = self
        here = near.tcp.getHost()
        if normalize(ipaddress.ip_address(here.host)) == ip and here.port == port:
            self.refuse("not-redirected", "original destination is this listener")
            return
        self.route_and_act()

    def route_and_act(self) -> None:
        """The original destination is known: match a route and act on the first decision."""
        assert self.orig is not None
        self.route = self.config.outbound.match(*self.orig)
        if self.route is not None and self.route.action == Action.PASSTHROUGH:
            self.first = FirstBytes(tls=False)  # forwarded as they are, whatever they are: nothing to sniff
        self.act(self.decision())

    def decision(self) -> Decision:
        assert self.orig is not None
        return decide(self.orig, self.route, self.first, self.resolved)

    def act(self, decision: Decision) -> None:
        assert self.orig is not None
        if decision.step is Step.REFUSE:
            assert decision.outcome is not None
            self.refuse(decision.outcome, decision.detail)
        elif decision.step is Step.WAIT:
            self.go(State.DECIDING)
            self.arm("sniff", self.config.outbound.sniff_timeout, "no-host", "no complete request head in time")
        elif decision.step is Step.PASSTHROUGH:
            self.passthrough = True
            self.hostname = None
            self._connect(TCPEnd(), decision.port)
        else:
            assert decision.identity is not None
            self.disarm("sniff")
            self.hostname = str(decision.identity)
            profile = self.profile
            policy = profile.policy if profile is not None else self.config.policy
            cert, key = decision.client_certificate, decision.client_key
            if profile is not None and profile.client_certificate is not None:
                cert, key = profile.client_certificate, profile.client_key  # the program's identity wins
            ctx = self.client_context(policy, cert, key)
            resume = None
            route = self.route
            # A route's own setting stands for [policy]'s; a profile may only tighten either.
            resumes = policy.session_resumption if route is None or route.session_resumption is None \
                else route.session_resumption
            mode = (route.revocation if route is not None else None) or self.config.policy.revocation
            if profile is not None:
                resumes = resumes and profile.policy.session_resumption
                mode = stricter(mode, profile.policy.revocation)
            if resumes:
                resume = session_key(ctx, decision.identity, str(self.orig[0]), decision.port, policy.min_rsa_bits)
            revocation = for_connection(self.reactor, policy, mode, self.kind)
            self._connect(client_stream(ctx, decision.identity, policy.min_rsa_bits, resume, revocation),
                          decision.port)

    def _connect(self, end: End, port: int) -> None:
        assert self.orig is not None
        ip = self.orig[0]
        kind = TCP6ClientEndpoint if ip.version == 6 else TCP4ClientEndpoint
        self.facts["upstream_port"] = port
        self.connect(kind(self.reactor, str(ip), port, timeout=self.config.outbound.connect_timeout), end)

    def far_connected(self) -> None:
        far = self.far
        assert far is not None
        here, there = far.tcp.getHost(), far.tcp.getPeer()
        self._upstream_tuple = (plain_address(here.host), here.port, plain_address(there.host), there.port)
        self.factory.upstream_tuples.add(self._upstream_tuple)
        looped = self.factory.accepted.get(self._upstream_tuple)
        if looped is not None:
            looped.own_traffic()
        if isinstance(far, TLSStream) and not far.handshake_done and not self.done:
            self.go(State.HANDSHAKING)
            self.arm("handshake", self.config.outbound.handshake_timeout, "handshake-timeout",
                     "no TLS handshake in time")

    # ---- the program's first bytes
    def near_data(self, data: bytes) -> None:
        self.hold("near", data)
        if self.first.tls is None and not self._classify():
            return
        if self.state is State.RELAYING:
            self._hand_over()
            return
        assert self.route is not None
        if self.far is None and not self.passthrough:  # waiting for the request head
            result = sniff.http_host(bytes(self.held["near"]), self.config.outbound.max_header_bytes)
            if not result.complete:
                return
            self.first = attrs.evolve(self.first, host=result.host, head_complete=True, host_error=result.error)
            self.act(self.decision())
            if self.done:
                return
        self._maybe_begin()

    def _classify(self) -> bool:
        """Decide from the first bytes whether the program speaks TLS itself.  False while
        undecided, or when the answer ended the connection."""
        verdict = sniff.looks_like_client_hello(bytes(self.held["near"][:sniff.CLIENT_HELLO_PEEK]))
        if verdict is None:
            if "sniff" not in self._timers:
                self.arm("sniff", self.config.outbound.sniff_timeout, "sniff-timeout",
                         "incomplete first record from client")
            return False
        self.first = attrs.evolve(self.first, tls=verdict)
        if verdict or (self.route is not None and self.route.hostname_from != HostnameSource.HTTP_HOST):
            self.disarm("sniff")
        if not verdict or self.passthrough:
            return True
        if self.held["far"] or (self.relay is not None and self.relay.bytes_in):
            self.refuse("tls-after-data", "client sent a ClientHello after server bytes")
            return False
        self.abandon_far()
        self.far_up = False
        self.verified = False  # that upstream is gone: the record tells of the one that replaces it
        self.facts.clear()
        self.go(State.DECIDING)
        self.act(self.decision())
        return not self.done

    def near_eof(self) -> None:
        if self.first.tls is None and self.held["near"]:
            # An ambiguous prefix that will never be completed.
            self.refuse("client-eof", "client closed during protocol sniffing")
        elif self.state is State.RELAYING:
            self._hand_over()
        elif self.far is None and not self.passthrough:
            self.refuse("no-host", "client closed before a complete request head")

    def near_lost(self, how: How, detail: Optional[str]) -> None:
        if self.state is State.RELAYING and self.relay is not None and self.near is not None:
            relay, near = self.relay, self.near
            near.sink = relay
            relay.end_lost(near, how, detail)
            return
        super().near_lost(how, detail)

    # ---- the upstream, before the relay
    def far_ready(self) -> None:
        self.far_up = True
        self._maybe_begin()

    def far_lost(self, how: How, detail: Optional[str]) -> None:
        if how == How.VERIFY_FAILED:
            self.verify_error = detail
        super().far_lost(how, detail)

    def _maybe_begin(self) -> None:
        if self.state is State.RELAYING or self.done or not self.far_up or self.far is None:
            return
        if self.first.tls is None and self.held["near"]:
            return  # an undecided prefix: wait for the sniff to settle (timer armed)
        self.disarm("handshake")
        # A TLS stream reports ready only after our verification passed.
        self.verified = isinstance(self.far, TLSStream)
        self.begin_relay()
        if self.first.tls is None and not self.done and self.near is not None:
            # Relaying before the program spoke (a server-first protocol): its first bytes still
            # pass through us to be classified.
            self.near.sink = self

    def _hand_over(self) -> None:
        """The first bytes are classified: the relay takes the program's end for good."""
        relay, near = self.relay, self.near
        assert relay is not None and near is not None
        near.sink = relay
        pending, self.held["near"] = bytes(self.held["near"]), bytearray()
        # hold() pauses the program's end at the setup buffer's bound; from here on only the
        # relay's backpressure may pause it (which writing `pending` re-applies if it must).
        near.tcp.resumeProducing()
        if pending:
            relay.end_data(near, pending)
        if self.eof["near"] and not relay.finished:
            relay.end_eof(near)

    def timed_out(self, name: str, outcome: str, detail: str) -> None:
        # An undecided prefix can still be pending after the relay started.
        if self.state is State.RELAYING and self.first.tls is None and self.held["near"]:
            self.refuse(outcome, detail)
        else:
            super().timed_out(name, outcome, detail)

    # ---- endings
    def own_traffic(self) -> None:
        """This accepted connection comes from one of the daemon's own upstream sockets."""
        self.refuse("loop", "connection from one of our own upstream sockets: the daemon's uid is not "
                            "excluded from the redirect (see `ssaproxy iptables print --uid`)")

    def abandon_far(self) -> None:
        # What was true of the far end (verified, its TLS version and cipher) stays in the
        # record: a verified connection reset at shutdown was still a verified connection.
        self._forget_local()
        super().abandon_far()

    def _forget_local(self) -> None:
        if self._upstream_tuple is not None:
            self.factory.upstream_tuples.discard(self._upstream_tuple)
            self._upstream_tuple = None

    def ended(self, outcome: str, detail: Optional[str]) -> None:
        self._forget_local()
        if self._accepted_tuple is not None and self.factory.accepted.get(self._accepted_tuple) is self:
            del self.factory.accepted[self._accepted_tuple]
        super().ended(outcome, detail)

    def quiet(self, outcome: str) -> bool:
        # A direct connection to the listener (a health check, say) is refused, but no warning.
        return outcome in ("closed", "not-redirected")

    def record(self, outcome: str, detail: Optional[str]) -> dict[str, object]:
        route = self.route
        return {
            **super().record(outcome, detail),
            "client": self.client,
            "orig_dst": host_port(str(self.orig[0]), self.orig[1]) if self.orig else None,
            "route": route.name if route else None,
            "action": "passthrough" if self.passthrough else (route.action if route else None),
            "hostname": self.hostname,
            "tls_version": self.facts.get("tls_version"),
            "cipher": self.facts.get("cipher"),
            "verified": self.verified,
            "resumed": self.facts.get("resumed"),
            "verify_error": self.verify_error,
            "profile": self.profile.name if self.profile is not None else None,
        }
