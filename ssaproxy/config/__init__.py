"""Strict TOML configuration -> frozen attrs values.

Every key is known; anything else is an error that names the key's dotted path and, where we
can find it, its line.  Values are frozen (hashable) so the TLS layer can cache one
`SSL.Context` per policy.  Parsing is pure; `ssaproxy.tls.load` is the step that checks what
the text names on this system (OpenSSL strings, certificate files, the API's group).

Modules: `reader` (the strict reader, line numbers), `enums`, `endpoints` (endpoint strings,
DNS names), one parser per table (`policy`, `outbound`, `inbound`, `api`, `iptables`), and
`document` (`Config`, the embedded default).
"""

from ssaproxy.config.api import DEFAULT_API_SOCKET, Api
from ssaproxy.config.document import DEFAULT_CONFIG_TOML, DEFAULT_SOURCE, Config
from ssaproxy.config.endpoints import IPAddress, Listener, endpoint_facts, is_valid_hostname, parse_listener
from ssaproxy.config.enums import ACTIONS, HOSTNAME_SOURCES, TLS_VERSIONS, Action, HostnameSource, TLSVersion
from ssaproxy.config.inbound import (
    CLIENT_AUTH,
    PROFILE_MIN_VERSION,
    PROFILES,
    PROXY_PROTOCOL,
    Backend,
    Certificate,
    Inbound,
    parse_inbound,
)
from ssaproxy.config.iptables import Iptables
from ssaproxy.config.outbound import Outbound, Route
from ssaproxy.config.policy import DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES, DEFAULT_GROUPS, Policy

__all__ = [
    "ACTIONS", "CLIENT_AUTH", "DEFAULT_API_SOCKET", "DEFAULT_CIPHERS", "DEFAULT_CIPHERSUITES", "DEFAULT_CONFIG_TOML",
    "DEFAULT_GROUPS", "DEFAULT_SOURCE", "HOSTNAME_SOURCES", "PROFILES", "PROFILE_MIN_VERSION", "PROXY_PROTOCOL",
    "TLS_VERSIONS", "Action", "Api", "Backend", "Certificate", "Config", "HostnameSource", "IPAddress", "Inbound",
    "Iptables", "Listener", "Outbound", "Policy", "Route", "TLSVersion", "endpoint_facts", "is_valid_hostname",
    "parse_inbound", "parse_listener",
]
