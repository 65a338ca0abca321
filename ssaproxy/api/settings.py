"""A program's TLS options: validated against the admin's policy, then turned into contexts.

Theory of operation: `Settings` is a frozen value, so the OpenSSL contexts built from it are
cached per value exactly like the daemon's own (`tls.context`).  `apply` is the only way a
program changes it, and it enforces "tighten only": a lower version, a higher ceiling or a
cipher the admin's policy excludes is EPERM; a malformed value is EINVAL.  Certificates,
chains and keys arrive as PEM bytes read by the library in the program's own process; the
daemon never opens a path a program names.
"""

from __future__ import annotations

import errno
import functools
from typing import Callable, Optional

import attrs
from OpenSSL import SSL, crypto

from ssaproxy.addresses import is_ip_literal
from ssaproxy.api import material as m
from ssaproxy.api.material import ApiError as ApiError  # noqa: PLC0414 - re-exported from its old home
from ssaproxy.config import Policy, TLSVersion, is_valid_hostname
from ssaproxy.proto import options as o
from ssaproxy.tls.context import (
    CIPHER_FLOOR,
    REQUIRE_PEER,
    Tickets,
    load_trust,
    new_context,
    strict_checks,
    use_identity,
)
from ssaproxy.tls.paths import PathValidator
from ssaproxy.tls.sni import serve_by_sni, use_chain


@attrs.frozen(kw_only=True)
class Settings:
    hostname: Optional[str] = None
    trust_pem: Optional[bytes] = None  # the program's anchors (87 and 120 together)
    trust_only: bool = False  # 120 was set: the program's anchors replace the policy's
    chains: tuple[m.Chain, ...] = ()  # TLS_CERTIFICATE_CHAIN, each with its TLS_PRIVATE_KEY
    pending_key: Optional[bytes] = None  # a TLS_PRIVATE_KEY given before its chain
    alpn: tuple[str, ...] = ()
    ciphers: Optional[tuple[str, ...]] = None  # None: every cipher the policy allows
    disabled: frozenset[str] = frozenset()
    request_peer_auth: bool = False
    min_version: Optional[str] = None  # None: the policy's
    max_version: Optional[str] = None
    session_reuse: Optional[bool] = None  # TLS_SESSION_REUSE; None: policy.session_resumption
    revocation: Optional[str] = None  # None: the policy's ("off", "soft", "hard")
    allow_ragged_eof: bool = False  # TLS_ALLOW_RAGGED_EOF: a peer's FIN without close_notify reads as EOF

    def reuses(self, policy: Policy) -> bool:
        return policy.session_resumption if self.session_reuse is None else self.session_reuse

    def revocation_mode(self, policy: Policy) -> str:
        return self.revocation or policy.revocation

    def versions(self, policy: Policy) -> tuple[str, str]:
        return self.min_version or policy.min_version, self.max_version or policy.max_version

    def enabled(self, policy: Policy) -> tuple[str, ...]:
        allowed = policy_ciphers(policy)
        chosen = self.ciphers if self.ciphers is not None else allowed
        return tuple(c for c in chosen if c not in self.disabled)


def _cipher_list(ciphers: str, ciphersuites: str) -> list[str]:
    """The cipher names (TLS 1.2 and 1.3) a context with these two lists offers."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_cipher_list(ciphers.encode("ascii"))
    ctx.set_tls13_ciphersuites(ciphersuites.encode("ascii"))
    return SSL.Connection(ctx).get_cipher_list()


@functools.lru_cache(maxsize=16)
def policy_ciphers(policy: Policy) -> tuple[str, ...]:
    """Every cipher (TLS 1.2 and 1.3 names) the admin's policy lets through."""
    return tuple(_cipher_list(policy.ciphers + CIPHER_FLOOR, policy.ciphersuites))


@functools.lru_cache(maxsize=1)
def _known_ciphers() -> frozenset[str]:
    return frozenset(_cipher_list("ALL:COMPLEMENTOFALL:@SECLEVEL=0",
                                  "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:"
                                  "TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256"))


def _text(value: bytes, what: str) -> str:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise ApiError(errno.EINVAL, f"{what} must be ASCII text") from None
    if "\x00" in text.rstrip("\x00"):
        raise ApiError(errno.EINVAL, f"{what} contains a NUL byte")
    return text.rstrip("\x00")  # C programs often pass strlen + 1


def _cipher_names(value: bytes, policy: Policy, *, must_be_allowed: bool) -> tuple[str, ...]:
    names = tuple(n for n in _text(value, "a cipher list").split(":") if n)
    if not names:
        raise ApiError(errno.EINVAL, "empty cipher list")
    allowed = set(policy_ciphers(policy))
    for name in names:
        if name not in _known_ciphers():
            raise ApiError(errno.EINVAL, f"unknown cipher {name!r} (use OpenSSL names)")
        if must_be_allowed and name not in allowed:
            raise ApiError(errno.EPERM, f"cipher {name} is excluded by the admin's policy")
    return names


def int_value(value: bytes) -> int:
    """An integer option's value, or EINVAL."""
    try:
        return o.unpack_int(value)
    except ValueError as e:
        raise ApiError(errno.EINVAL, str(e)) from None


def _version(value: bytes) -> str:
    number = int_value(value)
    number = o.SSA_ORDINAL_VERSIONS.get(number, number)  # SSA's own header numbers them 0-3
    if number in o.LEGACY_VERSIONS:
        raise ApiError(errno.EPERM, f"{o.LEGACY_VERSIONS[number]} is below the admin's policy (TLS 1.2 at least)")
    if number not in o.VERSION_NAMES:
        raise ApiError(errno.EINVAL, f"unknown TLS version 0x{number:04x} (0x0303 is TLS 1.2, 0x0304 TLS 1.3)")
    return o.VERSION_NAMES[number]


def apply(settings: Settings, policy: Policy, number: int, value: bytes, *,
          allow_trust_store_replacement: bool = True) -> Settings:
    """`settings` with option `number` set to `value`, or ApiError.  `allow_trust_store_replacement`:
    the admin's `[api]` key of that name (False: TLS_TRUSTED_PEER_CERTIFICATES_ONLY is EPERM)."""
    _option(number, "settable", "not settable")
    if number == o.TLS_TRUSTED_PEER_CERTIFICATES_ONLY and not allow_trust_store_replacement:
        raise ApiError(errno.EPERM, "the admin's [api] allow_trust_store_replacement = false: a program may add "
                                    "anchors (TLS_TRUSTED_PEER_CERTIFICATES) but not replace the trust store")
    return _SETTERS[number](settings, policy, value)  # every settable option has one (tests/test_api_proto.py)


def _option(number: int, can: str, cannot: str) -> o.Option:
    """Option `number` if it is known, supported and `can` ("settable", "gettable"); else ENOPROTOOPT."""
    option = o.OPTIONS.get(number)
    if option is None or option.unsupported or not getattr(option, can):
        why = option.unsupported if option and option.unsupported else cannot if option else "unknown option"
        raise ApiError(errno.ENOPROTOOPT, f"option {number}: {why}")
    return option


def _set_hostname(settings: Settings, policy: Policy, value: bytes) -> Settings:
    name = _text(value, "the hostname").rstrip(".").lower()
    if not is_valid_hostname(name) and not is_ip_literal(name):
        raise ApiError(errno.EINVAL, f"{name!r} is not a hostname or IP address")
    return attrs.evolve(settings, hostname=name)


def _set_trust(settings: Settings, policy: Policy, value: bytes) -> Settings:
    """87 adds anchors to the policy's (SSA); 120 (below) makes the program's the only ones."""
    total = (settings.trust_pem or b"") + bytes(value)
    m.certificates(bytes(value), "trusted certificates", m.MAX_TRUST)
    if len(total) > m.MAX_TRUST:
        raise ApiError(errno.EINVAL, f"trusted certificates: more than {m.MAX_TRUST} bytes together")
    return attrs.evolve(settings, trust_pem=total)


def _set_trust_only(settings: Settings, policy: Policy, value: bytes) -> Settings:
    return attrs.evolve(_set_trust(settings, policy, value), trust_only=True)


def _set_chain(settings: Settings, policy: Policy, value: bytes) -> Settings:
    m.certificates(bytes(value), "certificate chain")
    return attrs.evolve(settings, chains=m.add_chain(settings.chains, settings.pending_key, bytes(value)),
                        pending_key=None)


def _set_key(settings: Settings, policy: Policy, value: bytes) -> Settings:
    chains, pending = m.add_key(settings.chains, bytes(value))
    return attrs.evolve(settings, chains=chains, pending_key=pending)


def _set_ragged_eof(settings: Settings, policy: Policy, value: bytes) -> Settings:
    flag = int_value(value)
    if flag not in (0, 1):
        raise ApiError(errno.EINVAL, "TLS_ALLOW_RAGGED_EOF is 0 or 1")
    return attrs.evolve(settings, allow_ragged_eof=bool(flag))


def _set_alpn(settings: Settings, policy: Policy, value: bytes) -> Settings:
    protos = tuple(p for p in _text(value, "the ALPN list").split(",") if p)
    if not protos or any(len(p) > 255 for p in protos):
        raise ApiError(errno.EINVAL, "ALPN: a comma-separated list of 1-255 byte protocol names")
    return attrs.evolve(settings, alpn=protos)


def _disable_cipher(settings: Settings, policy: Policy, value: bytes) -> Settings:
    names = _cipher_names(value, policy, must_be_allowed=False)
    return _check_ciphers_left(attrs.evolve(settings, disabled=settings.disabled | set(names)), policy)


def _enable_cipher(settings: Settings, policy: Policy, value: bytes) -> Settings:
    names = _cipher_names(value, policy, must_be_allowed=True)
    chosen = settings.ciphers
    if chosen is not None:
        chosen = chosen + tuple(n for n in names if n not in chosen)
    return attrs.evolve(settings, ciphers=chosen, disabled=settings.disabled - set(names))


def _set_ciphers(settings: Settings, policy: Policy, value: bytes) -> Settings:
    return _check_ciphers_left(attrs.evolve(settings, ciphers=_cipher_names(value, policy, must_be_allowed=True)),
                               policy)


def _set_peer_auth(settings: Settings, policy: Policy, value: bytes) -> Settings:
    flag = int_value(value)
    if flag not in (0, 1):
        raise ApiError(errno.EINVAL, "TLS_REQUEST_PEER_AUTH is 0 or 1")
    return attrs.evolve(settings, request_peer_auth=bool(flag))


def _set_session_reuse(settings: Settings, policy: Policy, value: bytes) -> Settings:
    flag = int_value(value)
    if flag not in (0, 1):
        raise ApiError(errno.EINVAL, "TLS_SESSION_REUSE is 0 or 1")
    if flag and not policy.session_resumption:
        raise ApiError(errno.EPERM, "session resumption is off in the admin's policy")
    return attrs.evolve(settings, session_reuse=bool(flag))


def _set_min_version(settings: Settings, policy: Policy, value: bytes) -> Settings:
    wanted = _version(value)
    if TLSVersion(wanted).rank < TLSVersion(policy.min_version).rank:
        raise ApiError(errno.EPERM, f"{wanted} is below the admin's minimum {policy.min_version}")
    return _versions(settings, policy, wanted, settings.versions(policy)[1])


def _set_max_version(settings: Settings, policy: Policy, value: bytes) -> Settings:
    wanted = _version(value)
    if TLSVersion(wanted).rank > TLSVersion(policy.max_version).rank:
        raise ApiError(errno.EPERM, f"{wanted} is above the admin's maximum {policy.max_version}")
    return _versions(settings, policy, settings.versions(policy)[0], wanted)


def _versions(settings: Settings, policy: Policy, low: str, high: str) -> Settings:
    if TLSVersion(low).rank > TLSVersion(high).rank:
        raise ApiError(errno.EINVAL, f"minimum {low} would be above maximum {high}")
    return _check_ciphers_left(attrs.evolve(settings, min_version=low, max_version=high), policy)


def _set_revocation(settings: Settings, policy: Policy, value: bytes) -> Settings:
    """102-106 (SSA): 1 turns revocation checking on (soft, unless already hard), 102 = 2 makes
    it hard; 0 is only allowed where checking is off anyway: a program never checks less."""
    flag, mode = int_value(value), settings.revocation_mode(policy)
    if flag == 0:
        if mode != "off":
            raise ApiError(errno.EPERM, f"revocation checking is {mode!r} by the admin's policy; a program may not "
                                        "turn it (or one of its methods) off")
        return settings
    if flag == 1:
        return attrs.evolve(settings, revocation="soft") if mode == "off" else settings
    raise ApiError(errno.EINVAL, "revocation options are 0 or 1 (TLS_REVOCATION_CHECKS also 2: hard)")


def _set_revocation_checks(settings: Settings, policy: Policy, value: bytes) -> Settings:
    if int_value(value) == 2:
        return attrs.evolve(settings, revocation="hard")
    return _set_revocation(settings, policy, value)


_SETTERS: dict[int, Callable[[Settings, Policy, bytes], Settings]] = {
    o.TLS_REVOCATION_CHECKS: _set_revocation_checks,
    o.TLS_OCSP_STAPLED_CHECKS: _set_revocation,
    o.TLS_OCSP_CHECKS: _set_revocation,
    o.TLS_CRL_CHECKS: _set_revocation,
    o.TLS_CACHED_REV_CHECKS: _set_revocation,
    o.TLS_REMOTE_HOSTNAME: _set_hostname,
    o.TLS_TRUSTED_PEER_CERTIFICATES: _set_trust,
    o.TLS_TRUSTED_PEER_CERTIFICATES_ONLY: _set_trust_only,
    o.TLS_ALLOW_RAGGED_EOF: _set_ragged_eof,
    o.TLS_CERTIFICATE_CHAIN: _set_chain,
    o.TLS_PRIVATE_KEY: _set_key,
    o.TLS_ALPN: _set_alpn,
    o.TLS_DISABLE_CIPHER: _disable_cipher,
    o.TLS_ENABLE_CIPHER: _enable_cipher,
    o.TLS_TRUSTED_CIPHERS: _set_ciphers,
    o.TLS_REQUEST_PEER_AUTH: _set_peer_auth,
    o.TLS_VERSION_MIN: _set_min_version,
    o.TLS_VERSION_MAX: _set_max_version,
    o.TLS_SESSION_REUSE: _set_session_reuse,
}


def _check_ciphers_left(settings: Settings, policy: Policy) -> Settings:
    """`settings`, if they leave a cipher for a TLS version they allow."""
    low, high = settings.versions(policy)
    enabled = settings.enabled(policy)
    has13 = any(c.startswith("TLS_") for c in enabled)
    has12 = any(not c.startswith("TLS_") for c in enabled)
    if not ((has13 and high == "TLSv1.3") or (has12 and low == "TLSv1.2")):
        raise ApiError(errno.EINVAL, "no cipher would be left for the allowed TLS versions")
    return settings


def get(settings: Settings, policy: Policy, number: int) -> bytes:
    """A getsockopt answered before the connection exists."""
    option = _option(number, "gettable", "not readable")
    if option.connected_only:
        raise ApiError(errno.ENOTCONN, f"{option.name} has a value once connected")
    low, high = settings.versions(policy)
    values = {
        o.TLS_REMOTE_HOSTNAME: (settings.hostname or "").encode(),
        o.TLS_ALPN: ",".join(settings.alpn).encode(),
        o.TLS_REQUEST_PEER_AUTH: o.pack_int(int(settings.request_peer_auth)),
        o.TLS_TRUSTED_CIPHERS: ":".join(settings.enabled(policy)).encode(),
        o.TLS_VERSION_MIN: o.pack_int(o.VERSION_NUMBERS[low]),
        o.TLS_VERSION_MAX: o.pack_int(o.VERSION_NUMBERS[high]),
        o.TLS_SESSION_REUSE: o.pack_int(int(settings.reuses(policy))),
        o.TLS_ALLOW_RAGGED_EOF: o.pack_int(int(settings.allow_ragged_eof)),
        **dict.fromkeys(o.REVOCATION_OPTIONS, o.pack_int(int(settings.revocation_mode(policy) != "off"))),
    }
    if number not in values:
        raise ApiError(errno.ENOPROTOOPT, f"option {number} is answered by the library")
    return values[number]


# --------------------------------------------------------------------------- contexts

def _base(settings: Settings, policy: Policy, *, server: bool, verify: int) -> SSL.Context:
    tickets = None if server else Tickets()  # a program's own server (accept) resumes nothing
    low, high = settings.versions(policy)
    enabled = settings.enabled(policy)
    tls12 = [c for c in enabled if not c.startswith("TLS_")]
    tls13 = [c for c in enabled if c.startswith("TLS_")]
    return new_context(low if tls12 else "TLSv1.3", high if tls13 else "TLSv1.2", ":".join(tls12) or None,
                       ":".join(tls13) or None, policy.groups, server=server, verify=verify, alpn=settings.alpn,
                       tickets=tickets)


def _trust(ctx: SSL.Context, settings: Settings, policy: Policy, *, client_cas: bool = False) -> None:
    """The policy's trust anchors plus the program's (87), or the program's alone (120); for a
    server, the program's are also named to clients as acceptable CAs."""
    lax = policy.insecure_allow_non_rfc5280_chains
    if settings.trust_pem is None:
        load_trust(ctx, policy.trust_store, strict=not lax)
        return
    anchors = m.certificates(settings.trust_pem, "trusted certificates", m.MAX_TRUST)
    if client_cas:
        for cert in anchors:
            ctx.add_client_ca(crypto.X509.from_cryptography(cert))
    if not settings.trust_only:
        load_trust(ctx, policy.trust_store, strict=not lax, extra=anchors)  # SSA: 87 adds to the store
        return
    own = ctx.get_cert_store()  # 120: replaces the policy's anchors for this socket (docs/api.md)
    assert own is not None
    for cert in anchors:
        own.add_cert(crypto.X509.from_cryptography(cert))
    strict_checks(ctx, PathValidator(anchors))  # a program's own anchors: always strict


def client_context(settings: Settings, policy: Policy, identity: Optional[tuple[str, str]] = None) -> SSL.Context:
    """One context (and so one pool of cached sessions) for every program socket with these
    settings, whether or not it reuses sessions.  `identity`: the (chain, key) files of the
    program's [[profile]], presented when the program gave no certificate of its own."""
    return _client_context(attrs.evolve(settings, session_reuse=None), policy, identity)


@functools.lru_cache(maxsize=64)
def _client_context(settings: Settings, policy: Policy, identity: Optional[tuple[str, str]]) -> SSL.Context:
    if len(settings.chains) > 1:
        raise ApiError(errno.EINVAL, "a client socket presents one certificate chain; several are for servers")
    ctx = _base(settings, policy, server=False, verify=REQUIRE_PEER)
    if settings.chains and settings.chains[0][1] is not None:
        use_chain(ctx, settings.chains[0][0], m.private_key(settings.chains[0][1]))
    elif identity is not None and not settings.chains:
        use_identity(ctx, *identity)
    _trust(ctx, settings, policy)
    return ctx


@functools.lru_cache(maxsize=64)
def server_context(settings: Settings, policy: Policy) -> SSL.Context:
    if not settings.chains or any(key is None for _, key in settings.chains):
        raise ApiError(errno.EINVAL, "a TLS server needs TLS_CERTIFICATE_CHAIN and TLS_PRIVATE_KEY first")

    def make() -> SSL.Context:
        verify = REQUIRE_PEER if settings.request_peer_auth else SSL.VERIFY_NONE
        ctx = _base(settings, policy, server=True, verify=verify)
        if settings.request_peer_auth:
            _trust(ctx, settings, policy, client_cas=True)
        return ctx

    return serve_by_sni(make, [(chain, m.private_key(key)) for chain, key in settings.chains if key is not None])


def clear_contexts() -> None:
    """Forget the contexts built so far (a reload: the next ones come from the new files)."""
    _client_context.cache_clear()
    server_context.cache_clear()
