"""A reload's new generation, built and bound but not yet in place (`ssaproxy.reload` puts
it there and says what is kept): every OpenSSL context built from the files as they are now,
bypassing the caches of `tls.context` and `tls.server` (they are keyed by paths, and a rotated
certificate keeps its path), and every new listening socket bound.  Any failure is a `Refused`
whose text is the reload's one log line (the key and its line, or the listener and the OS's
reason); what was bound by then is closed again (`Plan.unbind`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Protocol

import attrs
from OpenSSL import SSL
from twisted.internet.error import CannotListenError

from ssaproxy.api.server import ApiFactory
from ssaproxy.capacity import Listener, Overload, Port
from ssaproxy.config import Api, Config, ListenAddress
from ssaproxy.errors import ConfigError, StartupError
from ssaproxy.inbound import InboundFactory
from ssaproxy.outbound import ClientContexts, OutboundFactory
from ssaproxy.privileges import group_id
from ssaproxy.redirected import Handover
from ssaproxy.tls.context import client_context
from ssaproxy.tls.server import server_context
from ssaproxy.watch import Stamp, inbound_files

Where = tuple[str, int]  # (interface, port): a TCP listener's identity across generations


class Refused(Exception):
    """A reload that cannot be applied; its text is the one log line."""


class ApiHost(Protocol):
    """What the reload needs of service.py's API socket service."""

    api: Api
    factory: ApiFactory
    port: Any


def where(address: ListenAddress) -> Where:
    return address.interface, address.port


@attrs.define(eq=False)
class Serving:
    """What the serving generation is made of, as far as the next one is concerned."""

    config: Config
    stamps: dict[str, Stamp]  # the files as it read them
    inbound: dict[str, InboundFactory]  # by listener name
    outbound: OutboundFactory  # kept across generations (or new, if the daemon had none)
    listeners: dict[Where, Listener]  # the TCP listeners, by address
    api: Optional[ApiHost]


@attrs.define
class Plan:
    """A new generation, built and bound, not yet in place."""

    config: Config
    stamps: dict[str, Stamp]
    client_contexts: ClientContexts
    inbound: dict[str, InboundFactory]  # by name: the factories that replace or join the serving ones
    outbound: OutboundFactory  # kept (or new, if the daemon had none): its config is swapped at commit
    bound: dict[Where, tuple[Listener, Port]] = attrs.Factory(dict)  # new addresses, already listening
    api_factory: Optional[ApiFactory] = None
    api_port: Any = None  # a new API socket, already listening (its path changed or it is new)

    def wanted(self) -> dict[Where, tuple[ListenAddress, str, Any]]:
        """Every TCP listener of the new config: (address, label, factory or None for outbound)."""
        wanted: dict[Where, tuple[ListenAddress, str, Any]] = {}
        for description in self.config.outbound_listen:
            address = ListenAddress.parse(description, "outbound.listen")
            wanted[where(address)] = (address, f"outbound.listen {description}", None)
        for i in self.config.inbound:
            address = ListenAddress.parse(i.listen, f"inbound.{i.name}.listen")
            wanted[where(address)] = (address, f"inbound.{i.name} ({i.listen})", self.inbound[i.name])
        return wanted

    def unbind(self) -> None:
        """Close what was bound for this plan (it will not be put in place)."""
        for _, port in self.bound.values():
            port.stopListening()
        self.bound.clear()
        if self.api_port is not None:
            self.api_port.stopListening()
            self.api_port = None


def generation_client_contexts(config: Config) -> ClientContexts:
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


def prepare(new: Config, seen: dict[str, Stamp], serving: Serving, reactor: Any, overload: Overload,
            listen_api: Callable[[Api, ApiFactory], Any]) -> Plan:
    """Build and bind the generation of `new` (its files as `seen` before it was read)."""
    try:
        contexts = generation_client_contexts(new)
    except Exception as e:  # OpenSSL judged what check_config let through (a file changed since?)
        raise Refused(f"outbound client context: {e}") from None
    old = serving.config
    old_by_name = {i.name: i for i in old.inbound}
    inbound: dict[str, InboundFactory] = {}
    for i in new.inbound:
        previous = serving.inbound.get(i.name)
        unchanged = (previous is not None and old_by_name.get(i.name) == i and old.policy == new.policy
                     and all(seen.get(p) == serving.stamps.get(p) for p in inbound_files(i)))
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
        factory = InboundFactory(i, new.policy, reactor, context=ctx)
        if previous is not None:
            factory.active = previous.active  # one count of live connections per listener name
        inbound[i.name] = factory
    plan = Plan(config=new, stamps=seen, client_contexts=contexts, inbound=inbound, outbound=serving.outbound)
    try:
        _bind(plan, serving, reactor, overload)
        _bind_api(plan, serving, reactor, listen_api)
    except BaseException:
        plan.unbind()
        raise
    return plan


def _bind(plan: Plan, serving: Serving, reactor: Any, overload: Overload) -> None:
    """Listen on every address the serving generation does not."""
    for at, (address, label, factory) in plan.wanted().items():
        if at in serving.listeners:
            continue
        listener = Listener(address, factory or plan.outbound, reactor, overload)
        port = Port(address, listener.factory, reactor, overload)
        try:
            port.startListening()
        except CannotListenError as e:
            raise Refused(f"listener {label} cannot listen: {e.socketError}") from None
        listener.port = port
        plan.bound[at] = (listener, port)


def _bind_api(plan: Plan, serving: Serving, reactor: Any, listen_api: Callable[[Api, ApiFactory], Any]) -> None:
    """A new API factory if anything it serves by changed; a new socket if its path did."""
    api, old_api, old = plan.config.api, serving.api, serving.config
    if api is None:
        return
    if (old_api is not None and old_api.api == api and old.policy == plan.config.policy
            and old.profiles == plan.config.profiles):
        return  # kept as it is
    if api.group is not None and os.geteuid() != 0:
        # After the privilege drop, chown to a group is allowed only for one of ours.
        gid = group_id(api.group)
        if gid is None or gid not in (os.getegid(), *os.getgroups()):
            raise Refused(f"api.group: the daemon's user cannot give the socket to group {api.group!r}: "
                          "restart to apply it")
    plan.api_factory = ApiFactory(api, plan.config.policy, reactor, profiles=plan.config.profiles)
    plan.api_factory.outbound = Handover(plan.outbound)  # REDIRECT: the outbound face, whose config is swapped
    plan.api_factory.fit()
    if old_api is None or old_api.api.socket != api.socket:
        try:
            plan.api_port = listen_api(api, plan.api_factory)
        except StartupError as e:
            raise Refused(str(e)) from None
        except (OSError, CannotListenError) as e:
            why = getattr(e, "socketError", None) or e
            raise Refused(f"api.socket {api.socket}: cannot listen: {why}") from None
