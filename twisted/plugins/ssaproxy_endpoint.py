"""Endpoint string `ssa:host=HOST:port=PORT[:hostname=NAME][:alpn=h2,http/1.1][:timeout=30]`:
a verified TLS connection made by the ssaproxy daemon (the local socket API)."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _SSAEndpointParser:
    prefix = "ssa"

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from ssaproxy.client.endpoint import SSAClientEndpoint  # noqa: PLC0415 - plugin discovery stays cheap

        if args:
            raise ValueError("ssa: takes keyword arguments only (ssa:host=example.com:port=443)")
        unknown = set(kwargs) - {"host", "port", "hostname", "alpn", "timeout"}
        if unknown:
            raise ValueError(f"ssa: unknown argument(s) {', '.join(sorted(unknown))}")
        if "host" not in kwargs or "port" not in kwargs:
            raise ValueError("ssa: needs host= and port=")
        return SSAClientEndpoint(reactor, kwargs["host"], int(kwargs["port"]), hostname=kwargs.get("hostname"),
                                 alpn=kwargs.get("alpn"), timeout=float(kwargs.get("timeout", 30)))


ssaEndpointParser = _SSAEndpointParser()
