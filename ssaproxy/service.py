"""Config -> MultiService.  Wiring only: nothing listens until the service starts."""

from __future__ import annotations

import errno
import grp
import os
import signal
import socket
import stat
from typing import Any, Optional

from twisted.application import service
from twisted.logger import Logger

from ssaproxy.api.server import ApiFactory
from ssaproxy.capacity import Capacity, Listener, Overload
from ssaproxy.config import Api, Config, ListenAddress
from ssaproxy.drain import Drain
from ssaproxy.inbound import InboundFactory
from ssaproxy.outbound import OutboundFactory
from ssaproxy.state import DaemonState
from ssaproxy.tls.context import client_context
from ssaproxy.tls.load import check_config

log = Logger()


class _Announce(service.Service):
    """Logs the effective configuration once the daemon is up."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def startService(self) -> None:
        super().startService()
        c = self.config
        log.info("ssaproxy started: config={source} listen={listen} routes={routes} inbound={inbound} "
                 "api={api} min_version={min_version} trust_store={trust_store}",
                 source=c.source, listen=",".join(c.outbound.listen) or "(none)",
                 inbound=",".join(f"{i.name}@{i.listen}" for i in c.inbound) or "(none)",
                 routes=",".join(r.name for r in c.outbound.routes) or "(none)",
                 api=c.api.socket if c.api else "(none)",
                 min_version=c.policy.min_version, trust_store=c.policy.trust_store or "system")


class _Signals(service.Service):
    """Signals whose default action would end the process: an orderly stop instead (the
    connections still open drain, then are reset: `ssaproxy.drain`; the API socket is removed).  Even
    without this, a daemon killed outright resets what it held: every relayed socket closes
    with SO_LINGER 0 unless it is being closed cleanly (ssaproxy.streams)."""

    STOP = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)

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
        log.warn("{signal} received: stopping (open connections are reset)", signal=name)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)
        self.saved.clear()


class _ApiService(service.Service):
    """The Unix socket of the local socket API.  listenUNIX sets the mode right after bind;
    in between, the umask's mode applies (with the usual 022, only the owner may connect)."""

    def __init__(self, api: Api, factory: ApiFactory, reactor: Any) -> None:
        self.api = api
        self.factory = factory
        self.reactor = reactor
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        self.factory.fit()  # the open files limit was raised meanwhile (Capacity starts first)
        _prepare_socket_path(self.api)
        self.port = self.reactor.listenUNIX(self.api.socket, self.factory, mode=self.api.mode, backlog=128)
        _secure_socket_path(self.api)

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def _prepare_socket_path(api: Api) -> None:
    """Make the socket's directory; remove a stale socket file (nobody answers on it)."""
    path = api.socket
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: its daemon is gone
        else:
            raise OSError(errno.EADDRINUSE, f"another daemon already serves {path}")
        finally:
            probe.close()


def _secure_socket_path(api: Api) -> None:
    """Apply the configured mode and group once the socket exists."""
    if api.group is not None:
        os.chown(api.socket, -1, grp.getgrnam(api.group).gr_gid)
    os.chmod(api.socket, api.mode)


def make_service(config: Config, reactor: Any, state: Optional[DaemonState] = None) -> service.MultiService:
    """`state`: the daemon's live state (ssaproxy.state), shared with whoever reports it."""
    state = state if state is not None else DaemonState()
    check_config(config)  # a no-op for what tap.Options already checked; a ConfigError for anything else
    # Build the OpenSSL context now, so a broken trust store fails at start, not at first use.
    client_context(config.policy)
    for route in config.outbound.routes:
        if route.client_certificate:
            client_context(config.policy, route.client_certificate, route.client_key)

    top = service.MultiService()
    overload = Overload(reactor)
    Capacity(config, overload).setServiceParent(top)  # first: the fd limit is raised before anything listens
    faces: list[tuple[str, Any]] = []  # (face, factory): whose live connections drain at the stop
    if config.outbound.listen:
        factory = OutboundFactory(config, reactor)
        faces.append(("outbound", factory))
        for description in config.outbound.listen:
            address = ListenAddress.parse(description, "outbound.listen")
            Listener(address, factory, reactor, overload).setServiceParent(top)
    for inbound in config.inbound:
        inbound_factory = InboundFactory(inbound, config.policy, reactor)  # builds its TLS contexts now
        faces.append(("inbound", inbound_factory))
        address = ListenAddress.parse(inbound.listen, f"inbound.{inbound.name}.listen")
        Listener(address, inbound_factory, reactor, overload).setServiceParent(top)
    if config.api is not None:
        api_factory = ApiFactory(config.api, config.policy, reactor)
        faces.append(("api", api_factory))
        _ApiService(config.api, api_factory, reactor).setServiceParent(top)
    Drain(faces, config.daemon.drain_timeout, reactor, state).setServiceParent(top)
    _Signals(reactor).setServiceParent(top)
    _Announce(config).setServiceParent(top)
    return top
