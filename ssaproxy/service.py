"""Config -> MultiService.  Wiring only: nothing listens until the service starts."""

from __future__ import annotations

from typing import Any

from twisted.application import service, strports
from twisted.logger import Logger

from ssaproxy.config import Config
from ssaproxy.outbound import OutboundFactory
from ssaproxy.tls.context import client_context

log = Logger()


class _Announce(service.Service):
    """Logs the effective configuration once the daemon is up."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def startService(self) -> None:
        super().startService()
        c = self.config
        log.info("ssaproxy started: config={source} listen={listen} routes={routes} "
                 "min_version={min_version} trust_store={trust_store}",
                 source=c.source, listen=",".join(c.outbound.listen),
                 routes=",".join(r.name for r in c.outbound.routes) or "(none)",
                 min_version=c.policy.min_version, trust_store=c.policy.trust_store or "system")


class _ResetOnStop(service.Service):
    """At shutdown, reset the connections still being relayed.

    Left alone, the reactor would close them with a FIN, which a legacy program reads as a
    complete response; a RST tells it the truth.  (This service stops just before the
    listeners; both stop synchronously within one reactor turn, so no connection is accepted
    in between.)
    """

    def __init__(self, factory: OutboundFactory) -> None:
        self.factory = factory

    def stopService(self) -> None:
        super().stopService()
        for conn in list(self.factory.active):
            conn.shut_down()


def make_service(config: Config, reactor: Any) -> service.MultiService:
    # Build the OpenSSL context now, so a broken trust store fails at start, not at first use.
    client_context(config.policy)
    top = service.MultiService()
    factory = OutboundFactory(config, reactor)
    for description in config.outbound.listen:
        svc = strports.service(description, factory, reactor=reactor)
        svc.setServiceParent(top)
    _ResetOnStop(factory).setServiceParent(top)
    _Announce(config).setServiceParent(top)
    return top
