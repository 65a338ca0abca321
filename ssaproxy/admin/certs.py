"""The configured certificates' expiry, read with cryptography (no OpenSSL state touched).

Read once at start (and again by a reload): the files were already loaded and checked by
`ssaproxy.tls.load`, so a file that cannot be read here is reported as a certificate that
expired at time 0 rather than as a crash of the admin endpoint.  Only the leaf (the first
certificate of a chain) is measured: it is the one a peer sees expire first in practice, and
one series per configured file keeps the label set bounded.
"""

from __future__ import annotations

from cryptography import x509
from twisted.logger import Logger

from ssaproxy.config import Config
from ssaproxy.metrics import CertificateExpiry

log = Logger()
SUBJECT_LIMIT = 120  # characters of a subject kept as a label


def _leaf(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def _subject(cert: x509.Certificate) -> str:
    text = cert.subject.rfc4514_string() or "(empty subject)"
    return text[:SUBJECT_LIMIT]


def expiry(scope: str, name: str, path: str) -> CertificateExpiry:
    try:
        cert = _leaf(path)
    except (OSError, ValueError) as e:
        log.warn("cannot read {file} for its expiry: {error}", file=path, error=e)
        return CertificateExpiry(scope=scope, name=name, subject="(unreadable)", file=path, not_after=0.0)
    return CertificateExpiry(scope=scope, name=name, subject=_subject(cert), file=path,
                             not_after=cert.not_valid_after_utc.timestamp())


def configured(config: Config) -> list[CertificateExpiry]:
    """Every certificate the config presents: inbound listeners' and routes' client certificates."""
    found = [expiry("inbound", inbound.name, c.chain) for inbound in config.inbound for c in inbound.certificates]
    found += [expiry("route", route.name, route.client_certificate) for route in config.outbound.routes
              if route.client_certificate]
    return found
