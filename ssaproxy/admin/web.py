"""The admin endpoint's HTTP side (twisted.web): GET /metrics, /healthz, /readyz, /status.

Only GET: anything else is 405, so a scraper or probe can never change anything here.  Responses
are bounded by construction (the status is capped, the metrics' labels are bounded), requests by
twisted.web's header limits and a short idle timeout.  No access log: a scrape every few seconds
would drown the connection records.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.web import resource, server

from ssaproxy import metrics
from ssaproxy.admin import certs
from ssaproxy.admin.peers import EVERY
from ssaproxy.admin.status import StatusSource
from ssaproxy.capacity import Listener, Overload
from ssaproxy.config import ListenAddress

IDLE_TIMEOUT = 30  # seconds an admin HTTP connection may sit idle


class AdminResource(resource.Resource):
    isLeaf = True

    def __init__(self, source: StatusSource) -> None:
        super().__init__()
        self.source = source
        self.pages: dict[bytes, Callable[[server.Request], bytes]] = {
            b"/metrics": self.metrics, b"/healthz": self.healthz, b"/readyz": self.readyz, b"/status": self.status}

    def render(self, request: server.Request) -> bytes:
        if request.method != b"GET":
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET")
            return _plain(request, "method not allowed: only GET\n")
        page = self.pages.get(request.path)
        if page is None:
            request.setResponseCode(404)
            return _plain(request, "not found: /metrics, /healthz, /readyz, /status\n")
        request.setHeader(b"cache-control", b"no-store")
        return page(request)

    def metrics(self, request: server.Request) -> bytes:
        body, content_type = metrics.exposition()
        request.setHeader(b"content-type", content_type.encode())
        return body

    def healthz(self, request: server.Request) -> bytes:
        return _plain(request, "ok\n")  # answering at all means the reactor runs

    def readyz(self, request: server.Request) -> bytes:
        reason = self.source.not_ready()
        if reason is not None:
            request.setResponseCode(503)
            return _plain(request, f"not ready: {reason}\n")
        return _plain(request, "ready\n")

    def status(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.source.status(), indent=1, default=str).encode() + b"\n"


def _plain(request: server.Request, text: str) -> bytes:
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return text.encode()


class _QuietSite(server.Site):
    noisy = False

    def log(self, request: Any) -> None:
        pass


class AdminService(service.MultiService):
    """The admin listener (bound before privileges drop, like the others).  Added after the
    other listeners, so when it starts every other listener has started: that is when the
    daemon becomes ready.  At the stop it stays up until `until()` fires (the drain's end):
    /healthz keeps answering while /readyz says the daemon is draining."""

    def __init__(self, listen: str, source: StatusSource, reactor: Any, overload: Overload,
                 until: Optional[Callable[[], Deferred[None]]] = None) -> None:
        super().__init__()
        self.source = source
        self.until = until
        self.reactor = reactor
        self.publisher: Optional[LoopingCall] = None
        site = _QuietSite(AdminResource(source), timeout=IDLE_TIMEOUT)
        site.displayTracebacks = False
        self.listener = Listener(ListenAddress.parse(listen, "admin.listen"), site, reactor, overload, "admin.listen")
        self.listener.setServiceParent(self)
        metrics.set_certificates(certs.configured(source.config))

    def startService(self) -> None:
        super().startService()
        self.source.state.listeners_bound = all(row["bound"] for row in self.source.listeners())
        peers = self.source.peers
        if peers is not None:  # one worker of several: its snapshot for the others (ssaproxy.admin.peers)
            self.publisher = LoopingCall(peers.publish)
            self.publisher.clock = self.reactor
            self.publisher.start(EVERY, now=True)

    def stopService(self) -> Any:
        if self.source.peers is not None:
            self.source.peers.publish()  # draining, at once
        if self.until is None:
            return self._stop_now()
        d = self.until()
        d.addCallback(lambda _: self._stop_now())
        return d

    def _stop_now(self) -> Any:
        self.source.state.listeners_bound = False
        if self.publisher is not None and self.publisher.running:
            self.publisher.stop()
        return super().stopService()
