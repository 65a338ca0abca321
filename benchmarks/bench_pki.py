"""A throwaway CA and one server certificate for the benchmarks, made with cryptography.

Not trustme: its leaves mark the subjectAltName critical beside a non-empty subject, which
cryptography's verifier (and so ssaproxy, docs/verification.md) refuses.  These follow RFC 5280
and the Web PKI profile: ECDSA P-256 (or RSA 2048), SHA-256, key identifiers, critical
basicConstraints and keyUsage, a non-critical SAN.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key(use_rsa: bool) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048) if use_rsa else ec.generate_private_key(ec.SECP256R1())


def write_pki(directory: Path, hostname: str, *more: str, use_rsa: bool = False) -> tuple[Path, Path, Path]:
    """(chain, key, CA) PEM files in `directory`: one certificate for `hostname` and `more`."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7))
    ca_key, leaf_key = _key(use_rsa), _key(use_rsa)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ssaproxy benchmark CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])).issuer_name(ca_name)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, use_rsa, False, False, False, False, False, False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in (hostname, *more)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain, key, root = directory / "chain.pem", directory / "key.pem", directory / "ca.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    root.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return chain, key, root
