"""`[policy]`: the admin's system-wide TLS policy, also the base of every `[[profile]]`'s.

Only the shape of its strings is checked here: whether OpenSSL accepts the cipher, suite and
group strings and whether the trust store loads is decided in `ssaproxy.tls.load`.
"""

from __future__ import annotations

from typing import Optional

import attrs

from ssaproxy.config.enums import REVOCATION_MODES, TLS_VERSIONS, TLSVersion
from ssaproxy.config.reader import Reader

# AEAD suites with forward secrecy only; a floor of exclusions is appended in tls.context so an
# admin's own string can never bring back NULL, anonymous, export or RC4/3DES suites.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
DEFAULT_CIPHERSUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
DEFAULT_GROUPS = "X25519:P-256:P-384"


def _version(value: str) -> TLSVersion:
    return TLSVersion(value)


@attrs.frozen(kw_only=True)
class Policy:
    """The admin's system-wide TLS policy."""

    min_version: TLSVersion = attrs.field(default=TLSVersion.TLSv1_2, converter=_version)
    max_version: TLSVersion = attrs.field(default=TLSVersion.TLSv1_3, converter=_version)
    ciphers: str = DEFAULT_CIPHERS
    ciphersuites: str = DEFAULT_CIPHERSUITES
    groups: str = DEFAULT_GROUPS
    trust_store: Optional[str] = None  # None: the system bundle; a PEM file or a hashed directory
    min_rsa_bits: int = 2048
    # Waive strict RFC 5280 (a leaf without authorityKeyIdentifier, a CA whose basicConstraints is
    # not critical or that lacks keyUsage) for chains to `trust_store`: for a private CA that
    # predates it.  Logged at start-up and on every connection where it made a difference.
    insecure_allow_non_rfc5280_chains: bool = False
    # TLS session resumption (ssaproxy.tls.sessions): the default for outbound routes, the
    # socket API and inbound listeners; one client session cache per process, bounded.
    session_resumption: bool = True
    session_cache_size: int = 1000  # client sessions kept; 0 keeps none
    session_lifetime: float = 3600.0  # seconds a session is offered (and a ticket is valid) at most
    # Revocation (docs/revocation.md): "soft" refuses what is known revoked and lets unknown pass
    # (logged); "hard" also refuses unknown; routes and listeners may say otherwise.
    revocation: str = "soft"
    crl_files: tuple[str, ...] = ()
    revocation_timeout: float = 5.0  # seconds for one OCSP or CRL fetch


def parse_policy(r: Reader, base: Optional[Policy] = None) -> Policy:
    """`[policy]`, or (with `base`, the admin's) the policy keys of a `[[profile]]`: a key not
    given keeps `base`'s value, so every key read here can be set per profile
    (config/profiles.py says which may, and how far)."""
    d = base or Policy()
    min_v = TLSVersion(r.one_of("min_version", r.take("min_version", str, d.min_version.value), TLS_VERSIONS))
    max_v = TLSVersion(r.one_of("max_version", r.take("max_version", str, d.max_version.value), TLS_VERSIONS))
    r.check("min_version", min_v.rank <= max_v.rank, f"min_version {min_v} is above max_version {max_v}")
    ciphers: str = r.take("ciphers", str, d.ciphers)
    suites: str = r.take("ciphersuites", str, d.ciphersuites)
    groups: str = r.take("groups", str, d.groups)
    trust: Optional[str] = r.take("trust_store", str, d.trust_store)
    if trust is not None:
        r.check("trust_store", trust != "",
                "must be a path to a PEM bundle or a hashed directory (omit it for the system store)")
    rsa: int = r.take("min_rsa_bits", int, d.min_rsa_bits)
    r.check("min_rsa_bits", rsa >= 2048, f"must be at least 2048, got {rsa}")
    lax: bool = r.take("insecure_allow_non_rfc5280_chains", bool, d.insecure_allow_non_rfc5280_chains)
    resumption: bool = r.take("session_resumption", bool, d.session_resumption)
    cache_size = r.bounded("session_cache_size", d.session_cache_size, 0, 1_000_000)
    lifetime = r.positive("session_lifetime", r.take("session_lifetime", float, d.session_lifetime), 604800)
    revocation: str = r.one_of("revocation", r.take("revocation", str, d.revocation), REVOCATION_MODES)
    crl_files = tuple(r.take("crl_files", list, list(d.crl_files)))
    r.check("crl_files", all(isinstance(f, str) and f.startswith("/") for f in crl_files),
            "must be an array of absolute paths to CRL files (PEM or DER)")
    rev_timeout = r.timeout("revocation_timeout", d.revocation_timeout)
    r.done()
    return Policy(min_version=min_v, max_version=max_v, ciphers=ciphers, ciphersuites=suites,
                  groups=groups, trust_store=trust, min_rsa_bits=rsa, insecure_allow_non_rfc5280_chains=lax,
                  session_resumption=resumption, session_cache_size=cache_size, session_lifetime=lifetime,
                  revocation=revocation, crl_files=crl_files, revocation_timeout=rev_timeout)
