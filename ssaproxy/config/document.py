"""The whole document: `Config`, its named constructors and the embedded default, with the
`[api]` table; the other tables have modules of their own (`policy`, `outbound`, `inbound`,
`profiles`, `host` for `[daemon]`, `[admin]` and `[iptables]`), and `listeners` checks the
listening addresses of them all together.

Parsing is pure: no OpenSSL, no certificate files, no user database.  The checks that need
those run afterwards in `ssaproxy.tls.load`; a `Config` keeps its source text (outside
equality and hashing) so that step can still name the line of the key it refuses.  That is
also why `[api]` does not look its `group` up on this host (a fact of the system, not of the
text).
"""

from __future__ import annotations

import re
import tomllib
from typing import Any, Mapping, Optional

import attrs

from ssaproxy.config.host import Admin, Daemon, Iptables, parse_admin, parse_daemon, parse_iptables
from ssaproxy.config.inbound import Inbound, parse_inbound
from ssaproxy.config.listeners import check_listeners
from ssaproxy.config.outbound import Outbound, parse_outbound
from ssaproxy.config.policy import Policy, parse_policy
from ssaproxy.config.profiles import Profile, parse_profiles
from ssaproxy.config.reader import Reader, line_of
from ssaproxy.errors import ConfigError

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
              session_idle_timeout=r.off_or_positive("session_idle_timeout", 0.0, 86400),
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
        profiles = parse_profiles(r, policy)
        r.done()
        check_listeners(outbound, inbound, admin, profiles)
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
