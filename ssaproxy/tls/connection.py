"""The one place an `SSL.Connection` is made: one builder per side, each wrapped as a stream end.

A client connection carries its `Verifier` as app data (the verify callback finds it there)
and sends SNI only for a DNS name: RFC 6066 forbids IP literals in server_name.  Given a
`SessionKey`, it offers the cached session for that key (if any) and keeps its own session
for the next connection once verified (`tls.sessions`).
"""

from __future__ import annotations

from typing import Optional, TypeVar

from OpenSSL import SSL

from ssaproxy.policy import Identity
from ssaproxy.tls import sessions
from ssaproxy.tls.revcheck import RevocationCheck
from ssaproxy.tls.stream import TLSStream
from ssaproxy.tls.verify import ClientCheck, Verifier


def verifier_for(identity: Identity, min_rsa_bits: int) -> Verifier:
    if identity.dns_name is not None:
        return Verifier(hostname=identity.dns_name, min_rsa_bits=min_rsa_bits)
    return Verifier(ip=identity.ip, min_rsa_bits=min_rsa_bits)


def client_stream(ctx: SSL.Context, identity: Identity, min_rsa_bits: int,
                  resume: Optional[sessions.SessionKey] = None,
                  revocation: Optional[RevocationCheck] = None) -> TLSStream:
    """Client-side TLS to a peer that must prove `identity` (and, with `revocation`, not be
    revoked: the server is asked to staple); `resume`: the key under which sessions to this
    peer are cached (None: no resumption)."""
    verifier = verifier_for(identity, min_rsa_bits)
    conn = SSL.Connection(ctx, None)
    conn.set_app_data(verifier)
    if revocation is not None:
        verifier.revocation = revocation
        conn.request_ocsp()
    if identity.dns_name is not None:
        conn.set_tlsext_host_name(identity.dns_name.encode("ascii"))
    stream = TLSStream(conn, verifier)
    if resume is not None:
        offered = sessions.CACHE.get(resume)
        if offered is not None and offered.identity == verifier.identity:
            conn.set_session(offered.session)
            verifier.offered = offered
        stream.saver = sessions.SessionSaver(sessions.CACHE, resume, verifier.offered)
    return stream


def session_key(ctx: SSL.Context, identity: Identity, peer: str, port: int, min_rsa_bits: int,
                alpn: tuple[str, ...] = (), owner: int = -1) -> sessions.SessionKey:
    """The cache key of a client connection through `ctx` to `peer`:`port` proving `identity`."""
    return sessions.SessionKey(context=sessions.context_token(ctx), identity=str(identity), peer=peer, port=port,
                               alpn=alpn, min_rsa_bits=min_rsa_bits, owner=owner)


S = TypeVar("S", bound=TLSStream)


def server_stream(ctx: SSL.Context, check: ClientCheck, kind: type[S],
                  revocation: Optional[RevocationCheck] = None) -> S:
    """Server-side TLS (as a `kind` of stream); `check` judges the client's certificate, if one
    is asked for, and `revocation` whether it is revoked."""
    conn = SSL.Connection(ctx, None)
    conn.set_app_data(check)
    check.revocation = revocation
    return kind(conn, check, server=True)
