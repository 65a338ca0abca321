"""Strict TOML configuration -> frozen attrs values.

Every key is known; anything else is an error that names the key's dotted path and, where we
can find it, its line.  Values are frozen (hashable) so the TLS layer can cache one
`SSL.Context` per policy.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

import attrs

from ssaproxy.errors import ConfigError

TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
ACTIONS = ("upgrade", "passthrough", "reject")
HOSTNAME_SOURCES = ("http-host", "address")

# AEAD suites with forward secrecy only; a floor of exclusions is appended in tls.context so an
# admin's own string can never bring back NULL, anonymous, export or RC4/3DES suites.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
DEFAULT_CIPHERSUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
DEFAULT_GROUPS = "X25519:P-256:P-384"

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

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)

T = TypeVar("T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_valid_hostname(name: str) -> bool:
    """A DNS name we are willing to put in SNI and verify against (no wildcards)."""
    return bool(_HOSTNAME_RE.fullmatch(name)) and not name.startswith("*")


# --------------------------------------------------------------------------- values


@attrs.frozen(kw_only=True)
class Policy:
    """The admin's system-wide TLS policy."""

    min_version: str = "TLSv1.2"
    max_version: str = "TLSv1.3"
    ciphers: str = DEFAULT_CIPHERS
    ciphersuites: str = DEFAULT_CIPHERSUITES
    groups: str = DEFAULT_GROUPS
    trust_store: Optional[str] = None  # None: the system bundle
    min_rsa_bits: int = 2048


@attrs.frozen(kw_only=True)
class Route:
    """One outbound rule; the first whose destination and port match wins."""

    name: str
    destination: ipaddress.IPv4Network | ipaddress.IPv6Network
    ports: tuple[int, ...] = ()  # empty: every port
    action: str = "upgrade"
    tls_port: Optional[int] = None  # None: the original port
    hostname: Optional[str] = None
    hostname_from: Optional[str] = None
    client_certificate: Optional[str] = None  # an identity to present upstream (mTLS)
    client_key: Optional[str] = None

    def matches(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        return (
            ip.version == self.destination.version
            and ip in self.destination
            and (not self.ports or port in self.ports)
        )


@attrs.frozen(kw_only=True)
class Outbound:
    listen: tuple[str, ...] = ("tcp:15001:interface=127.0.0.1",)
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    sniff_timeout: float = 5.0
    max_header_bytes: int = 8192
    max_connections: int = 10000
    routes: tuple[Route, ...] = ()

    def match(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> Optional[Route]:
        for route in self.routes:
            if route.matches(ip, port):
                return route
        return None


@attrs.frozen(kw_only=True)
class Api:
    """The local socket API (docs/api.md): where it listens and who may use it."""

    socket: str = "/run/ssaproxy/api.sock"
    mode: int = 0o660  # the socket file's permissions: who may ask the daemon for TLS
    group: Optional[str] = None  # None: the daemon's own group
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    max_sessions: int = 10000  # control connections at once, and TLS sessions at once


@attrs.frozen(kw_only=True)
class Iptables:
    """What the generated rules never redirect, besides the daemon's own traffic."""

    exclude_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # out: destinations; in: sources
    exclude_ports: tuple[int, ...] = ()  # outbound destination ports


@attrs.frozen(kw_only=True)
class Config:
    policy: Policy = Policy()
    outbound: Outbound = Outbound()
    iptables: Iptables = Iptables()
    inbound: tuple[Any, ...] = ()  # ssaproxy.inbound_config.Inbound
    api: Optional[Api] = None  # None: no [api] table, no local socket API
    source: str = "<embedded default>"

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> "Config":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            found = re.search(r"at line (\d+)", str(e))
            raise ConfigError("", f"not valid TOML: {e}", int(found.group(1)) if found else None) from None
        except (ValueError, RecursionError) as e:  # tomllib's own limits (huge integers, deep nesting)
            raise ConfigError("", f"not valid TOML: {type(e).__name__}: {e}") from None
        try:
            return cls.from_mapping(data, source=source)
        except ConfigError as e:
            # Keys inside inline tables have no line of their own: name the closest enclosing one.
            key, line = e.key, None
            while key and line is None:
                line = _locate(text, key)
                key = key.rpartition(".")[0]
            raise e.at(line) from None

    @classmethod
    def from_file(cls, path: str) -> "Config":
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError("", f"{path} is not UTF-8 text") from None
        return cls.from_toml(text, source=path)

    @classmethod
    def default(cls) -> "Config":
        return cls.from_toml(DEFAULT_CONFIG_TOML, source="<embedded default>")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<mapping>") -> "Config":
        from ssaproxy.inbound_config import parse_inbound

        r = _Reader(data, "")
        policy = _policy(r.table("policy"))
        has_outbound = "outbound" in r.data
        inbound = parse_inbound(r.take("inbound", list, [], "an array of tables ([[inbound]])"), "inbound",
                                policy.max_version)
        outbound_table = r.table("outbound")
        if not has_outbound and (inbound or "api" in r.data):
            outbound = Outbound(listen=())  # an inbound-only sidecar or API-only daemon opens no outbound listener
        else:
            outbound = _outbound(outbound_table)
        iptables = _iptables(r.table("iptables"))
        api = _api(r.table("api")) if "api" in r.data else None
        r.done()
        return cls(policy=policy, outbound=outbound, inbound=inbound, iptables=iptables, api=api, source=source)


@attrs.frozen
class Listener:
    family: int  # 4 or 6
    port: int
    interface: Optional[str]


def endpoint_facts(description: str, key: str) -> tuple[str, int, Optional[IPAddress]]:
    """Kind ("tcp" or "tcp6"), port and interface address of a Twisted TCP server endpoint
    string; errors name `key`."""
    parts = _split_endpoint(description)
    kind = parts[0]
    if kind not in ("tcp", "tcp6"):
        raise ConfigError(key, f"needs a tcp or tcp6 endpoint, got {description!r}")
    positional = [p for p in parts[1:] if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port_text = keywords.get("port") or (positional[0] if positional else "")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
        raise ConfigError(key, f"no usable port in {description!r}")
    # Twisted's positional order: tcp:PORT:INTERFACE:BACKLOG but tcp6:PORT:BACKLOG:INTERFACE.
    slot = 1 if kind == "tcp" else 2
    interface = keywords.get("interface") or (positional[slot] if len(positional) > slot else None)
    if set(keywords) - {"port", "interface", "backlog"} or len(positional) > 3:
        raise ConfigError(key, f"cannot parse {description!r} (IPv6 addresses need their colons escaped: "
                               "interface=\\:\\:1)")
    if interface is None:
        return kind, int(port_text), None
    try:
        return kind, int(port_text), ipaddress.ip_address(interface)
    except ValueError:
        raise ConfigError(key, f"interface {interface!r} in {description!r} is not an IP address") from None


def parse_listener(description: str) -> Listener:
    """Family and port of an outbound listener ("tcp:15001:interface=127.0.0.1")."""
    kind, port, address = endpoint_facts(description, "outbound.listen")
    if address is not None and not (address.is_loopback or address.is_unspecified):
        # REDIRECT in the OUTPUT chain delivers to 127.0.0.1 / ::1: anything else never sees a
        # redirected connection.
        raise ConfigError("outbound.listen", f"interface {address} would never receive redirected "
                                             "connections: listen on the loopback address (127.0.0.1 or ::1)")
    family = 6 if kind == "tcp6" or (address is not None and address.version == 6) else 4
    return Listener(family=family, port=port, interface=str(address) if address is not None else None)


def _split_endpoint(description: str) -> list[str]:
    parts, current, i = [], "", 0
    while i < len(description):
        ch = description[i]
        if ch == "\\" and i + 1 < len(description):
            current += description[i + 1]
            i += 2
            continue
        if ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    parts.append(current)
    return parts


# --------------------------------------------------------------------------- reading


class _Reader:
    """Takes keys out of one table, so that whatever is left over is an unknown key."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = dict(data)
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def take(self, name: str, kind: type | tuple[type, ...], default: Any = None, what: str = "") -> Any:
        if name not in self.data:
            return default
        value = self.data.pop(name)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; TOML true is never a number here.
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(self.key(name), f"number too large: {value}") from None
        else:
            ok = isinstance(value, kinds)
        if not ok:
            raise ConfigError(self.key(name), f"expected {what or _kind_name(kinds)}, got {_toml_type(value)}")
        return value

    def table(self, name: str) -> "_Reader":
        value = self.take(name, dict, {}, "a table")
        return _Reader(value, self.key(name))

    def check(self, name: str, ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(self.key(name), message)

    def done(self) -> None:
        for name in self.data:
            raise ConfigError(self.key(name), "unknown key")


def _kind_name(kinds: Sequence[type]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "an array", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _toml_type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _one_of(r: _Reader, name: str, value: T, allowed: Sequence[T]) -> T:
    r.check(name, value in allowed, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _positive(r: _Reader, name: str, value: float, limit: float) -> float:
    r.check(name, 0 < value <= limit, f"must be greater than 0 and at most {limit:g}, got {value:g}")
    return value


def _port(r: _Reader, name: str, value: int) -> int:
    r.check(name, 1 <= value <= 65535, f"port must be 1-65535, got {value}")
    return value


def _openssl_list(r: _Reader, name: str, value: str, check: Callable[[str], None]) -> str:
    try:
        check(value)
    except Exception as e:  # OpenSSL's own parser is the judge of these strings.
        raise ConfigError(r.key(name), f"OpenSSL refused {value!r}: {e}") from None
    return value


def _policy(r: _Reader) -> Policy:
    from ssaproxy.tls import context as tlsctx  # OpenSSL validates its own list syntax

    d = Policy()
    min_v = _one_of(r, "min_version", r.take("min_version", str, d.min_version), TLS_VERSIONS)
    max_v = _one_of(r, "max_version", r.take("max_version", str, d.max_version), TLS_VERSIONS)
    r.check("min_version", TLS_VERSIONS.index(min_v) <= TLS_VERSIONS.index(max_v),
            f"min_version {min_v} is above max_version {max_v}")
    ciphers = _openssl_list(r, "ciphers", r.take("ciphers", str, d.ciphers), tlsctx.check_ciphers)
    suites = _openssl_list(r, "ciphersuites", r.take("ciphersuites", str, d.ciphersuites),
                           tlsctx.check_ciphersuites)
    groups = _openssl_list(r, "groups", r.take("groups", str, d.groups), tlsctx.check_groups)
    trust = r.take("trust_store", str, None)
    if trust is not None:
        r.check("trust_store", trust != "", "must be a path to a PEM bundle (omit it for the system store)")
        _openssl_list(r, "trust_store", trust, tlsctx.check_trust_store)
    rsa = r.take("min_rsa_bits", int, d.min_rsa_bits)
    r.check("min_rsa_bits", rsa >= 2048, f"must be at least 2048, got {rsa}")
    r.done()
    return Policy(min_version=min_v, max_version=max_v, ciphers=ciphers, ciphersuites=suites,
                  groups=groups, trust_store=trust, min_rsa_bits=rsa)


def _api(r: _Reader) -> Api:
    path = r.take("socket", str, "/run/ssaproxy/api.sock")
    r.check("socket", path.startswith("/") and "\x00" not in path and len(path.encode()) < 108,
            f"must be an absolute path shorter than 108 bytes, got {path!r}")
    mode = r.take("mode", (int, str), 0o660, "an octal number (0o660) or a string (\"0660\")")
    if isinstance(mode, str):
        r.check("mode", bool(re.fullmatch(r"0?[0-7]{3}", mode)), f"must be an octal mode like \"0660\", got {mode!r}")
        mode = int(mode, 8)
    r.check("mode", 0 <= mode <= 0o777, f"must be between 0o000 and 0o777, got {mode:#o}")
    group = r.take("group", str, None)
    if group is not None:
        import grp

        try:
            grp.getgrnam(group)
        except KeyError:
            raise ConfigError(r.key("group"), f"no such group {group!r}") from None
    api = Api(socket=path, mode=mode, group=group,
              connect_timeout=_positive(r, "connect_timeout", r.take("connect_timeout", float, 10.0), 300),
              handshake_timeout=_positive(r, "handshake_timeout", r.take("handshake_timeout", float, 10.0), 300),
              max_sessions=int(_positive(r, "max_sessions", r.take("max_sessions", int, 10000), 1_000_000)))
    r.done()
    return api


def _iptables(r: _Reader) -> Iptables:
    raw_cidrs = r.take("exclude_cidrs", list, [])
    cidrs = []
    for text in raw_cidrs:
        r.check("exclude_cidrs", isinstance(text, str), "must be an array of CIDR strings")
        try:
            cidrs.append(ipaddress.ip_network(text, strict=True))
        except ValueError as e:
            raise ConfigError(r.key("exclude_cidrs"), f"not a CIDR network: {e}") from None
    raw_ports = r.take("exclude_ports", list, [])
    r.check("exclude_ports", all(isinstance(p, int) and not isinstance(p, bool) for p in raw_ports),
            "must be an array of integers")
    ports = tuple(_port(r, "exclude_ports", p) for p in raw_ports)
    r.done()
    return Iptables(exclude_cidrs=tuple(cidrs), exclude_ports=ports)


def _outbound(r: _Reader) -> Outbound:
    d = Outbound()
    listen_raw = r.take("listen", (str, list), list(d.listen), "a string or an array of strings")
    listen = (listen_raw,) if isinstance(listen_raw, str) else tuple(listen_raw)
    r.check("listen", bool(listen) and all(isinstance(x, str) and x for x in listen),
            "must be a Twisted server endpoint string, or a non-empty array of them")
    listeners = [parse_listener(x) for x in listen]
    connect_timeout = _positive(r, "connect_timeout", r.take("connect_timeout", float, d.connect_timeout), 300)
    handshake_timeout = _positive(r, "handshake_timeout",
                                  r.take("handshake_timeout", float, d.handshake_timeout), 300)
    sniff_timeout = _positive(r, "sniff_timeout", r.take("sniff_timeout", float, d.sniff_timeout), 300)
    max_header = r.take("max_header_bytes", int, d.max_header_bytes)
    r.check("max_header_bytes", 256 <= max_header <= 65536, f"must be 256-65536, got {max_header}")
    max_conns = r.take("max_connections", int, d.max_connections)
    r.check("max_connections", 1 <= max_conns <= 1_000_000, f"must be 1-1000000, got {max_conns}")
    raw_routes = r.take("route", list, [], "an array of tables ([[outbound.route]])")
    routes = []
    names: set[str] = set()
    for i, raw in enumerate(raw_routes):
        path = r.key(f"route[{i}]")
        if not isinstance(raw, dict):
            raise ConfigError(path, f"expected a table, got {_toml_type(raw)}")
        route = _route(_Reader(raw, path), i)
        if route.name in names:
            raise ConfigError(f"{path}.name", f"duplicate route name {route.name!r}")
        names.add(route.name)
        routes.append(route)
    for family in {route.destination.version for route in routes}:
        r.check("listen", any(x.family == family for x in listeners),
                f"routes for IPv{family} destinations need a {'tcp6' if family == 6 else 'tcp'} listener "
                "(REDIRECT delivers them to the loopback address of their own family)")
    r.done()
    return Outbound(listen=listen, connect_timeout=connect_timeout, handshake_timeout=handshake_timeout,
                    max_connections=max_conns,
                    sniff_timeout=sniff_timeout, max_header_bytes=max_header, routes=tuple(routes))


def _route(r: _Reader, index: int) -> Route:
    name = r.take("name", str, f"route{index}")
    r.check("name", bool(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name)),
            "must be 1-64 characters of letters, digits, _ . : -")
    dest_raw = r.take("destination", str, None)
    r.check("destination", dest_raw is not None, "is required (a CIDR such as 10.0.0.0/8 or ::/0)")
    try:
        destination = ipaddress.ip_network(dest_raw, strict=True)
    except ValueError as e:
        raise ConfigError(r.key("destination"), f"not a CIDR network: {e}") from None
    ports_raw = r.take("ports", list, None)
    if ports_raw is not None:
        r.check("ports", bool(ports_raw), "must list at least one port (omit the key for every port)")
    else:
        ports_raw = []
    r.check("ports", all(isinstance(p, int) and not isinstance(p, bool) for p in ports_raw),
            "must be an array of integers")
    ports = tuple(_port(r, "ports", p) for p in ports_raw)
    action = _one_of(r, "action", r.take("action", str, "upgrade"), ACTIONS)
    tls_port = r.take("tls_port", int, None)
    if tls_port is not None:
        _port(r, "tls_port", tls_port)
    hostname = r.take("hostname", str, None)
    hostname_from = r.take("hostname_from", str, None)
    client_cert = r.take("client_certificate", str, None)
    client_key = r.take("client_key", str, None)
    r.check("client_key" if client_cert else "client_certificate", (client_cert is None) == (client_key is None),
            "client_certificate and client_key go together")
    if client_cert is not None:
        from ssaproxy.inbound_config import _load_certificate

        _load_certificate(_ClientCertReader(r), client_cert, client_key)  # type: ignore[arg-type]
    if hostname is not None:
        r.check("hostname", is_valid_hostname(hostname), f"not a valid DNS name: {hostname!r}")
        r.check("hostname", hostname_from is None, "give either hostname or hostname_from, not both")
    if hostname_from is not None:
        _one_of(r, "hostname_from", hostname_from, HOSTNAME_SOURCES)
    if action == "upgrade":
        r.check("hostname", hostname is not None or hostname_from is not None,
                "an upgrade route needs hostname or hostname_from (the name to verify)")
    else:
        for key, value in (("hostname", hostname), ("hostname_from", hostname_from), ("tls_port", tls_port),
                           ("client_certificate", client_cert)):
            r.check(key, value is None, f"only applies to action = \"upgrade\", not {action!r}")
    r.done()
    return Route(name=name, destination=destination, ports=ports, action=action, tls_port=tls_port,
                 hostname=hostname.rstrip(".") if hostname else None, hostname_from=hostname_from,
                 client_certificate=client_cert, client_key=client_key)


class _ClientCertReader(_Reader):
    """Names a route's client_certificate/client_key in errors about loading them."""

    def __init__(self, route: _Reader) -> None:
        super().__init__({}, route.path)

    def key(self, name: str) -> str:
        return super().key({"chain": "client_certificate", "key": "client_key"}.get(name, name))


# --------------------------------------------------------------------------- line numbers

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def _locate(text: str, key: str) -> Optional[int]:
    """Best-effort line of a dotted key path such as ``outbound.route[1].ports``.

    Handles the shapes our config uses ([table], [[array.of.tables]], key = value); falls back to
    the line of the enclosing table header, or None.
    """
    if not key:
        return None
    parts = re.findall(r"([A-Za-z0-9_-]+)(?:\[(\d+)\])?", key)
    if not parts:
        return None
    # Split into the table path (everything but the last part) and the leaf key.
    table_parts = parts[:-1]
    leaf, leaf_index = parts[-1]
    want_table = ".".join(p for p, _ in table_parts)
    want_index = next((int(i) for _, i in reversed(table_parts) if i), None)
    seen: dict[str, int] = {}
    current, current_index, header_line = "", None, None
    best: Optional[int] = None
    for lineno, line in enumerate(text.splitlines(), 1):
        h = _HEADER_RE.match(line)
        if h:
            current = h.group(2)
            if h.group(1) == "[[":
                current_index = seen.get(current, 0)
                seen[current] = current_index + 1
            else:
                current_index = None
            if current == want_table and current_index == want_index:
                header_line = lineno
                best = best or lineno
            # A leaf that is itself a table/array-of-tables: [outbound] or [[outbound.route]].
            full = f"{want_table}.{leaf}" if want_table else leaf
            if current == full and (not leaf_index or current_index == int(leaf_index)):
                return lineno
            continue
        k = _KEY_RE.match(line)
        if k and k.group(1) == leaf and current == want_table and current_index == want_index:
            return lineno
    return header_line if header_line is not None else best
