"""Graceful stop: stop accepting, let live connections finish, reset what is left.

Theory of operation.  twistd's SIGTERM (and SIGINT) handler calls `reactor.stop()`; the
reactor then fires its "before shutdown" triggers, among them the application's
`stopService`, and waits for any Deferred they return while it keeps running.  A
MultiService stops all its children in one turn, so every listener (TCP and the API's Unix
socket, whose file Twisted removes) stops in the same turn as `Drain.stopService`; in that
turn the faces also stop taking new work of their own (`stop_accepting`: the API's program
listeners and new requests on open control connections).  `Drain.stopService` counts the live
connections and returns a Deferred that fires when

* the last connection has ended on its own, and no stream that ended cleanly still has
  bytes in Twisted's buffer (a clean close waits for its buffer, but the reactor's final
  `disconnectAll` would close it at once, with a FIN, after a truncated stream); or
* `[daemon] drain_timeout` passes, or a second SIGTERM or a SIGINT arrives: what is left is
  reset (`Lifecycle.shut_down`, and a reset for the streams still flushing), never closed
  with a FIN.

Only then does the reactor disconnect what remains and stop.  With `drain_timeout = 0`
everything is reset at once, within the first turn.

Repeated signals: once `reactor.stop()` has run, twistd's handlers only raise
ReactorNotRunning (logged as an unhandled error) and do nothing else, so for the drain's
duration SIGTERM and SIGINT get a handler of ours that ends the drain; the previous handlers
are put back when it ends.

Completion is polled (every POLL seconds, only while draining) rather than signalled by each
face: it covers every face and the flushing streams, which belong to no face, with nothing
added to any connection's path.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any, Optional, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from ssaproxy.lifecycle import Lifecycle
from ssaproxy.state import DaemonState
from ssaproxy.streams import reset

POLL = 0.05  # seconds between looks at what is still open, while draining
# During the drain the stop signals cut it short (the services that handle HUP, USR1, USR2 and
# QUIT have stopped already, and their default action would kill the daemon mid-drain); a HUP
# (a reload, a logrotate habit) is ignored with a line in the log.
CUT_SHORT_BY = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
IGNORED_DURING = (signal.SIGHUP,)


class Drain(service.Service):
    """Stops last: see the module docstring.  `factories` is the daemon's live list of factories
    (a reload adds to it; a factory names its face in `face`), each keeping its live connections
    in `active` and perhaps offering `stop_accepting()`."""

    log = Logger()

    def __init__(self, factories: Sequence[Any], timeout: float, reactor: Any, state: DaemonState) -> None:
        self.factories = factories  # by reference: what a reload adds drains too
        self.timeout = timeout
        self.reactor = reactor
        self.state = state
        self.seen: set[Lifecycle] = set()  # every connection live at some point of the drain
        self.reset = 0
        self.unflushed = 0
        self.started = 0.0
        self.ended = False
        self._done: Optional[defer.Deferred[None]] = None
        self._waiters: list[defer.Deferred[None]] = []
        self._timers: dict[str, Any] = {}
        self._saved: dict[int, Any] = {}

    def faces(self) -> list[tuple[str, Any]]:
        return [(getattr(factory, "face", "other"), factory) for factory in self.factories]

    def live(self) -> list[tuple[str, Lifecycle]]:
        return [(face, conn) for face, factory in self.faces() for conn in list(factory.active)
                if isinstance(conn, Lifecycle) and not conn.done]

    def flushing(self) -> list[Any]:
        """Transports closing cleanly that still hold bytes for their peer."""
        writers: list[Any] = getattr(self.reactor, "getWriters", list)()
        return [w for w in writers if getattr(w, "disconnecting", False)]

    # ---- the drain
    def stopService(self) -> Optional[defer.Deferred[None]]:
        super().stopService()
        self.state.draining = True
        self.started = self.reactor.seconds()
        for _, factory in self.faces():
            stop_accepting = getattr(factory, "stop_accepting", None)
            if stop_accepting is not None:
                stop_accepting()
        live = self.live()
        self.seen.update(conn for _, conn in live)
        per_face = Counter(face for face, _ in live)
        faces = " ".join(f"{face}={per_face[face]}" for face in dict.fromkeys(face for face, _ in self.faces()))
        self.log.info("stopping: no longer accepting; draining {connections} live connections ({faces}) "
                      "for up to {drain_timeout:g}s", connections=len(live), faces=faces or "none",
                      drain_timeout=self.timeout, **{f"connections_{face}": n for face, n in per_face.items()})
        if not self.timeout:
            self._cut("drain_timeout is 0")
            return None
        if self._finished():
            self._end("every connection finished")
            return None
        self._done = defer.Deferred()
        self._hold_signals()
        self._timers["deadline"] = self.reactor.callLater(
            self.timeout, self._cut, f"drain_timeout {self.timeout:g}s passed")
        self._timers["poll"] = self.reactor.callLater(POLL, self._check)
        return self._done

    def _finished(self) -> bool:
        live = self.live()
        self.seen.update(conn for _, conn in live)
        return not live and not self.flushing()

    def _check(self) -> None:
        self._timers.pop("poll", None)
        if self._finished():
            self._end("every connection finished")
        else:
            self._timers["poll"] = self.reactor.callLater(POLL, self._check)

    def _cut(self, why: str) -> None:
        """Reset what is left (a clean end of a cut stream would be a lie), then end."""
        if self.ended:
            return
        # Streams that ended cleanly before the cut but still hold bytes: a FIN from the final
        # disconnect would cut them short, so reset them.  (Not those the cut itself closes
        # gracefully below: an API session's ERROR frame, then FIN, is the whole answer.)
        unflushed = self.flushing()
        for _, conn in self.live():
            self.seen.add(conn)
            self.reset += 1
            conn.shut_down()
        for _, factory in self.faces():
            for other in list(factory.active):
                other.shut_down()  # what is not a connection: the API's program listeners
        for transport in unflushed:
            self.unflushed += 1
            reset(transport)
        self._end(why)

    def _end(self, why: str) -> None:
        self.ended = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._restore_signals()
        self.log.info("drain ended ({why}) after {duration:.2f}s: {finished} connections finished, {reset} reset"
                      "{unflushed_text}", why=why, duration=self.reactor.seconds() - self.started,
                      finished=len(self.seen) - self.reset, reset=self.reset, unflushed=self.unflushed,
                      unflushed_text=(f" (and {self.unflushed} closing streams reset before their last bytes "
                                      "went out)") if self.unflushed else "")
        self.seen.clear()
        done, self._done = self._done, None
        if done is not None:
            done.callback(None)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_ended(self) -> defer.Deferred[None]:
        """Fires once the drain has ended (at once if none is running): the admin endpoint
        stays up until then, so liveness holds while readiness says draining."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._done is None:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    # ---- a second signal
    def _hold_signals(self) -> None:
        for signum in (*CUT_SHORT_BY, *IGNORED_DURING):
            try:
                previous = signal.getsignal(signum)
                if previous is signal.SIG_IGN:
                    continue  # ignored by whoever started us: leave it so
                signal.signal(signum, self._signalled if signum in CUT_SHORT_BY else self._ignored)
            except ValueError:  # not the main thread (a test's reactor): no signals to take over
                return
            self._saved[signum] = previous

    def _restore_signals(self) -> None:
        for signum, previous in self._saved.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._saved.clear()

    def _ignored(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.log.warn, "{signal} ignored: the daemon is stopping (draining)",
                                    signal=signal.Signals(signum).name)

    def _signalled(self, signum: int, frame: Any) -> None:
        # In a signal handler: only hand over to the reactor's thread.
        self.reactor.callFromThread(self._cut, f"{signal.Signals(signum).name} received during the drain")
