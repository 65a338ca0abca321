"""Several certificate chains on one server socket, chosen by the client's SNI.

Theory of operation: chains whose leaves carry the same subjectAltNames form one group and
share one context, so an RSA and an ECDSA chain for one name sit side by side and OpenSSL picks
by the signature algorithms the client offers.  The first group's context answers every
handshake; its servername callback moves the connection (SSL_set_SSL_CTX) to the first group
whose leaf is valid for the requested name, as service-identity judges it (RFC 6125: DNS
subjectAltNames, one-label wildcards), and leaves it on the first group otherwise.  Each
group's context is built by the same factory, so the verification settings, which OpenSSL
partly keeps from the context the connection started with, are the same on all of them.

Each chain goes in with its own intermediates (SSL_CTX_use_certificate_chain_file sets the
chain of the certificate it loads; the context-wide "extra chain" would mix two chains'
intermediates).  pyOpenSSL takes that chain only from a file, so the daemon writes the PEM
bytes to an anonymous memory file of its own (memfd) and names it by /proc/self/fd: no path
of the program's is ever opened, and nothing touches a disk.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

from cryptography import x509
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname


def san_names(cert: x509.Certificate) -> frozenset[str]:
    """The leaf's DNS and IP subjectAltNames: what decides its group."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset([n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
                     + [str(a) for a in san.get_values_for_type(x509.IPAddress)])


def valid_for(cert: x509.Certificate, name: str) -> bool:
    """Whether `cert` may serve the SNI `name`; any doubt is no."""
    try:
        verify_certificate_hostname(cert, name)
    except (VerificationError, CertificateError, ValueError, UnicodeError):
        return False
    return True


def use_chain(ctx: SSL.Context, chain_pem: bytes, key: Any) -> None:
    """Present `chain_pem` (leaf first) with `key` (a cryptography private key) on `ctx`, beside
    any chain of another key type already there."""
    fd = os.memfd_create("ssaproxy-chain", os.MFD_CLOEXEC)
    try:
        view = memoryview(chain_pem)
        while view:
            view = view[os.write(fd, view):]
        ctx.use_certificate_chain_file(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    ctx.use_privatekey(key)
    ctx.check_privatekey()


def serve_by_sni(make: Callable[[], SSL.Context], chains: Sequence[tuple[bytes, Any]]) -> SSL.Context:
    """One server context presenting every (chain PEM, private key) of `chains`: the first
    group's, switching to another group's by SNI."""
    groups: dict[frozenset[str], list[tuple[bytes, Any]]] = {}
    leaves: dict[frozenset[str], x509.Certificate] = {}
    for chain_pem, key in chains:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        names = san_names(leaf)
        groups.setdefault(names, []).append((chain_pem, key))
        leaves.setdefault(names, leaf)
    contexts: list[tuple[x509.Certificate, SSL.Context]] = []
    for names, members in groups.items():
        ctx = make()
        for chain_pem, key in members:
            use_chain(ctx, chain_pem, key)
        contexts.append((leaves[names], ctx))
    default = contexts[0][1]
    if len(contexts) > 1:
        default.set_tlsext_servername_callback(_picker(default, contexts))
    return default


def _picker(default: SSL.Context,
            contexts: list[tuple[x509.Certificate, SSL.Context]]) -> Callable[[SSL.Connection], None]:
    def pick(conn: SSL.Connection) -> None:
        raw = conn.get_servername()
        if not raw:
            return
        name = raw.decode("ascii", "replace").rstrip(".")
        chosen: Optional[SSL.Context] = next((ctx for leaf, ctx in contexts if valid_for(leaf, name)), None)
        if chosen is not None and chosen is not default:
            conn.set_context(chosen)

    return pick
