"""Server-side OpenSSL contexts for inbound listeners, built once per (listener, policy).

Theory of operation: certificates with the same DNS names form one group and share one
context, so an ECDSA and an RSA chain for the same names sit side by side and OpenSSL picks by
what the client supports.  The first group's context answers the handshake; its SNI callback
moves the connection to the group whose names match the requested server name (exact, or a
one-label wildcard), or leaves it on the first group.  Every group context carries the same
verification settings, because OpenSSL keeps the verify mode of the context the connection
started with.

Session resumption (`resumes`): stateless tickets under keys OpenSSL makes for the listener's
first context (the one that answers the handshake), bound by a session id context to a digest
of the listener's table and the policy, so a ticket resumes only on the listener and under the
rules that issued it, and a reload that changes either starts afresh.  A resumed client with a
certificate has its leaf checked again (`ClientCheck.accept_resumed`).  The keys live as long
as the context: a reload that rebuilds it (or another process) cannot decrypt the old tickets,
and those clients make a full handshake.  The inbound factory rebuilds its context every
`TICKET_KEY_ROTATION` seconds for that reason: no ticket key outlives a day.  (The bindings
offer no way to set the keys or to accept the previous ones for a while, so a rotation ends
every outstanding ticket at once.)
"""

from __future__ import annotations

import functools
from typing import Optional

from OpenSSL import SSL

from ssaproxy.config import PROFILE_MIN_VERSION, Inbound, Policy, TLSVersion
from ssaproxy.errors import ConfigError
from ssaproxy.tls.context import REQUIRE_PEER, Tickets, new_context, strict_checks, use_identity
from ssaproxy.tls.load import LoadedCertificate, load_certificates
from ssaproxy.tls.paths import PathValidator
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
    validator = None  # the client CA, read once for every group's context
    if inbound.client_auth != "none" and inbound.client_ca is not None:
        validator = PathValidator.from_location(inbound.client_ca, strict=not inbound.insecure_allow_non_rfc5280_chains)
    contexts = [(names, _group_context(inbound, policy, certs, validator)) for names, certs in groups.items()]
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


TICKET_KEY_ROTATION = 86400.0  # seconds a listener's ticket keys are used at most


def resumes(inbound: Inbound, policy: Policy) -> bool:
    """Whether the listener issues (and accepts) session tickets: not where client certificates
    are checked for revocation, since a ticket carries the client's leaf but not its issuer, so a
    resumed client's status could not be checked again (tickets would mean no check at all)."""
    if inbound.client_auth != "none" and (inbound.revocation or policy.revocation) != "off":
        return False
    return policy.session_resumption if inbound.session_resumption is None else inbound.session_resumption


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _group_context(inbound: Inbound, policy: Policy, certs: list[LoadedCertificate],
                   validator: Optional[PathValidator]) -> SSL.Context:
    low, high = versions(inbound, policy)
    verify = SSL.VERIFY_NONE
    if inbound.client_auth != "none":
        # An allow-list needs an identity.
        verify = REQUIRE_PEER if inbound.client_auth == "require" or inbound.allow else SSL.VERIFY_PEER
    tickets = Tickets.bound_to("inbound", inbound, policy, lifetime=policy.session_lifetime) \
        if resumes(inbound, policy) else None
    ctx = new_context(low, high, policy.ciphers, policy.ciphersuites, policy.groups, server=True, verify=verify,
                      alpn=inbound.alpn, tickets=tickets)
    for cert in certs:  # one per key type; OpenSSL chooses by what the client can use
        use_identity(ctx, cert.chain, cert.key)
    if verify != SSL.VERIFY_NONE:
        assert inbound.client_ca is not None and validator is not None
        ctx.load_verify_locations(inbound.client_ca)
        ctx.load_client_ca(inbound.client_ca.encode())
        strict_checks(ctx, validator)
    return ctx
