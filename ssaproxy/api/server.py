"""The local socket API server: one control connection per program socket, on a Unix socket.

Theory of operation: a control connection speaks the framed protocol of docs/api.md, whose
rules (phases, order, descriptor pairing, version) live in one `Connection(Role.DAEMON)` of
`ssaproxy.proto.connection`: this shell feeds it bytes and descriptors, acts on the events it
gives, and writes what its `send` returns.  After HELLO it takes options, then exactly one of
CONNECT (with the program's own socket, which is parked and answered OK; the result follows
on this connection, then the socket is completed or failed: `carrier.Parked`), UPGRADE (the
daemon answers CARRIER with the program's end of a fresh carrier; the session's result and
then its plaintext travel on the carrier) or LISTEN (the program passes its socket bound to
its address and its loopback listener; answered OK{TOKEN}, after which each verified client
is delivered to the loopback listener by `listener.Listener`); the handlers are in
`ssaproxy.api.requests`.  Anything malformed or out of order gets an ERROR
frame and the connection is closed; other programs are not affected.  The daemon never opens
a file for a program: certificates and keys come as PEM bytes, sockets as file descriptors.

Fair shares: the socket may be open to every local user, so nothing a program does may hold
the daemon's descriptors or memory for long or beyond its user's share.  Deadlines: HELLO
within `hello_timeout`, each request's bytes within `frame_timeout` of its first byte, and a
control connection with nothing going on (no request being read; a listener's is exempt) is
closed after `idle_timeout`.  Shares (`quota.Ledger`, by SO_PEERCRED uid): a control
connection is taken in connectionMade and given back in connectionLost; a session is taken
in `_session` and given back by the session's end (`TLSSession.on_finish`, exactly once); the
descriptors in flight and the bytes buffered are this connection's current charge, set again
after each input (`_recharge`) and set to zero in connectionLost.  Every refusal is logged
with who it refused (pid, uid, gid, executable) and why.
"""

from __future__ import annotations

import errno
import itertools
import resource
import socket
from typing import Any, Optional

from twisted.internet import interfaces
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ssaproxy.api.contexts import Contexts
from ssaproxy.api.handover import close_fd
from ssaproxy.api.listener import Listener
from ssaproxy.api.parking import Parking
from ssaproxy.api.profiles import Chooser
from ssaproxy.api.quota import Caps, Ledger, Resource, fit_to_fd_budget
from ssaproxy.api.redirect import OutboundFace, redirect, routes_text
from ssaproxy.api.requests import Requests
from ssaproxy.api.session import Creds, Limits, TLSSession
from ssaproxy.api.settings import ApiError, Settings, apply, get, int_value
from ssaproxy.config import Api, Policy, Profile
from ssaproxy.proto import connection as c
from ssaproxy.proto import options as o
from ssaproxy.proto import wire

_control_ids = itertools.count(1)
_UNSET = -2


def caps_of(api: Api) -> Caps:
    R = Resource
    return Caps(total={R.CONTROLS: api.max_controls, R.SESSIONS: api.max_sessions, R.FDS: api.max_fds_in_flight,
                       R.BUFFER: api.max_buffer},
                per_uid={R.CONTROLS: api.max_controls_per_uid, R.SESSIONS: api.max_sessions_per_uid,
                         R.FDS: api.max_fds_in_flight_per_uid, R.BUFFER: api.max_buffer_per_uid})


def fd_limit() -> Optional[int]:
    """The daemon's soft RLIMIT_NOFILE (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class ApiFactory(Factory):
    noisy = False
    face = "api"  # for the drain's counts
    log = Logger()

    def __init__(self, api: Api, policy: Policy, reactor: Any, nofile: Optional[int] = _UNSET,
                 profiles: tuple[Profile, ...] = ()) -> None:
        self.api = api
        self.policy = policy
        self.profiles = profiles
        self.chooser = Chooser(profiles)  # [[profile]]: the first that matches a program's credentials
        self.reactor = reactor
        self.limits = Limits(api.connect_timeout, api.handshake_timeout, api.session_idle_timeout)
        self.active: set[Any] = set()  # TLS sessions and listeners, for shutdown
        self.caps = caps_of(api)
        self.ledger = Ledger(self.caps)  # what each uid holds
        self.contexts = Contexts()  # TLS_CONTEXT ids, per uid
        self.accepting = True  # False once the daemon drains: no new sessions or listeners
        self.successor: Optional[ApiFactory] = None  # a reload's new generation (control connections keep theirs)
        self.parking = Parking()  # where programs' sockets wait for their CONNECT's result
        self.outbound: Optional[OutboundFace] = None  # ROUTES and REDIRECT: the outbound face, set by the wiring
        if nofile != _UNSET:
            self.fit(nofile)

    def fit(self, nofile: Optional[int] = _UNSET) -> None:
        """Fit the caps to the descriptor budget as it is now: called again when the API starts
        listening, after the daemon has raised its open files limit."""
        caps, why = fit_to_fd_budget(caps_of(self.api), fd_limit() if nofile == _UNSET else nofile)
        if why is not None:
            self.log.warn("api limits lowered to fit the descriptor budget: {detail}", detail=why)
        self.caps = caps
        self.ledger = Ledger(caps)  # what each uid holds

    def buildProtocol(self, addr: Any) -> "Control":
        return Control(self)

    def stop_accepting(self) -> None:
        """The daemon drains (ssaproxy.drain): sessions already open go on; programs' listening
        sockets stop being accepted on, and new CONNECT, UPGRADE and LISTEN requests get
        ESHUTDOWN, so the drain ends as soon as the sessions in flight do."""
        self.accepting = False
        for x in list(self.active):
            if isinstance(x, Listener):
                x.stop_accepting()

    def succeeded_by(self, new: ApiFactory) -> None:
        """A reload replaces this generation: its live sessions, its users' shares and its
        accepting state go on in `new` (control connections made before keep this factory)."""
        new.active = self.active
        new.parking = self.parking
        self.ledger.caps = new.caps
        new.ledger = self.ledger
        self.successor = new

    def check_accepting(self) -> None:
        factory: Optional[ApiFactory] = self
        while factory is not None:  # a drain stops the newest generation
            if not factory.accepting:
                raise ApiError(errno.ESHUTDOWN, "the daemon is stopping: no new TLS sessions")
            factory = factory.successor


@implementer(interfaces.IFileDescriptorReceiver, interfaces.IPushProducer)
class Control(Requests, Protocol):
    """One control connection.  It is its own transport's producer: a program that sends
    requests without reading the replies stops being read once the replies fill the
    transport's buffer, so it cannot grow the daemon's memory."""

    log = Logger()

    def __init__(self, factory: ApiFactory) -> None:
        self.factory = factory
        self.conn = c.Connection(c.Role.DAEMON)
        self.settings = Settings()
        self.creds: Optional[Creds] = None
        self.profile: Optional[Profile] = None  # the program's [[profile]], once connected
        self.policy = factory.policy  # the profile's policy, or the admin's
        self.handed: list[socket.socket] = []  # program ends sent, closed once delivered
        self.listener: Optional[Listener] = None
        self.pending: Optional[TLSSession] = None  # a CONNECT whose result is still due on this connection
        self.closed = False
        self.paused = False
        self.control_id = next(_control_ids) & 0x7FFFFFFF
        self.uid = -1
        self.counted = False  # holds one of its uid's control connections
        self.charged = {Resource.FDS: 0, Resource.BUFFER: 0}  # its part of its uid's ledger now
        self.timers: dict[str, Any] = {}  # hello, frame, idle

    # ---- Twisted events
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.creds = Creds.of(self.transport.getHandle())  # before any refusal
        self.uid = self.creds.uid
        self.profile = self.factory.chooser.choose(self.creds)
        if self.profile is not None:
            self.policy = self.profile.policy
        why = self.factory.ledger.take(self.uid, Resource.CONTROLS)
        if why is not None:
            self._refuse(errno.EAGAIN, f"too many API connections: {why}", "limit-controls")
            return
        self.counted = True
        self.transport.registerProducer(self, True)
        api = self.factory.api
        self._arm("hello", api.hello_timeout, f"no HELLO within {api.hello_timeout:g}s of connecting")

    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.stopReading()
        if not self.closed:
            self._deadlines()  # no frame deadline while we do not read

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.closed and self.transport is not None:
            self.transport.startReading()
            self.dataReceived(b"")  # requests already read, held while paused

    def stopProducing(self) -> None:
        pass

    def fileDescriptorReceived(self, descriptor: int) -> None:
        if self.closed:
            close_fd(descriptor)
            return
        try:
            self.conn.receive_fds([descriptor])
        except c.RemoteProtocolError as e:
            self._refuse(e.errno, e.text)
            return
        self._recharge()

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        if data:
            self.conn.receive_data(data)
        while not self.closed and not self.paused:
            try:
                event = self.conn.next_event()
            except c.RemoteProtocolError as e:
                self._refuse(e.errno, e.text)
                return
            if event is c.NEED_DATA:
                break
            self._disarm("idle")  # a request: re-armed below, from now
            self._handle(event)
        self._settle()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self._disarm()
        self._close_fds()
        for sock in self.handed:
            sock.close()
        self.handed = []
        if self.listener is not None:
            self.listener.close("program closed its listening socket")
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.program_gone()
        ledger = self.factory.ledger
        for res, held in self.charged.items():  # all closed above: its charge is zero now
            ledger.charge(self.uid, res, -held)
            self.charged[res] = 0
        if self.counted:
            self.counted = False
            ledger.give(self.uid, Resource.CONTROLS)

    # ---- deadlines and shares
    def _settle(self) -> None:
        """After input: charge what is held now, and set the deadlines that apply now."""
        if not self.closed and self._recharge():
            self._deadlines()

    def _deadlines(self) -> None:
        api = self.factory.api
        if self.conn.buffered and not self.paused:  # a request is arriving (a paused one waits for us)
            self._disarm("idle")
            if "frame" not in self.timers:
                self._arm("frame", api.frame_timeout, f"a request took longer than {api.frame_timeout:g}s to arrive")
            return
        self._disarm("frame")
        if self.conn.phase is c.Phase.FRESH or self.listener is not None or self.pending is not None:
            self._disarm("idle")  # the HELLO deadline runs; a listener waits for clients, a connect for its result
        elif "idle" not in self.timers:
            self._arm("idle", api.idle_timeout, f"idle for {api.idle_timeout:g}s")

    def _recharge(self) -> bool:
        """Charge this connection's descriptors in flight and buffered bytes to its uid;
        refused (False) if that is over a share."""
        ledger = self.factory.ledger
        for res, now in ((Resource.FDS, self.conn.fds_held + len(self.handed)), (Resource.BUFFER, self.conn.buffered)):
            why = ledger.charge(self.uid, res, now - self.charged[res])
            self.charged[res] = now
            if why is not None:
                self._refuse(errno.EAGAIN, f"too many {res.value}: {why}", "limit-" + res.name.lower())
                return False
        return True

    def _arm(self, name: str, seconds: float, text: str) -> None:
        self._disarm(name)
        self.timers[name] = self.factory.reactor.callLater(seconds, self._expired, name, text)

    def _disarm(self, *names: str) -> None:
        for name in names or tuple(self.timers):
            timer = self.timers.pop(name, None)
            if timer is not None and timer.active():
                timer.cancel()

    def _expired(self, name: str, text: str) -> None:
        self.timers.pop(name, None)
        self._refuse(errno.ETIMEDOUT, text, f"{name}-timeout")

    # ---- events (the connection has checked phase, order, descriptors and version)
    def _handle(self, event: c.Event) -> None:
        try:
            try:
                self._dispatch(event)  # owns an event's fd from here on: take() and close on every path
            except OSError as e:  # the system said no (descriptors run out, say): the program gets an errno
                code = errno.EAGAIN if e.errno in (errno.EMFILE, errno.ENFILE) else errno.EIO
                raise ApiError(code, f"the daemon cannot do that now: {e.strerror or e}") from None
            except ApiError:
                raise
            except Exception as e:  # noqa: BLE001 - a bug is an error for this program, not a dead daemon
                self.log.failure("api control connection {conn_id}: internal error", conn_id=self.control_id)
                raise ApiError(errno.EIO, f"internal error: {type(e).__name__}") from None
        except ApiError as e:
            if e.code == errno.EAGAIN:
                self.log.warn("api request refused (limit): {detail} conn_id={conn_id} pid={pid} uid={uid} gid={gid} "
                              "exe={exe}", detail=e.text, conn_id=self.control_id, **self._who())
            if self.conn.awaiting is not None:
                self._reply(c.Error(e.code, e.text))
            else:  # the request was answered already (CARRIER went): nothing left to say but goodbye
                self._refuse(e.code, e.text)

    def _dispatch(self, event: c.Event) -> None:
        policy = self.policy
        if isinstance(event, c.Hello):
            self._disarm("hello")
            port4, port6 = self.factory.parking.ports()  # where the library parks its sockets
            self._reply(c.Welcome(wire.VERSION, self.control_id, port4, port6))
        elif isinstance(event, c.SetOption) and event.option == o.TLS_CONTEXT:
            self.settings = self.factory.contexts.adopt(self._owner(), int_value(event.value), self.settings)
            self._reply(c.Ok())
        elif isinstance(event, c.GetOption) and event.option == o.TLS_CONTEXT:
            self._reply(c.Value(o.pack_int(self.factory.contexts.register(self._owner(), self.settings))))
        elif isinstance(event, c.SetOption):
            self.settings = apply(self.settings, policy, event.option, event.value,
                                  allow_trust_store_replacement=self.factory.api.allow_trust_store_replacement)
            self._reply(c.Ok())
        elif isinstance(event, c.GetOption):
            self._reply(c.Value(get(self.settings, policy, event.option)))
        elif isinstance(event, c.Connect):
            self._connect(event)
        elif isinstance(event, c.Upgrade):
            self._upgrade(event)
        elif isinstance(event, c.Listen):
            self._listen(event)
        elif isinstance(event, c.Routes):
            self._reply(c.Value(routes_text(self.factory.outbound)))
        elif isinstance(event, c.Redirect):
            self._redirect(event)
        # c.ConnectionClosed: connectionLost follows

    def _redirect(self, event: c.Redirect) -> None:
        """A plain connect handed over by the library (ssaproxy.api.redirect); OK once the
        outbound face runs it (after the completion, which may end later: `_redirected`)."""
        assert self.creds is not None
        try:
            self.factory.check_accepting()
        except ApiError:
            close_fd(event.fd)
            raise
        redirect(event, self.factory.outbound, self.factory.parking, self.factory.ledger, self.creds, self.profile,
                 self.factory.reactor, self._redirected)

    def _redirected(self, error: Optional[ApiError]) -> None:
        """REDIRECT's answer, once its completion ended (nothing if the program left meanwhile)."""
        self._reply(c.Ok() if error is None else c.Error(error.code, error.text))

    def _reply(self, event: c.Event) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(self.conn.send(event))

    def _who(self) -> dict[str, object]:
        return self.creds.fields() if self.creds is not None else {"pid": None, "uid": None, "gid": None, "exe": None}

    def _refuse(self, code: int, text: str, outcome: str = "protocol-error") -> None:
        if self.closed:
            return
        self.log.warn("api control connection refused ({outcome}): {detail} conn_id={conn_id} pid={pid} uid={uid} "
                      "gid={gid} exe={exe}", outcome=outcome, detail=text, conn_id=self.control_id, **self._who())
        self.closed = True
        self._disarm()
        self._close_fds()
        if self.transport is not None:
            self.transport.write(self.conn.refuse(code, text))
            # A paused producer would be resumed instead of disconnected once the buffer
            # drains (Twisted's doWrite): stop producing first, or the connection never ends.
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def _close_fds(self) -> None:
        for fd in self.conn.discard_fds():
            close_fd(fd)
