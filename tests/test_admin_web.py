"""The admin endpoint's resource without a network: readiness follows the daemon state, only GET."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.web.test.requesthelper import DummyRequest

from ssaproxy import metrics
from ssaproxy.admin.status import StatusSource
from ssaproxy.admin.web import AdminResource
from ssaproxy.config import Config
from ssaproxy.state import DaemonState


def get(res: AdminResource, path: bytes, method: bytes = b"GET") -> tuple[int, bytes]:
    request = DummyRequest([])
    request.method = method
    request.path = path
    body = res.render(request)
    return request.responseCode or 200, body


def test_readiness_follows_the_daemon_state() -> None:
    metrics.set_certificates([])
    state = DaemonState()
    source = StatusSource(config=Config.default(), state=state, services=[], factories=[], reactor=MemoryReactorClock())
    res = AdminResource(source)
    assert get(res, b"/readyz") == (503, b"not ready: listeners not bound: still starting\n")
    state.listeners_bound = True
    assert get(res, b"/readyz") == (200, b"ready\n")
    metrics.set_certificates([metrics.CertificateExpiry(scope="inbound", name="web", subject="CN=x", file="/x.pem",
                                                        not_after=1.0)])
    assert get(res, b"/readyz")[0] == 503
    metrics.set_certificates([])
    state.draining = True
    assert get(res, b"/readyz") == (503, b"not ready: draining\n")
    assert get(res, b"/healthz") == (200, b"ok\n")  # draining is still alive
    assert get(res, b"/healthz", b"HEAD")[0] == 405
    assert get(res, b"/other")[0] == 404
