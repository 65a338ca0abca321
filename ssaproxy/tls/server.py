"""Server-side OpenSSL contexts for inbound listeners, built once per (listener, policy).

Theory of operation: certificates with the same DNS names form one group and share one
context, so an ECDSA and an RSA chain for the same names sit side by side and OpenSSL picks by
what the client supports.  The first group's context answers the handshake; its SNI callback
moves the connection to the group whose names match the requested server name (exact, or a
one-label wildcard), or leaves it on the first group.  Every group context carries the same
verification settings, because OpenSSL keeps the verify mode of the context the connection
started with.  Session resumption is off (`new_context(server=True)`): a resumed session would
skip our client-certificate checks, and `ClientCheck.accept` would then refuse it.
"""

from __future__ import annotations

import functools

from OpenSSL import SSL

from ssaproxy.config import PROFILE_MIN_VERSION, Inbound, Policy, TLSVersion
from ssaproxy.errors import ConfigError
from ssaproxy.tls.context import REQUIRE_PEER, new_context, strict_checks, use_identity
from ssaproxy.tls.load import LoadedCertificate, load_certificates
from ssaproxy.tls.stapling import stapler_for


def versions(inbound: Inbound, policy: Policy) -> tuple[TLSVersion, TLSVersion]:
    """The profile's floor, never below the admin's policy; the policy's ceiling."""
    low = TLSVersion.highest(PROFILE_MIN_VERSION[inbound.profile], policy.min_version)
    if low.rank > policy.max_version.rank:
        raise ConfigError(f"inbound.{inbound.name}.profile",
                          f"profile {inbound.profile!r} needs {low}, above policy.max_version {policy.max_version}")
    return low, policy.max_version


@functools.lru_cache(maxsize=64)
def server_context(inbound: Inbound, policy: Policy) -> SSL.Context:
    groups: dict[tuple[str, ...], list[LoadedCertificate]] = {}
    for cert in load_certificates(inbound):
        groups.setdefault(cert.names, []).append(cert)
    contexts = [(names, _group_context(inbound, policy, certs)) for names, certs in groups.items()]
    default = contexts[0][1]
    if inbound.ocsp_stapling:  # one stapler for the listener, on every context (tls/stapling.py)
        stapler = stapler_for(inbound.name, [c.chain for c in inbound.certificates], inbound.ocsp_response_file,
                              f"inbound.{inbound.name}.ocsp_response_file")
        for _, ctx in contexts:
            ctx.set_ocsp_server_callback(stapler.callback)
        default.set_app_data(stapler)

    def pick(conn: SSL.Connection) -> None:
        raw = conn.get_servername()
        if not raw:
            return
        name = raw.decode("ascii", "replace").lower().rstrip(".")
        for names, ctx in contexts:
            if any(_matches(pattern, name) for pattern in names):
                if ctx is not default:
                    conn.set_context(ctx)
                return

    default.set_tlsext_servername_callback(pick)
    return default


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _group_context(inbound: Inbound, policy: Policy, certs: list[LoadedCertificate]) -> SSL.Context:
    low, high = versions(inbound, policy)
    verify = SSL.VERIFY_NONE
    if inbound.client_auth != "none":
        # An allow-list needs an identity.
        verify = REQUIRE_PEER if inbound.client_auth == "require" or inbound.allow else SSL.VERIFY_PEER
    ctx = new_context(low, high, policy.ciphers, policy.ciphersuites, policy.groups, server=True, verify=verify,
                      alpn=inbound.alpn)
    for cert in certs:  # one per key type; OpenSSL chooses by what the client can use
        use_identity(ctx, cert.chain, cert.key)
    if verify != SSL.VERIFY_NONE:
        assert inbound.client_ca is not None
        ctx.load_verify_locations(inbound.client_ca)
        ctx.load_client_ca(inbound.client_ca.encode())
        strict_checks(ctx)
    return ctx
