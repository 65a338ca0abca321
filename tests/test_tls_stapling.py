"""The inbound stapler (ssaproxy/tls/stapling.py) on a clock: what it staples, and when it fetches
again.  The HTTP side is answered by the test; real responders are in test_e2e_revocation_inbound."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp
from OpenSSL import crypto
from twisted.internet.testing import MemoryReactorClock

from ssaproxy.errors import ConfigError
from ssaproxy.tls import stapling
from tests.test_tls_revocation import CA, HOUR, LEAF, NOW, _Http, _response


class _Conn:
    def get_certificate(self) -> crypto.X509:
        return crypto.X509.from_cryptography(LEAF)


def test_fetched_halfway_to_next_update_and_stapled_only_while_good() -> None:
    reactor, http = MemoryReactorClock(), _Http()
    s = stapling.Stapler("web", [(LEAF, CA)])
    s.start(reactor, http)
    assert http.asked == ["http://ocsp.test/"] and s.callback(_Conn()) == b""  # nothing yet
    good = _response(this=NOW, nxt=NOW + 2 * HOUR)
    http.answers["http://ocsp.test/"].callback(good)
    assert s.callback(_Conn()) == good
    (call,) = reactor.getDelayedCalls()
    assert 0.9 * HOUR.total_seconds() < call.getTime() - reactor.seconds() <= HOUR.total_seconds()  # halfway
    reactor.advance(call.getTime() - reactor.seconds())
    assert http.asked == ["http://ocsp.test/"] * 2  # asked again, long before nextUpdate
    http.answers["http://ocsp.test/"].callback(_response(ocsp.OCSPCertStatus.REVOKED))
    assert s.callback(_Conn()) == good  # a revoked answer is never stapled; the good one still holds
    (retry,) = reactor.getDelayedCalls()
    assert retry.getTime() - reactor.seconds() == stapling.RETRY


def test_a_failed_fetch_is_retried() -> None:
    reactor, http = MemoryReactorClock(), _Http()
    s = stapling.Stapler("web", [(LEAF, CA)])
    s.start(reactor, http)
    http.answers["http://ocsp.test/"].errback(ValueError("HTTP 500"))
    assert len(reactor.getDelayedCalls()) == 1
    reactor.advance(stapling.RETRY)
    assert len(http.asked) == 2 and s.callback(_Conn()) == b""


def test_the_response_file_must_be_good_for_a_certificate_of_the_listener(tmp_path: Path) -> None:
    good, revoked = tmp_path / "good.der", tmp_path / "revoked.der"
    good.write_bytes(_response())
    revoked.write_bytes(_response(ocsp.OCSPCertStatus.REVOKED))
    s = stapling.Stapler("web", [(LEAF, CA)])
    s.use_file(str(good), "inbound.web.ocsp_response_file")
    assert s.callback(_Conn()) == good.read_bytes()
    with pytest.raises(ConfigError) as info:
        stapling.Stapler("web", [(LEAF, CA)]).use_file(str(revoked), "inbound.web.ocsp_response_file")
    assert info.value.key == "inbound.web.ocsp_response_file" and "not a current good" in str(info.value)


def test_an_expired_response_is_not_stapled() -> None:
    s = stapling.Stapler("web", [(LEAF, CA)])
    s.responses[LEAF.fingerprint(hashes.SHA256())] = (b"old", NOW - HOUR)
    assert s.callback(_Conn()) == b""
