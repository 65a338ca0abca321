"""Metrics recorded at the lifecycle (one hook, every face), read back from the daemon's own
registry; the verify reason classes; reloads; certificate expiry; the failures kept for /status."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from ssaproxy import metrics
from ssaproxy.admin import certs
from ssaproxy.config import Config
from ssaproxy.streams import How
from tests.pki import PKI
from tests.test_lifecycle import Face, accepted, far_connects


def value(metric: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(metric, labels) or 0.0


@pytest.fixture
def world() -> tuple[MemoryReactorClock, set[Any], list[dict[str, Any]]]:
    return MemoryReactorClock(), set(), []


def test_a_relayed_connection_is_counted_with_its_bytes_and_connect_time(world: Any) -> None:
    before = {"closed": value("ssaproxy_connections_total", kind="test", where="", outcome="closed"),
              "active": value("ssaproxy_active_connections", kind="test"),
              "out": value("ssaproxy_bytes_total", kind="test", direction="near-to-far"),
              "in": value("ssaproxy_bytes_total", kind="test", direction="far-to-near"),
              "connects": value("ssaproxy_connect_duration_seconds_count", kind="test"),
              "connect_time": value("ssaproxy_connect_duration_seconds_sum", kind="test")}
    face: Face = accepted(world)
    assert value("ssaproxy_active_connections", kind="test") == before["active"] + 1
    world[0].advance(0.25)  # the connect takes a quarter of a second
    far, _ = far_connects(face)
    assert value("ssaproxy_connect_duration_seconds_count", kind="test") == before["connects"] + 1
    assert value("ssaproxy_connect_duration_seconds_sum", kind="test") == pytest.approx(before["connect_time"] + 0.25)
    face.near.dataReceived(b"hello")
    far.dataReceived(b"world!")
    face.near.readConnectionLost()
    far.readConnectionLost()
    assert value("ssaproxy_connections_total", kind="test", where="", outcome="closed") == before["closed"] + 1
    assert value("ssaproxy_active_connections", kind="test") == before["active"]
    assert value("ssaproxy_bytes_total", kind="test", direction="near-to-far") == before["out"] + 5
    assert value("ssaproxy_bytes_total", kind="test", direction="far-to-near") == before["in"] + 6


def test_a_failed_connect_is_counted_by_outcome_and_kept_for_status(world: Any) -> None:
    before = value("ssaproxy_connections_total", kind="test", where="", outcome="connect-refused")
    face: Face = accepted(world)
    world[0].tcpClients[-1][2].clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
    assert face.done
    assert value("ssaproxy_connections_total", kind="test", where="", outcome="connect-refused") == before + 1
    last = metrics.recent_failures()[-1]
    assert last["kind"] == "test" and last["outcome"] == "connect-refused" and last["conn_id"] == face.conn_id


def test_a_verification_failure_is_counted_once_by_its_reason_class(world: Any) -> None:
    before = value("ssaproxy_verify_failures_total", kind="test", reason="expired")
    face: Face = accepted(world)
    assert face.far is not None
    face.end_lost(face.far, How.VERIFY_FAILED, "certificate verify failed: certificate has expired")
    assert face.done
    assert value("ssaproxy_verify_failures_total", kind="test", reason="expired") == before + 1


@pytest.mark.parametrize(("detail", "reason"), [
    ("certificate verify failed: certificate has expired", "expired"),
    ("certificate verify failed: certificate is not yet valid", "not-yet-valid"),
    ("identity mismatch: 'wrong.test' not in certificate (...)", "hostname-mismatch"),
    ("certificate verify failed: self-signed certificate", "untrusted"),
    ("certificate verify failed: unable to get local issuer certificate", "untrusted"),
    ("certificate verify failed: permitted subtree violation", "untrusted"),
    ("certificate verify failed: certificate revoked", "revoked"),
    ("RSA key of 1024 bits is below 2048", "weak"),
    ("certificate signed with SHA1", "weak"),
    ("client identity not allowed (dns:x.test)", "not-allowed"),
    ("something new", "other"),
    (None, "other"),
])
def test_verify_reasons_are_a_small_fixed_set(detail: Optional[str], reason: str) -> None:
    assert metrics.verify_reason(detail) == reason
    assert reason in metrics.VERIFY_REASONS


def test_reloads_count_and_stamp_success() -> None:
    ok, bad = value("ssaproxy_config_reloads_total", result="success"), value("ssaproxy_config_reloads_total",
                                                                                 result="failure")
    metrics.reload_failed()
    assert value("ssaproxy_config_last_reload_successful") == 0
    metrics.reload_succeeded()
    assert value("ssaproxy_config_reloads_total", result="success") == ok + 1
    assert value("ssaproxy_config_reloads_total", result="failure") == bad + 1
    assert value("ssaproxy_config_last_reload_successful") == 1
    assert value("ssaproxy_config_last_reload_success_timestamp_seconds") > 1e9


def test_certificate_expiry_of_inbound_and_route_certificates(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    good, client = pki.server("good"), pki.client("client_good")
    config = Config.from_toml(
        f'[[inbound]]\nname = "web"\nlisten = "tcp:8443"\nbackend = "tcp:127.0.0.1:8080"\n'
        f'certificates = [ {{ chain = "{good.chain}", key = "{good.key}" }} ]\n'
        f'[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\n'
        f'[[outbound.route]]\nname = "peer"\ndestination = "10.0.0.0/8"\nports = [80]\nhostname = "p.test"\n'
        f'client_certificate = "{client.chain}"\nclient_key = "{client.key}"\n')
    found = certs.configured(config)
    metrics.set_certificates(found)
    assert [(c.scope, c.name) for c in found] == [("inbound", "web"), ("route", "peer")]
    text = metrics.exposition()[0].decode()
    for c in found:
        labels = {"scope": c.scope, "name": c.name, "subject": c.subject, "file": c.file}
        left = value("ssaproxy_certificate_expiry_seconds", **labels)
        assert 0 < left < 10 * 366 * 86400, (labels, left)
    assert 'ssaproxy_certificate_expiry_seconds{file="' in text
    metrics.set_certificates([certs.expiry("inbound", "gone", str(tmp_path / "missing.pem"))])
    assert metrics.certificates()[0].seconds_left() < 0  # unreadable counts as expired


def test_failures_kept_are_bounded_and_short() -> None:
    for n in range(metrics.RECENT_FAILURES + 5):
        metrics.started("bound-test")
        metrics.ended("bound-test", {"outcome": "reset", "detail": "x" * 1000, "conn_id": n},
                      near_to_far=0, far_to_near=0, quiet=False)
    kept = metrics.recent_failures()
    assert len(kept) == metrics.RECENT_FAILURES and kept[-1]["conn_id"] == metrics.RECENT_FAILURES + 4
    assert len(str(kept[-1]["detail"])) <= metrics.DETAIL_LIMIT + 1
