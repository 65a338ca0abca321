"""A program's certificates, keys and trust anchors, as PEM bytes: parsed, bounded, paired.

The library reads files in the program's own process and sends bytes; nothing here opens a
path.  A server socket may hold several certificate chains (at most `MAX_CHAINS`), each with
its private key: TLS_CERTIFICATE_CHAIN starts a new chain, TLS_PRIVATE_KEY completes the last
one (or waits for the next chain when it comes first).  Two chains may share their names only
with different key types (an RSA and an ECDSA chain side by side, OpenSSL picking by what the
client can verify); two of one key type for the same names could never both be served.
"""

from __future__ import annotations

import errno
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ssaproxy.tls.sni import san_names

MAX_PEM = 256 * 1024  # one chain or key
MAX_TRUST = 1 << 20  # trusted certificates, every TLS_TRUSTED_PEER_CERTIFICATES together
MAX_CHAINS = 8
_MAX_KEY_BITS = 4096  # an 8192-bit RSA key costs ~40 ms of the daemon's one thread per handshake

Chain = tuple[bytes, Optional[bytes]]  # (chain PEM, its key PEM once given)


class ApiError(Exception):
    """A request the daemon refuses: `code` is the errno the program gets, `text` is TLS_ERROR."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def certificates(value: bytes, what: str, limit: int = MAX_PEM) -> list[x509.Certificate]:
    if len(value) > limit:
        raise ApiError(errno.EINVAL, f"{what}: more than {limit} bytes")
    try:
        certs = x509.load_pem_x509_certificates(value)
    except ValueError as e:
        raise ApiError(errno.EINVAL, f"{what}: not PEM certificates ({e})") from None
    if not certs:
        raise ApiError(errno.EINVAL, f"{what}: no certificate")
    return certs


def private_key(value: bytes) -> Any:
    if len(value) > MAX_PEM:
        raise ApiError(errno.EINVAL, "private key: too large")
    try:
        # The full RSA consistency check costs seconds for a large key, in the reactor thread;
        # this is the program's own key, and the pairing with its certificate is checked below.
        key = serialization.load_pem_private_key(value, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError:
        raise ApiError(errno.EINVAL, "private key is encrypted; give it unencrypted (the library reads "
                                     "it in your process)") from None
    except (ValueError, Exception) as e:  # noqa: BLE001 - any parse failure is a bad value
        raise ApiError(errno.EINVAL, f"private key: not a PEM private key ({type(e).__name__})") from None
    size = getattr(key, "key_size", 0)
    if size > _MAX_KEY_BITS:
        raise ApiError(errno.EINVAL, f"private key of {size} bits; at most {_MAX_KEY_BITS}")
    return key


def key_type(public_key: object) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ECDSA"
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "EdDSA"
    return type(public_key).__name__


def leaf(chain_pem: bytes) -> x509.Certificate:
    return certificates(chain_pem, "certificate chain")[0]


def check_pair(chain_pem: bytes, key_pem: bytes) -> None:
    """EINVAL unless `key_pem` is the private key of the chain's first certificate."""
    public = private_key(key_pem).public_key()
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if public.public_bytes(*fmt) != leaf(chain_pem).public_key().public_bytes(*fmt):
        raise ApiError(errno.EINVAL, "the private key does not match the certificate chain's first certificate")


def add_chain(chains: tuple[Chain, ...], pending_key: Optional[bytes], chain_pem: bytes) -> tuple[Chain, ...]:
    """`chains` with one more chain (with `pending_key`, a key given before it), or EINVAL."""
    new = leaf(chain_pem)
    if len(chains) >= MAX_CHAINS:
        raise ApiError(errno.EINVAL, f"at most {MAX_CHAINS} certificate chains per socket")
    if chains and chains[-1][1] is None:
        raise ApiError(errno.EINVAL, "the previous certificate chain has no TLS_PRIVATE_KEY yet")
    kind, mine = key_type(new.public_key()), san_names(new)
    for other, _ in chains:
        old = leaf(other)
        if san_names(old) == mine and key_type(old.public_key()) == kind:
            raise ApiError(errno.EINVAL, f"a second {kind} chain for the same names ({', '.join(sorted(mine))}): "
                                         "one per key type")
    if pending_key is not None:
        check_pair(chain_pem, pending_key)
    return (*chains, (chain_pem, pending_key))


def add_key(chains: tuple[Chain, ...], key_pem: bytes) -> tuple[tuple[Chain, ...], Optional[bytes]]:
    """(chains, pending key) with `key_pem` given to the last chain, or kept for the next one."""
    private_key(key_pem)
    if not chains:
        return chains, key_pem
    chain_pem, _ = chains[-1]
    check_pair(chain_pem, key_pem)
    return (*chains[:-1], (chain_pem, key_pem)), None
