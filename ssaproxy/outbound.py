"""The transparent outbound listener: redirected plaintext in, verified TLS out.

Per connection: read the original destination (SO_ORIGINAL_DST), pick the first matching
route, then either refuse (RST), pass bytes through, or upgrade to TLS.  Routes with a fixed
hostname (or `hostname_from = "address"`) connect upstream at once, so server-first protocols
work; `http-host` routes wait, bounded in bytes and time, for the request's Host header.  A
client whose first bytes are a TLS ClientHello is passed through untouched (never TLS inside
TLS) unless the route rejects.  Every connection ends in exactly one log event.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import socket
import struct
from typing import Any, Callable, Optional, TypeVar

from OpenSSL import SSL
from twisted.internet import defer, error, interfaces
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ssaproxy import relay, sniff
from ssaproxy.config import Config, Route
from ssaproxy.tls.context import client_context
from ssaproxy.tls.stream import TLSStream
from ssaproxy.tls.verify import Verifier

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
_SETUP_BUFFER = 65536  # client bytes we hold while the upstream is being set up

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ids = itertools.count(1)

F = TypeVar("F", bound=Callable[..., None])


def _fail_closed(method: F) -> F:
    """An unexpected exception in an event handler resets both sides and is logged.

    Left to Twisted, an exception in dataReceived closes the client with a FIN: an error that
    looks like a clean end.  Here it becomes a RST, like every other failure.
    """

    @functools.wraps(method)
    def guarded(self: "OutboundConnection", *args: Any) -> None:
        try:
            method(self, *args)
        except Exception:  # noqa: BLE001 - fail closed, whatever went wrong
            self.log.failure("conn {conn_id}: internal error in {method}", conn_id=self.conn_id,
                             method=method.__name__)
            self._refuse("internal-error", f"exception in {method.__name__}")

    return guarded  # type: ignore[return-value]


def original_destination(sock: socket.socket) -> tuple[IPAddress, int]:
    """Where the client meant to go before iptables REDIRECT sent it to us.

    The call depends on the accepted socket's family; an IPv4 client on a dual-stack IPv6
    socket (an IPv4-mapped peer) was NATed by iptables, not ip6tables, so it takes the IPv4 call.
    """
    if sock.family == socket.AF_INET6:
        peer = ipaddress.IPv6Address(sock.getpeername()[0].split("%")[0])
        if peer.ipv4_mapped is None:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return ipaddress.IPv6Address(raw[8:24]), port
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return ipaddress.IPv4Address(raw[4:8]), port


_FourTuple = tuple[str, int, str, int]


def plain_address(text: str) -> str:
    """One spelling per address (IPv4-mapped IPv6 as IPv4), so 4-tuples compare exactly."""
    try:
        return str(_normalize(ipaddress.ip_address(text.split("%")[0])))
    except ValueError:
        return text


def _normalize(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class OutboundFactory(Factory):
    noisy = False

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.active: set["OutboundConnection"] = set()
        # Our own upstream traffic redirected back to us (the daemon's uid is not excluded from
        # the rules) arrives as an accepted connection whose (peer, original destination) is
        # one of our upstream sockets' (local, remote) 4-tuples.  The whole 4-tuple is needed:
        # Linux reuses a local port for connections to different destinations.  Whichever of
        # the two sockets is seen second detects it.
        self.upstream_tuples: set[_FourTuple] = set()
        self.accepted: dict[_FourTuple, "OutboundConnection"] = {}

    def buildProtocol(self, addr: Any) -> "OutboundConnection":
        p = OutboundConnection(self.config, self.reactor)
        p.factory = self
        return p


@implementer(interfaces.IHalfCloseableProtocol)
class OutboundConnection(Protocol):
    log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.conn_id = next(_ids)
        self.started = reactor.seconds()
        self.route: Optional[Route] = None
        self.orig: Optional[tuple[IPAddress, int]] = None
        self.hostname: Optional[str] = None
        self.mode = "setup"  # setup -> relay -> done
        self.first_bytes: Optional[bool] = None  # None: not yet classified; True: ClientHello
        self.buffer = bytearray()
        self.client_eof = False
        self.upstream: Optional[relay.Upstream] = None
        self.passthrough = False
        self.relay: Optional[relay.Relay] = None
        self._connecting: Optional[defer.Deferred[Any]] = None
        self._timers: dict[str, Any] = {}  # "sniff" (client's first bytes), "handshake"
        self._early = bytearray()  # upstream bytes that arrived before the relay started
        self._early_eof = False
        self._upstream_tuple: Optional[_FourTuple] = None
        self._accepted_tuple: Optional[_FourTuple] = None
        self._verify_error: Optional[str] = None
        self._ready = False
        self._verified = False  # a verified TLS upstream is being relayed to
        self._fields: dict[str, object] = {}

    # ------------------------------------------------------------------ client events
    @_fail_closed
    def connectionMade(self) -> None:
        assert self.transport is not None
        active = self.factory.active  # type: ignore[attr-defined]
        active.add(self)
        if len(active) > self.config.outbound.max_connections:
            self._refuse("overload", f"more than {self.config.outbound.max_connections} connections")
            return
        try:
            ip, port = original_destination(relay.tcp(self.transport).getHandle())  # type: ignore[arg-type]
        except OSError as e:
            self._refuse("no-orig-dst", f"SO_ORIGINAL_DST failed: {e.strerror or e}")
            return
        ip = _normalize(ip)
        self.orig = (ip, port)
        peer = self.transport.getPeer()
        key = (plain_address(getattr(peer, "host", "")), getattr(peer, "port", 0), str(ip), port)
        if key in self.factory.upstream_tuples:  # type: ignore[attr-defined]
            self.own_traffic()
            return
        self._accepted_tuple = key
        self.factory.accepted[key] = self  # type: ignore[attr-defined]
        here = relay.tcp(self.transport).getHost()
        if _normalize(ipaddress.ip_address(here.host)) == ip and here.port == port:
            self._refuse("not-redirected", "original destination is this listener")
            return
        route = self.config.outbound.match(ip, port)
        if route is None:
            self._refuse("no-route", None)
            return
        self.route = route
        if route.action == "reject":
            self._refuse("rejected", None)
        elif route.action == "passthrough":
            self.first_bytes = False  # forwarded as they are, whatever they are: nothing to sniff
            self._start_passthrough()
        elif route.hostname is not None:
            self._start_tls(route.hostname)
        elif route.hostname_from == "address":
            self._start_tls(str(ip))
        else:  # http-host: wait for the request head
            self._arm("sniff", self.config.outbound.sniff_timeout, "no-host", "no complete request head in time")

    @_fail_closed
    def dataReceived(self, data: bytes) -> None:
        if self.mode == "relay" and self.first_bytes is not None:
            assert self.relay is not None
            self.relay.from_client(data)
            return
        if self.mode == "done":
            return
        self.buffer += data
        if self.first_bytes is None and not self._classify():
            return
        if self.mode == "relay":
            assert self.relay is not None
            pending, self.buffer = bytes(self.buffer), bytearray()
            self.relay.from_client(pending)
            return
        assert self.route is not None
        if self.upstream is None and not self.passthrough and self.route.hostname_from == "http-host":
            result = sniff.http_host(bytes(self.buffer), self.config.outbound.max_header_bytes)
            if not result.complete:
                return
            if result.host is None:
                self._refuse("no-host", result.error)
                return
            self._start_tls(result.host)
        if len(self.buffer) >= _SETUP_BUFFER and self.transport is not None:
            relay.tcp(self.transport).pauseProducing()
        self._maybe_begin()

    @_fail_closed
    def readConnectionLost(self) -> None:
        self.client_eof = True
        if self.mode == "done":
            return
        if self.first_bytes is None and self.buffer:
            # An ambiguous prefix that will never be completed.
            self._refuse("client-eof", "client closed during protocol sniffing")
        elif self.mode == "relay" and self.relay is not None:
            self.relay.client_read_eof()
        elif self.upstream is None and not self.passthrough:
            self._refuse("no-host", "client closed before a complete request head")

    def writeConnectionLost(self) -> None:
        pass

    @_fail_closed
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.active.discard(self)  # type: ignore[attr-defined]
        if self.mode == "relay" and self.relay is not None:
            self.relay.client_lost(reason)
        elif self.mode == "setup":
            self._abandon_upstream()
            self._finish("client-gone", reason.getErrorMessage(), reset_client=False)

    # ------------------------------------------------------------------ sniffing
    def _classify(self) -> bool:
        """Decide from the first bytes whether the client already speaks TLS.  Returns False
        while undecided."""
        verdict = sniff.looks_like_client_hello(bytes(self.buffer[:sniff.CLIENT_HELLO_PEEK]))
        if verdict is None:
            if "sniff" not in self._timers:
                self._arm("sniff", self.config.outbound.sniff_timeout, "sniff-timeout",
                          "incomplete first record from client")
            return False
        self.first_bytes = verdict
        if not verdict:
            if self.route is not None and self.route.hostname_from != "http-host":
                self._disarm("sniff")
            return True
        # The client speaks TLS itself: pass it through untouched.
        self._disarm("sniff")
        if self.passthrough:
            return True
        if self._early or (self.relay is not None and self.relay.bytes_in):
            self._refuse("tls-after-data", "client sent a ClientHello after server bytes")
            return False
        self._abandon_upstream()
        self.mode = "setup"
        self._start_passthrough()
        return True

    # ------------------------------------------------------------------ upstream setup
    def _start_passthrough(self) -> None:
        assert self.orig is not None
        self.passthrough = True
        self.hostname = None
        self._connect(relay.PlainUpstream(), self.orig[1])

    def _start_tls(self, name: str) -> None:
        assert self.orig is not None and self.route is not None
        self._disarm("sniff")
        self.hostname = name
        policy = self.config.policy
        if sniff.is_ip_literal(name):
            verifier = Verifier(ip=name, min_rsa_bits=policy.min_rsa_bits)
        else:
            verifier = Verifier(hostname=name, min_rsa_bits=policy.min_rsa_bits)
        conn = SSL.Connection(client_context(policy, self.route.client_certificate, self.route.client_key), None)
        conn.set_app_data(verifier)
        if verifier.hostname is not None:
            conn.set_tlsext_host_name(verifier.hostname.encode("ascii"))
        port = self.route.tls_port or self.orig[1]
        self._connect(TLSStream(conn, verifier), port)

    def _connect(self, upstream: relay.Upstream, port: int) -> None:
        assert self.orig is not None
        ip = self.orig[0]
        endpoint_type = TCP6ClientEndpoint if ip.version == 6 else TCP4ClientEndpoint
        endpoint = endpoint_type(self.reactor, str(ip), port, timeout=self.config.outbound.connect_timeout)
        upstream.sink = self
        self.upstream = upstream
        self._fields["upstream_port"] = port
        d = endpoint.connect(relay.OneShotFactory(upstream))
        self._connecting = d
        d.addCallbacks(self._connected, self._connect_failed, callbackArgs=(upstream,), errbackArgs=(upstream,))

    def _connected(self, proto: Any, upstream: relay.Upstream) -> None:
        self._connecting = None
        if upstream is not self.upstream:
            upstream.abort()
            return
        here: Any = relay.tcp(upstream.transport).getHost()
        there: Any = upstream.transport.getPeer()  # type: ignore[union-attr]
        self._upstream_tuple = (plain_address(here.host), here.port, plain_address(there.host), there.port)
        self.factory.upstream_tuples.add(self._upstream_tuple)  # type: ignore[attr-defined]
        looped = self.factory.accepted.get(self._upstream_tuple)  # type: ignore[attr-defined]
        if looped is not None:
            looped.own_traffic()
        if isinstance(upstream, TLSStream) and not upstream.handshake_done:
            self._arm("handshake", self.config.outbound.handshake_timeout, "handshake-timeout",
                      "no TLS handshake in time")

    def _connect_failed(self, reason: Failure, upstream: relay.Upstream) -> None:
        self._connecting = None
        if upstream is not self.upstream or self.mode != "setup":
            return
        if reason.check(defer.CancelledError):
            return
        if reason.check(error.ConnectionRefusedError):
            outcome = "connect-refused"
        elif reason.check(error.TimeoutError):
            outcome = "connect-timeout"
        else:
            outcome = "connect-failed"
        self._refuse(outcome, reason.getErrorMessage())

    def _abandon_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        self._ready = False
        self._verified = False
        self._fields.clear()
        self._early.clear()
        self._early_eof = False
        self._disarm("handshake")
        self._forget_local()
        if self.relay is not None:
            self.relay.detach()
        if self._connecting is not None:
            d, self._connecting = self._connecting, None
            d.cancel()
        if upstream is not None:
            upstream.sink = None
            upstream.abort()

    # ------------------------------------------------------------------ UpstreamSink (setup)
    def upstream_ready(self) -> None:
        self._ready = True
        self._maybe_begin()

    def _maybe_begin(self) -> None:
        if self.mode != "setup" or not self._ready or self.upstream is None:
            return
        if self.first_bytes is None and self.buffer:
            return  # an undecided prefix: wait for the sniff to settle (timer armed)
        self._begin_relay()

    def _begin_relay(self) -> None:
        assert self.transport is not None and self.upstream is not None
        self._disarm("handshake")
        self.mode = "relay"
        # A TLSStream reports ready only after our verification passed.
        self._verified = isinstance(self.upstream, TLSStream)
        self._fields.update(self.upstream.facts())
        upstream = self.upstream
        self.relay = rl = relay.Relay(relay.tcp(self.transport), upstream, self._relay_done)
        pending, self.buffer = bytes(self.buffer), bytearray()
        early, self._early = bytes(self._early), bytearray()
        rl.client_eof = self.client_eof
        rl.start(pending)
        # What the server sent while we waited for the client's first bytes to be classified.
        if early and not rl.finished:
            rl.upstream_data(early)
        if self._early_eof and not rl.finished:
            rl.upstream_eof()
        if not rl.finished:
            relay.tcp(self.transport).resumeProducing()
            relay.tcp(upstream.transport).resumeProducing()

    def upstream_data(self, data: bytes) -> None:
        # Upstream ready, relay not yet started (the client's first bytes are still being
        # classified): hold the bytes, bounded, and stop reading beyond that.
        self._early += data
        if len(self._early) >= _SETUP_BUFFER and self.upstream is not None:
            relay.tcp(self.upstream.transport).pauseProducing()

    def upstream_eof(self) -> None:
        self._early_eof = True

    def upstream_lost(self, how: str, detail: Optional[str]) -> None:
        if self.mode != "setup":
            return
        self.upstream = None
        if how == relay.VERIFY_FAILED:
            self._verify_error = detail
        self._refuse(how, detail)

    # ------------------------------------------------------------------ endings
    def own_traffic(self) -> None:
        """This accepted connection comes from one of the daemon's own upstream sockets."""
        self._refuse("loop", "connection from one of our own upstream sockets: the daemon's uid is not "
                             "excluded from the redirect (see `ssaproxy iptables print --uid`)")

    def shut_down(self) -> None:
        """The daemon is stopping: end this connection with a reset on both sides."""
        if self.mode != "done":
            self._refuse("shutdown", "daemon stopping")

    def _relay_done(self, outcome: str, detail: Optional[str]) -> None:
        self._finish(outcome, detail, reset_client=False)

    def _refuse(self, outcome: str, detail: Optional[str]) -> None:
        self._abandon_upstream()
        self._finish(outcome, detail, reset_client=True)

    def _arm(self, name: str, seconds: float, outcome: str, detail: str) -> None:
        self._disarm(name)
        self._timers[name] = self.reactor.callLater(seconds, self._timeout, name, outcome, detail)

    def _disarm(self, *names: str) -> None:
        for name in names or tuple(self._timers):
            timer = self._timers.pop(name, None)
            if timer is not None and timer.active():
                timer.cancel()

    def _timeout(self, name: str, outcome: str, detail: str) -> None:
        self._timers.pop(name, None)
        # An undecided client prefix can still be pending after the relay started (fixed-name
        # routes start relaying before the client speaks).
        if self.mode == "setup" or (self.mode == "relay" and self.first_bytes is None and self.buffer):
            self._refuse(outcome, detail)

    def _forget_local(self) -> None:
        if self._upstream_tuple is not None:
            self.factory.upstream_tuples.discard(self._upstream_tuple)  # type: ignore[attr-defined]
            self._upstream_tuple = None

    def _finish(self, outcome: str, detail: Optional[str], *, reset_client: bool) -> None:
        if self.mode == "done":
            return
        self.mode = "done"
        self._disarm()
        self._forget_local()
        if self._accepted_tuple is not None and self.factory.accepted.get(self._accepted_tuple) is self:  # type: ignore
            del self.factory.accepted[self._accepted_tuple]  # type: ignore[attr-defined]
        if reset_client and self.transport is not None:
            relay.reset(self.transport)
        rl = self.relay
        ok = outcome == "closed"
        orig = f"{self.orig[0]}:{self.orig[1]}" if self.orig else None
        if self.orig and self.orig[0].version == 6:
            orig = f"[{self.orig[0]}]:{self.orig[1]}"
        fields = dict(
            conn_id=self.conn_id,
            orig_dst=orig,
            route=self.route.name if self.route else None,
            action="passthrough" if self.passthrough else (self.route.action if self.route else None),
            hostname=self.hostname,
            tls_version=self._fields.get("tls_version"),
            cipher=self._fields.get("cipher"),
            verified=self._verified,
            verify_error=self._verify_error,
            bytes_out=rl.bytes_out if rl else 0,
            bytes_in=rl.bytes_in if rl else 0,
            duration=round(self.reactor.seconds() - self.started, 4),
            outcome=outcome,
            detail=detail,
        )
        # Drop what we hold of the relay and upstream: no reference cycles outlive the connection.
        self.relay = None
        self.upstream = None
        self.factory.active.discard(self)  # type: ignore[attr-defined]
        # A direct connection to the listener (a health check, say) is refused, but no warning.
        emit = self.log.info if ok or outcome == "not-redirected" else self.log.warn
        emit(
            "conn {conn_id} {outcome}: orig_dst={orig_dst} route={route} action={action} "
            "hostname={hostname} tls={tls_version} cipher={cipher} verified={verified} "
            "bytes_out={bytes_out} bytes_in={bytes_in} duration={duration}s detail={detail}",
            **fields,
        )
