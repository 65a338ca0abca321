"""The daemon's metrics: one registry of its own, fed by the lifecycle, read by the admin endpoint.

Low on purpose: it imports prometheus_client and nothing of ssaproxy's, so the lifecycle (and
the reload code) can record here without importing a face or twisted.web.  The registry is
ours, not prometheus_client's global one, so a library that registers its own collectors in
the same process never shows up in (or collides with) the daemon's /metrics.

Labels stay bounded: `kind` is one of the three faces, `where` a route or listener name from
the config, `outcome` the lifecycle's fixed vocabulary, `reason` one of `VERIFY_REASONS`.  No
label ever carries a peer address, a host name from the network or free text.

The lifecycle also leaves its failed records here (`recent_failures`, the last
`RECENT_FAILURES` of them) for the admin endpoint's /status: the same one record, kept short.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any, Iterable, Iterator, Mapping, Optional

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
RECENT_FAILURES = 20
DETAIL_LIMIT = 300  # characters of a failure's detail kept for /status

# Connect and handshake times: loopback microseconds up to timeouts of tens of seconds.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CONNECTIONS = Counter("ssaproxy_connections", "Connections ended, by face, route or listener, and outcome",
                      ["kind", "where", "outcome"], registry=REGISTRY)
ACTIVE = Gauge("ssaproxy_active_connections", "Connections accepted and not yet ended, by face", ["kind"],
               registry=REGISTRY, multiprocess_mode="livesum")
CONNECT_SECONDS = Histogram("ssaproxy_connect_duration_seconds",
                            "From starting the far end's TCP connect to its being connected", ["kind"],
                            buckets=_SECONDS, registry=REGISTRY)
HANDSHAKE_SECONDS = Histogram("ssaproxy_handshake_duration_seconds",
                              "TLS handshakes: far (connected to ready and verified), near (accepted to ready)",
                              ["kind", "side"], buckets=_SECONDS, registry=REGISTRY)
BYTES = Counter("ssaproxy_bytes", "Bytes relayed, counted when a connection ends", ["kind", "direction"],
                registry=REGISTRY)
RESUMED = Counter("ssaproxy_tls_resumed_handshakes", "TLS handshakes that resumed an earlier session, by face "
                  "and side (far: ssaproxy was the client; near: the server)", ["kind", "side"], registry=REGISTRY)
VERIFY_FAILURES = Counter("ssaproxy_verify_failures", "Certificate verification failures, by face and reason class",
                          ["kind", "reason"], registry=REGISTRY)
REVOCATION = Counter("ssaproxy_revocation_checks", "Revocation verdicts on peer certificates, by face, result "
                     "(good, revoked, unknown-allowed, unknown-refused) and where the answer came from",
                     ["kind", "result", "source"], registry=REGISTRY)
RELOADS = Counter("ssaproxy_config_reloads", "Configuration reloads, by result", ["result"], registry=REGISTRY)
LAST_RELOAD = Gauge("ssaproxy_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful configuration reload", registry=REGISTRY,
                    multiprocess_mode="livemax")
LAST_RELOAD_OK = Gauge("ssaproxy_config_last_reload_successful", "1 if the last reload succeeded, else 0",
                       registry=REGISTRY, multiprocess_mode="livemin")
LAST_RELOAD_OK.set(1)
for _result in ("success", "failure"):
    RELOADS.labels(result=_result)  # both series exist from the start, at 0

# ---- verification failures: the reason class of a verify_error
VERIFY_REASONS = ("expired", "not-yet-valid", "hostname-mismatch", "untrusted", "revoked", "weak", "not-allowed",
                  "other")
_REASON_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("expired", ("has expired", "crl has expired")),
    ("not-yet-valid", ("not yet valid",)),
    ("revoked", ("revoked", "revocation", "stapled ocsp")),
    ("hostname-mismatch", ("identity mismatch", "hostname mismatch", "ip address mismatch")),
    ("not-allowed", ("identity not allowed", "no client certificate")),
    ("weak", ("key of", "dsa keys", "ec key on", "signed with", "too weak", "unsupported signature algorithm")),
    ("untrusted", ("self-signed", "self signed", "local issuer", "issuer certificate", "invalid ca",
                   "path length", "unsupported certificate purpose", "subtree", "name constraint",
                   "signature failure", "untrusted", "unable to verify", "not trusted", "chain too long",
                   "path validation")),
)


def verify_reason(detail: Optional[str]) -> str:
    """The bounded reason class of a verification failure's detail (OpenSSL's verify string,
    or ssaproxy's own refusal text)."""
    text = (detail or "").lower()
    for reason, words in _REASON_WORDS:
        if any(w in text for w in words):
            return reason
    return "other"


# ---- what the lifecycle calls
_series: dict[tuple[object, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)` (in label order), looked up once: prometheus_client's labels()
    checks its arguments and takes a lock, several times per connection otherwise.  The labels
    are bounded (see above), so is this cache."""
    key = (metric, *values)
    child = _series.get(key)
    if child is None:
        child = _series[key] = metric.labels(*values)
    return child


def started(kind: str) -> None:
    _child(ACTIVE, kind).inc()


def connected(kind: str, seconds: float) -> None:
    _child(CONNECT_SECONDS, kind).observe(max(seconds, 0.0))


def handshaken(kind: str, side: str, seconds: float) -> None:
    _child(HANDSHAKE_SECONDS, kind, side).observe(max(seconds, 0.0))


def resumed(kind: str, side: str) -> None:
    RESUMED.labels(kind=kind, side=side).inc()


def revocation(kind: str, result: str, source: str) -> None:
    REVOCATION.labels(kind=kind, result=result, source=source).inc()


def verify_failed(kind: str, detail: Optional[str]) -> None:
    VERIFY_FAILURES.labels(kind=kind, reason=verify_reason(detail)).inc()


_failures: collections.deque[dict[str, object]] = collections.deque(maxlen=RECENT_FAILURES)
_SHOWN = ("conn_id", "route", "inbound", "peer", "client", "orig_dst", "hostname", "sni", "target", "op",
          "verify_error", "duration")


def ended(kind: str, record: Mapping[str, object], *, near_to_far: int, far_to_near: int, quiet: bool) -> None:
    """A connection's one record: count it, its bytes, and keep it if it failed."""
    _child(ACTIVE, kind).dec()
    outcome = str(record.get("outcome"))
    where = str(record.get("route") or record.get("inbound") or "")
    _child(CONNECTIONS, kind, where, outcome).inc()
    _child(BYTES, kind, "near-to-far").inc(near_to_far)
    _child(BYTES, kind, "far-to-near").inc(far_to_near)
    if not quiet:
        kept: dict[str, object] = {"time": time.time(), "kind": kind, "outcome": outcome,
                                   "detail": _short(record.get("detail"))}
        kept.update({k: _short(record[k]) for k in _SHOWN if record.get(k) is not None})
        _failures.append(kept)


def recent_failures() -> list[dict[str, object]]:
    """The last failed records, oldest first."""
    return list(_failures)


def _short(value: object) -> object:
    if isinstance(value, str) and len(value) > DETAIL_LIMIT:
        return value[:DETAIL_LIMIT] + "…"
    return value


# ---- reloads (called by the reload code)
def reload_succeeded() -> None:
    RELOADS.labels(result="success").inc()
    LAST_RELOAD.set(time.time())
    LAST_RELOAD_OK.set(1)


def reload_failed() -> None:
    RELOADS.labels(result="failure").inc()
    LAST_RELOAD_OK.set(0)


# ---- certificate expiry
@attrs.frozen(kw_only=True)
class CertificateExpiry:
    """One configured certificate: where it is used and when it stops being valid."""

    scope: str  # "inbound" or "route"
    name: str  # the listener's or the route's name
    subject: str
    file: str
    not_after: float  # Unix time

    def seconds_left(self, now: Optional[float] = None) -> float:
        return self.not_after - (time.time() if now is None else now)


class _Expiry(Collector):
    """Seconds left, computed at each scrape: the gauge never goes stale between reloads."""

    def __init__(self) -> None:
        self.certificates: tuple[CertificateExpiry, ...] = ()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("ssaproxy_certificate_expiry_seconds",
                                   "Seconds until a configured certificate's notAfter (negative: expired)",
                                   labels=["scope", "name", "subject", "file"])
        now = time.time()
        for c in self.certificates:
            family.add_metric([c.scope, c.name, c.subject, c.file], c.seconds_left(now))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


_expiry = _Expiry()
REGISTRY.register(_expiry)


def set_certificates(certificates: Iterable[CertificateExpiry]) -> None:
    """The configured certificates (at start, and again after a reload)."""
    _expiry.certificates = tuple(certificates)


def certificates() -> tuple[CertificateExpiry, ...]:
    return _expiry.certificates


def exposition() -> tuple[bytes, str]:
    """The registry in Prometheus's text format, and its content type.

    In a worker process (`[daemon] workers` above 1) the counters, gauges and histograms live
    in files every worker writes to (prometheus_client's multiprocess mode, switched on by the
    main process through PROMETHEUS_MULTIPROC_DIR), and any worker's answer sums them all:
    counters over every worker that ever ran (a restarted worker's counts stay), the live
    gauges over the running ones.  The certificate expiry is this process's own view."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    registry.register(_expiry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
