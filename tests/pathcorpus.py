"""Chains for the path-validation corpus, generated with cryptography from a compact table.

Theory of operation: a case is a leaf spec, the CA specs above it (nearest first) and a root
spec, each a `Cert` that differs from a well-formed default in the fields the case names.
`Corpus.build(case)` signs the chain (keys cached per kind and position, so the whole corpus
builds in a second or two) and returns the certificates, the leaf's key and the PEM file of the
trust anchor.  The table itself lives in tests/test_path_corpus.py, next to the verdicts.

cryptography's builder refuses SHA-1 and MD5 signatures, so those certificates are re-signed
by editing the DER (the same way tests/pki.py makes its SHA-1 case).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.pki import _der, _der_split, _der_unwrap

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_DAY = datetime.timedelta(days=1)
_EKU = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH,
        "code": ExtendedKeyUsageOID.CODE_SIGNING, "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
_WEAK = {  # (hash, key kind) -> DER AlgorithmIdentifier
    ("sha1", "rsa"): bytes.fromhex("300d06092a864886f70d0101050500"),
    ("md5", "rsa"): bytes.fromhex("300d06092a864886f70d0101040500"),
    ("sha1", "ec"): bytes.fromhex("300906072a8648ce3d0401"),
}
_UNKNOWN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")
POLICY_A = "1.3.6.1.4.1.55555.2.1"


@dataclass(frozen=True)
class Cert:
    """One certificate; the defaults make a well-formed TLS server leaf."""

    san: Optional[tuple[str, ...]] = ("dns:a.test",)  # "dns:", "ip:", "uri:"; None: no extension
    eku: Optional[tuple[str, ...]] = ("server",)
    ku: Optional[tuple[str, ...]] = ("ds",)  # ds, ke, kcs, crl; None: no extension
    ca: Optional[bool] = False  # None: no basicConstraints
    pathlen: Optional[int] = None
    bc_critical: bool = True
    aki: bool = True
    ski: bool = True
    permit: tuple[str, ...] = ()  # name constraints
    exclude: tuple[str, ...] = ()
    require_explicit: Optional[int] = None  # policyConstraints
    inhibit_any: Optional[int] = None
    policies: tuple[str, ...] = ()  # certificatePolicies OIDs
    days: tuple[int, int] = (-1, 30)  # notBefore, notAfter in days from now
    hash: str = "sha256"  # sha256, sha384, sha1, md5
    key: str = "p256"  # p256, p384, p224, rsa2048, rsa1024, ed25519
    unknown_critical: bool = False
    empty_subject: bool = False
    san_critical: bool = False


def ca(**kw: object) -> Cert:
    """A well-formed CA certificate, changed as given."""
    base = Cert(san=None, eku=None, ku=("kcs", "crl"), ca=True)
    return replace(base, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    name: str
    expect: str  # "ok" or a refusal category (tests/test_path_corpus.py)
    leaf: Cert = field(default_factory=Cert)
    chain: tuple[Cert, ...] = (ca(),)  # the CAs between leaf and root, nearest the leaf first
    root: Cert = field(default_factory=lambda: ca(aki=False))
    target: str = "a.test"  # the name (or IP) asked for; unused for client cases
    face: str = "server"  # or "client": an mTLS client certificate
    send: bool = True  # whether the peer sends its intermediates
    self_signed: bool = False  # the leaf is its own issuer and the trust anchor
    strict: bool = True  # False: under insecure_allow_non_rfc5280_chains
    foreign_root: bool = False  # the chain ends in a root that is not trusted


@dataclass(frozen=True)
class Built:
    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]  # what the peer sends after the leaf
    key: Key
    trust: Path  # PEM file of the trusted root(s)


class Corpus:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._keys: dict[tuple[str, str], Key] = {}
        self._now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self.default_root_pem = self.directory / "root-default.pem"
        root, _ = self._root(Case(name="default", expect="ok"))
        self.default_root_pem.write_bytes(root.public_bytes(serialization.Encoding.PEM))

    def build(self, case: Case) -> Built:
        if case.self_signed:
            key = self._key(case.leaf.key, "leaf")
            leaf = self._sign(case.leaf, "self-signed leaf", key.public_key(), "self-signed leaf", key)
            trust = self.directory / f"{case.name}-trust.pem"
            trust.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
            return Built(leaf=leaf, intermediates=(), key=key, trust=trust)
        root, root_key = self._root(case)
        issuer_name, issuer_key = "root", root_key
        issued: list[x509.Certificate] = []
        for depth, spec in reversed(list(enumerate(case.chain, start=1))):
            key = self._key(spec.key, f"ca{depth}")
            cn = f"ca{depth}"
            issued.append(self._sign(spec, cn, key.public_key(), issuer_name, issuer_key))
            issuer_name, issuer_key = cn, key
        leaf_key = self._key(case.leaf.key, "leaf")
        leaf = self._sign(case.leaf, "leaf", leaf_key.public_key(), issuer_name, issuer_key)
        if case.foreign_root or case.root == Case(name="", expect="").root:
            trust = self.default_root_pem
        else:
            trust = self.directory / f"{case.name}-root.pem"
            trust.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        sent = tuple(reversed(issued)) if case.send else ()
        if case.foreign_root:
            sent = (*sent, root)
        return Built(leaf=leaf, intermediates=sent, key=leaf_key, trust=trust)

    # ---- internals
    def _root(self, case: Case) -> tuple[x509.Certificate, Key]:
        key = self._key(case.root.key, "foreign-root" if case.foreign_root else "root")
        return self._sign(case.root, "root", key.public_key(), "root", key), key

    def _key(self, kind: str, slot: str) -> Key:
        found = self._keys.get((kind, slot))
        if found is None:
            found = self._keys[(kind, slot)] = _new_key(kind)
        return found

    def _sign(self, spec: Cert, cn: str, public: object, issuer_cn: str, issuer_key: Key) -> x509.Certificate:
        subject = x509.Name([]) if spec.empty_subject else _name(cn)
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(_name(issuer_cn))
             .public_key(public).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
             .not_valid_before(self._now + spec.days[0] * _DAY).not_valid_after(self._now + spec.days[1] * _DAY))
        if spec.ca is not None:
            b = b.add_extension(x509.BasicConstraints(ca=spec.ca, path_length=spec.pathlen), spec.bc_critical)
        if spec.ku is not None:
            b = b.add_extension(_key_usage(spec.ku), True)
        if spec.eku is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([_EKU[e] for e in spec.eku]), False)
        if spec.san is not None:
            b = b.add_extension(x509.SubjectAlternativeName([_general(n) for n in spec.san]),
                                spec.san_critical or spec.empty_subject)
        if spec.ski:
            b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)  # type: ignore[arg-type]
        if spec.aki:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), False)  # type: ignore[arg-type]
        if spec.permit or spec.exclude:
            b = b.add_extension(x509.NameConstraints(
                permitted_subtrees=[_general(n) for n in spec.permit] or None,
                excluded_subtrees=[_general(n) for n in spec.exclude] or None), True)
        if spec.require_explicit is not None:
            b = b.add_extension(x509.PolicyConstraints(require_explicit_policy=spec.require_explicit,
                                                       inhibit_policy_mapping=None), True)
        if spec.inhibit_any is not None:
            b = b.add_extension(x509.InhibitAnyPolicy(spec.inhibit_any), True)
        if spec.policies:
            b = b.add_extension(x509.CertificatePolicies(
                [x509.PolicyInformation(x509.ObjectIdentifier(p), None) for p in spec.policies]), False)
        if spec.unknown_critical:
            b = b.add_extension(x509.UnrecognizedExtension(_UNKNOWN_OID, b"\x05\x00"), True)
        if isinstance(issuer_key, ed25519.Ed25519PrivateKey):
            return b.sign(issuer_key, None)
        cert = b.sign(issuer_key, hashes.SHA384() if spec.hash == "sha384" else hashes.SHA256())
        return cert if spec.hash in ("sha256", "sha384") else _resign(cert, issuer_key, spec.hash)


def _new_key(kind: str) -> Key:
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p224": ec.SECP224R1()}[kind]
    return ec.generate_private_key(curve)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ssaproxy corpus"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _general(name: str) -> x509.GeneralName:
    kind, _, value = name.partition(":")
    if kind == "dns":
        return x509.DNSName(value)
    if kind == "uri":
        return x509.UniformResourceIdentifier(value)
    if "/" in value:
        return x509.IPAddress(ipaddress.ip_network(value))
    return x509.IPAddress(ipaddress.ip_address(value))


def _key_usage(bits: tuple[str, ...]) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature="ds" in bits, content_commitment=False, key_encipherment="ke" in bits,
                         data_encipherment=False, key_agreement=False, key_cert_sign="kcs" in bits,
                         crl_sign="crl" in bits, encipher_only=False, decipher_only=False)


def _resign(cert: x509.Certificate, key: Key, digest: str) -> x509.Certificate:
    """`cert` signed again with SHA-1 or MD5 (the DER edited: the builder refuses both)."""
    kind = "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ec"
    algorithm = _WEAK[(digest, kind)]
    tag, content = _der_unwrap(cert.tbs_certificate_bytes)
    fields = _der_split(content)
    fields[2] = algorithm
    tbs = _der(0x30, b"".join(fields))
    h = hashes.SHA1() if digest == "sha1" else hashes.MD5()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs, padding.PKCS1v15(), h)
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        signature = key.sign(tbs, ec.ECDSA(h))
    return x509.load_der_x509_certificate(_der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature)))
