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

The API's per-program context caches are cleared (what they build is for sessions not yet
started).  Cached client TLS sessions are keyed by the context object they were made through
(`tls.sessions`), so the new generation's contexts never resume a session of the old one; when
the policy or a file changed the cache is emptied as well, and its bounds follow the new
`[policy]`.

All or nothing: the new config is read and checked, every context built, and every new
listening socket bound (`ssaproxy.generation`) *before* anything is swapped (here).  Any
failure closes what was bound, logs one line and leaves the serving generation as it was.
What triggers a reload besides SIGHUP is `ssaproxy.watch` (the certificate watcher).
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Optional

import attrs
from twisted.application import service
from twisted.logger import Logger

from ssaproxy import kernel
from ssaproxy.api import settings as api_settings
from ssaproxy.api.server import ApiFactory
from ssaproxy.capacity import FdBudget, Listener, Overload
from ssaproxy.config import DEFAULT_SOURCE, Api, Config
from ssaproxy.errors import ConfigError
from ssaproxy.generation import ApiHost, Plan, Refused, Serving, Where, prepare, where
from ssaproxy.inbound import InboundFactory
from ssaproxy.outbound import OutboundFactory
from ssaproxy.tls import sessions
from ssaproxy.tls.load import read_config
from ssaproxy.tls.paths import WAIVER_WARNING, insecure_rfc5280
from ssaproxy.watch import Stamp, Watcher, stamps, watched_files


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
        # What the serving generation was built from stays in `baseline`; what the watcher last
        # saw only keeps a refused reload from being retried until something changes again.
        self.watcher = Watcher(reactor, self.baseline, self._changed)
        self.saved: Any = None
        self.reloads = 0

    # ---- the service
    def startService(self) -> None:
        super().startService()
        self.saved = signal.signal(signal.SIGHUP, self._hup)
        self.watcher.every(self.config.daemon.watch_interval)

    def stopService(self) -> None:
        super().stopService()
        self.watcher.every(0)
        if self.saved is not None:
            signal.signal(signal.SIGHUP, self.saved)
            self.saved = None

    def _hup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload, "SIGHUP")

    def _changed(self, paths: list[str]) -> None:
        self.reload("changed on disk: " + ",".join(paths))

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
        for at in insecure_rfc5280(plan.config):
            self.log.warn(WAIVER_WARNING, where=at)
        return True

    def _prepare(self) -> Plan:
        try:
            new = read_config(self.path)  # parse and check_config: errors name the key and its line
        except ConfigError as e:
            raise Refused(f"{self.path or DEFAULT_SOURCE}: {e}") from None
        seen = stamps(watched_files(new))  # before loading: a change while we read shows at the next look
        serving = Serving(config=self.config, stamps=self.baseline, inbound=self._inbound_factories(),
                          outbound=self._outbound_factory(), listeners=self._listeners(), api=self._api())
        return prepare(new, seen, serving, self.reactor, self.overload, self.listen_api)

    def _outbound_factory(self) -> OutboundFactory:
        """The serving outbound factory, or a new one (not yet serving) if the daemon has none."""
        for f in self.factories:
            if isinstance(f, OutboundFactory):
                return f
        return OutboundFactory(self.config, self.reactor)

    def _listeners(self) -> dict[Where, Listener]:
        return {where(s.address): s for s in self.top if isinstance(s, Listener)}

    def _inbound_factories(self) -> dict[str, InboundFactory]:
        return {f.inbound.name: f for f in self.factories if isinstance(f, InboundFactory)}

    def _api(self) -> Optional[ApiHost]:
        for s in self.top:
            if isinstance(getattr(s, "factory", None), ApiFactory) and hasattr(s, "api"):
                host: ApiHost = s
                return host
        return None

    def _commit(self, plan: Plan) -> str:
        """Put the prepared generation in place.  Nothing here can be refused any more."""
        old, new = self.config, plan.config
        before = self._inbound_factories()
        self._commit_factories(plan, before)
        self._commit_listeners(plan)
        api_summary = self._commit_api(plan)
        if old.policy != new.policy or plan.stamps != self.baseline:
            api_settings.clear_contexts()  # per-program contexts not yet made: from the new files
            sessions.CACHE.clear()  # their sessions were made under the old trust: never offered again
        sessions.configure(size=new.policy.session_cache_size, lifetime=new.policy.session_lifetime)
        summary = _summary(old, plan, before, self.baseline, api_summary)
        self.config = new
        self.baseline = plan.stamps
        self.watcher.seen = plan.stamps
        self.watcher.every(new.daemon.watch_interval if self.running else 0)
        budget = FdBudget.from_config(new)
        problem = budget.shortfall(kernel.open_files_limit() or 1 << 62)
        if problem is not None and budget != FdBudget.from_config(old):  # said once per set of caps
            self.log.warn("{problem}", problem=problem)
        return summary

    def _commit_factories(self, plan: Plan, before: dict[str, InboundFactory]) -> None:
        """The outbound factory takes the new config; the new inbound factories replace the old
        in the stop-reset list (they share `active`)."""
        outbound = plan.outbound
        if outbound not in self.factories:
            self.factories.append(outbound)
        outbound.config = plan.config
        outbound.client_context = plan.client_contexts
        for name, old_factory in before.items():
            if plan.inbound.get(name) is not old_factory:
                self.factories.remove(old_factory)
                if old_factory.active and not any(f.active is old_factory.active for f in plan.inbound.values()):
                    self.factories.append(_Draining(old_factory.active))  # a removed listener's live connections
        for new_factory in plan.inbound.values():
            if new_factory not in self.factories:
                self.factories.append(new_factory)
        self.factories[:] = [f for f in self.factories if not isinstance(f, _Draining) or f.active]

    def _commit_listeners(self, plan: Plan) -> None:
        """Listeners kept at the same address take their new factory (and backlog); the others
        stop listening; the new ones, already listening, join the service tree."""
        wanted = plan.wanted()
        for at, listener in self._listeners().items():
            if at not in wanted:
                listener.disownServiceParent()  # stops listening; accepted connections carry on
                continue
            address, _, factory = wanted[at]
            _swap_factory(listener, factory or plan.outbound)
            if listener.port is not None and address.backlog != listener.address.backlog:
                listener.port.socket.listen(address.backlog or kernel.somaxconn())
            listener.address = address
        for listener, _ in plan.bound.values():
            listener.setServiceParent(self.top)  # already listening: startService binds nothing more

    def _commit_api(self, plan: Plan) -> str:
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


def _summary(old: Config, plan: Plan, before: dict[str, InboundFactory], baseline: dict[str, Stamp],
             api: str) -> str:
    """What the reload changed, for its one log line."""
    new = plan.config
    files_changed = sum(1 for p, s in plan.stamps.items() if baseline.get(p, s) != s)
    names_old, names_new = {i.name for i in old.inbound}, {i.name for i in new.inbound}
    changed = sum(1 for n in names_new & names_old if plan.inbound[n] is not before.get(n))
    outbound_listen = set(new.outbound.listen) != set(old.outbound.listen)
    return (f"routes={len(new.outbound.routes)} (was {len(old.outbound.routes)}) inbound listeners: "
            f"added={len(names_new - names_old)} removed={len(names_old - names_new)} changed={changed} "
            f"outbound_listen_changed={outbound_listen} certificate_files_changed={files_changed} "
            f"policy_changed={old.policy != new.policy} api={api}")


def _needs_restart(old: Config, new: Config) -> list[str]:
    keys = []
    if (old.daemon.user, old.daemon.group) != (new.daemon.user, new.daemon.group):
        keys.append("daemon.user/group")
    if old.admin != new.admin:
        keys.append("admin")
    return keys

