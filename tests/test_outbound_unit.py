"""Protocol-level tests of the outbound listener with fake sockets and a memory reactor.

They reach what the lab cannot easily provoke: a kernel that cannot say the original
destination, an unexpected exception inside a handler (which must reset, not FIN), timers.
"""

from __future__ import annotations

import errno
import gc
import socket
import struct
import weakref
from typing import Any, Iterator, Optional

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from ssaproxy.config import Config
from ssaproxy.lifecycle import SETUP_BUFFER, State
from ssaproxy.outbound import OutboundConnection, OutboundFactory
from tests.memtls import TLSServer, Transport
from tests.pki import PKI

CONFIG = Config.from_toml("""
[outbound]
sniff_timeout = 2
[[outbound.route]]
name = "blocked"
destination = "10.0.0.0/8"
ports = [23]
action = "reject"
[[outbound.route]]
name = "web"
destination = "10.0.0.0/8"
ports = [80]
tls_port = 443
hostname_from = "http-host"
""")


class FakeSocket:
    family = socket.AF_INET

    def __init__(self, orig: tuple[str, int] | Exception) -> None:
        self.orig = orig

    def getsockopt(self, level: int, opt: int, size: int) -> bytes:
        if isinstance(self.orig, Exception):
            raise self.orig
        host, port = self.orig
        return struct.pack("!HH4s8x", socket.AF_INET, port, socket.inet_aton(host))

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 40000)

    def setsockopt(self, *args: Any) -> None:
        pass


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "outcome" in event:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def connect(orig: tuple[str, int] | Exception) -> tuple[Any, Transport, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    factory = OutboundFactory(CONFIG, reactor)
    proto = factory.buildProtocol(None)
    transport = Transport(FakeSocket(orig))
    proto.makeConnection(transport)
    return proto, transport, reactor


def test_no_original_destination_resets(events: list[dict[str, Any]]) -> None:
    _, t, _ = connect(OSError(errno.ENOENT, "No such file or directory"))
    assert t.aborted
    assert events[-1]["outcome"] == "no-orig-dst"


def test_unexpected_exception_resets_instead_of_closing(events: list[dict[str, Any]]) -> None:
    _, t, _ = connect(ValueError("kernel said something odd"))
    assert t.aborted
    assert events[-1]["outcome"] == "internal-error"


def test_reject_route_no_route_and_direct_connection(events: list[dict[str, Any]]) -> None:
    _, t, _ = connect(("10.1.2.3", 23))
    assert t.aborted and events[-1]["outcome"] == "rejected" and events[-1]["route"] == "blocked"
    _, t, _ = connect(("127.0.0.1", 15001))
    assert t.aborted and events[-1]["outcome"] == "not-redirected"
    _, t, _ = connect(("192.0.2.1", 80))
    assert t.aborted and events[-1]["outcome"] == "no-route"


def test_http_host_waits_within_sniff_timeout(events: list[dict[str, Any]]) -> None:
    proto, t, reactor = connect(("10.1.2.3", 80))
    proto.dataReceived(b"GET / HTTP/1.1\r\nHo")
    reactor.advance(1.9)
    assert not t.aborted and not events
    reactor.advance(0.2)
    assert t.aborted and events[-1]["outcome"] == "no-host"
    assert not reactor.getDelayedCalls()  # nothing left behind


def test_http_host_starts_upstream_to_tls_port(events: list[dict[str, Any]]) -> None:
    proto, t, reactor = connect(("10.1.2.3", 80))
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: api.test:80\r\n\r\n")
    assert not t.aborted
    (host, port, _factory, timeout, _bind) = reactor.tcpClients[-1]
    assert (host, port, timeout) == ("10.1.2.3", 443, CONFIG.outbound.connect_timeout)
    assert proto.owner.hostname == "api.test"
    proto.connectionLost()  # the client leaves during setup: logged once, nothing left running
    assert events[-1]["outcome"] == "client-gone"
    assert not [c for c in reactor.getDelayedCalls() if c.active()]


def test_finished_connection_is_freed_without_the_cycle_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relayed connection, once ended, holds no reference cycle: it is freed at once.

    (Cycles would keep each finished connection's TLS state alive until a full collection:
    tens of KiB per connection, adding up under load.)"""
    config = Config.from_toml('[[outbound.route]]\ndestination = "10.0.0.0/8"\naction = "passthrough"\n')
    # A private observer: outside twistd, the global log buffers events (and their sources).
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(OutboundConnection, "log", Logger(observer=events.append))
    gc.collect()
    gc.disable()
    try:
        reactor = MemoryReactorClock()
        factory = OutboundFactory(config, reactor)
        proto = factory.buildProtocol(None)
        client = Transport(FakeSocket(("10.1.2.3", 7000)))
        proto.makeConnection(client)
        upstream = reactor.tcpClients[-1][2].buildProtocol(None)
        upstream_transport = Transport(FakeSocket(("10.1.2.3", 7000)))
        upstream.makeConnection(upstream_transport)
        proto.dataReceived(b"ping")
        upstream.dataReceived(b"pong")
        assert upstream_transport.value() == b"ping" and client.value() == b"pong"
        proto.readConnectionLost()
        upstream.readConnectionLost()
        upstream.connectionLost(Failure(ConnectionDone()))
        proto.connectionLost(Failure(ConnectionDone()))
        assert events[-1]["outcome"] == "closed" and events[-1]["bytes_out"] == 4
        refs = [weakref.ref(proto), weakref.ref(upstream)]
        events.clear()  # logged events name their source: the test's own reference
        del proto, upstream, factory
        assert [r() for r in refs] == [None, None], gc.get_referrers(*(r() for r in refs if r()))
    finally:
        gc.enable()


# --------------------------------------------------------------------------- with an in-memory TLS peer


class TLSPeer:
    """Completes the daemon's upstream connection in memory, with a pyOpenSSL server behind it."""

    def __init__(self, reactor: MemoryReactorClock, pki: PKI, local: Optional[IPv4Address] = None) -> None:
        self.tls = TLSServer(pki.server("good"))
        self.server = self.tls.conn
        self.transport = Transport(FakeSocket(("10.1.2.3", 25)), host=local,
                                   peer=IPv4Address("TCP", "10.1.2.3", 25))
        self.proto = reactor.tcpClients[-1][2].buildProtocol(None)
        self.proto.makeConnection(self.transport)  # fires the endpoint's Deferred: "connected"

    @property
    def received(self) -> bytes:
        return self.tls.received

    def pump(self) -> None:
        self.tls.pump(self.transport, self.proto)


def tls_route_connection(pki: PKI) -> tuple[Any, Transport, MemoryReactorClock]:
    config = Config.from_toml(f"""
[policy]
trust_store = "{pki.root_pem}"
[outbound]
handshake_timeout = 3
sniff_timeout = 5
[[outbound.route]]
name = "smtp"
destination = "10.0.0.0/8"
hostname = "backend.test"
""")
    reactor = MemoryReactorClock()
    proto = OutboundFactory(config, reactor).buildProtocol(None)
    client = Transport(FakeSocket(("10.1.2.3", 25)))
    proto.makeConnection(client)
    return proto, client, reactor


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki-unit"))


def test_client_bytes_do_not_cancel_the_handshake_timeout(pki: PKI, events: list[dict[str, Any]]) -> None:
    proto, client, reactor = tls_route_connection(pki)
    TLSPeer(reactor, pki)  # TCP connected, and then the server never answers the ClientHello
    proto.dataReceived(b"EHLO client.test\r\n")  # plaintext: classified "not TLS" at once
    reactor.advance(2.9)
    assert not client.aborted
    reactor.advance(0.2)
    assert client.aborted and events[-1]["outcome"] == "handshake-timeout"


def test_server_bytes_during_sniffing_are_delivered_not_dropped(pki: PKI, events: list[dict[str, Any]]) -> None:
    proto, client, reactor = tls_route_connection(pki)
    proto.dataReceived(b"\x16\x03")  # an undecided prefix: the relay must wait
    peer = TLSPeer(reactor, pki)
    peer.pump()
    assert proto.owner.far_up and proto.owner.state is not State.RELAYING
    peer.server.sendall(b"220 banner\r\n")
    peer.server.shutdown()  # and the server's close_notify, also while we wait
    peer.pump()
    assert client.value() == b""
    proto.dataReceived(b"\x01\x00\x01\x00")  # now decided: a record too short to be a ClientHello
    peer.pump()
    assert proto.owner.state is State.RELAYING
    assert client.value() == b"220 banner\r\n"  # delivered, in order
    assert client.write_closed  # and the server's end became the client's FIN
    assert peer.received == b"\x16\x03\x01\x00\x01\x00"


def test_first_bytes_that_fill_the_setup_buffer_do_not_leave_the_program_paused(
        pki: PKI, events: list[dict[str, Any]]) -> None:
    proto, client, reactor = tls_route_connection(pki)
    peer = TLSPeer(reactor, pki)
    peer.pump()
    assert proto.owner.state is State.RELAYING  # relaying before the program spoke (server-first)
    proto.dataReceived(b"x" * SETUP_BUFFER)  # its first read fills the setup buffer: paused ...
    peer.pump()
    assert peer.received == b"x" * SETUP_BUFFER
    assert client.producerState == "producing"  # ... and read on once the relay took it over
    proto.dataReceived(b"more")
    peer.pump()
    assert peer.received == b"x" * SETUP_BUFFER + b"more"


def _accept(factory: OutboundFactory, peer: IPv4Address, orig: tuple[str, int]) -> Transport:
    t = Transport(FakeSocket(orig), peer=peer)
    factory.buildProtocol(None).makeConnection(t)
    return t


def test_own_traffic_redirected_back_is_a_loop_in_either_order(pki: PKI, events: list[dict[str, Any]]) -> None:
    proto, client, reactor = tls_route_connection(pki)
    peer = TLSPeer(reactor, pki)  # our upstream socket: local 127.0.0.1:15001 -> 10.1.2.3:25
    local = peer.transport.getHost()
    # The redirected copy of that upstream connection arrives at the listener afterwards ...
    t2 = _accept(proto.owner.factory, IPv4Address("TCP", local.host, local.port), ("10.1.2.3", 25))
    assert t2.aborted and events[-1]["outcome"] == "loop"
    # ... or before our side has recorded its own socket.
    proto2, _, _ = tls_route_connection(pki)
    t3 = _accept(proto2.owner.factory, IPv4Address("TCP", "127.0.0.1", 44444), ("10.1.2.3", 25))
    assert not t3.aborted
    TLSPeer(proto2.owner.reactor, pki, local=IPv4Address("TCP", "127.0.0.1", 44444))
    assert t3.aborted and events[-1]["outcome"] == "loop"


def test_same_local_port_towards_another_destination_is_not_a_loop(pki: PKI, events: list[dict[str, Any]]) -> None:
    # Linux hands out one local port to several connections with different destinations: a
    # client whose address equals our upstream socket's local address is not us.
    proto, client, reactor = tls_route_connection(pki)
    peer = TLSPeer(reactor, pki)
    local = peer.transport.getHost()
    t = _accept(proto.owner.factory, IPv4Address("TCP", local.host, local.port), ("10.9.9.9", 25))
    assert not t.aborted and not [e for e in events if e["outcome"] == "loop"]


def test_finished_tls_connection_is_freed_without_the_cycle_collector(
        pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(OutboundConnection, "log", Logger(observer=events.append))
    gc.collect()
    gc.disable()
    try:
        proto, client, reactor = tls_route_connection(pki)
        peer = TLSPeer(reactor, pki)
        peer.pump()
        upstream = proto.owner.relay.far
        proto.dataReceived(b"hello")
        peer.pump()
        peer.server.sendall(b"world")
        peer.server.shutdown()
        peer.pump()
        proto.readConnectionLost()
        peer.pump()
        assert peer.received == b"hello" and client.value() == b"world"
        upstream.connectionLost(Failure(ConnectionDone()))
        proto.connectionLost(Failure(ConnectionDone()))
        assert events[-1]["outcome"] == "closed" and events[-1]["verified"] is True
        refs = [weakref.ref(proto), weakref.ref(upstream), weakref.ref(upstream.tls)]
        events.clear()
        reactor.tcpClients.clear()  # the memory reactor's own record of the connect
        del proto, upstream, peer
        assert [r() for r in refs] == [None, None, None], gc.get_referrers(*(r() for r in refs if r()))
    finally:
        gc.enable()


def test_connections_over_the_limit_are_reset(events: list[dict[str, Any]]) -> None:
    config = Config.from_toml('[outbound]\nmax_connections = 2\n[[outbound.route]]\ndestination = "10.0.0.0/8"\n'
                              'action = "passthrough"\n')
    reactor = MemoryReactorClock()
    factory = OutboundFactory(config, reactor)
    transports = []
    for n in range(3):
        t = Transport(FakeSocket(("10.1.2.3", 7000)), peer=IPv4Address("TCP", "127.0.0.1", 40000 + n))
        factory.buildProtocol(None).makeConnection(t)
        transports.append(t)
    assert [t.aborted for t in transports] == [False, False, True]
    assert events[-1]["outcome"] == "overload" and len(factory.active) == 2
    assert events[-1]["client"] == "127.0.0.1:40002"  # who was refused


def test_a_verified_connection_reset_at_shutdown_is_logged_as_it_was(pki: PKI, events: list[dict[str, Any]]) -> None:
    """SIGTERM's drain ends a live relay with `shutdown`; the record still says what was true of
    it: verified, its TLS version and cipher (it used to say tls=None verified=False)."""
    proto, client, reactor = tls_route_connection(pki)
    peer = TLSPeer(reactor, pki)
    proto.dataReceived(b"EHLO client.test\r\n")
    peer.pump()
    assert proto.owner.state is State.RELAYING and peer.received == b"EHLO client.test\r\n"
    proto.owner.shut_down()
    assert client.aborted
    event = events[-1]
    assert event["outcome"] == "shutdown" and event["verified"] is True, event
    assert event["tls_version"] in ("TLSv1.2", "TLSv1.3") and event["cipher"], event
    assert event["bytes_out"] == len(b"EHLO client.test\r\n"), event
