"""Reload: SIGHUP, `ssaproxy reload`, or a certificate file that changed on disk puts a new
configuration in place for new connections, all or nothing, while live connections carry on.

Theory of operation.  Nothing a live connection holds is ever mutated.  A connection takes
its config value (frozen), its listener's `Inbound`, and its `SSL.Connection` (which holds
its `SSL.Context`) when it is accepted; a reload only replaces what the *factories* hand to
the next connection:

- the outbound factory is kept (its loop-detection tuples and its count of live connections
  span generations); its `config` and `client_context` are replaced;
- each inbound listener gets a new `InboundFactory` when its table, the policy or one of its
  files changed, sharing the old factory's `active` set so `max_connections` and the stop
  reset still see every connection; the listening port is kept and its factory swapped;
- the API gets a new `ApiFactory` when `[api]` or the policy changed; its socket is rebound
  only if its path changed.

The OpenSSL contexts of the new generation are built here from the files as they are now,
bypassing the caches of `tls.context` and `tls.server`: those are keyed by paths, and a
rotated certificate keeps its path.  (The API's per-program caches are cleared instead: what
they build is for sessions not yet started.)  Cached client TLS sessions are keyed by the
context object they were made through (`tls.sessions`), so the new generation's contexts
never resume a session of the old one; when the policy or a file changed the cache is
emptied as well, and its bounds follow the new `[policy]`.

All or nothing: the new config is read and checked, every context built, and every new
listening socket bound *before* anything is swapped.  Any failure closes what was bound, logs
one line (the key and its line, or the listener and the OS's reason) and leaves the serving
generation as it was.

The watcher looks at the device, inode, size and mtime of every certificate, key and trust
file the serving config names, every `[daemon] watch_interval` seconds.  `stat` follows
symbolic links, so a rename over the file (certbot's and cert-manager's way) and a symlink
swung to a new target both show.  A change triggers the same reload as SIGHUP; the stamps seen
then become the baseline, so a half-rotated pair (new chain, old key) is refused once and
reloaded when the second file lands, without a refusal every interval meanwhile.
"""

from __future__ import annotations

import grp
import os
import signal
from typing import Any, Callable, Optional, Protocol

import attrs
from OpenSSL import SSL
from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ssaproxy import kernel
from ssaproxy.api import settings as api_settings
from ssaproxy.api.server import ApiFactory
from ssaproxy.capacity import FdBudget, Listener, Overload, Port
from ssaproxy.config import DEFAULT_SOURCE, Api, Config, Inbound, ListenAddress
from ssaproxy.errors import ConfigError, StartupError
from ssaproxy.inbound import InboundFactory
from ssaproxy.outbound import ClientContexts, OutboundFactory
from ssaproxy.redirected import Handover
from ssaproxy.tls import sessions
from ssaproxy.tls.context import client_context
from ssaproxy.tls.load import read_config
from ssaproxy.tls.paths import WAIVER_WARNING, insecure_rfc5280
from ssaproxy.tls.server import server_context

Stamp = Optional[tuple[int, int, int, int]]  # (st_dev, st_ino, st_size, st_mtime_ns); None: missing
_Where = tuple[str, int]  # (interface, port): a TCP listener's identity across generations


class Refused(Exception):
    """A reload that cannot be applied; its text is the one log line."""


class ApiHost(Protocol):
    """What the reload needs of service.py's API socket service."""

    api: Api
    factory: ApiFactory
    port: Any


def watched_files(config: Config) -> tuple[str, ...]:
    """Every certificate, key and trust file `config` names, in document order."""
    paths: list[str] = []
    if config.policy.trust_store:
        paths.append(config.policy.trust_store)
    for inbound in config.inbound:
        paths += [p for c in inbound.certificates for p in (c.chain, c.key)]
        if inbound.client_ca:
            paths.append(inbound.client_ca)
        if inbound.ocsp_response_file:  # a stapled response is reloaded with its certificate
            paths.append(inbound.ocsp_response_file)
    for route in config.outbound.routes:
        paths += [p for p in (route.client_certificate, route.client_key) if p]
    for profile in config.profiles:
        paths += [p for p in (profile.policy.trust_store, profile.client_certificate, profile.client_key) if p]
    return tuple(dict.fromkeys(paths))


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def stamps(paths: tuple[str, ...]) -> dict[str, Stamp]:
    return {path: stamp(path) for path in paths}


def _inbound_files(inbound: Inbound) -> set[str]:
    return ({p for c in inbound.certificates for p in (c.chain, c.key)}
            | ({inbound.client_ca, inbound.ocsp_response_file} - {None}))  # type: ignore[operator]


def _where(address: ListenAddress) -> _Where:
    return address.interface, address.port


def _generation_client_contexts(config: Config) -> ClientContexts:
    """The outbound face's client contexts for `config`, built now from the files as they are:
    one per (policy, client identity), the admin's policy and each [[profile]]'s."""
    build = client_context.__wrapped__
    built: dict[tuple[Any, Optional[str], Optional[str]], SSL.Context] = {}
    wanted: list[tuple[Any, Optional[str], Optional[str]]] = [(config.policy, None, None)]
    wanted += [(config.policy, r.client_certificate, r.client_key) for r in config.outbound.routes
               if r.client_certificate and r.client_key]
    for profile in config.profiles:
        wanted.append((profile.policy, profile.client_certificate, profile.client_key))
        wanted += [(profile.policy, r.client_certificate, r.client_key) for r in config.outbound.routes
                   if r.client_certificate and r.client_key and profile.client_certificate is None]
    for policy, certificate, key in wanted:
        if (policy, certificate, key) not in built:
            built[(policy, certificate, key)] = build(policy, certificate, key)

    def lookup(policy: Any, certificate: Optional[str], key: Optional[str]) -> SSL.Context:
        ctx = built.get((policy, certificate, key))
        if ctx is None:  # not one of this config's: build (and keep) it as the cache would
            ctx = built[(policy, certificate, key)] = build(policy, certificate, key)
        return ctx

    return lookup


@attrs.define
class _Plan:
    """A new generation, built and bound, not yet in place."""

    config: Config
    stamps: dict[str, Stamp]
    client_contexts: ClientContexts
    inbound: dict[str, InboundFactory]  # by name: the factories that replace or join the serving ones
    outbound: OutboundFactory  # kept (or new, if the daemon had none): its config is swapped at commit
    bound: dict[_Where, tuple[Listener, Port]] = attrs.Factory(dict)  # new addresses, already listening
    api_factory: Optional[ApiFactory] = None
    api_port: Any = None  # a new API socket, already listening (its path changed or it is new)


class Reloader(service.Service):
    """SIGHUP and the certificate watcher: reloads the config file the daemon started with."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any, *, top: service.MultiService, overload: Overload,
                 factories: list[Any], api_service: Callable[[Api, ApiFactory], service.Service],
                 listen_api: Callable[[Api, ApiFactory], Any], secure_api: Callable[[Api], None],
                 on_reload: Callable[[Optional[Config]], None] = lambda config: None) -> None:
        """`on_reload(config)` hears of every attempt: the new config once it serves, None for a
        refused one (metrics and the admin endpoint's view follow it)."""
        self.on_reload = on_reload
        self.config = config
        self.reactor = reactor
        self.path = None if config.source == DEFAULT_SOURCE else os.path.abspath(config.source)
        self.top = top
        self.overload = overload
        self.factories = factories  # shared with the stop reset: every factory with live connections
        self.api_service = api_service
        self.listen_api = listen_api
        self.secure_api = secure_api
        self.baseline = stamps(watched_files(config))  # the files as the serving generation read them
        self.seen = self.baseline  # the files as the watcher last looked at them
        self.watcher: Optional[LoopingCall] = None
        self.saved: Any = None
        self.reloads = 0

    # ---- the service
    def startService(self) -> None:
        super().startService()
        self.saved = signal.signal(signal.SIGHUP, self._hup)
        self._watch(self.config.daemon.watch_interval)

    def stopService(self) -> None:
        super().stopService()
        self._watch(0)
        if self.saved is not None:
            signal.signal(signal.SIGHUP, self.saved)
            self.saved = None

    def _hup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload, "SIGHUP")

    def _watch(self, interval: float) -> None:
        if self.watcher is not None and self.watcher.running:
            if self.watcher.interval == interval:
                return
            self.watcher.stop()
        self.watcher = None
        if interval > 0 and self.running:
            self.watcher = LoopingCall(self.look)
            self.watcher.clock = self.reactor
            self.watcher.start(interval, now=False)

    def look(self) -> None:
        """One look at the watched files; a change reloads."""
        now = stamps(tuple(self.baseline))
        changed = [path for path, seen in now.items() if seen != self.seen.get(path)]
        if changed:
            # What the serving generation was built from stays in `baseline`; `seen` only keeps
            # a refused reload from being retried until something changes again.
            self.seen = now
            self.reload("changed on disk: " + ",".join(changed))

    # ---- the reload
    def reload(self, reason: str) -> bool:
        """Read, check, build and bind the new generation, then put it in place; False (and one
        log line) if any step failed, with the serving generation untouched."""
        try:
            plan = self._prepare()
        except Refused as e:
            self.log.error("reload refused ({reason}): {detail}; still serving the previous configuration",
                           reason=reason, detail=str(e), outcome="reload-refused")
            self.on_reload(None)
            return False
        except Exception:  # a bug: said loudly, and the watcher and the serving generation go on
            self.log.failure("reload refused ({reason}): internal error; still serving the previous configuration",
                             reason=reason, outcome="reload-refused")
            self.on_reload(None)
            return False
        old = self.config
        try:
            summary = self._commit(plan)
        except Exception:  # noqa: BLE001 - never into the watcher's loop, which would stop it
            self.log.failure("reload ({reason}) failed while being applied: the daemon serves a mix of both; "
                             "restart it", reason=reason, outcome="reload-failed")
            self.on_reload(None)
            return False
        self.on_reload(plan.config)
        self.reloads += 1
        self.log.info("reloaded ({reason}): config={source} {summary}", reason=reason,
                      source=plan.config.source, summary=summary, outcome="reloaded")
        later = _needs_restart(old, plan.config)
        if later:
            self.log.warn("reload: {keys} changed but take effect only after a restart", keys=",".join(later))
        if old.iptables != plan.config.iptables:
            self.log.warn("reload: [iptables] changed: apply the rules again (`ssaproxy iptables apply`)")
        for where in insecure_rfc5280(plan.config):
            self.log.warn(WAIVER_WARNING, where=where)
        return True

    def _prepare(self) -> _Plan:
        try:
            new = read_config(self.path)  # parse and check_config: errors name the key and its line
        except ConfigError as e:
            raise Refused(f"{self.path or DEFAULT_SOURCE}: {e}") from None
        files = watched_files(new)
        seen = stamps(files)  # before loading: a change while we read shows at the next look
        try:
            contexts = _generation_client_contexts(new)
        except Exception as e:  # OpenSSL judged what check_config let through (a file changed since?)
            raise Refused(f"outbound client context: {e}") from None
        old_by_name = {i.name: i for i in self.config.inbound}
        serving = self._inbound_factories()
        inbound: dict[str, InboundFactory] = {}
        for i in new.inbound:
            previous = serving.get(i.name)
            unchanged = (previous is not None and old_by_name.get(i.name) == i and self.config.policy == new.policy
                         and all(seen.get(p) == self.baseline.get(p) for p in _inbound_files(i)))
            if unchanged:
                assert previous is not None
                inbound[i.name] = previous
                continue
            try:
                ctx = server_context.__wrapped__(i, new.policy)
            except ConfigError as e:
                raise Refused(str(new.locate(e))) from None
            except Exception as e:
                raise Refused(f"inbound.{i.name}: cannot build its TLS context: {e}") from None
            factory = InboundFactory(i, new.policy, self.reactor, context=ctx)
            if previous is not None:
                factory.active = previous.active  # one count of live connections per listener name
            inbound[i.name] = factory
        plan = _Plan(config=new, stamps=seen, client_contexts=contexts, inbound=inbound,
                     outbound=self._outbound_factory())
        try:
            self._bind(plan)
        except BaseException:
            self._unbind(plan)
            raise
        return plan

    def _wanted(self, plan: _Plan) -> dict[_Where, tuple[ListenAddress, str, Any]]:
        """Every TCP listener of the new config: (address, label, factory or None for outbound)."""
        wanted: dict[_Where, tuple[ListenAddress, str, Any]] = {}
        for description in plan.config.outbound_listen:
            address = ListenAddress.parse(description, "outbound.listen")
            wanted[_where(address)] = (address, f"outbound.listen {description}", None)
        for i in plan.config.inbound:
            address = ListenAddress.parse(i.listen, f"inbound.{i.name}.listen")
            wanted[_where(address)] = (address, f"inbound.{i.name} ({i.listen})", plan.inbound[i.name])
        return wanted

    def _bind(self, plan: _Plan) -> None:
        serving = self._listeners()
        outbound = plan.outbound
        for where, (address, label, factory) in self._wanted(plan).items():
            if where in serving:
                continue
            listener = Listener(address, factory or outbound, self.reactor, self.overload)
            port = Port(address, listener.factory, self.reactor, self.overload)
            try:
                port.startListening()
            except CannotListenError as e:
                raise Refused(f"listener {label} cannot listen: {e.socketError}") from None
            listener.port = port
            plan.bound[where] = (listener, port)
        api, old_api = plan.config.api, self._api()
        if api is None:
            return
        if (old_api is not None and old_api.api == api and self.config.policy == plan.config.policy
                and self.config.profiles == plan.config.profiles):
            return  # kept as it is
        if api.group is not None and os.geteuid() != 0:
            # After the privilege drop, chown to a group is allowed only for one of ours.
            gid = _group_id(api.group)
            if gid is None or gid not in (os.getegid(), *os.getgroups()):
                raise Refused(f"api.group: the daemon's user cannot give the socket to group {api.group!r}: "
                              "restart to apply it")
        plan.api_factory = ApiFactory(api, plan.config.policy, self.reactor, profiles=plan.config.profiles)
        plan.api_factory.outbound = Handover(plan.outbound)  # REDIRECT: the outbound face, whose config is swapped
        plan.api_factory.fit()
        if old_api is None or old_api.api.socket != api.socket:
            try:
                plan.api_port = self.listen_api(api, plan.api_factory)
            except StartupError as e:
                raise Refused(str(e)) from None
            except (OSError, CannotListenError) as e:
                why = getattr(e, "socketError", None) or e
                raise Refused(f"api.socket {api.socket}: cannot listen: {why}") from None

    def _unbind(self, plan: _Plan) -> None:
        for _, port in plan.bound.values():
            port.stopListening()
        plan.bound.clear()
        if plan.api_port is not None:
            plan.api_port.stopListening()
            plan.api_port = None

    def _outbound_factory(self) -> OutboundFactory:
        """The serving outbound factory, or a new one (not yet serving) if the daemon has none."""
        for f in self.factories:
            if isinstance(f, OutboundFactory):
                return f
        return OutboundFactory(self.config, self.reactor)

    def _listeners(self) -> dict[_Where, Listener]:
        return {_where(s.address): s for s in self.top if isinstance(s, Listener)}

    def _inbound_factories(self) -> dict[str, InboundFactory]:
        return {f.inbound.name: f for f in self.factories if isinstance(f, InboundFactory)}

    def _api(self) -> Optional[ApiHost]:
        for s in self.top:
            if isinstance(getattr(s, "factory", None), ApiFactory) and hasattr(s, "api"):
                host: ApiHost = s
                return host
        return None

    def _commit(self, plan: _Plan) -> str:
        """Put the prepared generation in place.  Nothing here can be refused any more."""
        old, new = self.config, plan.config
        before = self._inbound_factories()
        outbound = plan.outbound
        if outbound not in self.factories:
            self.factories.append(outbound)
        outbound.config = new
        outbound.client_context = plan.client_contexts
        # Inbound factories: the new ones replace the old in the stop-reset list (they share
        # `active`), and listeners kept at the same address take their new factory.
        for name, old_factory in before.items():
            if plan.inbound.get(name) is not old_factory:
                self.factories.remove(old_factory)
                if old_factory.active and not any(f.active is old_factory.active for f in plan.inbound.values()):
                    self.factories.append(_Draining(old_factory.active))  # a removed listener's live connections
        for new_factory in plan.inbound.values():
            if new_factory not in self.factories:
                self.factories.append(new_factory)
        self.factories[:] = [f for f in self.factories if not isinstance(f, _Draining) or f.active]
        wanted = self._wanted(plan)
        for where, listener in self._listeners().items():
            if where not in wanted:
                listener.disownServiceParent()  # stops listening; accepted connections carry on
                continue
            factory = wanted[where][2] or outbound
            _swap_factory(listener, factory)
            backlog = wanted[where][0].backlog or kernel.somaxconn()
            if listener.port is not None and wanted[where][0].backlog != listener.address.backlog:
                listener.port.socket.listen(backlog)
            listener.address = wanted[where][0]
        for listener, _ in plan.bound.values():
            listener.setServiceParent(self.top)  # already listening: startService binds nothing more
        api_summary = self._commit_api(plan)
        if old.policy != new.policy or plan.stamps != self.baseline:
            api_settings.clear_contexts()  # per-program contexts not yet made: from the new files
            sessions.CACHE.clear()  # their sessions were made under the old trust: never offered again
        sessions.configure(size=new.policy.session_cache_size, lifetime=new.policy.session_lifetime)
        files_changed = sum(1 for p, s in plan.stamps.items() if self.baseline.get(p, s) != s)
        names_old = {i.name: i for i in old.inbound}
        names_new = {i.name: i for i in new.inbound}
        added = len(names_new.keys() - names_old.keys())
        removed = len(names_old.keys() - names_new.keys())
        changed = sum(1 for n in names_new.keys() & names_old.keys()
                      if plan.inbound[n] is not before.get(n))
        outbound_listen = set(new.outbound.listen) != set(old.outbound.listen)
        self.config = new
        self.baseline = self.seen = plan.stamps
        self._watch(new.daemon.watch_interval)
        budget = FdBudget.from_config(new)
        problem = budget.shortfall(kernel.open_files_limit() or 1 << 62)
        if problem is not None and budget != FdBudget.from_config(old):  # said once per set of caps
            self.log.warn("{problem}", problem=problem)
        return (f"routes={len(new.outbound.routes)} (was {len(old.outbound.routes)}) inbound listeners: "
                f"added={added} removed={removed} changed={changed} outbound_listen_changed={outbound_listen} "
                f"certificate_files_changed={files_changed} policy_changed={old.policy != new.policy} "
                f"api={api_summary}")

    def _commit_api(self, plan: _Plan) -> str:
        host, api = self._api(), plan.config.api
        if api is None:
            if host is None:
                return "none"
            assert isinstance(host, service.Service)
            host.disownServiceParent()
            return "removed"
        if plan.api_factory is None:
            assert host is not None
            return "kept"
        if host is not None:
            # The new generation carries the old one's sessions (the same set: no placeholder
            # needed), its users' shares and, for control connections made before, the drain.
            self.factories.remove(host.factory)
            host.factory.succeeded_by(plan.api_factory)
        self.factories.append(plan.api_factory)
        if plan.api_port is None:  # same path: the listening socket takes the new factory
            assert host is not None
            _swap_factory(host, plan.api_factory)
            host.api = api
            self.secure_api(api)
            return "changed"
        if host is not None:
            assert isinstance(host, service.Service)
            host.disownServiceParent()  # the old path stops; its sessions carry on
        fresh = self.api_service(api, plan.api_factory)
        fresh.port = plan.api_port  # type: ignore[attr-defined]
        fresh.setServiceParent(self.top)
        return "rebound" if host is not None else "added"


@attrs.define(eq=False)
class _Draining:
    """Live connections of a factory that no longer accepts: the stop reset still reaches them."""

    active: set[Any]
    face: str = "removed"


def _swap_factory(holder: Any, factory: Any) -> None:
    """Give a listening port (and the service holding it) a new factory for new connections."""
    old = holder.factory
    if old is factory:
        return
    holder.factory = factory
    port = holder.port
    if port is not None:
        factory.doStart()
        port.factory = factory
        old.doStop()


def _needs_restart(old: Config, new: Config) -> list[str]:
    keys = []
    if (old.daemon.user, old.daemon.group) != (new.daemon.user, new.daemon.group):
        keys.append("daemon.user/group")
    if old.admin != new.admin:
        keys.append("admin")
    return keys


def _group_id(name: str) -> Optional[int]:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return int(name) if name.isdigit() else None
