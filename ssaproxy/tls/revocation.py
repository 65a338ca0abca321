"""Revocation checks, pure: OCSP requests and responses, CRLs, must-staple, and the verdict.

Theory of operation: everything here takes certificates and bytes and returns an `Answer`
(good, revoked or unknown, with why and until when it holds); nothing here does I/O, so the
same code judges a stapled response inside OpenSSL's status callback, a response fetched by
`ssaproxy.tls.fetch`, a CRL file and a CRL from a distribution point.  ASN.1 is cryptography's
(`x509.ocsp`, `x509.load_*_x509_crl`): nothing is parsed by hand.

A response counts only if it is signed by the certificate's issuer, or by a responder whose
certificate the issuer signed and gave the OCSP-signing EKU (RFC 6960 4.2.2.2); if it names
this exact certificate (issuer name and key hashes, serial); and if now lies between its
thisUpdate (with a little clock skew) and its nextUpdate.  A CRL counts only if the issuer
signed it, its issuer name is the certificate's issuer and it is current.  Anything else is not
an answer: `unknown`, which `decide` turns into a refusal or a logged pass according to the mode.
"""

from __future__ import annotations

import datetime
import enum
from typing import Iterable, Optional

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

MODES = ("off", "soft", "hard")
SKEW = datetime.timedelta(minutes=5)  # a responder's clock a little ahead of ours
NO_NEXT_UPDATE_TTL = datetime.timedelta(minutes=5)  # how long an answer without nextUpdate is reused


class Status(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@attrs.frozen
class Answer:
    status: Status
    detail: str
    until: Optional[datetime.datetime] = None  # when it stops holding (nextUpdate); None: at once


def unknown(detail: str) -> Answer:
    return Answer(Status.UNKNOWN, detail)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# ---- what a certificate says about itself
def ocsp_urls(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(d.access_location.value) for d in aia
                 if d.access_method == AuthorityInformationAccessOID.OCSP
                 and isinstance(d.access_location, x509.UniformResourceIdentifier)
                 and str(d.access_location.value).startswith("http://"))


def crl_urls(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(name.value) for point in points for name in (point.full_name or ())
                 if isinstance(name, x509.UniformResourceIdentifier) and str(name.value).startswith("http://"))


def must_staple(cert: x509.Certificate) -> bool:
    """The TLS Feature extension (RFC 7633) asks for status_request."""
    try:
        features = cert.extensions.get_extension_for_class(x509.TLSFeature).value
    except x509.ExtensionNotFound:
        return False
    return x509.TLSFeatureType.status_request in features


# ---- OCSP
def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A DER OCSPRequest for `cert` (SHA-1 CertID: what responders index by, RFC 5019)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
    return builder.build().public_bytes(serialization.Encoding.DER)


def cache_key(cert: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, bytes, int]:
    """One certificate among all issuers: the issuer's name and key (two trusted CAs may share a
    name) and the serial."""
    key = hashes.Hash(hashes.SHA256())
    key.update(_subject_public_key(issuer))
    return cert.issuer.public_bytes(), key.finalize(), cert.serial_number


def judge_ocsp(der: bytes, cert: x509.Certificate, issuer: x509.Certificate,
               at: Optional[datetime.datetime] = None) -> Answer:
    """What an OCSP response (DER) says about `cert`; unknown if it cannot be trusted."""
    at = at or now()
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        return unknown(f"unreadable OCSP response: {e}")
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return unknown(f"OCSP responder answered {response.response_status.name}")
    signer = _ocsp_signer(response, issuer, at)
    if isinstance(signer, str):
        return unknown(signer)
    try:
        _verify(signer.public_key(), response.signature, response.tbs_response_bytes,
                response.signature_hash_algorithm)
    except (InvalidSignature, TypeError, ValueError) as e:
        return unknown(f"OCSP response signature does not verify ({type(e).__name__})")
    for single in response.responses:
        if single.serial_number == cert.serial_number and _same_issuer(single, issuer):
            return _single(single, at)
    return unknown("OCSP response is not about this certificate")


def _single(single: ocsp.OCSPSingleResponse, at: datetime.datetime) -> Answer:
    this, nxt = single.this_update_utc, single.next_update_utc
    if this - SKEW > at:
        return unknown("OCSP response not yet valid (thisUpdate in the future)")
    if nxt is not None and nxt < at:
        return unknown("OCSP response expired (nextUpdate passed)")
    until = nxt if nxt is not None else at + NO_NEXT_UPDATE_TTL
    if single.certificate_status == ocsp.OCSPCertStatus.GOOD:
        return Answer(Status.GOOD, "OCSP: good", until)
    if single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason.name if single.revocation_reason else "unspecified"
        return Answer(Status.REVOKED, f"certificate revoked (OCSP, reason {reason})", until)
    return Answer(Status.UNKNOWN, "OCSP responder does not know the certificate", until)


def _same_issuer(single: ocsp.OCSPSingleResponse, issuer: x509.Certificate) -> bool:
    algorithm = single.hash_algorithm
    name_hash = hashes.Hash(algorithm)
    name_hash.update(issuer.subject.public_bytes())
    key_hash = hashes.Hash(algorithm)
    key_hash.update(_subject_public_key(issuer))
    return single.issuer_name_hash == name_hash.finalize() and single.issuer_key_hash == key_hash.finalize()


def _subject_public_key(cert: x509.Certificate) -> bytes:
    """The contents of subjectPublicKeyInfo's BIT STRING: what CertID and ResponderID key hashes
    cover (RFC 6960).  cryptography has no accessor for it; each key type's raw public form is it."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise TypeError(f"unsupported issuer key type {type(key).__name__}")


def _ocsp_signer(response: ocsp.OCSPResponse, issuer: x509.Certificate,
                 at: datetime.datetime) -> x509.Certificate | str:
    """The certificate whose key must have signed the response: the issuer itself, or a
    delegated responder the issuer certified for OCSP signing (and that is current)."""
    if _names(response, issuer):
        return issuer
    for candidate in response.certificates:
        if not _names(response, candidate):
            continue
        if candidate.issuer != issuer.subject:
            return "OCSP responder certificate not issued by the certificate's issuer"
        try:
            candidate.verify_directly_issued_by(issuer)
        except (InvalidSignature, TypeError, ValueError):
            return "OCSP responder certificate not signed by the certificate's issuer"
        try:
            eku = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return "OCSP responder certificate lacks the OCSP-signing EKU"
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            return "OCSP responder certificate lacks the OCSP-signing EKU"
        if not candidate.not_valid_before_utc <= at <= candidate.not_valid_after_utc:
            return "OCSP responder certificate is not currently valid"
        return candidate
    return "OCSP response signed by neither the issuer nor a responder it delegated"


def _names(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    digest = hashes.Hash(hashes.SHA1())  # noqa: S303 - ResponderID byKey is defined as SHA-1
    digest.update(_subject_public_key(cert))
    return response.responder_key_hash == digest.finalize()


def _verify(key: object, signature: bytes, data: bytes, algorithm: Optional[hashes.HashAlgorithm]) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if algorithm is None:
            raise ValueError("no hash")
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if algorithm is None:
            raise ValueError("no hash")
        key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        key.verify(signature, data)
    else:
        raise TypeError("unsupported responder key type")


# ---- CRLs
def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in PEM or DER; ValueError if it is neither."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def judge_crl(crl: x509.CertificateRevocationList, cert: x509.Certificate, issuer: x509.Certificate,
              at: Optional[datetime.datetime] = None) -> Answer:
    """What a CRL says about `cert`: unknown unless the issuer signed it and it is current."""
    at = at or now()
    if crl.issuer != cert.issuer or issuer.subject != cert.issuer:
        return unknown("CRL from another issuer")
    if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        return unknown("CRL signature does not verify against the issuer")
    nxt = crl.next_update_utc
    if crl.last_update_utc - SKEW > at:
        return unknown("CRL not yet valid (lastUpdate in the future)")
    if nxt is None or nxt < at:
        return unknown("CRL expired (nextUpdate passed)")
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return Answer(Status.GOOD, "CRL: not listed", nxt)
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
    except x509.ExtensionNotFound:
        reason = "unspecified"
    return Answer(Status.REVOKED, f"certificate revoked (CRL, reason {reason})", nxt)


def first_conclusive(answers: Iterable[Answer]) -> Optional[Answer]:
    """Revoked wins over good (a CRL and a stale cache entry disagreeing); None if neither."""
    good: Optional[Answer] = None
    for a in answers:
        if a.status is Status.REVOKED:
            return a
        if a.status is Status.GOOD and good is None:
            good = a
    return good


def refusal(mode: str, answer: Answer) -> Optional[str]:
    """None if the connection may go on under `mode`, else why not (the log's detail)."""
    if mode == "off" or answer.status is Status.GOOD:
        return None
    if answer.status is Status.REVOKED:
        return answer.detail
    if mode == "hard":
        return f"revocation status unknown (hard): {answer.detail}"
    return None


def stricter(a: str, b: str) -> str:
    """The more demanding of two modes (a program or a route may only add checking)."""
    return a if MODES.index(a) >= MODES.index(b) else b
