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
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from ssaproxy.addresses import is_ip_literal
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

_MAX_PEM = 256 * 1024
_MAX_KEY_BITS = 4096  # an 8192-bit RSA key costs ~40 ms of the daemon's one thread per handshake


class ApiError(Exception):
    """A request the daemon refuses: `code` is the errno the program gets, `text` is TLS_ERROR."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@attrs.frozen(kw_only=True)
class Settings:
    hostname: Optional[str] = None
    trust_pem: Optional[bytes] = None
    chain_pem: Optional[bytes] = None
    key_pem: Optional[bytes] = None
    alpn: tuple[str, ...] = ()
    ciphers: Optional[tuple[str, ...]] = None  # None: every cipher the policy allows
    disabled: frozenset[str] = frozenset()
    request_peer_auth: bool = False
    min_version: Optional[str] = None  # None: the policy's
    max_version: Optional[str] = None
    session_reuse: Optional[bool] = None  # TLS_SESSION_REUSE; None: policy.session_resumption
    revocation: Optional[str] = None  # None: the policy's ("off", "soft", "hard")

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


def _certificates(value: bytes, what: str) -> list[x509.Certificate]:
    if len(value) > _MAX_PEM:
        raise ApiError(errno.EINVAL, f"{what}: more than {_MAX_PEM} bytes")
    try:
        certs = x509.load_pem_x509_certificates(value)
    except ValueError as e:
        raise ApiError(errno.EINVAL, f"{what}: not PEM certificates ({e})") from None
    if not certs:
        raise ApiError(errno.EINVAL, f"{what}: no certificate")
    return certs


def _key(value: bytes) -> object:
    if len(value) > _MAX_PEM:
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


def _check_pair(settings: Settings) -> Settings:
    """`settings`, if its certificate chain and private key (when both are set) belong together."""
    if settings.chain_pem is None or settings.key_pem is None:
        return settings
    leaf = _certificates(settings.chain_pem, "certificate chain")[0]
    key = _key(settings.key_pem)
    public = key.public_key()  # type: ignore[attr-defined]
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if public.public_bytes(*fmt) != leaf.public_key().public_bytes(*fmt):
        raise ApiError(errno.EINVAL, "the private key does not match the certificate chain's first certificate")
    return settings


def int_value(value: bytes) -> int:
    """An integer option's value, or EINVAL."""
    try:
        return o.unpack_int(value)
    except ValueError as e:
        raise ApiError(errno.EINVAL, str(e)) from None


def _version(value: bytes) -> str:
    number = int_value(value)
    if number in o.LEGACY_VERSIONS:
        raise ApiError(errno.EPERM, f"{o.LEGACY_VERSIONS[number]} is below the admin's policy (TLS 1.2 at least)")
    if number not in o.VERSION_NAMES:
        raise ApiError(errno.EINVAL, f"unknown TLS version 0x{number:04x} (0x0303 is TLS 1.2, 0x0304 TLS 1.3)")
    return o.VERSION_NAMES[number]


def apply(settings: Settings, policy: Policy, number: int, value: bytes) -> Settings:
    """`settings` with option `number` set to `value`, or ApiError."""
    _option(number, "settable", "not settable")
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
    _certificates(value, "trusted certificates")
    return attrs.evolve(settings, trust_pem=bytes(value))


def _set_chain(settings: Settings, policy: Policy, value: bytes) -> Settings:
    _certificates(value, "certificate chain")
    return _check_pair(attrs.evolve(settings, chain_pem=bytes(value)))


def _set_key(settings: Settings, policy: Policy, value: bytes) -> Settings:
    _key(value)
    return _check_pair(attrs.evolve(settings, key_pem=bytes(value)))


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
    ctx = new_context(low if tls12 else "TLSv1.3", high if tls13 else "TLSv1.2", ":".join(tls12) or None,
                      ":".join(tls13) or None, policy.groups, server=server, verify=verify, alpn=settings.alpn,
                      tickets=tickets)
    if settings.chain_pem is not None and settings.key_pem is not None:
        certs = x509.load_pem_x509_certificates(settings.chain_pem)
        ctx.use_certificate(crypto.X509.from_cryptography(certs[0]))
        for extra in certs[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        ctx.use_privatekey(crypto.PKey.from_cryptography_key(_key(settings.key_pem)))  # type: ignore[arg-type]
        ctx.check_privatekey()
    return ctx


def _trust(ctx: SSL.Context, settings: Settings, policy: Policy, *, client_cas: bool = False) -> None:
    """The program's trust anchors (also named to clients as acceptable CAs, for a server), or
    the policy's."""
    if settings.trust_pem is None:
        load_trust(ctx, policy.trust_store, strict=not policy.insecure_allow_non_rfc5280_chains)
        return
    own = ctx.get_cert_store()  # replaces the policy's anchors for this socket (docs/api.md)
    assert own is not None
    anchors = x509.load_pem_x509_certificates(settings.trust_pem)
    for cert in anchors:
        own.add_cert(crypto.X509.from_cryptography(cert))
        if client_cas:
            ctx.add_client_ca(crypto.X509.from_cryptography(cert))
    strict_checks(ctx, PathValidator(anchors))  # a program's own anchors: always strict


def client_context(settings: Settings, policy: Policy, identity: Optional[tuple[str, str]] = None) -> SSL.Context:
    """One context (and so one pool of cached sessions) for every program socket with these
    settings, whether or not it reuses sessions.  `identity`: the (chain, key) files of the
    program's [[profile]], presented when the program gave no certificate of its own."""
    return _client_context(attrs.evolve(settings, session_reuse=None), policy, identity)


@functools.lru_cache(maxsize=64)
def _client_context(settings: Settings, policy: Policy, identity: Optional[tuple[str, str]]) -> SSL.Context:
    ctx = _base(settings, policy, server=False, verify=REQUIRE_PEER)
    if identity is not None and settings.chain_pem is None:
        use_identity(ctx, *identity)
    _trust(ctx, settings, policy)
    return ctx


@functools.lru_cache(maxsize=64)
def server_context(settings: Settings, policy: Policy) -> SSL.Context:
    if settings.chain_pem is None or settings.key_pem is None:
        raise ApiError(errno.EINVAL, "a TLS server needs TLS_CERTIFICATE_CHAIN and TLS_PRIVATE_KEY first")
    ctx = _base(settings, policy, server=True, verify=REQUIRE_PEER if settings.request_peer_auth else SSL.VERIFY_NONE)
    if settings.request_peer_auth:
        _trust(ctx, settings, policy, client_cas=True)
    return ctx


def clear_contexts() -> None:
    """Forget the contexts built so far (a reload: the next ones come from the new files)."""
    _client_context.cache_clear()
    server_context.cache_clear()
