"""Capacity that matches the limits: listen queues as long as the kernel allows, an open files
limit raised to what the caps need (or a warning that it cannot be), and running out of file
descriptors handled as an overload.

Theory of operation (fd exhaustion).  Twisted's `tcp.Port` already keeps one spare descriptor
for EMFILE, but spends it on closing each waiting connection with a FIN (a client reads that as
an empty, complete answer), logs one line per connection, and on ENFILE, or without its spare,
leaves the listener readable: the reactor calls accept again at once, a busy loop while the
clients hang.  Here every TCP listener's socket is a `_Socket` whose accept, on EMFILE or ENFILE,
hands the queue to the daemon's one `Overload`: it spends the spare descriptor it holds
(`kernel.FdReserve`) to accept and reset (SO_LINGER 0) each waiting connection, takes the spare
back, counts, and writes one line per burst.  Then the accept reports EAGAIN, so Twisted's loop
ends quietly.  Without a spare (something else took the slot) the listener pauses briefly
instead of spinning; its queue waits.  A connection that was accepted but whose far end cannot
get a socket is refused as `overload` by the lifecycle (`connect_outcome`).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable, Optional

import attrs
from twisted.application import service
from twisted.internet import error, tcp
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ssaproxy import kernel
from ssaproxy.config import Config, ListenAddress
from ssaproxy.errors import StartupError

FD_PER_CONNECTION = 2  # the near end and the far end
FD_RESERVE = 64  # listeners, log files, stdio, the spare, DNS and trust store reads
REPORT_WINDOW = 1.0  # seconds: one log line per burst of resets, at most one a second
PAUSE = 0.1  # seconds a listener rests when there is no spare descriptor to reset with
RESET_BATCH = 1000  # waiting connections reset per accept call (the reactor serves others in between)
TRIM_EVERY = 5.0  # seconds between looks at how many connections are live
TRIM_AFTER = 256  # connections ended since the peak (and at least half of it) before memory is given back


@attrs.frozen(kw_only=True)
class FdBudget:
    """What the connection caps cost in file descriptors."""

    caps: tuple[tuple[str, int], ...]  # (config key, cap)
    reserve: int = FD_RESERVE

    @classmethod
    def from_config(cls, config: Config) -> FdBudget:
        caps: list[tuple[str, int]] = []
        if config.outbound.listen:
            caps.append(("outbound.max_connections", config.outbound.max_connections))
        caps += [(f"inbound.{i.name}.max_connections", i.max_connections) for i in config.inbound]
        if config.api is not None:
            caps.append(("api.max_sessions", config.api.max_sessions))
        return cls(caps=tuple(caps))

    @property
    def needed(self) -> int:
        return FD_PER_CONNECTION * sum(cap for _, cap in self.caps) + self.reserve

    def shortfall(self, limit: int) -> Optional[str]:
        """Why `limit` descriptors cannot carry every cap at once (None: they can)."""
        if self.needed <= limit:
            return None
        caps = ", ".join(f"{key}={cap}" for key, cap in self.caps)
        room = max(0, (limit - self.reserve) // FD_PER_CONNECTION)
        return (f"the connection caps ({caps}) need {self.needed} file descriptors ({FD_PER_CONNECTION} per "
                f"connection plus {self.reserve} in reserve) but the open files limit is {limit}: beyond about "
                f"{room} connections at once new ones are reset (raise LimitNOFILE or lower the caps)")


class Overload:
    """The daemon's spare descriptor and its account of connections reset for lack of one."""

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.reserve = kernel.FdReserve()
        self.reset = 0
        self.paused = 0
        self.causes: set[str] = set()
        self.listeners: set[int] = set()
        self._report: Any = None

    def start(self) -> None:
        self.reserve.acquire()

    def stop(self) -> None:
        if self._report is not None and self._report.active():
            self._report.cancel()
            self.report()
        self.reserve.release()

    def exhausted(self, listener: socket.socket, port: int, err: int) -> bool:
        """`listener`'s accept failed for lack of descriptors: reset what waits.  False if there
        was no spare to do it with (the caller pauses the listener)."""
        count = kernel.reset_waiting(listener, self.reserve, RESET_BATCH)
        if count is None:
            self.paused += 1
        else:
            self.reset += count
        self.causes.add(errno.errorcode.get(err, str(err)))
        self.listeners.add(port)
        if self._report is None:
            self._report = self.reactor.callLater(REPORT_WINDOW, self.report)
        return count is not None

    def report(self) -> None:
        self._report = None
        self.log.warn("listeners {listeners} overload: out of file descriptors ({cause}), {count} waiting "
                      "connections reset and {paused} pauses without a spare descriptor in {window}s; "
                      "open files limit {limit}",
                      outcome="overload", listeners=",".join(map(str, sorted(self.listeners))),
                      cause="/".join(sorted(self.causes)), count=self.reset, paused=self.paused,
                      window=REPORT_WINDOW, limit=kernel.open_files_limit())
        self.reset = self.paused = 0
        self.causes.clear()
        self.listeners.clear()


class _Socket(socket.socket):
    """A listening socket whose accept, out of descriptors, has the waiting connections reset
    and then reports that nothing is left to accept."""

    exhausted: Optional[Callable[[int], None]] = None

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return super().accept()
        except OSError as e:
            if e.errno not in kernel.FD_EXHAUSTED or self.exhausted is None:
                raise
            self.exhausted(e.errno)
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN)) from None


class Port(tcp.Port):
    """Twisted's TCP port, with fd exhaustion handled as an overload (see the module docstring).

    In a worker process (ssaproxy.supervisor) a port either takes over the listening socket the
    main process bound for it (`adopt`: a descriptor number; Twisted then never shuts that
    socket down, which would stop it for the main process too) or, for a listener a reload
    added, binds one of its own with SO_REUSEPORT (`reuse_port`) beside its sibling workers'."""

    reuse_port = False  # set for every port of a worker process (ssaproxy.worker)

    def __init__(self, address: ListenAddress, factory: Any, reactor: Any, overload: Overload,
                 adopt: Optional[int] = None) -> None:
        backlog = address.backlog or kernel.somaxconn()
        super().__init__(address.port, factory, backlog, address.interface, reactor)
        self.clock: Any = reactor
        self.overload = overload
        self._resume: Any = None
        if adopt is not None:
            inherited = socket.socket(fileno=adopt)
            self.addressFamily = inherited.family
            self._preexistingSocket = self._ours(inherited)

    def createInternetSocket(self) -> socket.socket:
        sock = self._ours(super().createInternetSocket())
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock

    def _ours(self, plain: socket.socket) -> socket.socket:
        sock = _Socket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        sock.setblocking(False)
        sock.exhausted = self._exhausted
        return sock

    def _exhausted(self, err: int) -> None:
        if not self.overload.exhausted(self.socket, self._realPortNumber or 0, err) and self._resume is None:
            self.stopReading()
            self._resume = self.clock.callLater(PAUSE, self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume = None
        if self.connected and not self.disconnecting:
            self.overload.reserve.acquire()
            self.startReading()

    def connectionLost(self, reason: Any) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        super().connectionLost(reason)


class Listener(service.Service):
    """One TCP listener (what `strports.service` gives for a tcp/tcp6 endpoint string, with our
    port): it listens in privilegedStartService, before twistd drops privileges.  `what` names
    it (the config key) in the one line a failed bind becomes (`StartupError`)."""

    # In a worker process: the descriptors the main process bound, by (interface, port)
    # (ssaproxy.worker fills it before anything starts).
    inherited: dict[tuple[str, int], int] = {}

    def __init__(self, address: ListenAddress, factory: Any, reactor: Any, overload: Overload,
                 what: str = "listener") -> None:
        self.address = address
        self.what = what
        self.factory = factory
        self.reactor = reactor
        self.overload = overload
        self.port: Optional[Port] = None

    # In a worker process a listener the main process did not bind (a reload added it) is bound
    # after the privilege drop, as the reload bound it in the sibling workers: SO_REUSEPORT
    # only groups sockets of one owner.
    bind_late = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if not self.bind_late or (self.address.interface, self.address.port) in self.inherited:
            self._bind()

    def _bind(self) -> None:
        if self.port is None:
            adopt = self.inherited.pop((self.address.interface, self.address.port), None)
            port = Port(self.address, self.factory, self.reactor, self.overload, adopt)
            try:
                port.startListening()
            except error.CannotListenError as e:
                raise StartupError(self.what, f"cannot listen on {listen_text(self.address)}: "
                                              f"{_reason(e.socketError)}") from None
            self.port = port

    def startService(self) -> None:
        super().startService()
        self._bind()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def listen_text(address: ListenAddress) -> str:
    """host:port as a person writes it ([::1]:443, *:443 for every address)."""
    host = address.interface
    if host in ("", "::"):
        host = "*" if host == "::" else "0.0.0.0"
    elif ":" in host:
        host = f"[{host}]"
    return f"{host}:{address.port}"


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        text = os.strerror(e.errno)
        if e.errno == errno.EACCES:
            text += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        return text
    return str(e)


class Capacity(service.Service):
    """First to start: raise the open files limit, hold the spare descriptor, and say whether the
    connection caps fit in the limit."""

    log = Logger()

    def __init__(self, config: Config, overload: Overload) -> None:
        self.budget = FdBudget.from_config(config)
        self.overload = overload
        self.raised = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.raised:
            return
        self.raised = True
        before, after, hard = kernel.raise_open_files_limit()
        self.log.info("open files limit: {before} -> {after} (hard limit {hard}); listen backlog {backlog} "
                      "unless a listener sets one", before=before, after=after, hard=hard,
                      backlog=kernel.somaxconn())
        problem = self.budget.shortfall(after)
        if problem is not None:
            self.log.warn("{problem}", problem=problem, needed=self.budget.needed, limit=after)
        self.overload.start()

    def startService(self) -> None:
        super().startService()
        self.privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        self.overload.stop()
        return None


class MemoryTrim(service.Service):
    """After a burst of connections has ended, the heap they used goes back to the system
    (`kernel.trim_free_memory`), so the daemon's memory follows its load down as well as up.
    A look every TRIM_EVERY seconds, outside every connection's path; the trim itself only
    after at least TRIM_AFTER connections, and half of the peak, have ended."""

    def __init__(self, factories: list[Any], reactor: Any) -> None:
        self.factories = factories  # by reference: what a reload adds counts too
        self.reactor = reactor
        self.peak = 0
        self.trims = 0
        self.looper: Optional[LoopingCall] = None

    def startService(self) -> None:
        super().startService()
        self.looper = LoopingCall(self.look)
        self.looper.clock = self.reactor
        self.looper.start(TRIM_EVERY, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self.looper is not None and self.looper.running:
            self.looper.stop()
        return None

    def look(self) -> None:
        live = sum(len(f.active) for f in self.factories)
        self.peak = max(self.peak, live)
        if self.peak - live >= TRIM_AFTER and live <= self.peak // 2:
            self.peak = live
            if kernel.trim_free_memory():
                self.trims += 1
