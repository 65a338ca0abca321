"""The drain at the stop (ssaproxy.drain), on a fake clock: what is live finishes or is reset."""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from ssaproxy.drain import POLL, Drain
from ssaproxy.lifecycle import Lifecycle
from ssaproxy.state import DaemonState


class Face:
    face = "outbound"

    def __init__(self) -> None:
        self.active: set[Any] = set()
        self.accepting = True

    def stop_accepting(self) -> None:
        self.accepting = False


class Conn(Lifecycle):
    kind = "test"


class Reactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[tuple[Any, tuple[Any, ...]]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.from_thread.append((f, args))

    def run_from_thread(self) -> None:
        calls, self.from_thread = self.from_thread, []
        for f, args in calls:
            f(*args)


def _setup(timeout: float, n: int = 2) -> tuple[Reactor, Face, list[Conn], Drain, DaemonState]:
    reactor = Reactor()
    face = Face()
    conns = [Conn(reactor, face.active) for _ in range(n)]
    face.active.update(conns)
    state = DaemonState()
    drain = Drain([face], timeout, reactor, state)
    drain.startService()
    return reactor, face, conns, drain, state


def _outcomes(conns: list[Conn]) -> list[bool]:
    return [c.done for c in conns]


def test_nothing_live_ends_at_once() -> None:
    _, face, _, drain, state = _setup(30, n=0)
    assert drain.stopService() is None
    assert state.draining and not face.accepting


def test_the_stop_waits_for_live_connections_and_ends_with_the_last() -> None:
    reactor, face, conns, drain, state = _setup(30)
    d = drain.stopService()
    assert isinstance(d, defer.Deferred) and state.draining and not face.accepting
    conns[0].finish("closed", None, reset_near=False)
    reactor.advance(POLL)
    assert not d.called
    conns[1].finish("closed", None, reset_near=False)
    reactor.advance(POLL)
    assert d.called and (drain.reset, len(reactor.getDelayedCalls())) == (0, 0)


def test_what_is_left_at_the_timeout_is_shut_down() -> None:
    reactor, face, conns, drain, _ = _setup(1)
    d = drain.stopService()
    assert isinstance(d, defer.Deferred)
    conns[0].finish("closed", None, reset_near=False)
    reactor.advance(0.5)
    assert not d.called and not conns[1].done
    reactor.pump([0.1] * 6)
    assert d.called and conns[1].done and drain.reset == 1 and not face.active


def test_zero_resets_at_once() -> None:
    _, face, conns, drain, _ = _setup(0)
    assert drain.stopService() is None
    assert all(_outcomes(conns)) and drain.reset == 2 and not face.active


def test_a_second_signal_cuts_the_drain_short_and_the_handlers_are_put_back() -> None:
    reactor, _, conns, drain, _ = _setup(30)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    d = drain.stopService()
    assert isinstance(d, defer.Deferred)
    assert signal.getsignal(signal.SIGTERM) == drain._signalled
    drain._signalled(signal.SIGTERM, None)  # as the signal would: it only hands over to the reactor
    assert not d.called
    reactor.run_from_thread()
    assert d.called and all(_outcomes(conns)) and drain.reset == 2
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


class Flushing:
    """A transport closing cleanly with bytes still in its buffer."""

    disconnecting = True
    aborted = False

    def getHandle(self) -> None:
        return None

    def abortConnection(self) -> None:
        self.aborted = True


def test_a_clean_close_still_flushing_is_waited_for_and_reset_at_the_timeout() -> None:
    reactor, _, conns, drain, _ = _setup(1, n=0)
    closing = Flushing()
    reactor.addWriter(closing)  # type: ignore[arg-type]
    d = drain.stopService()
    assert isinstance(d, defer.Deferred)
    reactor.advance(0.5)
    assert not d.called  # the reactor's final disconnect would FIN it mid-stream
    reactor.pump([0.1] * 6)
    assert d.called and closing.aborted and drain.unflushed == 1


def test_the_drain_ends_once_the_last_clean_close_has_flushed() -> None:
    reactor, _, _, drain, _ = _setup(30, n=0)
    closing = Flushing()
    reactor.addWriter(closing)  # type: ignore[arg-type]
    d = drain.stopService()
    assert isinstance(d, defer.Deferred)
    reactor.advance(POLL)
    assert not d.called
    reactor.removeWriter(closing)  # type: ignore[arg-type]
    reactor.advance(POLL)
    assert d.called and not closing.aborted and drain.unflushed == 0


def test_a_factory_added_later_drains_too() -> None:
    # The drain reads the daemon's live list of factories: a reload adds to it.
    reactor = Reactor()
    factories: list[Any] = []
    drain = Drain(factories, 5, reactor, DaemonState())
    late = Face()
    factories.append(late)
    conn = Conn(reactor, late.active)
    late.active.add(conn)
    assert drain.live() == [("outbound", conn)]
