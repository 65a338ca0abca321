"""The shared connection lifecycle, on a minimal face with a memory reactor: transitions,
timers, the far end's connect and its outcomes, fail-closed handlers, limits, shutdown, and the
one record at the end."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ssaproxy.lifecycle import SETUP_BUFFER, Lifecycle, State, connect_outcome
from ssaproxy.streams import How, TCPEnd
from tests.memtls import Transport


class Face(Lifecycle):
    kind = "test"

    def __init__(self, reactor: MemoryReactorClock, active: set[Any], events: list[dict[str, Any]]) -> None:
        super().__init__(reactor, active)
        self.log = Logger(observer=events.append)  # type: ignore[misc]
        self.near = TCPEnd()
        self.near.sink = self
        self.near_t = Transport()
        self.boom = False

    def near_ready(self) -> None:
        if self.boom:
            raise RuntimeError("a bug in a face")
        self.connect(TCP4ClientEndpoint(self.reactor, "192.0.2.1", 443, timeout=5), TCPEnd())
        self.arm("setup", 3, "setup-timeout", "took too long")


@pytest.fixture
def world() -> tuple[MemoryReactorClock, set[Any], list[dict[str, Any]]]:
    return MemoryReactorClock(), set(), []


def accepted(world: tuple[MemoryReactorClock, set[Any], list[dict[str, Any]]], *, boom: bool = False) -> Face:
    reactor, active, events = world
    face = Face(reactor, active, events)
    face.boom = boom
    face.near.makeConnection(face.near_t)
    return face


def far_connects(face: Face, index: int = -1) -> tuple[TCPEnd, Transport]:
    reactor = face.reactor
    end = reactor.tcpClients[index][2].buildProtocol(None)
    t = Transport()
    end.makeConnection(t)
    return end, t


def test_the_happy_path_and_its_one_record(world: Any) -> None:
    face = accepted(world)
    assert face.state is State.CONNECTING
    face.near.dataReceived(b"early")  # held while the far end is set up
    far, far_t = far_connects(face)
    assert face.state is State.RELAYING and far_t.value() == b"early"
    far.dataReceived(b"reply")
    face.near.readConnectionLost()
    far.readConnectionLost()
    events = world[2]
    assert [e["outcome"] for e in events] == ["closed"]
    assert events[0]["bytes_out"] == 5 and events[0]["bytes_in"] == 5 and events[0]["kind"] == "test"
    assert face.near is None and face.far is None and not world[1]  # let go of everything
    assert not [c for c in world[0].getDelayedCalls() if c.active()]


def test_illegal_transitions_are_bugs(world: Any) -> None:
    face = accepted(world)
    face.state = State.DONE
    with pytest.raises(AssertionError, match="illegal transition done -> relaying"):
        face.go(State.RELAYING)


def test_a_setup_timer_refuses_with_its_outcome(world: Any) -> None:
    face = accepted(world)
    world[0].advance(3)
    assert face.near_t.aborted and face.done
    assert world[2][-1]["outcome"] == "setup-timeout" and world[2][-1]["detail"] == "took too long"


def test_timers_are_disarmed_once_relaying(world: Any) -> None:
    face = accepted(world)
    far_connects(face)
    world[0].advance(10)
    assert not face.near_t.aborted and face.state is State.RELAYING


@pytest.mark.parametrize(("failure", "outcome"), [
    (error.ConnectionRefusedError(), "connect-refused"),
    (error.TimeoutError(), "connect-timeout"),
    (error.DNSLookupError(), "no-address"),
    (error.NoRouteError(), "unreachable"),
    (error.ConnectError(osError=113), "unreachable"),
    (error.ConnectError("something else"), "connect-failed"),
    (error.ConnectBindError(24, "Too many open files"), "overload"),  # EMFILE: socket() failed
    (error.ConnectBindError(23, "Too many open files in system"), "overload"),  # ENFILE
])
def test_one_vocabulary_for_unreachable_peers(world: Any, failure: Exception, outcome: str) -> None:
    assert connect_outcome(Failure(failure)) == outcome
    face = accepted(world)
    world[0].tcpClients[-1][2].clientConnectionFailed(None, Failure(failure))
    assert face.near_t.aborted and world[2][-1]["outcome"] == outcome


def test_an_exception_in_a_handler_resets_instead_of_closing(world: Any) -> None:
    face = accepted(world, boom=True)
    assert face.near_t.aborted and world[2][-1]["outcome"] == "internal-error"


def test_the_setup_buffer_is_bounded(world: Any) -> None:
    face = accepted(world)
    face.near.dataReceived(b"x" * (SETUP_BUFFER - 1))
    assert face.near_t.producerState == "producing"
    face.near.dataReceived(b"x")
    assert face.near_t.producerState == "paused"
    far_connects(face)
    assert face.near_t.producerState == "producing"  # the relay took it and reads on


def test_the_program_leaving_during_setup_cancels_the_connect(world: Any) -> None:
    face = accepted(world)
    face.near.connectionLost(Failure(error.ConnectionLost()))
    assert world[2][-1]["outcome"] == "client-gone"
    assert not face.near_t.aborted  # it is gone already: nothing to reset
    assert face._connecting is None and face.far is None
    assert not [c for c in world[0].getDelayedCalls() if c.active()]


def test_limit_and_shutdown(world: Any) -> None:
    faces = [accepted(world) for _ in range(3)]
    for face in faces:
        face.admit(2)
    assert [f.done for f in faces] == [False, False, True]
    assert world[2][-1]["outcome"] == "overload"
    far, far_t = far_connects(faces[1], 1)
    for face in list(world[1]):
        face.shut_down()
    assert faces[0].near_t.aborted and faces[1].near_t.aborted and far_t.aborted
    assert [e["outcome"] for e in world[2]][-2:] == ["shutdown", "shutdown"]
    assert not world[1]


def test_ids_count_per_face() -> None:
    class Other(Lifecycle):
        pass

    a, b = Other(MemoryReactorClock(), set()), Other(MemoryReactorClock(), set())
    assert b.conn_id == a.conn_id + 1



def test_an_idle_relay_is_reset_and_a_trickle_is_not(world: Any) -> None:
    face = accepted(world)
    face.idle_timeout = 8
    far, far_t = far_connects(face)
    reactor = world[0]
    for second in range(1, 37):  # a byte every 6 s: never 8 s without one
        reactor.advance(1)
        if second % 6 == 0:
            far.dataReceived(b".")
    assert face.state is State.RELAYING and not face.near_t.aborted
    for _ in range(7):
        reactor.advance(1)
    assert not face.near_t.aborted  # 7 s of silence
    for _ in range(4):  # the check runs every quarter of the timeout: within 10 s, not at once
        reactor.advance(1)
    assert face.near_t.aborted and far_t.aborted
    record = world[2][-1]
    assert record["outcome"] == "idle-timeout" and record["bytes_in"] == 6
    assert not [c for c in reactor.getDelayedCalls() if c.active()]


def test_a_refused_relay_still_reports_what_crossed(world: Any) -> None:
    face = accepted(world)
    far, _ = far_connects(face)
    face.near.dataReceived(b"abc")
    far.dataReceived(b"defgh")
    face.shut_down()
    record = world[2][-1]
    assert (record["outcome"], record["bytes_out"], record["bytes_in"]) == ("shutdown", 3, 5)


def test_a_second_relay_replaces_the_idle_timer(world: Any) -> None:
    face = accepted(world)
    face.idle_timeout = 8
    far_connects(face)
    face.abandon_far()  # as outbound does after a late ClientHello
    face.state = State.CONNECTING
    face.far = TCPEnd()
    face.far.sink = face
    face.far.makeConnection(Transport())
    idle = [c for c in world[0].getDelayedCalls() if c.active() and "_idle_check" in repr(c.func)]
    assert len(idle) == 1
    face.shut_down()
    assert not [c for c in world[0].getDelayedCalls() if c.active()]


def test_a_cancelled_connect_is_never_the_record(world: Any) -> None:
    """Twisted's ConnectingCancelledError is not a CancelledError: a cancel arriving while the
    connect is still ours must not end the connection as `connect-failed detail=IPv4Address(...)`;
    the end that made us cancel is the one the record names."""
    face = accepted(world)
    assert face.state is State.CONNECTING
    factory = world[0].tcpClients[-1][2]
    factory.clientConnectionFailed(None, Failure(error.ConnectingCancelledError(("192.0.2.1", 443))))
    assert not world[2] and face.state is State.CONNECTING  # no record from the cancel itself
    face.near.connectionLost(Failure(error.ConnectionLost("TLS error: bad record mac")))
    assert [e["outcome"] for e in world[2]] == ["client-gone"]
    assert "bad record mac" in str(world[2][-1]["detail"])


@pytest.mark.parametrize("far_ended", [True, False])
def test_a_client_truncating_after_the_far_sides_end_is_info_else_a_warning(world: Any, far_ended: bool) -> None:
    face = accepted(world)
    far, far_t = far_connects(face)
    assert face.relay is not None
    if far_ended:
        far.readConnectionLost()  # the far side's whole stream arrived (FIN)
    face.relay.end_lost(face.near, How.TRUNCATED, "connection closed without close_notify")
    (event,) = world[2]
    assert event["outcome"] == "client-truncated" and far_t.aborted  # the far side still gets its reset
    assert event["log_level"] == (LogLevel.info if far_ended else LogLevel.warn)
