"""Path validation by cryptography's own X.509 verifier, beside OpenSSL's.

Theory of operation: OpenSSL builds and checks every chain first (tls/verify.py); once it and
our own checks accepted the leaf, the same chain goes through `cryptography.x509.verification`
too, and a refusal by either is a refusal.  The second verifier exists because OpenSSL (with
service-identity's name check after it) gets some things wrong that cryptography's verifier
gets right, name constraints against wildcard SANs above all: an intermediate forbidden to issue
for bar.example.com that issues *.example.com passes OpenSSL for bar.example.com.

One `PathValidator` belongs to one `SSL.Context`: its anchors are read once, when the context is
built (a reload builds new contexts, so new validators with empty caches), never per
handshake.  Its results are cached per exact chain (SHA-256 of every certificate, in order),
the name asked for and the kind of check; an acceptance is kept until the earliest notAfter in
the chain, a refusal for a minute, at most `cache_size` entries (least recently used go first).

Strict RFC 5280 is the default: a leaf without an authorityKeyIdentifier, a CA certificate
whose basicConstraints is not critical or that lacks keyUsage are refused (OpenSSL's
X509_STRICT flag refuses the same).  The trust anchors themselves are exempt from the
extension profile (RFC 5280 6.1.1 makes an anchor a name and a key; several long-lived roots
in the system bundle have non-critical basicConstraints).  `strict=False` (the
`insecure_allow_non_rfc5280_chains` settings) relaxes exactly these and reports, per check,
the strict reason it waived, so the caller can log each connection where it made a difference.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import os
import re
import ssl
import time
import warnings
from typing import Callable, Iterable, Optional, Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import verification as cv
from OpenSSL import crypto

from ssaproxy.config import Config
from ssaproxy.tls._openssl import x509_strict_flags

MAX_DEPTH = 8  # as OpenSSL's verify depth (tls/context.py)
REFUSAL_TTL = 60.0  # seconds a refusal stays cached
_HASHED = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")  # c_rehash names of certificates (CRLs are .rN)
_ALGORITHM = re.compile(r"AlgorithmIdentifier \{.*\}")
_ENCOUNTERED = re.compile(r" \(encountered processing <Certificate\(subject=<Name\((.*?)\)>, \.\.\.\)>\)")


WAIVER_WARNING = ("insecure_allow_non_rfc5280_chains is set for {where}: chains that strict RFC 5280 refuses "
                  "(no authorityKeyIdentifier, a CA without keyUsage or subjectKeyIdentifier or with a non-critical "
                  "basicConstraints) are accepted; each connection where it makes a difference is logged")


def insecure_rfc5280(config: Config) -> list[str]:
    """Where the admin waived strict RFC 5280 path validation (the trust stores concerned), for
    the warnings at start-up and on reload."""
    out = []
    if config.policy.insecure_allow_non_rfc5280_chains:
        out.append(f"policy.trust_store ({config.policy.trust_store or 'system'})")
    out.extend(f"inbound.{i.name}.client_ca ({i.client_ca})" for i in config.inbound
               if i.insecure_allow_non_rfc5280_chains)
    return out


@attrs.frozen
class Outcome:
    """A verdict: `error` None means accepted; `waived` is the strict RFC 5280 refusal that the
    insecure setting overrode (None: it made no difference)."""

    error: Optional[str] = None
    waived: Optional[str] = None


def load_anchors(location: Optional[str]) -> list[x509.Certificate]:
    """The certificates in a PEM file, in a hashed CA directory (c_rehash names), or, for None,
    in the system's default locations as OpenSSL finds them (SSL_CERT_FILE / SSL_CERT_DIR
    honoured).  A block that cryptography cannot parse is skipped: OpenSSL reads the same
    files, and a refusal of the chain follows if it mattered.

    Parsed certificates are immutable, so contexts built from unchanged files share one parse
    (the system store takes tens of milliseconds): the key is the files' identity, size and
    modification time, so a changed file is read again."""
    if location is None:
        paths = ssl.get_default_verify_paths()
        cafile = os.environ.get(paths.openssl_cafile_env) or paths.openssl_cafile
        capath = os.environ.get(paths.openssl_capath_env) or paths.openssl_capath
        places: tuple[str, ...] = tuple(p for p in (cafile, capath) if p)
    else:
        places = (location,)
    stamp = tuple(_stamp(p) for p in places)
    found = _PARSED.get(places)
    if found is not None and found[0] == stamp:
        return list(found[1])
    certs: list[x509.Certificate] = []
    for place in places:
        certs.extend(_read_dir(place) if os.path.isdir(place) else _read_file(place, missing_ok=location is None))
    anchors = _dedupe(certs)
    if len(_PARSED) >= 16:
        _PARSED.clear()
    _PARSED[places] = (stamp, tuple(anchors))
    return anchors


_PARSED: dict[tuple[str, ...], tuple[tuple[object, ...], tuple[x509.Certificate, ...]]] = {}


def _stamp(path: str) -> object:
    """What changes when the file (for a directory: any hashed file in it) changes."""
    try:
        st = os.stat(path)
        if os.path.isdir(path):
            return tuple((name, _stamp(os.path.join(path, name))) for name in sorted(os.listdir(path))
                         if _HASHED.match(name))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_dir(path: Optional[str]) -> list[x509.Certificate]:
    if not path or not os.path.isdir(path):
        return []
    out: list[x509.Certificate] = []
    for name in sorted(os.listdir(path)):
        if _HASHED.match(name):
            out.extend(_read_file(os.path.join(path, name), missing_ok=True))
    return out


def _read_file(path: Optional[str], *, missing_ok: bool = False) -> list[x509.Certificate]:
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        if missing_ok:
            return []
        raise
    out = []
    for block in re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S):
        try:
            with warnings.catch_warnings():  # e.g. a root with a negative serial number
                warnings.simplefilter("ignore")
                out.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    return out


def _dedupe(certs: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    seen: dict[bytes, x509.Certificate] = {}
    for c in certs:
        seen.setdefault(c.fingerprint(hashes.SHA256()), c)
    return list(seen.values())


class PathValidator:
    """cryptography's verifier over one trust store, with a bounded result cache."""

    def __init__(self, anchors: Sequence[x509.Certificate], *, strict: bool = True, cache_size: int = 4096,
                 clock: Callable[[], float] = time.time) -> None:
        self.strict = strict
        self.anchor_count = len(anchors)
        self._store = cv.Store(list(anchors)) if anchors else None
        self._strict_openssl: Optional[crypto.X509Store] = None  # to tell when the waiver mattered
        if not strict:
            self._strict_openssl = crypto.X509Store()
            for anchor in anchors:
                self._strict_openssl.add_cert(crypto.X509.from_cryptography(anchor))
            self._strict_openssl.set_flags(x509_strict_flags())
        self._anchors = frozenset(c.fingerprint(hashes.SHA256()) for c in anchors)
        self._clock = clock
        self._cache: collections.OrderedDict[tuple[object, ...], tuple[float, Outcome]] = collections.OrderedDict()
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_location(cls, location: Optional[str], *, strict: bool = True) -> PathValidator:
        return cls(load_anchors(location), strict=strict)

    def check_server(self, chain: Sequence[x509.Certificate], *, hostname: Optional[str] = None,
                     ip: Optional[str] = None) -> Outcome:
        """May `chain` (leaf first, then what else OpenSSL put on the path) serve `hostname` or
        `ip`?"""
        subject: cv.Subject = (x509.IPAddress(ipaddress.ip_address(ip)) if ip is not None
                               else x509.DNSName(hostname or ""))
        return self._cached(("server", hostname, ip), chain, lambda b: b.build_server_verifier(subject), client=False)

    def check_client(self, chain: Sequence[x509.Certificate]) -> Outcome:
        """May `chain` authenticate a TLS client (clientAuth)?"""
        return self._cached(("client",), chain, lambda b: b.build_client_verifier(), client=True)

    def clear(self) -> None:
        self._cache.clear()

    # ---- internals
    def _cached(self, what: tuple[object, ...], chain: Sequence[x509.Certificate],
                build: Callable[[cv.PolicyBuilder], cv.ServerVerifier | cv.ClientVerifier], *, client: bool) -> Outcome:
        if not chain:
            return Outcome(error="no certificate to validate")
        key = (*what, tuple(c.fingerprint(hashes.SHA256()) for c in chain))
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and now < hit[0]:
            self._cache.move_to_end(key)
            self.hits += 1
            return hit[1]
        self.misses += 1
        outcome = self._validate(chain, build, now, client)
        expires = min(c.not_valid_after_utc.timestamp() for c in chain)
        if outcome.error is not None:
            expires = min(expires, now + REFUSAL_TTL)
        self._cache[key] = (expires, outcome)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return outcome

    def _validate(self, chain: Sequence[x509.Certificate],
                  build: Callable[[cv.PolicyBuilder], cv.ServerVerifier | cv.ClientVerifier], now: float,
                  client: bool) -> Outcome:
        strict_error = self._run(chain, build, now, strict=True, client=client)
        if self.strict:
            return Outcome(error=strict_error)
        if strict_error is None:  # OpenSSL ran without X509_STRICT: would it have refused?
            return Outcome(waived=self._openssl_strict_refusal(chain))
        relaxed_error = self._run(chain, build, now, strict=False, client=client)
        return Outcome(error=relaxed_error, waived=None if relaxed_error is not None else strict_error)

    def _run(self, chain: Sequence[x509.Certificate],
             build: Callable[[cv.PolicyBuilder], cv.ServerVerifier | cv.ClientVerifier], now: float, *,
             strict: bool, client: bool) -> Optional[str]:
        if self._store is None:
            return "the trust store holds no certificate cryptography can read"
        try:
            when = datetime.datetime.fromtimestamp(now, datetime.UTC)
            ca, ee = self._policies(strict, client)
            builder = (cv.PolicyBuilder().store(self._store).time(when).max_chain_depth(MAX_DEPTH)
                       .extension_policies(ca_policy=ca, ee_policy=ee))
            build(builder).verify(chain[0], list(chain[1:]))
        except Exception as e:  # noqa: BLE001 - any exception is a refusal
            return _reason(e)
        return None

    def _openssl_strict_refusal(self, chain: Sequence[x509.Certificate]) -> Optional[str]:
        if self._strict_openssl is None:
            return None
        try:
            certs = [crypto.X509.from_cryptography(c) for c in chain]
            crypto.X509StoreContext(self._strict_openssl, certs[0], certs[1:]).verify_certificate()
        except crypto.X509StoreContextError as e:
            return f"OpenSSL X509_STRICT: {e}"
        except Exception:  # noqa: BLE001 - no verdict: nothing to report
            return None
        return None

    def _policies(self, strict: bool, client: bool) -> tuple[cv.ExtensionPolicy, cv.ExtensionPolicy]:
        anchors = self._anchors

        def is_anchor(cert: x509.Certificate) -> bool:
            return cert.fingerprint(hashes.SHA256()) in anchors

        def basic_constraints(policy: cv.Policy, cert: x509.Certificate, value: x509.BasicConstraints) -> None:
            if not value.ca:
                raise ValueError("basicConstraints.cA must be asserted in a CA certificate")
            critical = cert.extensions.get_extension_for_class(x509.BasicConstraints).critical
            if strict and not critical and not is_anchor(cert):
                raise ValueError("basicConstraints must be critical in a CA certificate (RFC 5280 4.2.1.9)")

        def key_usage(policy: cv.Policy, cert: x509.Certificate, value: Optional[x509.KeyUsage]) -> None:
            if value is None:
                if strict and not is_anchor(cert):
                    raise ValueError("a CA certificate without keyUsage (RFC 5280 4.2.1.3)")
                return
            if not value.key_cert_sign:
                raise ValueError("a CA certificate whose keyUsage lacks keyCertSign")

        ca = (cv.ExtensionPolicy.webpki_defaults_ca()
              .require_present(x509.BasicConstraints, cv.Criticality.AGNOSTIC, basic_constraints)
              .may_be_present(x509.KeyUsage, cv.Criticality.AGNOSTIC, key_usage))
        ee = cv.ExtensionPolicy.webpki_defaults_ee()
        if not strict:
            ee = ee.may_be_present(x509.AuthorityKeyIdentifier, cv.Criticality.AGNOSTIC, None)
            if client:  # a client certificate of an old private CA: its subject only
                ee = ee.may_be_present(x509.SubjectAlternativeName, cv.Criticality.AGNOSTIC, None)
        return ca, ee


def _algorithm_name(debug: str) -> str:
    """The algorithm of a Rust debug dump of an AlgorithmIdentifier: an OID or a name."""
    found = re.search(r"oid: ([0-9]+(?:\.[0-9]+)+)", debug) or re.search(r"params: ([A-Za-z0-9]+)", debug)
    return found.group(1) if found else "unknown"


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    text = text.removeprefix("validation failed: ").replace("Python extension validator failed: ValueError: ", "")
    text = _ALGORITHM.sub(lambda m: _algorithm_name(m.group(0)), text)
    text = _ENCOUNTERED.sub(lambda m: f" (at {m.group(1)})", text)
    if "2.5.29.35" in text and "missing" in text:
        text += " [no authorityKeyIdentifier: strict RFC 5280]"
    return text if isinstance(e, cv.VerificationError) else f"{type(e).__name__}: {text}"
