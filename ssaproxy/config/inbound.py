"""The `[[inbound]]` tables: TLS termination in front of a plaintext service.

Certificates are paths here.  Reading them (a missing file, a key that does not match its
certificate, the names SNI selects by) is `ssaproxy.tls.load`'s job, after parsing; its errors
still name `inbound[N].certificates[M].chain` or `.key` and their line.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Optional

import attrs

from ssaproxy.config.endpoints import endpoint_facts, endpoint_fields
from ssaproxy.config.enums import REVOCATION_MODES, TLSVersion
from ssaproxy.config.reader import Reader, toml_type
from ssaproxy.errors import ConfigError

CLIENT_AUTH = ("none", "request", "require")
PROXY_PROTOCOL = ("off", "v2")
WORKER_AFFINITY = ("source-address", "none")
PROFILES = ("intermediate", "modern")
PROFILE_MIN_VERSION: dict[str, TLSVersion] = {"intermediate": TLSVersion.TLSv1_2, "modern": TLSVersion.TLSv1_3}


@attrs.frozen(kw_only=True)
class Certificate:
    """Where one certificate chain and its key are; `ssaproxy.tls.load` reads them."""

    chain: str  # PEM file: leaf first, then intermediates
    key: str


@attrs.frozen(kw_only=True)
class Backend:
    host: Optional[str]  # None: "original" (transparent inbound: 127.0.0.1:<original port>)
    port: Optional[int]

    @property
    def original(self) -> bool:
        return self.host is None


@attrs.frozen(kw_only=True, cache_hash=True)
class Inbound:
    name: str
    listen: str  # Twisted server endpoint string
    backend: Backend
    certificates: tuple[Certificate, ...]
    client_auth: str = "none"
    client_ca: Optional[str] = None
    allow: tuple[str, ...] = ()
    proxy_protocol: str = "off"
    alpn: tuple[str, ...] = ()
    profile: str = "intermediate"
    ports: tuple[int, ...] = ()  # transparent inbound: original ports iptables redirects here
    listen_port: int = 0  # from `listen`, for the iptables rules
    families: tuple[int, ...] = (4,)  # address families `listen` accepts
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    max_connections: int = 10000
    idle_timeout: float = 3600.0  # a relay with no bytes either way this long is reset; 0: never
    insecure_allow_non_rfc5280_chains: bool = False  # for client certificates under client_ca
    session_resumption: Optional[bool] = None  # session tickets; None: policy.session_resumption
    revocation: Optional[str] = None  # client certificates; None: [policy] revocation
    ocsp_stapling: bool = True  # staple our certificates' OCSP responses (fetched from their AIA)
    ocsp_response_file: Optional[str] = None  # a DER response to staple instead (air-gapped hosts)
    worker_affinity: str = "source-address"  # with workers: one client address, one worker (ssaproxy.reuseport)


def parse_inbound(r: Reader, policy_max: TLSVersion) -> tuple[Inbound, ...]:
    out: list[Inbound] = []
    for i, table in enumerate(r.tables("inbound", "an array of tables ([[inbound]])")):
        inbound = _one(table, i, policy_max)
        if inbound.name in {x.name for x in out}:
            raise ConfigError(table.key("name"), f"duplicate inbound name {inbound.name!r}")
        taken = {port for x in out for port in x.ports}
        if taken & set(inbound.ports):
            raise ConfigError(table.key("ports"), f"port(s) {sorted(taken & set(inbound.ports))} already "
                                                  "redirected to an earlier transparent listener")
        out.append(inbound)
    return tuple(out)


def _one(r: Reader, index: int, policy_max: TLSVersion) -> Inbound:
    name = r.name(f"inbound{index}")
    listen: Optional[str] = r.take("listen", str, None)
    r.check("listen", bool(listen), "is required (a Twisted server endpoint string such as tcp:8443)")
    assert listen is not None
    listen_port, families, interface = _listen_facts(r, listen)
    backend = _backend(r, r.take("backend", str, None))
    certificates = _certificates(r, r.take("certificates", list, None))
    client_auth: str = r.one_of("client_auth", r.take("client_auth", str, "none"), CLIENT_AUTH)
    client_ca: Optional[str] = r.take("client_ca", str, None)
    allow = tuple(r.take("allow", list, []))
    r.check("allow", all(isinstance(a, str) and re.fullmatch(r"(dns|uri):\S+", a) for a in allow),
            'entries must be "dns:NAME" or "uri:URI" (SANs, matched exactly)')
    if client_auth == "none":
        r.check("client_ca", client_ca is None, 'only applies with client_auth = "request" or "require"')
        r.check("allow", not allow, 'an allow-list needs client_auth = "request" or "require"')
    else:
        r.check("client_ca", client_ca is not None, f'is required with client_auth = "{client_auth}"')
    proxy: str = r.one_of("proxy_protocol", r.take("proxy_protocol", str, "off"), PROXY_PROTOCOL)
    alpn = tuple(r.take("alpn", list, []))
    r.check("alpn", all(isinstance(a, str) and 0 < len(a.encode()) < 256 for a in alpn),
            "must be an array of protocol names such as \"h2\", \"http/1.1\"")
    profile: str = r.one_of("profile", r.take("profile", str, "intermediate"), PROFILES)
    r.check("profile", PROFILE_MIN_VERSION[profile].rank <= policy_max.rank,
            'profile "modern" is TLS 1.3 only, above policy.max_version')
    ports = r.ports("ports", r.take("ports", list, []))
    if backend.original:
        r.check("ports", bool(ports), 'backend = "original" needs the original ports iptables should redirect')
        r.check("listen", interface is None or ipaddress.ip_address(interface).is_unspecified,
                "a transparent listener must listen on every address: REDIRECT in PREROUTING delivers to the "
                "address of the interface the connection came in on")
        r.check("listen", families == (4, 6),
                'a transparent listener must take IPv4 and IPv6 ("tcp6:PORT"): otherwise IPv6 connections to '
                "its ports reach the service in plaintext, past the TLS front door")
        r.check("ports", listen_port not in ports, f"the listener's own port {listen_port} cannot be redirected to it")
    else:
        r.check("ports", not ports, 'only applies with backend = "original"')
    handshake = r.timeout("handshake_timeout", 10.0)
    connect = r.timeout("connect_timeout", 10.0)
    max_conns = r.bounded("max_connections", 10000, 1, 1_000_000)
    idle = r.idle("idle_timeout", 3600.0)
    lax: bool = r.take("insecure_allow_non_rfc5280_chains", bool, False)
    r.check("insecure_allow_non_rfc5280_chains", not lax or client_ca is not None,
            'only applies with client_auth = "request" or "require" (to client certificates under client_ca)')
    resumption: Optional[bool] = r.take("session_resumption", bool, None)
    revocation: Optional[str] = r.take("revocation", str, None)
    if revocation is not None:
        r.one_of("revocation", revocation, REVOCATION_MODES)
        r.check("revocation", client_auth != "none", 'checks client certificates: needs client_auth = "request" '
                                                     'or "require"')
    stapling: bool = r.take("ocsp_stapling", bool, True)
    response_file: Optional[str] = r.take("ocsp_response_file", str, None)
    if response_file is not None:
        r.check("ocsp_response_file", response_file.startswith("/"), "must be an absolute path (a DER OCSP response)")
        r.check("ocsp_response_file", stapling, "a response file needs ocsp_stapling = true")
    affinity: str = r.one_of("worker_affinity", r.take("worker_affinity", str, "source-address"), WORKER_AFFINITY)
    r.done()
    return Inbound(name=name, listen=listen, backend=backend, certificates=certificates, client_auth=client_auth,
                   client_ca=client_ca, allow=allow, proxy_protocol=proxy, alpn=alpn, profile=profile, ports=ports,
                   handshake_timeout=handshake, connect_timeout=connect, max_connections=max_conns, idle_timeout=idle,
                   listen_port=listen_port, families=families, insecure_allow_non_rfc5280_chains=lax,
                   session_resumption=resumption, revocation=revocation, ocsp_stapling=stapling,
                   ocsp_response_file=response_file, worker_affinity=affinity)


def _listen_facts(r: Reader, listen: str) -> tuple[int, tuple[int, ...], Optional[str]]:
    """Port, address families and interface of the listener's endpoint string."""
    kind, port, address = endpoint_facts(listen, r.key("listen"))
    if address is None:
        return port, ((4, 6) if kind == "tcp6" else (4,)), None
    dual = address.version == 6 and address.is_unspecified  # [::] also takes IPv4 (mapped)
    return port, ((4, 6) if dual else (address.version,)), str(address)


def _backend(r: Reader, value: Optional[str]) -> Backend:
    r.check("backend", value is not None, 'is required: "tcp:HOST:PORT" or "original"')
    assert value is not None
    if value == "original":
        return Backend(host=None, port=None)
    kind, positional, keywords = endpoint_fields(value)
    host = keywords.get("host") or (positional[0] if positional else None)
    port_text = keywords.get("port") or (positional[1] if len(positional) > 1 else "")
    if kind != "tcp" or not host or not re.fullmatch(r"[0-9]{1,5}", port_text):
        raise ConfigError(r.key("backend"), f'must be "tcp:HOST:PORT" or "original", got {value!r}')
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ConfigError(r.key("backend"), f"not a host name or address: {host!r}") from None
    return Backend(host=host, port=r.port("backend", int(port_text)))


def _certificates(r: Reader, raw: Optional[list[Any]]) -> tuple[Certificate, ...]:
    r.check("certificates", bool(raw), 'is required: [ { chain = "...", key = "..." }, ... ]')
    assert raw is not None
    out: list[Certificate] = []
    for i, item in enumerate(raw):
        path = r.key(f"certificates[{i}]")
        if not isinstance(item, dict):
            raise ConfigError(path, f"expected a table {{ chain = ..., key = ... }}, got {toml_type(item)}")
        cr = Reader(item, path)
        chain: Optional[str] = cr.take("chain", str, None)
        key: Optional[str] = cr.take("key", str, None)
        cr.check("chain", bool(chain), "is required (PEM: certificate, then intermediates)")
        cr.check("key", bool(key), "is required (PEM private key)")
        cr.done()
        assert chain is not None and key is not None
        out.append(Certificate(chain=chain, key=key))
    return tuple(out)
