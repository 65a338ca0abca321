"""A throwaway PKI for tests that run real TLS servers behind ssaproxy.

Theory of operation: one trusted root CA signs one intermediate CA, which signs a server
certificate per *case*.  A good case must be accepted by a client that trusts `PKI.root_pem`
and verifies `ServerCreds.hostname`; a bad case must be refused, and for exactly one reason:
every bad case is the good certificate with a single property changed (the validity window,
the names, the issuer, the key, the signature hash ...), so a test that sees it refused proves
the one check that property exercises.  The cases are declared in `_CASES` below.

All CA certificates satisfy OpenSSL's X509_V_FLAG_X509_STRICT (critical basicConstraints,
keyUsage with keyCertSign, subject and authority key identifiers), and leaves carry what a
TLS server certificate needs (SAN, serverAuth, digitalSignature), so strict verification
finds nothing to complain about except the defect under test.

Two cases deserve a word.  ``intermediate_not_ca``'s intermediate has cA=FALSE and no keyUsage
(keyCertSign in a non-CA is itself an X509_STRICT error; a keyUsage without it would be refused
by the keyUsage check), so only the basicConstraints check can refuse it.  ``untrusted_root``'s
chain.pem is complete, the foreign root included, so the refusal is "self-signed certificate in
certificate chain" rather than the missing-issuer error that ``incomplete_chain`` tests.

Files are written lazily, one directory per case: `<directory>/<case>/chain.pem` (leaf first,
then whatever the server should send) and `<directory>/<case>/key.pem` (PKCS#8, unencrypted).
Keys are cached per `PKI` instance: every ECDSA server leaf shares one P-256 key, and the RSA
2048 and RSA 1024 keys are generated once each, so building every case takes a fraction of a
second.

Two cases need material that `cryptography` refuses to produce through its X.509 builder:

- ``sha1_signature``: the builder rejects SHA-1, but plain ``key.sign`` does not, so the leaf
  is built with SHA-256 and then re-signed by hand (`_resign_with_sha1`): the signature
  AlgorithmIdentifier is swapped inside the DER TBSCertificate and outside it, and the new
  TBSCertificate is signed with ECDSA-with-SHA1 by the intermediate.
- ``rsa_1024``: `rsa.generate_private_key` still creates 1024-bit keys, nothing special.

Servers loading ``rsa_1024`` or ``sha1_signature`` must lower their own security level (for
example ``DEFAULT:@SECLEVEL=0``); OpenSSL refuses to *load* such a certificate otherwise.

Client certificates (for mTLS tests of an inbound TLS terminator) come from a separate
hierarchy: a client root CA, written eagerly to `client_ca_pem` (what such a server loads as
its client CA), signs a client intermediate, which signs a leaf per client case (declared in
`_CLIENT_CASES`).  Neither hierarchy chains to the other's root, so a server trusting only
`client_ca_pem` refuses server certificates, and a client trusting only `root_pem` refuses
client certificates.  Client leaves are ECDSA P-256 (one shared key, not the server leaves'),
SHA-256, keyUsage digitalSignature (critical), extendedKeyUsage clientAuth, and a SAN with
one dNSName (also the subject CN) and one SPIFFE-style URI.  As with servers, each bad client
case differs from ``client_good`` in one property only; ``client_untrusted`` again sends a
complete chain up to a foreign root.  `PKI.client(case)` writes `<directory>/<case>/chain.pem`
(leaf, then the intermediate), `cert.pem` (the leaf alone) and `key.pem` (PKCS#8).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_DAY = datetime.timedelta(days=1)
_ORG = "ssaproxy tests"


@dataclass(frozen=True)
class ServerCreds:
    chain: Path  # PEM file: leaf first, then the intermediates the server should send
    key: Path  # PEM private key (PKCS8, unencrypted) of the leaf
    hostname: str  # the name (or IP literal) a client should verify against for this case


@dataclass(frozen=True)
class ClientCreds:
    chain: Path  # PEM file: leaf first, then the intermediate(s) the client should send
    key: Path  # PEM private key (PKCS8, unencrypted) of the leaf
    cert: Path  # PEM file: the leaf alone (for tools that take certificate and chain apart)


@dataclass(frozen=True)
class _Case:
    """How one case's leaf differs from the good one; the defaults are the good leaf."""

    hostname: str = "backend.test"
    san: tuple[str, ...] | None = ("backend.test",)  # DNS names or IP literals; None: no SAN
    key: str = "ec"  # "ec" (shared P-256 key), "rsa2048" or "rsa1024"
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH
    valid_from: int = -1  # days from now
    valid_until: int = 30  # days from now
    # "intermediate", "not_ca", "name_constrained", "untrusted" (chain to another root),
    # or "self" (self-signed leaf)
    issuer: str = "intermediate"
    send_chain: bool = True  # whether chain.pem holds the issuer chain after the leaf
    sha1: bool = False  # signed with SHA-1 instead of SHA-256


_CASES: dict[str, _Case] = {
    # Good: a client verifying `hostname` against the root accepts these.
    "good": _Case(),
    "good_ip": _Case(hostname="127.0.0.1", san=("ip.test", "127.0.0.1", "10.77.0.2")),
    "good_wildcard": _Case(hostname="a.wild.test", san=("*.wild.test",)),
    "good_rsa2048": _Case(key="rsa2048"),
    "good_localhost": _Case(hostname="localhost", san=("localhost",)),  # for the API tests (daemon resolves)
    "good_renewed": _Case(),  # "good" renewed: the same name and key, a new certificate (reload tests)
    # Bad: refused, each for the one reason its name gives.
    "expired": _Case(valid_from=-31, valid_until=-1),
    "not_yet_valid": _Case(valid_from=1, valid_until=31),
    "wrong_host": _Case(san=("other.test",)),
    "wildcard_too_deep": _Case(hostname="a.b.wild.test", san=("*.wild.test",)),
    "self_signed": _Case(issuer="self", send_chain=False),
    "untrusted_root": _Case(issuer="untrusted"),
    "incomplete_chain": _Case(send_chain=False),
    "intermediate_not_ca": _Case(issuer="not_ca"),
    "name_constraint": _Case(issuer="name_constrained"),
    "wrong_eku": _Case(eku=ExtendedKeyUsageOID.CLIENT_AUTH),
    "no_san": _Case(san=None),
    "ip_mismatch": _Case(hostname="127.0.0.1", san=("127.0.0.2",)),
    "rsa_1024": _Case(key="rsa1024"),
    "sha1_signature": _Case(sha1=True),
}


@dataclass(frozen=True)
class _ClientCase:
    """How one client case's leaf differs from ``client_good``; the defaults are that leaf."""

    dns: str = "client.test"  # the SAN dNSName, also the subject CN
    uri: str = "spiffe://example.org/ns/default/sa/web"  # the SAN uniformResourceIdentifier
    eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH
    valid_from: int = -1  # days from now
    valid_until: int = 30  # days from now
    # "client_intermediate", "client_untrusted" (chain to another client root), or "self"
    issuer: str = "client_intermediate"


_CLIENT_CASES: dict[str, _ClientCase] = {
    # Good: a server trusting `client_ca_pem` accepts these.
    "client_good": _ClientCase(),
    "client_other": _ClientCase(dns="other-client.test",
                                uri="spiffe://example.org/ns/default/sa/other"),
    # Bad: refused, each for the one reason its name gives.
    "client_expired": _ClientCase(valid_from=-31, valid_until=-1),
    "client_not_yet_valid": _ClientCase(valid_from=1, valid_until=31),
    "client_untrusted": _ClientCase(issuer="client_untrusted"),
    "client_self_signed": _ClientCase(issuer="self"),
    "client_wrong_eku": _ClientCase(eku=ExtendedKeyUsageOID.SERVER_AUTH),
}


@dataclass(frozen=True)
class _CA:
    cert: x509.Certificate
    key: PrivateKey


class PKI:
    """Root CAs written eagerly to `root_pem` (servers) and `client_ca_pem` (clients);
    per-case server and client credentials on demand."""

    GOOD_CASES: tuple[str, ...] = ("good", "good_ip", "good_wildcard", "good_rsa2048")
    BAD_CASES: tuple[str, ...] = (
        "expired",
        "not_yet_valid",
        "wrong_host",
        "wildcard_too_deep",
        "self_signed",
        "untrusted_root",
        "incomplete_chain",
        "intermediate_not_ca",
        "name_constraint",
        "wrong_eku",
        "no_san",
        "ip_mismatch",
        "rsa_1024",
        "sha1_signature",
    )
    CLIENT_GOOD_CASES: tuple[str, ...] = ("client_good", "client_other")
    CLIENT_BAD_CASES: tuple[str, ...] = (
        "client_expired",
        "client_not_yet_valid",
        "client_untrusted",
        "client_self_signed",
        "client_wrong_eku",
    )

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self._creds: dict[str, ServerCreds] = {}
        self._root = self._new_ca("ssaproxy test root CA", issuer=None)
        self.root_pem: Path = self.directory / "root-ca.pem"
        self.root_pem.write_bytes(_pem(self._root.cert))
        self._client_creds: dict[str, ClientCreds] = {}
        self._client_root = self._new_ca("ssaproxy test client root CA", issuer=None)
        self.client_ca_pem: Path = self.directory / "client-root-ca.pem"
        self.client_ca_pem.write_bytes(_pem(self._client_root.cert))

    def server(self, case: str) -> ServerCreds:
        """The credentials for `case` (one of GOOD_CASES or BAD_CASES), built once."""
        creds = self._creds.get(case)
        if creds is None:
            try:
                spec = _CASES[case]
            except KeyError:
                known = ", ".join(_CASES)
                raise KeyError(f"unknown PKI case {case!r}; known: {known}") from None
            creds = self._creds[case] = self._build(case, spec)
        return creds

    def client(self, case: str) -> ClientCreds:
        """The client credentials for `case` (CLIENT_GOOD_CASES or CLIENT_BAD_CASES), built once."""
        creds = self._client_creds.get(case)
        if creds is None:
            try:
                spec = _CLIENT_CASES[case]
            except KeyError:
                known = ", ".join(self.CLIENT_GOOD_CASES + self.CLIENT_BAD_CASES)
                raise KeyError(f"unknown PKI client case {case!r}; known: {known}") from None
            creds = self._client_creds[case] = self._build_client(case, spec)
        return creds

    # -- cases ---------------------------------------------------------------------------

    def _build(self, case: str, spec: _Case) -> ServerCreds:
        key = self._leaf_key(spec.key)
        chain_after_leaf: list[x509.Certificate]
        if spec.issuer == "self":
            issuer: _CA | None = None
            chain_after_leaf = []
        else:
            issuer, chain_after_leaf = self._issuer_chain(spec.issuer)
        leaf = self._new_leaf(spec, key, issuer)
        chain = [leaf, *chain_after_leaf] if spec.send_chain else [leaf]

        out = self.directory / case
        out.mkdir(exist_ok=True)
        creds = ServerCreds(chain=out / "chain.pem", key=out / "key.pem", hostname=spec.hostname)
        creds.chain.write_bytes(b"".join(_pem(cert) for cert in chain))
        _write_key(creds.key, key)
        return creds

    def _build_client(self, case: str, spec: _ClientCase) -> ClientCreds:
        key = self._client_key
        chain_after_leaf: list[x509.Certificate]
        if spec.issuer == "self":
            issuer: _CA | None = None
            chain_after_leaf = []
        else:
            issuer, chain_after_leaf = self._issuer_chain(spec.issuer)
        leaf = self._leaf(
            cn=spec.dns,
            names=[x509.DNSName(spec.dns), x509.UniformResourceIdentifier(spec.uri)],
            key=key,
            issuer=issuer,
            eku=spec.eku,
            valid_from=spec.valid_from,
            valid_until=spec.valid_until,
        )

        out = self.directory / case
        out.mkdir(exist_ok=True)
        creds = ClientCreds(chain=out / "chain.pem", key=out / "key.pem", cert=out / "cert.pem")
        creds.cert.write_bytes(_pem(leaf))
        creds.chain.write_bytes(b"".join(_pem(cert) for cert in [leaf, *chain_after_leaf]))
        _write_key(creds.key, key)
        return creds

    def _issuer_chain(self, which: str) -> tuple[_CA, list[x509.Certificate]]:
        """The leaf's issuer, and the certificates a server sends after the leaf."""
        if which == "intermediate":
            return self._intermediate, [self._intermediate.cert]
        if which == "not_ca":
            return self._not_ca_intermediate, [self._not_ca_intermediate.cert]
        if which == "name_constrained":
            ca = self._name_constrained_intermediate
            return ca, [ca.cert]
        if which == "untrusted":  # a complete chain, its own root included
            root, intermediate = self._untrusted_hierarchy
            return intermediate, [intermediate.cert, root.cert]
        if which == "client_intermediate":
            return self._client_intermediate, [self._client_intermediate.cert]
        if which == "client_untrusted":  # a complete chain, its own root included
            root, intermediate = self._untrusted_client_hierarchy
            return intermediate, [intermediate.cert, root.cert]
        raise ValueError(f"unknown issuer {which!r}")

    def _new_leaf(self, spec: _Case, key: PrivateKey, issuer: _CA | None) -> x509.Certificate:
        return self._leaf(
            cn=spec.san[0] if spec.san else spec.hostname,
            names=[_general_name(name) for name in spec.san or ()],
            key=key,
            issuer=issuer,
            eku=spec.eku,
            valid_from=spec.valid_from,
            valid_until=spec.valid_until,
            sha1=spec.sha1,
        )

    def _leaf(self, *, cn: str, names: list[x509.GeneralName], key: PrivateKey,
              issuer: _CA | None, eku: x509.ObjectIdentifier, valid_from: int,
              valid_until: int, sha1: bool = False) -> x509.Certificate:
        """An end-entity certificate; no SAN extension at all when `names` is empty."""
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(digital_signature=True,
                        key_encipherment=isinstance(key, rsa.RSAPrivateKey)), True),
            (x509.ExtendedKeyUsage([eku]), False),
        ]
        if names:
            extensions.append((x509.SubjectAlternativeName(names), False))
        return self._sign(
            subject=_name(cn),
            public_key=key.public_key(),
            issuer=issuer,
            self_key=key,
            not_before=self._now + valid_from * _DAY,
            not_after=self._now + valid_until * _DAY,
            extensions=extensions,
            sha1=sha1,
        )

    # -- CAs -----------------------------------------------------------------------------

    @functools.cached_property
    def _intermediate(self) -> _CA:
        return self._new_ca("ssaproxy test intermediate CA", issuer=self._root)

    @functools.cached_property
    def _not_ca_intermediate(self) -> _CA:
        # basicConstraints cA=FALSE (critical, no pathLenConstraint) and no keyUsage at all:
        # keyCertSign would be an RFC 5280 error in a non-CA (X509_STRICT reports it), and a
        # keyUsage without it would be refused by the keyUsage check instead; with none the
        # basicConstraints check is the only one that can refuse this certificate.
        return self._new_ca("ssaproxy test intermediate that is not a CA", issuer=self._root,
                            ca=False)

    @functools.cached_property
    def _name_constrained_intermediate(self) -> _CA:
        constraint = x509.NameConstraints(permitted_subtrees=[x509.DNSName("allowed.test")],
                                          excluded_subtrees=None)
        return self._new_ca("ssaproxy test name-constrained intermediate CA", issuer=self._root,
                            extra=[(constraint, True)])

    @functools.cached_property
    def _untrusted_hierarchy(self) -> tuple[_CA, _CA]:
        root = self._new_ca("ssaproxy untrusted root CA", issuer=None)
        return root, self._new_ca("ssaproxy untrusted intermediate CA", issuer=root)

    @functools.cached_property
    def _client_intermediate(self) -> _CA:
        return self._new_ca("ssaproxy test client intermediate CA", issuer=self._client_root)

    @functools.cached_property
    def _untrusted_client_hierarchy(self) -> tuple[_CA, _CA]:
        root = self._new_ca("ssaproxy untrusted client root CA", issuer=None)
        return root, self._new_ca("ssaproxy untrusted client intermediate CA", issuer=root)

    def _new_ca(self, cn: str, *, issuer: _CA | None, ca: bool = True,
                extra: list[tuple[x509.ExtensionType, bool]] | None = None) -> _CA:
        key = ec.generate_private_key(ec.SECP256R1())
        # Validity windows enclose every leaf's, the expired and not-yet-valid ones included.
        if issuer is None:  # a root: no pathLenConstraint
            path_length, not_before, not_after = None, -400 * _DAY, 3650 * _DAY
        else:
            path_length, not_before, not_after = 0, -365 * _DAY, 1825 * _DAY
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True),
        ]
        if ca:
            extensions.append((_key_usage(key_cert_sign=True, crl_sign=True), True))
        extensions += extra or []
        cert = self._sign(subject=_name(cn), public_key=key.public_key(), issuer=issuer,
                          self_key=key, not_before=self._now + not_before,
                          not_after=self._now + not_after,
                          extensions=extensions)
        return _CA(cert=cert, key=key)

    def _sign(self, *, subject: x509.Name, public_key: PublicKey, issuer: _CA | None,
              self_key: PrivateKey, not_before: datetime.datetime,
              not_after: datetime.datetime, extensions: list[tuple[x509.ExtensionType, bool]],
              sha1: bool = False) -> x509.Certificate:
        """Sign a v3 certificate; `issuer` None means self-signed with `self_key`."""
        issuer_name = subject if issuer is None else issuer.cert.subject
        signing_key = self_key if issuer is None else issuer.key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if issuer is not None:
            ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value),
                critical=False)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(signing_key, hashes.SHA256())
        return _resign_with_sha1(cert, signing_key) if sha1 else cert

    # -- keys ----------------------------------------------------------------------------

    def _leaf_key(self, kind: str) -> PrivateKey:
        if kind == "ec":
            return self._ec_leaf_key
        if kind == "rsa2048":
            return self._rsa2048_key
        if kind == "rsa1024":
            return self._rsa1024_key
        raise ValueError(f"unknown key kind {kind!r}")

    @functools.cached_property
    def _ec_leaf_key(self) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    @functools.cached_property
    def _client_key(self) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    @functools.cached_property
    def _rsa2048_key(self) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @functools.cached_property
    def _rsa1024_key(self) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)


# -- helpers -------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False,
               key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(path: Path, key: PrivateKey) -> None:
    """`key` as unencrypted PKCS#8 PEM, readable by the owner only."""
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    path.chmod(0o600)


# DER AlgorithmIdentifiers of the SHA-1 signature algorithms (RFC 3279 section 2.2):
# sha1WithRSAEncryption (1.2.840.113549.1.1.5) with NULL parameters, and
# ecdsa-with-SHA1 (1.2.840.10045.4.1) with the parameters absent.
_SHA1_WITH_RSA = bytes.fromhex("300d06092a864886f70d0101050500")
_ECDSA_WITH_SHA1 = bytes.fromhex("300906072a8648ce3d0401")


def _resign_with_sha1(cert: x509.Certificate, key: PrivateKey) -> x509.Certificate:
    """`cert`, identical but for its signature: SHA-1 by `key` (which must be the issuer's).

    cryptography's CertificateBuilder refuses SHA-1, so we edit the DER: a Certificate is
    SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING } and the
    TBSCertificate is SEQUENCE { [0] version, serialNumber, signature, issuer, ... }, where
    `signature` must repeat signatureAlgorithm.
    """
    tag, tbs_content = _der_unwrap(cert.tbs_certificate_bytes)
    fields = _der_split(tbs_content)
    if tag != 0x30 or len(fields) < 7 or fields[0][0] != 0xA0:
        raise ValueError("unexpected TBSCertificate layout")
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm, oid = _SHA1_WITH_RSA, SignatureAlgorithmOID.RSA_WITH_SHA1
    else:
        algorithm, oid = _ECDSA_WITH_SHA1, SignatureAlgorithmOID.ECDSA_WITH_SHA1
    fields[2] = algorithm
    tbs = _der(0x30, b"".join(fields))
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    else:
        signature = key.sign(tbs, ec.ECDSA(hashes.SHA1()))
    resigned = x509.load_der_x509_certificate(
        _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature)))
    if resigned.signature_algorithm_oid != oid or resigned.tbs_certificate_bytes != tbs:
        raise AssertionError("SHA-1 re-signing produced an unexpected certificate")
    return resigned


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV with a single-byte tag."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _der_header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at `pos` (single-byte tags only)."""
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not supported")
    first = data[pos + 1]
    start = pos + 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if not 0 < count <= 4:
            raise ValueError("bad DER length")
        size = int.from_bytes(data[start:start + count], "big")
        start += count
    end = start + size
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, start, end


def _der_unwrap(tlv: bytes) -> tuple[int, bytes]:
    """The tag and content of a single TLV spanning all of `tlv`."""
    tag, start, end = _der_header(tlv, 0)
    if end != len(tlv):
        raise ValueError("trailing bytes after DER value")
    return tag, tlv[start:end]


def _der_split(content: bytes) -> list[bytes]:
    """The raw TLVs (header included) concatenated in `content`."""
    out: list[bytes] = []
    pos = 0
    while pos < len(content):
        _, _, end = _der_header(content, pos)
        out.append(content[pos:end])
        pos = end
    return out


__all__ = ["PKI", "ClientCreds", "ServerCreds"]
