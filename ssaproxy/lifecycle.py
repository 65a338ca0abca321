"""One connection lifecycle for the three faces: accepted -> deciding -> connecting ->
handshaking -> relaying -> done.

A face (outbound, inbound, the API session) subclasses `Lifecycle` and fills in what is its
own: where the far end is, what to decide, which fields its log record carries.  Everything
else lives here once: the state and its legal transitions (the states and the words for a
failed connect are `ssaproxy.states`), the setup buffers of both ends (bounded: beyond them
the end stops being read), named timers, the far end's connect with its cancellation and its
failure -> outcome mapping, the splice into a `Relay`, the refusal that
resets, the daemon's shutdown, the limit on live connections, and the one log record at the
end.  Per-connection metrics, drain and limits hook in here: `ssaproxy.metrics` hears of each
connection's start, its far connect and handshakes, a verification failure, and its record.

Fail closed: an exception inside any event handler resets both ends and is logged as
`internal-error` (left to Twisted, an exception in dataReceived closes with a FIN, which a
program reads as a clean end).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, ClassVar, Optional, TypeVar

from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure

from ssaproxy import metrics
from ssaproxy.relay import Relay
from ssaproxy.states import State, connect_outcome, legal
from ssaproxy.streams import End, How, OneShotFactory
from ssaproxy.tls.stream import TLSStream

SETUP_BUFFER = 65536  # bytes held from one end while the other is being set up

__all__ = ["SETUP_BUFFER", "Lifecycle", "State", "connect_outcome", "fail_closed"]


H = TypeVar("H", bound=Callable[..., None])


def fail_closed(method: H) -> H:
    """An unexpected exception in an event handler resets both ends and is logged."""

    @functools.wraps(method)
    def guarded(self: Lifecycle, *args: Any) -> None:
        try:
            method(self, *args)
        except Exception:  # noqa: BLE001 - fail closed, whatever went wrong
            self.log.failure("{kind} {conn_id}: internal error in {method}", kind=self.kind, conn_id=self.conn_id,
                             method=method.__name__)
            self.refuse("internal-error", f"exception in {method.__name__}")

    return guarded  # type: ignore[return-value]


class Lifecycle:
    """Base of a connection: see the module docstring.  `near` is the end the connection was
    made for (a program, or an inbound TLS client), `far` the end opened for it."""

    log: ClassVar[Logger] = Logger()
    kind: ClassVar[str] = "conn"
    _ids: ClassVar[itertools.count[int]]
    allow_ragged_eof = False  # the relay reports the far side's truncation as EOF (an API session's option)

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._ids = itertools.count(1)

    def __init__(self, reactor: Any, active: set[Any]) -> None:
        self.reactor = reactor
        self.active = active
        self.conn_id = next(self._ids)
        self.started: float = reactor.seconds()
        self.state = State.ACCEPTED
        self.near: Optional[End] = None
        self.far: Optional[End] = None
        self.relay: Optional[Relay] = None
        self.held: dict[str, bytearray] = {"near": bytearray(), "far": bytearray()}
        self.eof: dict[str, bool] = {"near": False, "far": False}
        self.facts: dict[str, object] = {}  # of the far (or TLS) end, for the log record
        self._timers: dict[str, Any] = {}
        self._connecting: Optional[defer.Deferred[Any]] = None
        self.bytes_out = 0  # near -> far, once relayed
        self.bytes_in = 0
        self.idle_timeout: Optional[float] = None  # a relay with no bytes either way this long is reset
        self._idle: tuple[int, int, float] = (0, 0, 0.0)
        self._connect_started: Optional[float] = None  # for the metrics' connect and handshake times
        self._far_connected: Optional[float] = None
        self._verify_counted = False
        self.far_ended = False  # the relay saw the far side's whole stream before the end
        metrics.started(self.kind)

    # ---- state
    def go(self, state: State) -> None:
        if state is self.state:
            return
        if not legal(self.state, state):
            raise AssertionError(f"illegal transition {self.state.value} -> {state.value}")
        self.state = state

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    def admit(self, limit: int) -> bool:
        """Count this connection as live; refuse it (False) if that makes more than `limit`."""
        self.active.add(self)
        if len(self.active) > limit:
            self.refuse("overload", f"more than {limit} connections")
            return False
        return True

    # ---- ends, while setting up (EndSink)
    def side(self, end: End) -> Optional[str]:
        """Which of our ends this is; None for an end we let go of (or once we are done)."""
        if self.done:
            return None
        return "near" if end is self.near else "far" if end is self.far else None

    @fail_closed
    def end_ready(self, end: End) -> None:
        side = self.side(end)
        if side is not None and isinstance(end, TLSStream):
            # A TLS end is ready once its handshake (and our verification) passed.
            since = self.started if side == "near" else self._far_connected
            if since is not None:
                metrics.handshaken(self.kind, side, self.reactor.seconds() - since)
            if end.verifier.resumed:
                metrics.resumed(self.kind, side)
        if side == "near":
            self.near_ready()
        elif side == "far":
            self.far_ready()

    @fail_closed
    def end_data(self, end: End, data: bytes) -> None:
        side = self.side(end)
        if side == "near":
            self.near_data(data)
        elif side == "far":
            self.far_data(data)

    @fail_closed
    def end_eof(self, end: End) -> None:
        side = self.side(end)
        if side is not None:
            self.eof[side] = True
        if side == "near":
            self.near_eof()

    @fail_closed
    def end_lost(self, end: End, how: How, detail: Optional[str]) -> None:
        side = self.side(end)
        if side is not None and how is How.VERIFY_FAILED:
            self._count_verify_failure(detail)
        if side == "near":
            self.near_lost(how, detail)
        elif side == "far":
            self.far_lost(how, detail)

    # Hooks for faces; the defaults hold bytes and refuse on loss.
    def near_ready(self) -> None:
        pass

    def far_ready(self) -> None:
        self.begin_relay()

    def near_data(self, data: bytes) -> None:
        self.hold("near", data)

    def far_data(self, data: bytes) -> None:
        self.hold("far", data)

    def near_eof(self) -> None:
        pass

    def near_lost(self, how: How, detail: Optional[str]) -> None:
        self.abandon_far()
        self.finish("client-gone", detail, reset_near=False)

    def far_lost(self, how: How, detail: Optional[str]) -> None:
        self.far = None
        self.refuse(str(how), detail)

    def hold(self, side: str, data: bytes) -> None:
        buf = self.held[side]
        buf += data
        end = self.near if side == "near" else self.far
        if len(buf) >= SETUP_BUFFER and end is not None and end.transport is not None:
            end.tcp.pauseProducing()

    # ---- timers
    def arm(self, name: str, seconds: float, outcome: str, detail: str) -> None:
        self.disarm(name)
        self._timers[name] = self.reactor.callLater(seconds, self._timeout, name, outcome, detail)

    def disarm(self, *names: str) -> None:
        for name in names or tuple(self._timers):
            timer = self._timers.pop(name, None)
            if timer is not None and timer.active():
                timer.cancel()

    @fail_closed
    def _timeout(self, name: str, outcome: str, detail: str) -> None:
        self._timers.pop(name, None)
        if not self.done:
            self.timed_out(name, outcome, detail)

    def timed_out(self, name: str, outcome: str, detail: str) -> None:
        """A timer armed during setup rang: refuse, unless the relay has started."""
        if self.state is not State.RELAYING:
            self.refuse(outcome, detail)

    # ---- the far end
    def connect(self, endpoint: Any, end: End) -> None:
        """Open the far end through `endpoint`; it reports to us until the relay starts."""
        self.go(State.CONNECTING)
        end.sink = self
        self.far = end
        self._connect_started, self._far_connected = self.reactor.seconds(), None
        d = endpoint.connect(OneShotFactory(end))
        self._connecting = d
        d.addCallbacks(self._connected, self._connect_failed, callbackArgs=(end,), errbackArgs=(end,))

    @fail_closed
    def _connected(self, _: Any, end: End) -> None:
        self._connecting = None
        if end is not self.far:
            end.abort()
            return
        self._far_connected = now = self.reactor.seconds()
        if self._connect_started is not None:
            metrics.connected(self.kind, now - self._connect_started)
        self.far_connected()

    def far_connected(self) -> None:
        """TCP is up (a TLS far end now handshakes)."""

    @fail_closed
    def _connect_failed(self, reason: Failure, end: End) -> None:
        self._connecting = None
        # Twisted's ConnectingCancelledError (an endpoint's own cancel) is not a CancelledError:
        # either way it is our own abandon_far, whose caller logs the real reason.
        cancelled = reason.check(defer.CancelledError, error.ConnectingCancelledError)
        if end is not self.far or self.state is not State.CONNECTING or cancelled:
            return
        self.far = None
        self.connect_failed(connect_outcome(reason), reason.getErrorMessage())

    def connect_failed(self, outcome: str, detail: str) -> None:
        self.refuse(outcome, detail)

    def abandon_far(self) -> None:
        """Drop the far end (connecting or connected), with a reset."""
        far, self.far = self.far, None
        self.held["far"].clear()
        self.eof["far"] = False
        self.disarm("idle")
        rl, self.relay = self.relay, None
        if rl is not None:
            rl.detach()
            self.bytes_out, self.bytes_in = rl.bytes_out, rl.bytes_in  # what crossed before the end
        if self._connecting is not None:
            d, self._connecting = self._connecting, None
            d.cancel()
        if far is not None:
            far.sink = None
            far.abort()

    # ---- relaying
    def begin_relay(self) -> None:
        assert self.near is not None and self.far is not None
        self.go(State.RELAYING)
        self.facts.update(self.far.facts())
        self.relay = rl = Relay(self.near, self.far, self._relay_done)
        rl.allow_ragged_eof = self.allow_ragged_eof
        near_held, self.held["near"] = bytes(self.held["near"]), bytearray()
        far_held, self.held["far"] = bytes(self.held["far"]), bytearray()
        rl.start(near_held, self.eof["near"], far_held, self.eof["far"])
        if self.idle_timeout and not rl.finished:
            self._idle = (rl.bytes_out, rl.bytes_in, self.reactor.seconds())
            self._arm_idle()

    def _arm_idle(self) -> None:
        assert self.idle_timeout
        self.disarm("idle")  # a second relay (outbound, after a late ClientHello) replaces the first's
        self._timers["idle"] = self.reactor.callLater(self.idle_timeout / 4, self._idle_check)

    @fail_closed
    def _idle_check(self) -> None:
        """Every quarter of the idle timeout: has anything crossed since the last look?  Nothing
        on the relay's hot path pays for this."""
        rl, timeout = self.relay, self.idle_timeout
        if rl is None or rl.finished or self.done or not timeout:
            return
        out, in_, since = self._idle
        now = self.reactor.seconds()
        if rl.draining or (rl.bytes_out, rl.bytes_in) != (out, in_):  # draining has a bound of its own
            self._idle = (rl.bytes_out, rl.bytes_in, now)
        elif now - since >= timeout:
            self._timers.pop("idle", None)
            self.refuse("idle-timeout", f"nothing crossed either way for {timeout:g}s")
            return
        self._arm_idle()

    def _relay_done(self, outcome: str, detail: Optional[str]) -> None:
        self.finish(outcome, detail, reset_near=False)

    # ---- endings
    def refuse(self, outcome: str, detail: Optional[str]) -> None:
        """Our decision or a failure: both ends are reset."""
        self.abandon_far()
        self.finish(outcome, detail, reset_near=True)

    def shut_down(self) -> None:
        """The daemon is stopping: end this connection with a reset on both sides."""
        if not self.done:
            self.refuse("shutdown", "daemon stopping")

    def reset_near(self) -> None:
        if self.near is not None:
            self.near.sink = None
            self.near.abort()

    def finish(self, outcome: str, detail: Optional[str], *, reset_near: bool) -> None:
        if self.done:
            return
        self.state = State.DONE
        self.disarm()
        self.active.discard(self)
        if reset_near:
            self.reset_near()
        rl, self.relay = self.relay, None
        if rl is not None:
            self.bytes_out, self.bytes_in = rl.bytes_out, rl.bytes_in
            self.far_ended = rl.far_ended
        self.ended(outcome, detail)
        # Let go of both ends: no reference cycle outlives the connection.
        self.near = self.far = None

    def ended(self, outcome: str, detail: Optional[str]) -> None:
        """The face's one log record (and whatever else it owes at the end)."""
        fields = self.record(outcome, detail)
        # A client that left without close_notify once the far side had ended is how many TLS
        # clients end a complete exchange: info, not a warning (the far side still got a reset).
        quiet = self.quiet(outcome) or (outcome == "client-truncated" and self.far_ended)
        emit = self.log.info if quiet else self.log.warn
        # Rendered here by str.format (C) rather than by each observer through Twisted's
        # pure-Python formatter (a tenth of a connection's CPU); the fields stay in the event.
        text = self.log_format.format(**fields).replace("{", "{{").replace("}", "}}")
        emit(text, **fields)
        # A refused TLS client may still be reading our alert: its failure is on the stream.
        failure = getattr(self.near, "failure", None)
        if failure is not None and failure[0] is How.VERIFY_FAILED:
            self._count_verify_failure(failure[1])
        metrics.ended(self.kind, fields, near_to_far=self.bytes_out, far_to_near=self.bytes_in, quiet=quiet)

    def _count_verify_failure(self, detail: Optional[str]) -> None:
        if not self._verify_counted:
            self._verify_counted = True
            metrics.verify_failed(self.kind, detail)

    log_format: ClassVar[str] = "{kind} {conn_id} {outcome}: detail={detail}"

    def record(self, outcome: str, detail: Optional[str]) -> dict[str, object]:
        return {"kind": self.kind, "conn_id": self.conn_id, "outcome": outcome, "detail": detail,
                "bytes_out": self.bytes_out, "bytes_in": self.bytes_in,
                "duration": round(self.reactor.seconds() - self.started, 4)}

    def quiet(self, outcome: str) -> bool:
        return outcome == "closed"
