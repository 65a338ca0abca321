"""The `[policy]` table: the admin's system-wide TLS policy.

Only the shape is checked here.  Whether OpenSSL accepts the cipher, suite and group strings
and whether the trust store loads is decided by `ssaproxy.tls.load`, the step after parsing.
"""

from __future__ import annotations

from typing import Optional

import attrs

from ssaproxy.config.enums import TLS_VERSIONS, TLSVersion
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
    trust_store: Optional[str] = None  # None: the system bundle
    min_rsa_bits: int = 2048


def parse_policy(r: Reader) -> Policy:
    d = Policy()
    min_v = TLSVersion(r.one_of("min_version", r.take("min_version", str, d.min_version.value), TLS_VERSIONS))
    max_v = TLSVersion(r.one_of("max_version", r.take("max_version", str, d.max_version.value), TLS_VERSIONS))
    r.check("min_version", min_v.rank <= max_v.rank, f"min_version {min_v} is above max_version {max_v}")
    ciphers: str = r.take("ciphers", str, d.ciphers)
    suites: str = r.take("ciphersuites", str, d.ciphersuites)
    groups: str = r.take("groups", str, d.groups)
    trust: Optional[str] = r.take("trust_store", str, None)
    if trust is not None:
        r.check("trust_store", trust != "", "must be a path to a PEM bundle (omit it for the system store)")
    rsa: int = r.take("min_rsa_bits", int, d.min_rsa_bits)
    r.check("min_rsa_bits", rsa >= 2048, f"must be at least 2048, got {rsa}")
    r.done()
    return Policy(min_version=min_v, max_version=max_v, ciphers=ciphers, ciphersuites=suites,
                  groups=groups, trust_store=trust, min_rsa_bits=rsa)
