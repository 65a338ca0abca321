"""Config -> MultiService.  Wiring only: nothing listens until the service starts."""

from __future__ import annotations

import functools
import grp
import os
import signal
import socket
import stat
import sys
from typing import Any, NoReturn, Optional

from twisted.application import service
from twisted.internet import error, tcp, unix
from twisted.logger import Logger

from ssaproxy import metrics
from ssaproxy.admin import certs
from ssaproxy.admin.status import StatusSource
from ssaproxy.admin.web import AdminService
from ssaproxy.api.server import ApiFactory
from ssaproxy.capacity import Capacity, Listener, MemoryTrim, Overload
from ssaproxy.config import Api, Config, ListenAddress
from ssaproxy.drain import Drain
from ssaproxy.errors import StartupError
from ssaproxy.inbound import InboundFactory
from ssaproxy.kernel import Notifier
from ssaproxy.outbound import OutboundFactory
from ssaproxy.privileges import Identity
from ssaproxy.process import Process
from ssaproxy.redirected import Handover
from ssaproxy.reload import Reloader
from ssaproxy.state import DaemonState, WorkerRole
from ssaproxy.tls import sessions
from ssaproxy.tls.context import client_context
from ssaproxy.tls.load import check_config
from ssaproxy.tls.paths import WAIVER_WARNING, insecure_rfc5280

log = Logger()


class _Announce(service.Service):
    """Logs the effective configuration once the daemon is up."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def startService(self) -> None:
        super().startService()
        c = self.config
        log.info("ssaproxy started: config={source} listen={listen} routes={routes} inbound={inbound} "
                 "api={api} min_version={min_version} trust_store={trust_store} profiles={profiles}",
                 source=c.source, listen=",".join(c.outbound.listen) or "(none)",
                 inbound=",".join(f"{i.name}@{i.listen}" for i in c.inbound) or "(none)",
                 routes=",".join(r.name for r in c.outbound.routes) or "(none)",
                 api=c.api.socket if c.api else "(none)",
                 min_version=c.policy.min_version, trust_store=c.policy.trust_store or "system",
                 profiles=",".join(p.name + (f"@{'+'.join(p.listen)}" if p.listen else "") for p in c.profiles)
                 or "(none)")
        for where in insecure_rfc5280(c):
            log.warn(WAIVER_WARNING, where=where)



class _Signals(service.Service):
    """Signals whose default action would end the process: an orderly stop instead (the
    connections still open drain, then are reset: `ssaproxy.drain`; the API socket is
    removed).  Even without this, a daemon killed outright resets what it held: every relayed socket closes
    with SO_LINGER 0 unless it is being closed cleanly (ssaproxy.streams).  SIGHUP reloads
    instead (ssaproxy.reload)."""

    STOP = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.saved: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        for signum in self.STOP:
            self.saved[signum] = signal.signal(signum, self._received)
        self.saved[signal.SIGPIPE] = signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _received(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._stop, signal.Signals(signum).name)

    def _stop(self, name: str) -> None:
        log.warn("{signal} received: stopping as for SIGTERM (live connections drain, then are reset)", signal=name)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)
        self.saved.clear()


class _ApiService(service.Service):
    """The Unix socket of the local socket API.  It is made in privilegedStartService, like the
    TCP listeners, so a daemon that drops to its own user has it already; `owner` (that user)
    gets the socket and its directory, so it can remove the socket at stop.  listenUNIX sets
    the mode right after bind; in between, the umask's mode applies (with the usual 022, only
    the owner may connect)."""

    def __init__(self, api: Api, factory: ApiFactory, reactor: Any, owner: Optional[Identity] = None,
                 adopt: Optional[int] = None) -> None:
        self.api = api
        self.factory = factory
        self.reactor = reactor
        self.owner = owner
        self.adopt = adopt  # a worker process: the socket the main process made (ssaproxy.supervisor)
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        self.factory.fit()  # the open files limit was raised meanwhile (Capacity starts first)
        if self.adopt is not None:
            fd, self.adopt = self.adopt, None
            port = _SharedUnixPort._fromListeningDescriptor(self.reactor, fd, self.factory)  # a copy of fd
            os.close(fd)
            port.mode = self.api.mode
            port._preexistingSocket.setblocking(False)  # Twisted accepts until EAGAIN
            port.startListening()
            self.port = port
            return
        self.port = _listen_api(self.api, self.factory, self.reactor, self.owner)

    def startService(self) -> None:
        super().startService()
        # Started without twistd (tests), nothing was privileged-started; a reload hands over a
        # socket it already bound.
        self.privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class _SharedUnixPort(unix.Port):
    """The API socket a worker shares with its siblings (ssaproxy.supervisor): the main process
    made it and removes it; a worker that stops only stops accepting on it."""

    def connectionLost(self, reason: Any) -> None:
        tcp.Port.connectionLost(self, reason)


def _os_text(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return e.strerror or os.strerror(e.errno)
    return str(e)


def _listen_api(api: Api, factory: ApiFactory, reactor: Any, owner: Optional[Identity] = None) -> Any:
    """The API's listening socket, made and secured (`owner`: the user the daemon drops to), or
    a `StartupError` in words."""
    try:
        created = _prepare_socket_path(api)
        if owner is not None:
            _claim_directory(api, owner, created)
        port = reactor.listenUNIX(api.socket, factory, mode=api.mode, backlog=128)
        try:
            _secure_socket_path(api, owner)
        except OSError:
            port.stopListening()  # a socket nobody may use right is no socket at all
            raise
    except error.CannotListenError as e:
        raise StartupError("api.socket", f"cannot listen on {api.socket}: {_os_text(e.socketError)}") from None
    except OSError as e:
        raise StartupError("api.socket", f"{e.filename or api.socket}: {_os_text(e)}") from None
    return port


def _prepare_socket_path(api: Api) -> bool:
    """Make the socket's directory; remove a stale socket file (nobody answers on it).  True if
    the directory was made here.  Errors are `StartupError`s in words; OSErrors carry the path
    they are about."""
    path = api.socket
    directory = os.path.dirname(path) or "."
    created = not os.path.isdir(directory)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK, effective_ids=True):
        # bind() would say EACCES about the socket; the directory is what needs fixing
        raise StartupError("api.socket", f"cannot create {path}: directory {directory} is not writable "
                                         f"by uid {os.geteuid()}")
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise StartupError("api.socket", f"{path} exists and is not a socket (remove it or choose another path)")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: its daemon is gone
        else:
            raise StartupError("api.socket", f"{path} is in use: another daemon already serves it")
        finally:
            probe.close()
    return created


def _claim_directory(api: Api, owner: Identity, created: bool) -> None:
    """Give the socket's directory to the daemon's user, who must remove the socket at stop.

    Only a directory of the daemon's own is taken: one made just now, or an empty one (what
    systemd's RuntimeDirectory= gives a unit that starts as root).  A shared directory (/run,
    /tmp) is never changed: there the socket could not be removed, so the daemon refuses.
    """
    directory = os.path.dirname(api.socket) or "."
    info = os.stat(directory)
    if (info.st_uid, info.st_gid) == (owner.uid, owner.gid):
        return
    if created or not os.listdir(directory):
        os.chown(directory, owner.uid, owner.gid)
        return
    if info.st_uid != owner.uid:
        raise StartupError("api.socket", f"{directory} belongs to uid {info.st_uid}, and the daemon's user "
                          f"{owner.name} could not remove the socket from it at stop: give the socket a "
                          "directory of its own (the daemon makes it, or takes it over while it is empty)")


def _secure_socket_path(api: Api, owner: Optional[Identity] = None) -> None:
    """Apply the configured mode and group once the socket exists (the mode first: changing
    the mode of a file root no longer owns would take another capability, CAP_FOWNER)."""
    os.chmod(api.socket, api.mode)
    gid = grp.getgrnam(api.group).gr_gid if api.group is not None else -1
    if owner is not None:
        os.chown(api.socket, owner.uid, owner.gid if gid == -1 else gid)
    elif gid != -1:
        os.chown(api.socket, -1, gid)


EXIT_REFUSED = 2  # what `ssaproxy check-config` returns for a configuration it refuses


def refuse_to_start(problem: object, *, logging: bool = True) -> NoReturn:
    """End the process with one line instead of twistd's traceback: the line goes to the log and
    to the real stderr (twistd -n sends sys.stderr into the log), and the exit code is 2.
    `logging=False` while twistd parses options: its log has not begun, and an event logged then
    is written to stderr once more when the process ends."""
    line = f"ssaproxy: cannot start: {problem}"
    if logging:
        log.critical("{line}", line=line, outcome="startup-failed")
    stream = sys.__stderr__
    if stream is not None:
        stream.write(line + "\n")
        stream.flush()
    raise SystemExit(EXIT_REFUSED)


class Startup(service.MultiService):
    """The daemon's top service: a `StartupError` from any child (a port in use, an API socket
    another daemon serves) ends the start with one line and exit 2.  twistd calls both start
    methods outside the reactor, and its own handler prints the whole traceback and exits 1."""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            refuse_to_start(e)

    def startService(self) -> None:
        try:
            super().startService()
        except StartupError as e:
            refuse_to_start(e)


def make_service(config: Config, reactor: Any, identity: Optional[Identity] = None, by_twistd: bool = False, *,
                 state: Optional[DaemonState] = None, worker: Optional[WorkerRole] = None,
                 notifier: Optional[Notifier] = None) -> service.MultiService:
    """`identity`: whom the daemon runs as once everything is bound (ssaproxy.process.Process);
    `by_twistd`: twistd --uid makes that switch, not the daemon; `state`: the daemon's live state
    (ssaproxy.state: draining, listeners bound), shared with whoever reports it; `worker`: this
    process is one of several (ssaproxy.worker), `notifier` where its readiness goes."""
    state = state if state is not None else DaemonState()
    check_config(config)  # a no-op for what tap.Options already checked; a ConfigError for anything else
    # Build the OpenSSL context now, so a broken trust store fails at start, not at first use.
    client_context(config.policy)
    sessions.configure(size=config.policy.session_cache_size, lifetime=config.policy.session_lifetime)
    for route in config.outbound.routes:
        if route.client_certificate:
            client_context(config.policy, route.client_certificate, route.client_key)
    for profile in config.profiles:
        client_context(profile.policy, profile.client_certificate, profile.client_key)

    top = Startup()
    overload = Overload(reactor)
    Capacity(config, overload).setServiceParent(top)  # first: the fd limit is raised before anything listens
    # Every factory with live connections, by reference: the drain at the stop and the reload
    # (which adds to it, and keeps retired ones until their connections end) share it.
    factories: list[Any] = []
    outbound: Optional[OutboundFactory] = None
    if config.outbound_listen or config.api is not None:  # the API hands connections over too (REDIRECT)
        outbound = factory = OutboundFactory(config, reactor)
        factories.append(factory)
        for description in config.outbound_listen:  # [outbound] listen, then each [[profile]]'s
            address = ListenAddress.parse(description, "outbound.listen")
            Listener(address, factory, reactor, overload, "outbound.listen").setServiceParent(top)
    for inbound in config.inbound:
        inbound_factory = InboundFactory(inbound, config.policy, reactor)  # builds its TLS contexts now
        factories.append(inbound_factory)
        address = ListenAddress.parse(inbound.listen, f"inbound.{inbound.name}.listen")
        Listener(address, inbound_factory, reactor, overload, f"inbound.{inbound.name}.listen").setServiceParent(top)
    if config.api is not None:
        api_factory = ApiFactory(config.api, config.policy, reactor, profiles=config.profiles)
        api_factory.outbound = Handover(outbound) if outbound is not None else None
        factories.append(api_factory)
        _ApiService(config.api, api_factory, reactor, identity,
                    worker.api_fd if worker is not None else None).setServiceParent(top)
    MemoryTrim(factories, reactor).setServiceParent(top)
    drain = Drain(factories, config.daemon.drain_timeout, reactor, state)
    source: Optional[StatusSource] = None
    if config.admin is not None:  # after the other listeners: it is ready once they have started
        source = StatusSource(config=config, state=state, services=top, factories=factories,
                              reactor=reactor, worker=worker)
        # Before the drain in the list: services stop in reverse order, so the drain has begun
        # when the admin endpoint is told to stop, and it waits for the drain's end.
        AdminService(config.admin.listen, source, reactor, overload, until=drain.when_ended).setServiceParent(top)
    drain.setServiceParent(top)
    _Signals(reactor).setServiceParent(top)
    # After every service that binds or loads something (the drop comes once they have), and
    # before the announcement (a daemon that refuses to run never says it started).
    read_later = (("policy.trust_store", config.policy.trust_store),) if config.policy.trust_store else ()
    Process(identity, by_twistd, notifier, read_later=read_later).setServiceParent(top)
    # Before the announcement: once the log says "started", a SIGHUP reloads.
    Reloader(config, reactor, top=top, overload=overload, factories=factories,
             api_service=lambda api, factory: _ApiService(api, factory, reactor, identity),
             listen_api=(lambda api, factory: _listen_api(api, factory, reactor, identity)) if worker is None
             else _no_new_api_socket,
             secure_api=_secure_socket_path,
             on_reload=functools.partial(_reloaded, source, drain)).setServiceParent(top)
    _Announce(config).setServiceParent(top)
    return top


def _no_new_api_socket(api: Api, factory: ApiFactory) -> NoReturn:
    raise StartupError("api.socket", "a new API socket path takes a restart when [daemon] workers is above 1 "
                                     "(the main process makes the one socket every worker serves)")


def _reloaded(source: Optional[StatusSource], drain: Drain, config: Optional[Config]) -> None:
    """What follows a reload outside the serving path: the metrics, the admin endpoint's view,
    and the drain's timeout (the next stop uses the new one)."""
    if config is None:
        metrics.reload_failed()
        return
    metrics.reload_succeeded()
    drain.timeout = config.daemon.drain_timeout
    metrics.set_certificates(certs.configured(config))
    if source is not None:
        source.config = config
