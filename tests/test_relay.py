"""The symmetric relay on two in-memory stream ends: data, half-close, honest endings,
backpressure wiring, and what was held during setup."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from ssaproxy.relay import DRAIN_TIMEOUT, Relay
from ssaproxy.streams import SOCKET_OPTIONS, End, How, TCPEnd, unsent, write_now
from tests.memtls import Transport


class Ends:
    def __init__(self) -> None:
        self.near, self.far = TCPEnd(), TCPEnd()
        self.near_t, self.far_t = Transport(), Transport()
        self.near.makeConnection(self.near_t)
        self.far.makeConnection(self.far_t)
        self.outcome: Optional[tuple[str, Optional[str]]] = None
        self.relay = Relay(self.near, self.far, self.done)

    def done(self, outcome: str, detail: Optional[str]) -> None:
        assert self.outcome is None, "reported twice"
        self.outcome = (outcome, detail)


@pytest.fixture
def ends() -> Ends:
    e = Ends()
    e.relay.start()
    return e


def test_bytes_flow_both_ways_and_are_counted(ends: Ends) -> None:
    ends.near.dataReceived(b"request")
    ends.far.dataReceived(b"answer!!")
    assert ends.far_t.value() == b"request" and ends.near_t.value() == b"answer!!"
    assert (ends.relay.bytes_out, ends.relay.bytes_in) == (7, 8)
    assert ends.outcome is None


def test_half_close_each_way_then_a_clean_end(ends: Ends) -> None:
    ends.near.readConnectionLost()
    assert ends.far_t.write_closed and not ends.near_t.write_closed
    ends.far.dataReceived(b"still flowing")
    assert ends.near_t.value() == b"still flowing"
    ends.far.readConnectionLost()
    assert ends.near_t.write_closed
    assert ends.outcome == ("closed", None)
    assert ends.near_t.disconnecting and ends.far_t.disconnecting
    assert ends.near.sink is None and ends.far.sink is None  # no cycle left behind


@pytest.mark.parametrize("how", [How.RESET, How.TRUNCATED])
def test_far_side_failure_resets_the_near_side(ends: Ends, how: How) -> None:
    ends.relay.end_lost(ends.far, how, "why")
    assert ends.near_t.aborted and ends.outcome == (str(how), "why")


def test_far_tcp_reset_resets_the_near_side(ends: Ends) -> None:
    ends.far.connectionLost(Failure(ConnectionLost("peer reset")))
    assert ends.near_t.aborted and ends.outcome is not None and ends.outcome[0] == "reset"


def test_far_side_clean_end_closes_the_near_side(ends: Ends) -> None:
    ends.far.connectionLost(Failure(ConnectionDone()))
    assert ends.near_t.disconnecting and not ends.near_t.aborted
    assert ends.outcome == ("closed", None)


def test_near_side_going_away_uncleanly_resets_the_far_side(ends: Ends) -> None:
    ends.near.connectionLost(Failure(ConnectionLost("program killed")))
    assert ends.far_t.aborted
    assert ends.outcome is not None and ends.outcome[0] == "client-reset"


def test_near_side_closed_before_both_directions_ended_is_a_reset(ends: Ends) -> None:
    ends.near.connectionLost(Failure(ConnectionDone()))
    assert ends.far_t.aborted and ends.outcome is not None and ends.outcome[0] == "client-reset"


def test_each_transport_produces_for_the_other(ends: Ends) -> None:
    near_producer = ends.far_t.producer
    far_producer = ends.near_t.producer
    assert near_producer is not None and far_producer is not None
    near_producer.pauseProducing()
    assert ends.near_t.producerState == "paused"
    near_producer.resumeProducing()
    assert ends.near_t.producerState == "producing"
    far_producer.stopProducing()  # a lost consumer must not close the other side behind our back
    assert not ends.far_t.disconnecting
    ends.near.readConnectionLost()
    assert ends.near_t.producer is not None and ends.far_t.producer is None  # the finished side stops producing


def test_what_was_held_during_setup_goes_first() -> None:
    e = Ends()
    e.relay.start(near_held=b"early request", near_eof=True, far_held=b"banner", far_eof=False)
    assert e.far_t.value() == b"early request" and e.far_t.write_closed
    assert e.near_t.value() == b"banner"
    assert (e.relay.bytes_out, e.relay.bytes_in) == (13, 6)
    e.far.readConnectionLost()
    assert e.outcome == ("closed", None)


def test_detach_stops_reporting() -> None:
    e = Ends()
    e.relay.start()
    e.relay.detach()
    assert e.near.sink is None and e.far.sink is None
    e.relay.end_lost(e.far, How.RESET, "late")
    assert e.outcome is None


def test_ends_are_interchangeable() -> None:
    # The relay only knows the End interface: a subclass with its own write path works as is.
    class Recording(TCPEnd):
        def __init__(self) -> None:
            self.seen = b""

        def write(self, data: bytes) -> None:
            self.seen += data

    near, far = Recording(), TCPEnd()
    for end in (near, far):
        end.makeConnection(Transport())
    r = Relay(near, far, lambda o, d: None)
    r.start()
    far.dataReceived(b"x")
    assert near.seen == b"x"
    assert isinstance(near, End)


def test_connected_ends_reset_on_death_keep_alive_and_send_at_once() -> None:
    # A real TCP pair: what an end sets on its socket as it connects.
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        t = Transport(sock=server)
        end = TCPEnd()
        end.makeConnection(t)
        assert struct.unpack("ii", server.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (1, 0)
        for level, option, value in SOCKET_OPTIONS:
            assert server.getsockopt(level, option) == value
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        for s in (listener, client, server):
            s.close()


class Pending(Transport):
    """A transport whose write buffer we control, on a clock, as Twisted's TCP transports are."""

    def __init__(self, reactor: Clock) -> None:
        super().__init__()
        self.reactor = reactor
        self._tempDataLen = 0


def drained_ends() -> tuple[Ends, Clock, Pending]:
    clock = Clock()
    e = Ends()
    pending = Pending(clock)
    e.near = TCPEnd()
    e.near.makeConnection(pending)
    e.relay = Relay(e.near, e.far, e.done)
    e.relay.start()
    return e, clock, pending


def test_after_a_far_failure_the_near_side_gets_what_is_queued_then_the_reset() -> None:
    e, clock, pending = drained_ends()
    e.far.dataReceived(b"x" * 1000)
    pending._tempDataLen = 1000  # still in the write buffer
    e.far.connectionLost(Failure(ConnectionLost("peer reset")))
    assert not pending.aborted and e.outcome is None and e.relay.draining
    e.near.dataReceived(b"late")  # the program's bytes have nowhere to go now
    assert e.far_t.value() == b""
    clock.advance(1)
    assert not pending.aborted
    pending._tempDataLen = 0  # taken
    clock.advance(0.05)
    assert pending.aborted and e.outcome is not None and e.outcome[0] == "reset"
    assert e.relay.bytes_in == 1000


def test_a_reader_that_never_takes_the_rest_is_reset_after_the_drain_timeout() -> None:
    e, clock, pending = drained_ends()
    e.far.dataReceived(b"x" * 1000)
    pending._tempDataLen = 400
    e.far.connectionLost(Failure(ConnectionLost("peer reset")))
    clock.advance(DRAIN_TIMEOUT + 1)
    assert pending.aborted and e.outcome is not None and e.outcome[0] == "reset"
    assert e.relay.bytes_in == 600  # the record counts what the program was sent


def test_unsent_counts_the_kernel_send_queue() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.setblocking(False)
        sent = 0
        for _ in range(1000):  # bounded: until the kernel takes no more
            try:
                sent += server.send(b"y" * 65536)
            except BlockingIOError:
                break
        assert unsent(Transport(sock=server)) > 0
        assert unsent(Transport(sock=client)) == 0
    finally:
        for s in (listener, client, server):
            s.close()


def test_an_exception_in_a_sink_resets_the_end_and_tells_the_other_side() -> None:
    # Left to Twisted, the exception would close the connection in order: a FIN.
    class Broken:
        lost: Optional[tuple[How, Optional[str]]] = None

        def end_data(self, end: End, data: bytes) -> None:
            raise RuntimeError("a bug")

        def end_lost(self, end: End, how: How, detail: Optional[str]) -> None:
            self.lost = (how, detail)

    end, t, sink = TCPEnd(), Transport(), Broken()
    end.makeConnection(t)
    end.sink = sink  # type: ignore[assignment]
    end.dataReceived(b"x")
    assert t.aborted and sink.lost == (How.RESET, "internal error in dataReceived")


def test_twisted_still_has_the_orderly_shutdown_switch_we_turn_off() -> None:
    from twisted.internet import tcp  # noqa: PLC0415 - the one Twisted detail this test pins

    assert hasattr(tcp.Connection, "_shouldShutdown")


def test_a_truncation_after_the_program_closed_is_still_a_reset_and_says_so(ends: Ends) -> None:
    ends.near.readConnectionLost()  # the program is done sending
    ends.relay.end_lost(ends.far, How.TRUNCATED, "connection closed without close_notify")
    assert ends.near_t.aborted
    assert ends.outcome == (
        "truncated", "connection closed without close_notify (after the program had closed its side)")


def test_a_tls_client_leaving_without_close_notify_is_truncation_and_the_far_side_is_reset(ends: Ends) -> None:
    ends.relay.end_lost(ends.near, How.TRUNCATED, "connection closed without close_notify")
    assert ends.far_t.aborted  # never hidden: the far side gets its reset
    assert ends.outcome == ("client-truncated", "connection closed without close_notify")
    assert not ends.relay.far_ended


def test_after_the_far_sides_end_a_truncating_client_is_marked_benign(ends: Ends) -> None:
    ends.far.dataReceived(b"the whole answer")
    ends.far.readConnectionLost()  # the far side's FIN: its stream is complete
    ends.relay.end_lost(ends.near, How.TRUNCATED, "connection closed without close_notify")
    assert ends.far_t.aborted
    assert ends.outcome == ("client-truncated", "connection closed without close_notify after the far side's end")
    assert ends.relay.far_ended  # the lifecycle logs it at info


class _Producer:
    paused = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@pytest.fixture
def tcp_pair() -> Iterator[tuple[Any, socket.socket]]:
    """A real Twisted TCP transport (on a MemoryReactor: nothing runs unless asked) and the raw
    socket at its other end."""
    from twisted.internet import tcp  # noqa: PLC0415 - the transport class write_now knows
    from twisted.internet.protocol import Protocol  # noqa: PLC0415
    from twisted.internet.testing import MemoryReactorClock  # noqa: PLC0415

    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, MemoryReactorClock())
    peer.settimeout(5)
    try:
        yield transport, peer
    finally:
        peer.close()
        ours.close()


def test_write_now_sends_at_once_when_nothing_is_queued(tcp_pair: tuple[Any, socket.socket]) -> None:
    transport, peer = tcp_pair
    write_now(transport, b"hello")
    assert peer.recv(100) == b"hello"  # sent in this call, not at the next writable event
    assert transport._tempDataLen == 0 and transport.dataBuffer == b""


def test_write_now_queues_behind_what_is_queued(tcp_pair: tuple[Any, socket.socket]) -> None:
    transport, peer = tcp_pair
    transport.write(b"first ")  # Twisted's write: queued until the reactor says writable
    write_now(transport, b"second")
    assert unsent(transport) == len(b"first second")
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)  # nothing overtook the queue
    transport.doWrite()
    peer.setblocking(True)
    assert read_exactly(peer, 12) == b"first second"


@pytest.mark.parametrize("closing", ["loseConnection", "loseWriteConnection", "abortConnection"])
def test_write_now_never_sends_past_a_close(tcp_pair: tuple[Any, socket.socket], closing: str) -> None:
    transport, peer = tcp_pair
    getattr(transport, closing)()
    write_now(transport, b"late")
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)


def test_write_now_leaves_what_the_kernel_refuses_to_twisted_with_backpressure(
        tcp_pair: tuple[Any, socket.socket]) -> None:
    transport, peer = tcp_pair
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    producer = _Producer()
    transport.registerProducer(producer, True)
    data = bytes(range(256)) * 16384  # 4 MiB: more than the kernel takes at once
    write_now(transport, data)
    queued = unsent(transport)
    assert 0 < queued <= len(data) and transport._tempDataLen > 0
    assert producer.paused == 1  # Twisted's buffer is over its size: the producer was paused
    got = bytearray()
    peer.setblocking(False)
    for _ in range(20000):  # bounded: drain both sides until every byte arrived
        if len(got) == len(data):
            break
        if transport._tempDataLen or transport.dataBuffer:
            transport.doWrite()
        select.select([peer], [], [], 0.1)
        with contextlib.suppress(BlockingIOError):
            got += peer.recv(1 << 20)
    assert len(got) == len(data) and bytes(got) == data


def read_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    for _ in range(100):
        if len(buf) >= n:
            break
        buf += s.recv(n - len(buf))
    return buf
