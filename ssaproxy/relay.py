"""The relay: two stream ends spliced, until both are done.

It adds to a naive port-forwarder the three things a TLS proxy owes its users:

* backpressure: each end's TCP transport is registered as the other's streaming producer, so
  a slow reader on one side stops reads on the other; nothing is buffered without bound;
* half-close both ways: one end's eof (FIN or close_notify) becomes the other's
  `shutdown_write` (close_notify or FIN), while the other direction keeps flowing;
* honest endings: only a clean end on the far side (close_notify, then FIN) ends the near side
  with a FIN.  A far side that resets, or stops without close_notify (truncation), makes us
  reset the near side, so a program sees an error, never a silently truncated stream — but
  only once the near side has taken every byte that arrived before the failure (bounded by
  DRAIN_TIMEOUT), so a slow reader loses nothing that was received.  A near side that goes
  away uncleanly makes us reset the far side.

The splice is symmetric in its mechanics; the two ends differ only in whose ending names the
outcome: `near` is the side the connection was made for (the redirected program, the program's
carrier, the inbound TLS client), `far` the side we opened for it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ssaproxy.streams import End, How, TCPTransport, graceful_close, unsent

Done = Callable[[str, Optional[str]], None]
DRAIN_TIMEOUT = 10.0  # seconds a slow reader gets to take what arrived before its peer failed
_DRAIN_POLL = 0.02


class _PauseOnly:
    """A transport as the other side's streaming producer, for backpressure only.

    When a consumer's connection is lost, Twisted calls its producer's stopProducing, which on a
    TCP transport means loseConnection: a FIN for the other side, before the relay has even
    heard why.  Endings are the relay's business, so stopProducing does nothing here.
    """

    def __init__(self, transport: TCPTransport) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


def _unregister(end: End) -> None:
    if end.transport is not None and getattr(end.transport, "producer", None) is not None:
        end.tcp.unregisterProducer()


class Relay:
    """Splices `near` and `far` (both ready) and reports the one outcome to `done`."""

    def __init__(self, near: End, far: End, done: Done) -> None:
        self.near = near
        self.far = far
        self._done = done
        self.bytes_out = 0  # near -> far
        self.bytes_in = 0  # far -> near
        self.eof: dict[End, bool] = {near: False, far: False}
        self.finished = False
        self.draining = False  # the far side failed; the near side is taking what is queued
        self.far_ended = False  # client-truncated: the far side had sent its whole stream (FIN, close_notify)
        self._failure: tuple[str, Optional[str]] = ("reset", None)
        # The program asked (TLS_ALLOW_RAGGED_EOF) to read a far side's FIN without close_notify
        # as an end of file.  The outcome still says `truncated`.
        self.allow_ragged_eof = False
        self._drain_call: Any = None

    def start(self, near_held: bytes = b"", near_eof: bool = False,
              far_held: bytes = b"", far_eof: bool = False) -> None:
        """Begin, with what each side sent (and whether it ended) while the connection was being
        set up."""
        self.near.sink = self
        self.far.sink = self
        self.near.tcp.registerProducer(_PauseOnly(self.far.tcp), True)
        self.far.tcp.registerProducer(_PauseOnly(self.near.tcp), True)
        for end, held, eof in ((self.near, near_held, near_eof), (self.far, far_held, far_eof)):
            if held and not self.finished:
                self.end_data(end, held)
            if eof and not self.finished:
                self.end_eof(end)
        if not self.finished:
            self.near.tcp.resumeProducing()
            self.far.tcp.resumeProducing()

    def _other(self, end: End) -> End:
        return self.far if end is self.near else self.near

    # ---- EndSink
    def end_ready(self, end: End) -> None:  # both are ready before the relay starts
        pass

    def end_data(self, end: End, data: bytes) -> None:
        if self.draining:
            return  # the far side is gone: nowhere to send it
        if end is self.near:
            self.bytes_out += len(data)
        else:
            self.bytes_in += len(data)
        self._other(end).write(data)

    def end_eof(self, end: End) -> None:
        if self.finished or self.draining or self.eof[end]:
            return
        self.eof[end] = True
        other = self._other(end)
        # Nothing more will come from this end: stop it producing into the other's transport,
        # or a paused producer could hold back the half-close (Twisted resumes a paused
        # producer instead of closing when the buffer drains).
        _unregister(other)
        other.shutdown_write()
        if all(self.eof.values()):
            self._unregister()
            graceful_close(self.near.transport)
            graceful_close(self.far.transport)
            self._finish("closed", None)

    def end_lost(self, end: End, how: How, detail: Optional[str]) -> None:
        if self.finished:
            return
        other = self._other(end)
        self._unregister()
        if end is self.near and self.draining:
            self._finish(*self._failure)  # the program left while taking the rest
        elif end is self.far and how == How.TRUNCATED and self.allow_ragged_eof:
            other.close()  # what was queued, then a FIN: the program's choice, not ours
            self._finish("truncated", f"{detail or 'no close_notify'} (reported as EOF: TLS_ALLOW_RAGGED_EOF)")
        elif end is self.far and how == How.CLEAN:
            # Orderly end of the far side: whatever the near side still sends has nowhere to go.
            other.close()
            self._finish("closed", None)
        elif end is self.near and how == How.CLEAN and all(self.eof.values()):
            self._finish("closed", None)
        elif end is self.near and how == How.TRUNCATED:
            # A TLS client that closed without close_notify: not a reset, and still never hidden
            # (the far side gets its reset).  After the far side's own end (a complete exchange,
            # as many HTTP clients end one) the lifecycle logs it at info (`far_ended`).
            other.abort()
            self.far_ended = self.eof[self.far]
            self._finish("client-truncated", (detail or "closed without close_notify")
                         + (" after the far side's end" if self.far_ended else ""))
        elif end is self.near:
            other.abort()
            self._finish("client-reset", detail or "connection closed before both directions ended")
        else:
            if how == How.TRUNCATED and self.eof[self.near]:
                # Common with servers that never answer close_notify (nginx on keep-alive
                # connections).  Still a reset: a program that half-closed may be reading a
                # response whose end only the peer's close_notify could have proved.
                detail = f"{detail or 'no close_notify'} (after the program had closed its side)"
            self._drain_then_reset(str(how), detail)

    def _drain_then_reset(self, outcome: str, detail: Optional[str]) -> None:
        """The far side failed: reset the near side once it has every byte queued for it."""
        near = self.near
        reactor: Any = getattr(near.transport, "reactor", None)
        if reactor is None or not near.connected or unsent(near.transport) == 0:
            near.abort()
            self._finish(outcome, detail)
            return
        self.draining = True
        self._failure = (outcome, detail)
        near.tcp.pauseProducing()  # what the program still sends has nowhere to go
        deadline = reactor.seconds() + DRAIN_TIMEOUT

        def check() -> None:
            if self.finished:
                return
            left = unsent(near.transport) if near.connected else 0
            if left and reactor.seconds() < deadline:
                self._drain_call = reactor.callLater(_DRAIN_POLL, check)
                return
            self.bytes_in -= left  # the record counts what the program was sent
            near.abort()
            self._finish(outcome, detail)

        self._drain_call = reactor.callLater(_DRAIN_POLL, check)

    # ---- endings
    def _unregister(self) -> None:
        _unregister(self.near)
        _unregister(self.far)

    def _stop_draining(self) -> None:
        call, self._drain_call = self._drain_call, None
        if call is not None and call.active():
            call.cancel()

    def detach(self) -> None:
        """Stop splicing without ending either side (the owner ends them itself)."""
        self._stop_draining()
        self._unregister()
        self.finished = True
        self._done = _ignore
        for end in (self.near, self.far):
            if end.sink is self:
                end.sink = None

    def _finish(self, outcome: str, detail: Optional[str]) -> None:
        self.finished = True
        self._stop_draining()
        done, self._done = self._done, _ignore
        # Break the reference cycles (owner -> relay -> ends -> relay) so a finished connection
        # is freed by reference counting, not at the next full garbage collection.
        for end in (self.near, self.far):
            if end.sink is self:
                end.sink = None
        done(outcome, detail)


def _ignore(outcome: str, detail: Optional[str]) -> None:
    pass
