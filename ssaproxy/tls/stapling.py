"""OCSP stapling for inbound listeners: each certificate's current response, handed to clients
that ask (status_request).

Theory of operation: a listener's `Stapler` sits on each of its contexts (OpenSSL asks the
context the connection ends up on, after SNI).  Its responses come from a file
(`ocsp_response_file`, read when the context is built: at start and at every reload, like the
certificate) or are fetched from the certificate's AIA once the reactor runs (`start`), and
refetched halfway to their nextUpdate (a minute after a failure).  Only a response that
verifies as "good" for that very certificate is stapled, and never past its nextUpdate.
"""

from __future__ import annotations

import datetime
import weakref
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from twisted.internet import defer
from twisted.logger import Logger

from ssaproxy.errors import ConfigError
from ssaproxy.tls import revocation as rv

RETRY = 60.0
MAX_WAIT = 12 * 3600.0


class Stapler:
    log = Logger()

    def __init__(self, listener: str, chains: list[tuple[x509.Certificate, x509.Certificate]]) -> None:
        self.listener = listener
        self.chains = chains  # (leaf, issuer) of each certificate that has an issuer in its chain file
        self.responses: dict[bytes, tuple[bytes, datetime.datetime]] = {}
        self.started = False

    def use_file(self, path: str, key: str) -> None:
        """The admin's response: it must be a current "good" for one of our certificates."""
        try:
            with open(path, "rb") as f:
                der = f.read()
        except OSError as e:
            raise ConfigError(key, f"cannot read {path}: {e.strerror or e}") from None
        why = []
        for leaf, issuer in self.chains:
            answer = rv.judge_ocsp(der, leaf, issuer)
            if answer.status is rv.Status.GOOD and answer.until is not None:
                self.responses[_fingerprint(leaf)] = (der, answer.until)
                return
            why.append(answer.detail)
        raise ConfigError(key, f"{path} is not a current good OCSP response for this listener's certificates "
                               f"({'; '.join(why) or 'no certificate with its issuer in the chain file'})")

    def callback(self, conn: SSL.Connection, data: Any = None) -> bytes:
        """OpenSSL's server status callback: the response for the certificate in use, or nothing."""
        cert = conn.get_certificate()
        if cert is None:
            return b""
        entry = self.responses.get(_fingerprint(cert.to_cryptography()))
        if entry is None or entry[1] <= rv.now():
            return b""
        return entry[0]

    def start(self, reactor: Any, fetcher: Any) -> None:
        """Fetch (and keep fetching) what no file provides; `fetcher` is a tls.fetch.Http."""
        if self.started:
            return
        self.started = True
        for leaf, issuer in self.chains:
            if _fingerprint(leaf) not in self.responses and rv.ocsp_urls(leaf):
                _refresh(weakref.ref(self), reactor, fetcher, leaf, issuer)

    def store(self, leaf: x509.Certificate, issuer: x509.Certificate, der: bytes) -> float:
        """Keep `der` if it is good for `leaf`; seconds until the next fetch."""
        answer = rv.judge_ocsp(der, leaf, issuer)
        if answer.status is not rv.Status.GOOD or answer.until is None:
            self.log.warn("inbound {listener}: OCSP response for stapling refused: {detail}",
                          listener=self.listener, detail=answer.detail)
            return RETRY
        self.responses[_fingerprint(leaf)] = (der, answer.until)
        left = (answer.until - rv.now()).total_seconds()
        return min(max(left / 2, RETRY), MAX_WAIT)


def _refresh(ref: weakref.ref[Stapler], reactor: Any, fetcher: Any, leaf: x509.Certificate,
             issuer: x509.Certificate) -> None:
    stapler = ref()
    if stapler is None:  # the listener's context was replaced (a reload): stop
        return
    url = rv.ocsp_urls(leaf)[0]

    def got(der: bytes) -> None:
        s = ref()
        if s is not None:
            try:
                wait = s.store(leaf, issuer, der)
            except Exception as e:  # noqa: BLE001 - nothing stapled from it; try again later
                s.log.warn("inbound {listener}: OCSP response unusable: {error}", listener=s.listener, error=e)
                wait = RETRY
            reactor.callLater(wait, _refresh, ref, reactor, fetcher, leaf, issuer)

    def failed(reason: Any) -> None:
        s = ref()
        if s is not None:
            s.log.warn("inbound {listener}: no OCSP response to staple from {url}: {error}",
                       listener=s.listener, url=url, error=reason.getErrorMessage())
            reactor.callLater(RETRY, _refresh, ref, reactor, fetcher, leaf, issuer)

    try:
        d = fetcher.fetch(url, rv.ocsp_request(leaf, issuer), "application/ocsp-request")
    except Exception as e:  # noqa: BLE001 - e.g. a URL Twisted cannot request: keep trying, loudly
        d = defer.fail(e)
    d.addCallbacks(got, failed)


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def stapler_for(listener: str, chain_files: list[str], response_file: Optional[str], key: str) -> Stapler:
    chains: list[tuple[x509.Certificate, x509.Certificate]] = []
    for path in chain_files:
        with open(path, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
        if len(certs) >= 2:
            chains.append((certs[0], certs[1]))
    stapler = Stapler(listener, chains)
    if response_file is not None:
        stapler.use_file(response_file, key)
    return stapler
