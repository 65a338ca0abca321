"""The `[[inbound]]` tables: TLS termination in front of a plaintext service.

Certificates and keys are read here, at load time, so a missing file or a key that does not
match its certificate is a config error naming the key, not a failure at the first client.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Optional

import attrs

from ssaproxy.config import _one_of, _port, _positive, _Reader, _split_endpoint, _toml_type, endpoint_facts
from ssaproxy.errors import ConfigError

CLIENT_AUTH = ("none", "request", "require")
PROXY_PROTOCOL = ("off", "v2")
PROFILES = ("intermediate", "modern")


@attrs.frozen(kw_only=True)
class Certificate:
    chain: str  # PEM file: leaf first, then intermediates
    key: str
    names: tuple[str, ...]  # the leaf's DNS SANs, lower case (for SNI selection)
    key_type: str  # "RSA" | "EC" | ...


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


def parse_inbound(raw_list: Any, path: str, policy_max: str = "TLSv1.3") -> tuple[Inbound, ...]:
    if not isinstance(raw_list, list):
        raise ConfigError(path, f"expected an array of tables ([[inbound]]), got {_toml_type(raw_list)}")
    out: list[Inbound] = []
    for i, raw in enumerate(raw_list):
        p = f"{path}[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(p, f"expected a table, got {_toml_type(raw)}")
        inbound = _one(_Reader(raw, p), i, policy_max)
        if inbound.name in {x.name for x in out}:
            raise ConfigError(f"{p}.name", f"duplicate inbound name {inbound.name!r}")
        taken = {port for x in out for port in x.ports}
        if taken & set(inbound.ports):
            raise ConfigError(f"{p}.ports", f"port(s) {sorted(taken & set(inbound.ports))} already redirected "
                                            "to an earlier transparent listener")
        out.append(inbound)
    return tuple(out)


def _one(r: _Reader, index: int, policy_max: str) -> Inbound:
    name = r.take("name", str, f"inbound{index}")
    r.check("name", bool(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name)),
            "must be 1-64 characters of letters, digits, _ . : -")
    listen = r.take("listen", str, None)
    r.check("listen", bool(listen), "is required (a Twisted server endpoint string such as tcp:8443)")
    assert listen is not None
    listen_port, families, interface = _listen_facts(r, listen)
    backend = _backend(r, r.take("backend", str, None))
    certificates = _certificates(r, r.take("certificates", list, None))
    client_auth = _one_of(r, "client_auth", r.take("client_auth", str, "none"), CLIENT_AUTH)
    client_ca = r.take("client_ca", str, None)
    allow = tuple(r.take("allow", list, []))
    r.check("allow", all(isinstance(a, str) and re.fullmatch(r"(dns|uri):\S+", a) for a in allow),
            'entries must be "dns:NAME" or "uri:URI" (SANs, matched exactly)')
    if client_auth == "none":
        r.check("client_ca", client_ca is None, 'only applies with client_auth = "request" or "require"')
        r.check("allow", not allow, 'an allow-list needs client_auth = "request" or "require"')
    else:
        r.check("client_ca", client_ca is not None, f'is required with client_auth = "{client_auth}"')
        from ssaproxy.tls.context import check_trust_store

        try:
            check_trust_store(client_ca)  # type: ignore[arg-type]
        except Exception as e:  # OpenSSL decides what a usable CA file is
            raise ConfigError(r.key("client_ca"), f"cannot load {client_ca!r}: {e}") from None
    proxy = _one_of(r, "proxy_protocol", r.take("proxy_protocol", str, "off"), PROXY_PROTOCOL)
    alpn = tuple(r.take("alpn", list, []))
    r.check("alpn", all(isinstance(a, str) and 0 < len(a.encode()) < 256 for a in alpn),
            "must be an array of protocol names such as \"h2\", \"http/1.1\"")
    profile = _one_of(r, "profile", r.take("profile", str, "intermediate"), PROFILES)
    r.check("profile", profile != "modern" or policy_max == "TLSv1.3",
            'profile "modern" is TLS 1.3 only, above policy.max_version')
    ports_raw = r.take("ports", list, [])
    r.check("ports", all(isinstance(p, int) and not isinstance(p, bool) for p in ports_raw),
            "must be an array of integers")
    ports = tuple(_port(r, "ports", p) for p in ports_raw)
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
    handshake = _positive(r, "handshake_timeout", r.take("handshake_timeout", float, 10.0), 300)
    connect = _positive(r, "connect_timeout", r.take("connect_timeout", float, 10.0), 300)
    max_conns = r.take("max_connections", int, 10000)
    r.check("max_connections", 1 <= max_conns <= 1_000_000, f"must be 1-1000000, got {max_conns}")
    r.done()
    return Inbound(name=name, listen=listen, backend=backend, certificates=certificates, client_auth=client_auth,
                   client_ca=client_ca, allow=allow, proxy_protocol=proxy, alpn=alpn, profile=profile, ports=ports,
                   handshake_timeout=handshake, connect_timeout=connect, max_connections=max_conns,
                   listen_port=listen_port, families=families)


def _listen_facts(r: _Reader, listen: str) -> tuple[int, tuple[int, ...], Optional[str]]:
    """Port, address families and interface of the listener's endpoint string."""
    kind, port, address = endpoint_facts(listen, r.key("listen"))
    if address is None:
        return port, ((4, 6) if kind == "tcp6" else (4,)), None
    dual = address.version == 6 and address.is_unspecified  # [::] also takes IPv4 (mapped)
    return port, ((4, 6) if dual else (address.version,)), str(address)


def _backend(r: _Reader, value: Optional[str]) -> Backend:
    r.check("backend", value is not None, 'is required: "tcp:HOST:PORT" or "original"')
    assert value is not None
    if value == "original":
        return Backend(host=None, port=None)
    parts = _split_endpoint(value)
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    positional = [p for p in parts[1:] if "=" not in p]
    host = keywords.get("host") or (positional[0] if positional else None)
    port_text = keywords.get("port") or (positional[1] if len(positional) > 1 else "")
    if parts[0] != "tcp" or not host or not re.fullmatch(r"[0-9]{1,5}", port_text):
        raise ConfigError(r.key("backend"), f'must be "tcp:HOST:PORT" or "original", got {value!r}')
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ConfigError(r.key("backend"), f"not a host name or address: {host!r}") from None
    return Backend(host=host, port=_port(r, "backend", int(port_text)))


def _certificates(r: _Reader, raw: Optional[list[Any]]) -> tuple[Certificate, ...]:
    r.check("certificates", bool(raw), 'is required: [ { chain = "...", key = "..." }, ... ]')
    assert raw is not None
    out = []
    for i, item in enumerate(raw):
        path = r.key(f"certificates[{i}]")
        if not isinstance(item, dict):
            raise ConfigError(path, f"expected a table {{ chain = ..., key = ... }}, got {_toml_type(item)}")
        cr = _Reader(item, path)
        chain = cr.take("chain", str, None)
        key = cr.take("key", str, None)
        cr.check("chain", bool(chain), "is required (PEM: certificate, then intermediates)")
        cr.check("key", bool(key), "is required (PEM private key)")
        cr.done()
        out.append(_load_certificate(cr, chain, key))  # type: ignore[arg-type]
    return tuple(out)


def _load_certificate(r: _Reader, chain: str, key: str) -> Certificate:
    from cryptography import x509
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_METHOD)
    try:
        ctx.use_certificate_chain_file(chain)
    except Exception as e:
        raise ConfigError(r.key("chain"), f"cannot load {chain!r}: {_why(e)}") from None
    try:
        ctx.use_privatekey_file(key)
    except Exception as e:
        raise ConfigError(r.key("key"), f"cannot load {key!r}: {_why(e)}") from None
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise ConfigError(r.key("key"), f"{key!r} is not the private key of the certificate in {chain!r}") from None
    with open(chain, "rb") as f:
        leaf = x509.load_pem_x509_certificate(f.read())
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    key_type = type(leaf.public_key()).__name__.replace("PublicKey", "").replace("_", "")
    return Certificate(chain=chain, key=key, names=names, key_type="EC" if "EllipticCurve" in key_type else key_type)


def _why(e: Exception) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e) or type(e).__name__
