"""One certificate's own rules (ssaproxy.tls.certchecks), on certificates made here: no
handshake, no chain.  The same rules in real handshakes: tests/test_path_corpus.py."""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ssaproxy.tls.certchecks import key_problem, normal_identity, san_identities, signature_problem, usage_problem
from tests.pki import PKI

EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _cert(key: Any = EC_KEY, *, usage: Optional[x509.KeyUsage] = None,
          san: Optional[x509.SubjectAlternativeName] = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certchecks.test")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1)))
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(key, hashes.SHA256())


def _usage(*, digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=True,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def test_keys_below_the_floor_are_named_and_strong_ones_pass() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert key_problem(_cert(small), 2048) == "RSA key of 1024 bits is below 2048"
    big = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert key_problem(_cert(big), 2048) is None
    assert key_problem(_cert(big), 3072) == "RSA key of 2048 bits is below 3072"
    assert key_problem(_cert(EC_KEY), 4096) is None  # an RSA floor says nothing of EC keys
    assert key_problem(_cert(ec.generate_private_key(ec.SECP224R1())), 2048) == \
        "EC key on secp224r1 is below 256 bits"


def test_a_sha1_signature_is_refused_and_sha256_is_not(pki: PKI) -> None:
    # The X.509 builder refuses SHA-1: tests/pki.py re-signs that leaf by hand.
    leaf = x509.load_pem_x509_certificates(pki.server("sha1_signature").chain.read_bytes())[0]
    assert signature_problem(leaf) == "certificate signed with SHA1"
    assert signature_problem(_cert()) is None


@pytest.mark.parametrize(("usage", "problem"), [
    (None, None),
    (_usage(digital_signature=True), None),
    (_usage(digital_signature=False), "certificate keyUsage lacks digitalSignature (the key signs the handshake)"),
])
def test_a_leaf_key_must_be_allowed_to_sign(usage: Optional[x509.KeyUsage], problem: Optional[str]) -> None:
    assert usage_problem(_cert(usage=usage)) == problem


def test_san_identities_and_their_normal_form() -> None:
    san = x509.SubjectAlternativeName([x509.DNSName("Api.Example.TEST"), x509.UniformResourceIdentifier(
        "spiffe://example.test/app"), x509.IPAddress(ipaddress.ip_address("192.0.2.1"))])
    ids = san_identities(_cert(san=san))
    assert ids == ("dns:Api.Example.TEST", "uri:spiffe://example.test/app")  # IP SANs are not client identities
    assert [normal_identity(i) for i in ids] == ["dns:api.example.test", "uri:spiffe://example.test/app"]
    assert normal_identity("dns:host.test.") == "dns:host.test"
    assert san_identities(_cert()) == ()
