"""What one certificate must be on its own, whatever chain it is in: a strong enough key, a
signature hash that is not weak, a leaf key allowed to sign the handshake; and the identities
a client certificate names.  Pure (cryptography's parsed certificates only)."""

from __future__ import annotations

from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

_WEAK_HASHES = (hashes.MD5, hashes.SHA1)


def key_problem(cert: x509.Certificate, min_rsa_bits: int) -> Optional[str]:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < min_rsa_bits:
        return f"RSA key of {key.key_size} bits is below {min_rsa_bits}"
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA keys are not accepted"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        return f"EC key on {key.curve.name} is below 256 bits"
    return None


def usage_problem(leaf: x509.Certificate) -> Optional[str]:
    """Every suite ssaproxy allows has forward secrecy, so a peer's key always signs the
    handshake: a keyUsage without digitalSignature forbids exactly that use (OpenSSL's purpose
    check also lets keyEncipherment or keyAgreement pass)."""
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if usage.digital_signature:
        return None
    return "certificate keyUsage lacks digitalSignature (the key signs the handshake)"


def signature_problem(cert: x509.Certificate) -> Optional[str]:
    """A weak signature hash.  Not asked of the trust anchor (the top of the verified chain),
    whose self-signature carries no trust; asked of every other certificate, self-issued
    key-rollover intermediates included."""
    try:
        algorithm = cert.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - an algorithm cryptography cannot name is not one we trust
        return "unsupported signature algorithm"
    if isinstance(algorithm, _WEAK_HASHES):
        return f"certificate signed with {algorithm.name.upper()}"
    return None


def san_identities(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple([f"dns:{n}" for n in san.get_values_for_type(x509.DNSName)]
                 + [f"uri:{u}" for u in san.get_values_for_type(x509.UniformResourceIdentifier)])


def normal_identity(identity: str) -> str:
    kind, _, value = identity.partition(":")
    return f"dns:{value.lower().rstrip('.')}" if kind == "dns" else identity
