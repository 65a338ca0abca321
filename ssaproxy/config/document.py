"""The whole document: `Config`, its named constructors and the embedded default, with the
small tables (`[policy]`, `[api]`, `[iptables]`); `[outbound]` and `[[inbound]]` have modules
of their own.

Parsing is pure: no OpenSSL, no certificate files, no user database.  The checks that need
those run afterwards in `ssaproxy.tls.load`; a `Config` keeps its source text (outside
equality and hashing) so that step can still name the line of the key it refuses.  That is
also why `[policy]` only checks the shape of its strings (whether OpenSSL accepts the cipher,
suite and group strings and whether the trust store loads is decided there), and `[api]` does
not look its `group` up on this host (a fact of the system, not of the text).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from typing import Any, Mapping, Optional

import attrs

from ssaproxy.config.endpoints import IPAddress, ListenAddress, parse_listener
from ssaproxy.config.enums import REVOCATION_MODES, TLS_VERSIONS, TLSVersion
from ssaproxy.config.inbound import Inbound, parse_inbound
from ssaproxy.config.outbound import Outbound, parse_outbound
from ssaproxy.config.profiles import Profile, parse_profiles
from ssaproxy.config.reader import Network, Reader, line_of
from ssaproxy.errors import ConfigError

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


DEFAULT_API_SOCKET = "/run/ssaproxy/api.sock"
LARGEST_FRAME = (1 << 20) + 4  # the API's largest frame (docs/api.md): a buffer cap must hold one


@attrs.frozen(kw_only=True)
class Api:
    """The local socket API (docs/api.md): where it listens and who may use it."""

    socket: str = DEFAULT_API_SOCKET
    mode: int = 0o660  # the socket file's permissions: who may ask the daemon for TLS
    group: Optional[str] = None  # None: the daemon's own group
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    max_sessions: int = 10000  # TLS sessions at once, all users together
    # Fair shares (docs/api.md, "Limits"): deadlines, and caps per local user (SO_PEERCRED uid).
    hello_timeout: float = 5.0  # from connecting to a whole HELLO
    frame_timeout: float = 5.0  # from a request's first byte to its last
    idle_timeout: float = 60.0  # a control connection with nothing going on (listeners exempt)
    session_idle_timeout: float = 0.0  # a relayed session with no bytes either way; 0: never
    max_controls: int = 1024  # control connections at once, all users together
    max_controls_per_uid: int = 64
    max_sessions_per_uid: int = 256
    max_fds_in_flight: int = 1024  # descriptors received or sent and not yet paired or taken
    max_fds_in_flight_per_uid: int = 64
    max_buffer: int = 64 << 20  # bytes of requests not yet whole, all users together
    max_buffer_per_uid: int = 2 << 20  # at least one largest frame (1 MiB + 4)
    # TLS_TRUSTED_PEER_CERTIFICATES_ONLY (120): may a program replace the policy's trust anchors
    # with its own for its sockets (EPERM when false)?  TLS_TRUSTED_PEER_CERTIFICATES (87) only adds.
    allow_trust_store_replacement: bool = True


def parse_api(r: Reader) -> Api:
    path: str = r.take("socket", str, DEFAULT_API_SOCKET)
    r.check("socket", path.startswith("/") and "\x00" not in path and len(path.encode()) < 108,
            f"must be an absolute path shorter than 108 bytes, got {path!r}")
    raw_mode: int | str = r.take("mode", (int, str), 0o660, "an octal number (0o660) or a string (\"0660\")")
    if isinstance(raw_mode, str):
        r.check("mode", bool(re.fullmatch(r"0?[0-7]{3}", raw_mode)),
                f"must be an octal mode like \"0660\", got {raw_mode!r}")
    mode = int(raw_mode, 8) if isinstance(raw_mode, str) else raw_mode
    r.check("mode", 0 <= mode <= 0o777, f"must be between 0o000 and 0o777, got {mode:#o}")
    group: Optional[str] = r.take("group", str, None)
    api = Api(socket=path, mode=mode, group=group, connect_timeout=r.timeout("connect_timeout", 10.0),
              handshake_timeout=r.timeout("handshake_timeout", 10.0),
              max_sessions=r.bounded("max_sessions", 10000, 1, 1_000_000),
              hello_timeout=r.timeout("hello_timeout", 5.0), frame_timeout=r.timeout("frame_timeout", 5.0),
              idle_timeout=r.positive("idle_timeout", r.take("idle_timeout", float, 60.0), 86400),
              session_idle_timeout=_off_or_positive(r, "session_idle_timeout", 0.0, 86400),
              max_controls=r.bounded("max_controls", 1024, 1, 1_000_000),
              max_controls_per_uid=r.bounded("max_controls_per_uid", 64, 1, 1_000_000),
              max_sessions_per_uid=r.bounded("max_sessions_per_uid", 256, 1, 1_000_000),
              max_fds_in_flight=r.bounded("max_fds_in_flight", 1024, 1, 1_000_000),
              max_fds_in_flight_per_uid=r.bounded("max_fds_in_flight_per_uid", 64, 1, 1_000_000),
              max_buffer=r.bounded("max_buffer", 64 << 20, LARGEST_FRAME, 1 << 40),
              max_buffer_per_uid=r.bounded("max_buffer_per_uid", 2 << 20, LARGEST_FRAME, 1 << 40),
              allow_trust_store_replacement=r.take("allow_trust_store_replacement", bool, True))
    r.done()
    return api


def _off_or_positive(r: Reader, name: str, default: float, limit: float) -> float:
    """Seconds, or 0 for never."""
    value: float = r.take(name, float, default)
    r.check(name, 0 <= value <= limit, f"must be 0 (never) or seconds up to {limit:g}, got {value:g}")
    return value


@attrs.frozen(kw_only=True)
class Iptables:
    """What the generated rules never redirect, besides the daemon's own traffic."""

    exclude_cidrs: tuple[Network, ...] = ()  # out: destinations; in: sources
    exclude_ports: tuple[int, ...] = ()  # outbound destination ports


def parse_iptables(r: Reader) -> Iptables:
    cidrs: list[Network] = []
    for text in r.take("exclude_cidrs", list, []):
        r.check("exclude_cidrs", isinstance(text, str), "must be an array of CIDR strings")
        cidrs.append(r.network("exclude_cidrs", text))
    ports = r.ports("exclude_ports", r.take("exclude_ports", list, []))
    r.done()
    return Iptables(exclude_cidrs=tuple(cidrs), exclude_ports=ports)


@attrs.frozen(kw_only=True)
class Daemon:
    """How the daemon process runs: as whom, how it stops, how often it looks at its files."""

    user: Optional[str] = None  # after binding as root, drop to this user for good (None: stay)
    group: Optional[str] = None  # and this group (None: the user's primary group)
    drain_timeout: float = 30.0  # SIGTERM: seconds live connections get to finish; the rest are reset
    watch_interval: float = 5.0  # seconds between looks at certificate files for changes (0: never)
    # Worker processes serving every listener (ssaproxy.supervisor); None: as many as CPUs.  1: one
    # process, no supervisor (the daemon as it always was).
    workers: Optional[int] = None


def parse_daemon(r: Reader) -> Daemon:
    d = Daemon()
    user: Optional[str] = r.take("user", str, None)
    group: Optional[str] = r.take("group", str, None)
    for name, value in (("user", user), ("group", group)):
        if value is not None:
            r.check(name, re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}", value) is not None,
                    f"must be a user or group name or number, got {value!r}")
    r.check("group", group is None or user is not None, "only applies with user (the identity to drop to)")
    daemon = Daemon(user=user, group=group,
                    drain_timeout=_off_or_positive(r, "drain_timeout", d.drain_timeout, 3600),
                    watch_interval=_off_or_positive(r, "watch_interval", d.watch_interval, 3600),
                    workers=_workers(r))
    r.done()
    return daemon


MAX_WORKERS = 256


def _workers(r: Reader) -> Optional[int]:
    value: Optional[int] = r.take("workers", int, None)
    if value is not None:
        r.check("workers", 1 <= value <= MAX_WORKERS,
                f"must be 1-{MAX_WORKERS} worker processes (omit it for one per CPU), got {value}")
    return value


DEFAULT_ADMIN_LISTEN = "tcp:9901:interface=127.0.0.1"


@attrs.frozen(kw_only=True)
class Admin:
    """The admin endpoint: metrics, health, readiness and status over HTTP (off without [admin])."""

    listen: str = DEFAULT_ADMIN_LISTEN


def parse_admin(r: Reader) -> Admin:
    listen: str = r.take("listen", str, DEFAULT_ADMIN_LISTEN)
    ListenAddress.parse(listen, r.key("listen"))  # a TCP listener Twisted can make, or a ConfigError naming it
    r.done()
    return Admin(listen=listen)


def _profile_listeners(outbound: Outbound, profiles: tuple[Profile, ...]) -> None:
    """A profile's listener takes its programs' redirected connections for every routed address
    family (else the general rule would quietly give them the admin's policy), on a port of its
    own (the daemon tells profiles apart by the port a connection arrived on)."""
    general = {parse_listener(x).port for x in outbound.listen}
    for i, profile in enumerate(profiles):
        if not profile.listen:
            continue
        key = f"profile[{i}].listen"
        if not outbound.routes:
            raise ConfigError(key, "a profile's listener needs [[outbound.route]] tables (nothing is redirected)")
        families = {parse_listener(x).family for x in profile.listen}
        for family in sorted({r.destination.version for r in outbound.routes} - families):
            raise ConfigError(key, f"routes for IPv{family} destinations need a {'tcp6' if family == 6 else 'tcp'} "
                                   "listener in this profile too")
        clash = sorted(general & set(profile.ports))
        if clash:
            raise ConfigError(key, f"port(s) {clash} are [outbound] listen ports: a profile needs its own")


def _no_shared_ports(outbound: Outbound, inbound: tuple[Inbound, ...], admin: Optional[Admin],
                     profiles: tuple[Profile, ...] = ()) -> None:
    """Refuse two listeners the kernel would not let bind together: the same port on the same
    address, or on addresses that overlap (0.0.0.0 takes every IPv4 address; [::] takes every
    address of both families, IPv4 too, as Linux binds it by default).  The later one is named."""
    listeners = [("outbound.listen", text) for text in outbound.listen]
    listeners += [(f"profile[{i}].listen", text) for i, p in enumerate(profiles) for text in p.listen]
    listeners += [(f"inbound[{i}].listen", x.listen) for i, x in enumerate(inbound)]
    if admin is not None:
        listeners.append(("admin.listen", admin.listen))
    seen: list[tuple[str, str, ListenAddress]] = []
    for key, text in listeners:
        address = ListenAddress.parse(text, key)
        for other_key, other_text, other in seen:
            if other.port == address.port and _overlap(other.interface, address.interface):
                raise ConfigError(key, f"{text!r} and {other_key} {other_text!r} both listen on port "
                                       f"{address.port} (overlapping addresses): the daemon could bind only one")
        seen.append((key, text, address))


def _overlap(a: str, b: str) -> bool:
    """Whether binds on interface `a` and `b` (ListenAddress.interface) collide on one port."""
    x = ipaddress.ip_address(a or "0.0.0.0")
    y = ipaddress.ip_address(b or "0.0.0.0")
    return x == y or _covers(x, y) or _covers(y, x)


def _covers(wide: IPAddress, other: IPAddress) -> bool:
    return wide.is_unspecified and (wide.version == 6 or other.version == 4)


DEFAULT_CONFIG_TOML = """\
# ssaproxy's embedded default: listen on loopback only, the system trust store, TLS 1.2+.
# Plain HTTP redirected to the listener is upgraded to verified HTTPS on port 443, using the
# request's Host header as the name to verify.  Both address families are covered: a route
# for IPv4 alone would let IPv6 HTTP leave in plaintext on a dual-stack host.
[policy]
min_version = "TLSv1.2"
max_version = "TLSv1.3"

[api]
socket = "/run/ssaproxy/api.sock"

[outbound]
listen = ["tcp:15001:interface=127.0.0.1", 'tcp6:15001:interface=\\:\\:1']

[[outbound.route]]
name = "http-to-https"
destination = "0.0.0.0/0"
ports = [80]
action = "upgrade"
tls_port = 443
hostname_from = "http-host"

[[outbound.route]]
name = "http-to-https-v6"
destination = "::/0"
ports = [80]
action = "upgrade"
tls_port = 443
hostname_from = "http-host"
"""

DEFAULT_SOURCE = "<embedded default>"


@attrs.frozen(kw_only=True)
class Config:
    policy: Policy = Policy()
    outbound: Outbound = Outbound()
    iptables: Iptables = Iptables()
    inbound: tuple[Inbound, ...] = ()
    api: Optional[Api] = None  # None: no [api] table, no local socket API
    daemon: Daemon = Daemon()
    admin: Optional[Admin] = None  # None: no [admin] table, no admin endpoint
    profiles: tuple[Profile, ...] = ()  # [[profile]]: per-application policy, first match wins
    source: str = DEFAULT_SOURCE
    # The TOML text this value was parsed from (None: built from a mapping), for line numbers.
    _text: Optional[str] = attrs.field(default=None, eq=False, hash=False, repr=False)

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> Config:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            found = re.search(r"at line (\d+)", str(e))
            raise ConfigError("", f"not valid TOML: {e}", int(found.group(1)) if found else None) from None
        except (ValueError, RecursionError) as e:  # tomllib's own limits (huge integers, deep nesting)
            raise ConfigError("", f"not valid TOML: {type(e).__name__}: {e}") from None
        try:
            config = cls.from_mapping(data, source=source)
        except ConfigError as e:
            raise e.at(line_of(text, e.key)) from None
        return attrs.evolve(config, text=text)

    @classmethod
    def from_file(cls, path: str) -> Config:
        """Reads and parses `path`; `ssaproxy.tls.load.read_config` also checks what it names."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError("", f"{path} is not UTF-8 text") from None
        return cls.from_toml(text, source=path)

    @classmethod
    def default(cls) -> Config:
        return cls.from_toml(DEFAULT_CONFIG_TOML, source=DEFAULT_SOURCE)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<mapping>") -> Config:
        r = Reader(data, "")
        policy = parse_policy(r.table("policy"))
        has_outbound = "outbound" in r.data
        inbound = parse_inbound(r, policy.max_version)
        outbound_table = r.table("outbound")
        if not has_outbound and (inbound or "api" in r.data):
            outbound = Outbound(listen=())  # an inbound-only sidecar or API-only daemon opens no outbound listener
        else:
            outbound = parse_outbound(outbound_table)
        iptables = parse_iptables(r.table("iptables"))
        api = parse_api(r.table("api")) if "api" in r.data else None
        daemon = parse_daemon(r.table("daemon"))
        admin = parse_admin(r.table("admin")) if "admin" in r.data else None
        profiles = parse_profiles(r, policy, parse_policy)
        r.done()
        _profile_listeners(outbound, profiles)
        _no_shared_ports(outbound, inbound, admin, profiles)
        return cls(policy=policy, outbound=outbound, inbound=inbound, iptables=iptables, api=api, daemon=daemon,
                   admin=admin, profiles=profiles, source=source)

    @property
    def outbound_listen(self) -> tuple[str, ...]:
        """Every transparent outbound listener: `[outbound] listen`, then each profile's."""
        return self.outbound.listen + tuple(x for p in self.profiles for x in p.listen)

    def profile_for_port(self, port: int) -> Optional[Profile]:
        """The profile whose own outbound listener has `port` (None: the general listener)."""
        return next((p for p in self.profiles if port in p.ports), None)

    def idle_reason(self) -> Optional[str]:
        """Why this configuration, though valid, would have the daemon do nothing useful (None:
        it does something).  `ssaproxy check-config` warns; the daemon runs it anyway."""
        if self.inbound or self.api is not None:
            return None
        if not self.outbound.listen:
            return "no outbound listener, no [[inbound]] and no [api]: the daemon would serve nothing"
        if not self.outbound.routes:
            return ("no [[outbound.route]], no [[inbound]] and no [api]: every redirected connection would be "
                    "reset (no-route)")
        return None

    def line_of(self, key: str) -> Optional[int]:
        """The line of a dotted key path in the source text (None without one)."""
        return line_of(self._text, key) if self._text is not None else None

    def locate(self, error: ConfigError) -> ConfigError:
        """`error` with the line of its key, for errors found after parsing."""
        return error if error.line is not None else error.at(self.line_of(error.key))
