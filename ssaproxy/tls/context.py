"""OpenSSL contexts built once per frozen policy.

Theory of operation: an `SSL.Context` is expensive (the trust store is parsed into it) and is
immutable once connections use it, so we build one per `Policy` value and cache it; `Policy` is
frozen and hashable, which makes the cache key exact.  Everything per connection (the name to
verify, the verification outcome) lives in a `Verifier` attached to the `SSL.Connection` as
its app data; the context's verify callback only dispatches to it.

The cipher floor (`CIPHER_FLOOR`) and security level 2 are appended to whatever the admin
wrote, so a configured string can narrow the suites but never re-enable NULL, anonymous,
export, RC4, 3DES or MD5 suites, SHA-1 MACs, RSA key exchange (no forward secrecy), RSA keys
below 2048 bits or SHA-1 certificate signatures.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Optional, Sequence

import attrs
from cryptography import x509
from OpenSSL import SSL, crypto

from ssaproxy.config import Policy, TLSVersion
from ssaproxy.tls._openssl import set_groups_list, x509_strict_flags
from ssaproxy.tls.paths import PathValidator, load_anchors
from ssaproxy.tls.revcheck import status_callback
from ssaproxy.tls.verify import install, verify_callback

CIPHER_FLOOR = ":!aNULL:!eNULL:!EXPORT:!DES:!3DES:!RC4:!MD5:!PSK:!SRP:!DSS:!SHA1:!kRSA:@SECLEVEL=2"

# OpenSSL's number for each version ssaproxy speaks, in TLSVersion's order (the members are
# strings, so a plain "TLSv1.2" looks one up too).
_VERSIONS: dict[str, int] = {TLSVersion.TLSv1_2: SSL.TLS1_2_VERSION, TLSVersion.TLSv1_3: SSL.TLS1_3_VERSION}


REQUIRE_PEER = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT


@attrs.frozen(kw_only=True)
class Tickets:
    """Session resumption on a context: for a server, what its tickets are bound to."""

    session_id: bytes = b"ssaproxy-client"  # at most 32 bytes (SSL_MAX_SID_CTX_LENGTH)
    lifetime: float = 3600.0

    @classmethod
    def bound_to(cls, *parts: object, lifetime: float) -> Tickets:
        """A session id context from everything that decides who may resume: a digest of
        `parts` (a listener's table and the policy, say), so a change to either is a new one."""
        digest = hashlib.sha256(repr(parts).encode()).digest()
        return cls(session_id=digest, lifetime=lifetime)


def set_groups(ctx: SSL.Context, groups: str) -> None:
    if not set_groups_list(ctx, groups):
        raise ValueError(f"unknown group in {groups!r}")


def new_context(low: str, high: str, ciphers: Optional[str], ciphersuites: Optional[str], groups: str, *,
                server: bool = False, verify: int = SSL.VERIFY_NONE, alpn: Sequence[str] = (),
                tickets: Optional[Tickets] = None) -> SSL.Context:
    """A context with the versions, suites (the floor always appended to TLS 1.2's; None
    leaves that list out) and groups given, and the options every ssaproxy context has.

    Without `tickets`, no session can be resumed: a client takes none (TLS 1.2 offers no
    ticket extension) and a server keeps no session cache and issues no usable ticket.  With
    them, a server issues stateless tickets (encrypted with the context's own keys, bound to
    `tickets.session_id`, valid `tickets.lifetime` seconds) and a client accepts tickets for
    `tls.sessions` to keep.  A resumed session skips the verify callback: `PeerCheck.accept`
    decides what it is worth.  A server picks from `alpn`; a client offers `alpn`.  A `verify`
    mode other than none installs our callback."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(_VERSIONS[low])
    ctx.set_max_proto_version(_VERSIONS[high])
    if ciphers is not None:
        ctx.set_cipher_list((ciphers + CIPHER_FLOOR).encode("ascii"))
    if ciphersuites is not None:
        ctx.set_tls13_ciphersuites(ciphersuites.encode("ascii"))
    set_groups(ctx, groups)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | (0 if tickets else SSL.OP_NO_TICKET))
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if server:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # tickets are stateless: no server-side store
        if tickets is not None:
            # Without a session id context OpenSSL refuses to resume under client
            # verification; with one, a ticket only resumes where its context matches.
            ctx.set_session_id(tickets.session_id)
            ctx.set_timeout(max(1, int(tickets.lifetime)))
        if alpn:
            select_alpn(ctx, alpn)
    else:
        ctx.set_ocsp_client_callback(status_callback)  # revocation, for connections that ask (tls/revcheck.py)
        if alpn:
            ctx.set_alpn_protos([p.encode() for p in alpn])
    if verify != SSL.VERIFY_NONE:
        ctx.set_verify(verify, verify_callback)
    return ctx


def use_identity(ctx: SSL.Context, chain: str, key: str) -> None:
    """Present the certificate chain in PEM file `chain` with the private key in `key`."""
    ctx.use_certificate_chain_file(chain)
    ctx.use_privatekey_file(key)
    ctx.check_privatekey()


@functools.lru_cache(maxsize=64)
def client_context(policy: Policy, certificate: Optional[str] = None, key: Optional[str] = None) -> SSL.Context:
    """The context for connections ssaproxy originates to a verified TLS server, presenting
    `certificate` (a PEM chain) with `key` when a route gives a client identity."""
    ctx = new_context(policy.min_version, policy.max_version, policy.ciphers, policy.ciphersuites, policy.groups,
                      verify=REQUIRE_PEER, tickets=Tickets())  # whether sessions are kept: per route
    load_trust(ctx, policy.trust_store, strict=not policy.insecure_allow_non_rfc5280_chains)
    if certificate is not None and key is not None:
        use_identity(ctx, certificate, key)
    return ctx


def load_trust(ctx: SSL.Context, trust_store: Optional[str], *, strict: bool = True,
               extra: Sequence[x509.Certificate] = ()) -> None:
    """The admin's trust anchors (None: the system's; a directory: hashed), for OpenSSL and,
    read once here, for cryptography's verifier beside it; then strict checking.  `extra`: more
    anchors beside them (a program's TLS_TRUSTED_PEER_CERTIFICATES)."""
    store = ctx.get_cert_store()
    assert store is not None
    for cert in extra:
        store.add_cert(crypto.X509.from_cryptography(cert))
    if trust_store and os.path.isdir(trust_store):
        ctx.load_verify_locations(None, trust_store)
    elif trust_store:
        ctx.load_verify_locations(trust_store)
    else:
        ctx.set_default_verify_paths()
    if extra:
        strict_checks(ctx, PathValidator([*load_anchors(trust_store or None), *extra], strict=strict))
    else:
        strict_checks(ctx, PathValidator.from_location(trust_store or None, strict=strict))


def strict_checks(ctx: SSL.Context, validator: PathValidator) -> None:
    """Strict RFC 5280 checks (unless `validator` was built to waive them); no partial chains,
    no trust in intermediates from the store alone; chains of at most 8; `validator` as the
    second judge of every chain."""
    store = ctx.get_cert_store()
    assert store is not None
    if validator.strict:
        store.set_flags(x509_strict_flags())
    ctx.set_verify_depth(8)
    install(ctx, validator)


def select_alpn(ctx: SSL.Context, wanted: Sequence[str]) -> None:
    """As a server, pick the first of `wanted` (our preference order) that the client offers;
    with none in common, go on without ALPN rather than fail the handshake."""
    ours = [p.encode() for p in wanted]

    def select(conn: SSL.Connection, offered: list[bytes]) -> bytes:
        for proto in ours:
            if proto in offered:
                return proto
        return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]

    ctx.set_alpn_select_callback(select)


def negotiated_alpn(conn: SSL.Connection) -> Optional[str]:
    proto = conn.get_alpn_proto_negotiated()
    return proto.decode("ascii", "replace") if proto else None
