"""The pure revocation checks (ssaproxy/tls/revocation.py): OCSP responses and CRLs built with
cryptography, each with the verdict it must get."""

from __future__ import annotations

import datetime
from typing import Any, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from ssaproxy.tls import revocation as rv
from ssaproxy.tls.fetch import _Bounded, split_crls
from ssaproxy.tls.revocation import Answer, Status

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
HOUR = datetime.timedelta(hours=1)


def _cert(cn: str, key: Any, issuer: Optional[tuple[x509.Certificate, Any]], *, ca: bool = False,
          eku: Optional[list[x509.ObjectIdentifier]] = None, extra: tuple[x509.ExtensionType, ...] = (),
          serial: int = 7, valid: tuple[datetime.datetime, datetime.datetime] = (NOW - HOUR, NOW + 24 * HOUR)) \
        -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer[0].subject if issuer else name)
         .public_key(key.public_key()).serial_number(serial).not_valid_before(valid[0]).not_valid_after(valid[1])
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    for ext in extra:
        b = b.add_extension(ext, critical=False)
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())


CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA = _cert("CA", CA_KEY, None, ca=True)
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = _cert("CA", OTHER_KEY, None, ca=True)  # same name as CA, another key
LEAF_KEY = ec.generate_private_key(ec.SECP256R1())
LEAF = _cert("leaf", LEAF_KEY, (CA, CA_KEY), extra=(
    x509.AuthorityInformationAccess([x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                                            x509.UniformResourceIdentifier("http://ocsp.test/"))]),
    x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier("http://crl.test/ca.crl")],
                                                       None, None, None)]),
    x509.TLSFeature([x509.TLSFeatureType.status_request])))
RESPONDER_KEY = ec.generate_private_key(ec.SECP256R1())


def _responder(eku: Optional[list[x509.ObjectIdentifier]], issuer: tuple[x509.Certificate, Any] = (CA, CA_KEY),
               valid: tuple[datetime.datetime, datetime.datetime] = (NOW - HOUR, NOW + HOUR)) -> x509.Certificate:
    return _cert("responder", RESPONDER_KEY, issuer, eku=eku, serial=99, valid=valid)


def _response(status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD, *, signer: Optional[x509.Certificate] = None,
              signer_key: Any = CA_KEY, this: datetime.datetime = NOW - HOUR,
              nxt: Optional[datetime.datetime] = NOW + HOUR, cert: x509.Certificate = LEAF,
              issuer: x509.Certificate = CA, by_name: bool = False) -> bytes:
    revoked = status == ocsp.OCSPCertStatus.REVOKED
    b = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=issuer, algorithm=hashes.SHA1(), cert_status=status, this_update=this, next_update=nxt,
        revocation_time=NOW - HOUR if revoked else None,
        revocation_reason=x509.ReasonFlags.key_compromise if revoked else None)
    b = b.responder_id(ocsp.OCSPResponderEncoding.NAME if by_name else ocsp.OCSPResponderEncoding.HASH,
                       signer or CA)
    if signer is not None:
        b = b.certificates([signer])
    return b.sign(signer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


OCSP_CASES: list[tuple[str, bytes, Status, str]] = [
    ("good, signed by the issuer", _response(), Status.GOOD, "OCSP: good"),
    ("good, responder named by name", _response(by_name=True), Status.GOOD, "OCSP: good"),
    ("revoked", _response(ocsp.OCSPCertStatus.REVOKED), Status.REVOKED, "revoked (OCSP, reason key_compromise)"),
    ("unknown to the responder", _response(ocsp.OCSPCertStatus.UNKNOWN), Status.UNKNOWN, "does not know"),
    ("delegated responder with the EKU",
     _response(signer=_responder([ExtendedKeyUsageOID.OCSP_SIGNING]), signer_key=RESPONDER_KEY), Status.GOOD, "good"),
    ("delegated responder without the EKU",
     _response(signer=_responder([ExtendedKeyUsageOID.SERVER_AUTH]), signer_key=RESPONDER_KEY), Status.UNKNOWN,
     "lacks the OCSP-signing EKU"),
    ("delegated responder without any EKU", _response(signer=_responder(None), signer_key=RESPONDER_KEY),
     Status.UNKNOWN, "lacks the OCSP-signing EKU"),
    ("delegated responder certified by another CA of the same name",
     _response(signer=_responder([ExtendedKeyUsageOID.OCSP_SIGNING], (OTHER, OTHER_KEY)), signer_key=RESPONDER_KEY),
     Status.UNKNOWN, "not signed by the certificate's issuer"),
    ("delegated responder certificate expired",
     _response(signer=_responder([ExtendedKeyUsageOID.OCSP_SIGNING], valid=(NOW - 3 * HOUR, NOW - 2 * HOUR)),
               signer_key=RESPONDER_KEY), Status.UNKNOWN, "not currently valid"),
    ("signature altered", _response()[:-1] + bytes([_response()[-1] ^ 1]), Status.UNKNOWN,
     "signature does not verify"),
    ("nextUpdate passed", _response(this=NOW - 3 * HOUR, nxt=NOW - HOUR), Status.UNKNOWN, "expired"),
    ("thisUpdate in the future", _response(this=NOW + HOUR, nxt=NOW + 2 * HOUR), Status.UNKNOWN, "not yet valid"),
    ("about another certificate",
     _response(cert=_cert("other leaf", LEAF_KEY, (CA, CA_KEY), serial=8)), Status.UNKNOWN, "not about this"),
    ("about the same serial under another CA of the same name",
     _response(issuer=OTHER, signer_key=OTHER_KEY, signer=OTHER), Status.UNKNOWN, "not signed by the certificate"),
    ("unsuccessful", ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(
        serialization.Encoding.DER), Status.UNKNOWN, "TRY_LATER"),
    ("not DER", b"\x30\x03nope", Status.UNKNOWN, "unreadable"),
]


@pytest.mark.parametrize(("case", "der", "status", "text"), OCSP_CASES, ids=[c[0] for c in OCSP_CASES])
def test_ocsp_verdicts(case: str, der: bytes, status: Status, text: str) -> None:
    answer = rv.judge_ocsp(der, LEAF, CA)
    assert answer.status is status, answer
    assert text in answer.detail, answer


def test_a_response_without_next_update_holds_briefly() -> None:
    answer = rv.judge_ocsp(_response(nxt=None), LEAF, CA, NOW)
    assert answer.status is Status.GOOD and answer.until == NOW + rv.NO_NEXT_UPDATE_TTL


def _crl(*serials: int, key: Any = CA_KEY, issuer: x509.Certificate = CA, nxt: datetime.datetime = NOW + HOUR,
         last: datetime.datetime = NOW - HOUR) -> x509.CertificateRevocationList:
    b = x509.CertificateRevocationListBuilder().issuer_name(issuer.subject).last_update(last).next_update(nxt)
    for s in serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(s).revocation_date(NOW - HOUR)
                                      .build())
    return b.sign(key, hashes.SHA256())


CRL_CASES: list[tuple[str, x509.CertificateRevocationList, Status, str]] = [
    ("listed", _crl(5, 7), Status.REVOKED, "revoked (CRL, reason unspecified)"),
    ("not listed", _crl(5), Status.GOOD, "not listed"),
    ("signed by another key of the same name", _crl(7, key=OTHER_KEY), Status.UNKNOWN, "signature"),
    ("expired", _crl(7, nxt=NOW - HOUR, last=NOW - 2 * HOUR), Status.UNKNOWN, "expired"),
    ("not yet valid", _crl(7, last=NOW + HOUR, nxt=NOW + 2 * HOUR), Status.UNKNOWN, "not yet valid"),
    ("another issuer", _crl(7, issuer=_cert("Other CA", OTHER_KEY, None, ca=True), key=OTHER_KEY), Status.UNKNOWN,
     "another issuer"),
]


@pytest.mark.parametrize(("case", "crl", "status", "text"), CRL_CASES, ids=[c[0] for c in CRL_CASES])
def test_crl_verdicts(case: str, crl: x509.CertificateRevocationList, status: Status, text: str) -> None:
    answer = rv.judge_crl(crl, LEAF, CA)
    assert answer.status is status, answer
    assert text in answer.detail, answer


def test_crls_load_from_pem_der_and_bundles() -> None:
    a, b = _crl(7), _crl(5)
    pem = a.public_bytes(serialization.Encoding.PEM) + b.public_bytes(serialization.Encoding.PEM)
    assert [c.fingerprint(hashes.SHA256()) for c in split_crls(pem)] == [
        c.fingerprint(hashes.SHA256()) for c in (a, b)]
    assert rv.load_crl(a.public_bytes(serialization.Encoding.DER)).fingerprint(hashes.SHA256()) == \
        a.fingerprint(hashes.SHA256())
    with pytest.raises(ValueError):  # noqa: PT011 - cryptography's own message
        rv.load_crl(b"not a CRL")


def test_what_a_certificate_says_about_itself() -> None:
    assert rv.ocsp_urls(LEAF) == ("http://ocsp.test/",)
    assert rv.crl_urls(LEAF) == ("http://crl.test/ca.crl",)
    assert rv.must_staple(LEAF) and not rv.must_staple(CA)
    assert rv.ocsp_urls(CA) == rv.crl_urls(CA) == ()


def test_the_cache_key_tells_apart_two_cas_of_one_name() -> None:
    twin = _cert("leaf", LEAF_KEY, (OTHER, OTHER_KEY))  # same issuer name, same serial
    assert rv.cache_key(LEAF, CA) != rv.cache_key(twin, OTHER)


GOOD, REVOKED, UNKNOWN = Answer(Status.GOOD, "g"), Answer(Status.REVOKED, "r"), rv.unknown("u")


@pytest.mark.parametrize(("mode", "answer", "refused"), [
    ("off", REVOKED, False), ("off", UNKNOWN, False),
    ("soft", GOOD, False), ("soft", UNKNOWN, False), ("soft", REVOKED, True),
    ("hard", GOOD, False), ("hard", UNKNOWN, True), ("hard", REVOKED, True),
])
def test_modes(mode: str, answer: Answer, refused: bool) -> None:
    assert (rv.refusal(mode, answer) is not None) is refused


def test_revoked_wins_and_unknown_is_no_answer() -> None:
    assert rv.first_conclusive([GOOD, REVOKED]) is REVOKED
    assert rv.first_conclusive([UNKNOWN, GOOD]) is GOOD
    assert rv.first_conclusive([UNKNOWN]) is None


def test_the_cache_is_bounded_and_forgets_what_expired() -> None:
    cache = _Bounded(2)
    cache.put("a", (1, NOW + HOUR))
    cache.put("b", (2, NOW - HOUR))
    cache.put("c", (3, None))
    assert "a" not in cache and len(cache) == 2  # the least recently used went first
    assert cache.fresh("b", NOW) is None and "b" not in cache
    assert cache.fresh("c", NOW) == 3


def test_verdicts_are_counted_by_face_result_and_source() -> None:
    from twisted.internet.testing import MemoryReactorClock  # noqa: PLC0415

    from ssaproxy import metrics  # noqa: PLC0415
    from ssaproxy.tls.fetch import Revocation  # noqa: PLC0415

    def count(result: str, source: str) -> float:
        value = metrics.REGISTRY.get_sample_value("ssaproxy_revocation_checks_total",
                                                  {"kind": "test", "result": result, "source": source})
        return value or 0.0

    service = Revocation(MemoryReactorClock())
    before = count("unknown-refused", "none"), count("unknown-allowed", "none"), count("revoked", "local")
    assert service.conclude("hard", "test", UNKNOWN, "none", LEAF) is not None
    assert service.conclude("soft", "test", UNKNOWN, "none", LEAF) is None
    assert service.conclude("soft", "test", REVOKED, "local", LEAF) == "r"
    after = count("unknown-refused", "none"), count("unknown-allowed", "none"), count("revoked", "local")
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


class _Http:
    """The fetcher's HTTP side, answered by the test (the unit boundary of tls.fetch)."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.answers: dict[str, Any] = {}

    def fetch(self, url: str, body: Optional[bytes] = None, content_type: str = "") -> Any:
        from twisted.internet import defer  # noqa: PLC0415

        self.asked.append(url)
        self.answers[url] = d = defer.Deferred()
        return d


def test_a_cached_crl_is_refetched_before_its_next_update_and_used_meanwhile() -> None:
    from twisted.internet.testing import MemoryReactorClock  # noqa: PLC0415

    from ssaproxy.tls.fetch import CRL_REFRESH_AHEAD, Revocation  # noqa: PLC0415

    http = _Http()
    service = Revocation(MemoryReactorClock(), http=http)  # type: ignore[arg-type]
    url = "http://crl.test/ca.crl"
    soon = rv.now() + CRL_REFRESH_AHEAD / 2  # inside the refresh window, still current
    service._keep_crl(url, _crl(5, nxt=soon), soon)
    first = service.judge_now(LEAF, CA, None)
    assert first is not None and first.status is Status.GOOD  # the old CRL still answers
    assert http.asked == [url]  # ... and a newer one is being fetched
    assert service.judge_now(LEAF, CA, None) is not None and http.asked == [url]  # one fetch at a time
    http.answers[url].callback(_crl(5, 7, nxt=rv.now() + 24 * HOUR).public_bytes(serialization.Encoding.DER))
    now_revoked = service.judge_now(LEAF, CA, None)
    assert now_revoked is not None and now_revoked.status is Status.REVOKED, now_revoked


def test_a_resumed_session_is_judged_from_the_chain_it_carries() -> None:
    """No callback runs on a resumed handshake: the check is made after it, from the verified
    chain the session's cache entry carries; with no chain at all the status is unknown."""
    from twisted.internet.testing import MemoryReactorClock  # noqa: PLC0415

    from ssaproxy.tls.fetch import Revocation  # noqa: PLC0415
    from ssaproxy.tls.revcheck import RevocationCheck  # noqa: PLC0415

    class _NoChain:
        def get_verified_chain(self, as_cryptography: bool = False) -> None:
            return None

        def get_peer_certificate(self) -> object:
            return LEAF  # a certificate was presented (a resumed session carries it)

    class _Anonymous(_NoChain):
        def get_peer_certificate(self) -> None:
            return None

    service = Revocation(MemoryReactorClock())
    service._keep_crl("http://crl.test/ca.crl", _crl(5, 7, nxt=rv.now() + 24 * HOUR), rv.now() + 24 * HOUR)
    verdicts: list[Optional[str]] = []
    soft = RevocationCheck(service, "soft", "test")
    assert soft.in_handshake([], None, client=True) is None and not soft.judged  # what a resumed handshake sees
    soft.after_handshake(_NoChain(), verdicts.append, client=True, chain=[LEAF, CA])  # type: ignore[arg-type]
    assert verdicts and verdicts[-1] is not None and "revoked" in verdicts[-1], verdicts
    good = Revocation(MemoryReactorClock())
    good._keep_crl("http://crl.test/ca.crl", _crl(5, nxt=rv.now() + 24 * HOUR), rv.now() + 24 * HOUR)
    RevocationCheck(good, "hard", "test").after_handshake(_NoChain(), verdicts.append, client=True,  # type: ignore[arg-type]
                                                          chain=[LEAF, CA])
    assert verdicts[-1] is None, verdicts  # a must-staple leaf resumed without a staple: none is sent then
    hard, soft_empty = RevocationCheck(service, "hard", "test"), RevocationCheck(service, "soft", "test")
    hard.after_handshake(_NoChain(), verdicts.append, client=True)  # type: ignore[arg-type]
    assert verdicts[-1] is not None, verdicts  # nothing to check is no answer: refused under hard
    soft_empty.after_handshake(_NoChain(), verdicts.append, client=True)  # type: ignore[arg-type]
    assert verdicts[-1] is None, verdicts  # ... and allowed (and logged) under soft
    RevocationCheck(service, "hard", "test").after_handshake(_Anonymous(), verdicts.append,  # type: ignore[arg-type]
                                                             client=False)
    assert verdicts[-1] is None, verdicts  # an anonymous client (client_auth = "request"): nothing to revoke


def test_a_responder_that_did_not_answer_is_not_asked_again_at_once() -> None:
    """FAILED_TTL: after a fetch nobody answered, the next connections get "unknown" at once
    (refused under hard, allowed under soft) instead of each waiting for the timeout again."""
    from twisted.internet.testing import MemoryReactorClock  # noqa: PLC0415

    from ssaproxy.tls.fetch import Revocation  # noqa: PLC0415

    http = _Http()
    service = Revocation(MemoryReactorClock(), http=http)  # type: ignore[arg-type]
    got: list[Answer] = []
    service.fetch(LEAF, CA).addCallback(got.append)
    http.answers["http://ocsp.test/"].errback(ConnectionRefusedError("no responder"))
    http.answers["http://crl.test/ca.crl"].errback(ConnectionRefusedError("no CRL server"))
    assert got and got[0].status is Status.UNKNOWN
    asked = len(http.asked)
    again = service.judge_now(LEAF, CA, None)
    assert again is not None and again.status is Status.UNKNOWN  # an answer now: no second fetch
    assert len(http.asked) == asked
    assert service.conclude("hard", "test", again, "cache", LEAF) is not None
    assert service.conclude("soft", "test", again, "cache", LEAF) is None
