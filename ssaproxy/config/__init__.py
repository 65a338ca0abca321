"""Strict TOML configuration -> frozen attrs values.

Every key is known; anything else is an error that names the key's dotted path and, where we
can find it, its line.  Values are frozen (hashable) so the TLS layer can cache one
`SSL.Context` per policy.  Parsing is pure; `ssaproxy.tls.load` is the step that checks what
the text names on this system (OpenSSL strings, certificate files, the API's group).

Modules: `reader` (the strict reader, line numbers), `enums`, `endpoints` (endpoint strings,
DNS names), one parser per table (`policy`, `outbound`, `inbound`, `profiles`, `host` for
`[daemon]`, `[admin]` and `[iptables]`), `listeners` (the listening addresses of all tables
together), and `document` (`Config`, the embedded default, and `[api]`).
"""

from ssaproxy.config.document import DEFAULT_API_SOCKET, DEFAULT_CONFIG_TOML, DEFAULT_SOURCE, Api, Config
from ssaproxy.config.endpoints import IPAddress, ListenAddress, Listener, is_valid_hostname, parse_listener
from ssaproxy.config.enums import ACTIONS, HOSTNAME_SOURCES, TLS_VERSIONS, Action, HostnameSource, TLSVersion
from ssaproxy.config.host import DEFAULT_ADMIN_LISTEN, Admin, Daemon, Iptables
from ssaproxy.config.inbound import CLIENT_AUTH, PROFILE_MIN_VERSION, Backend, Certificate, Inbound
from ssaproxy.config.outbound import Outbound, Route
from ssaproxy.config.policy import DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES, DEFAULT_GROUPS, Policy
from ssaproxy.config.profiles import PROFILE_RULES, Profile

__all__ = [
    "ACTIONS", "CLIENT_AUTH", "DEFAULT_ADMIN_LISTEN", "DEFAULT_API_SOCKET", "DEFAULT_CIPHERS",
    "DEFAULT_CIPHERSUITES", "DEFAULT_CONFIG_TOML", "DEFAULT_GROUPS", "DEFAULT_SOURCE", "HOSTNAME_SOURCES",
    "PROFILE_MIN_VERSION", "PROFILE_RULES", "TLS_VERSIONS", "Action", "Admin", "Api", "Backend", "Certificate",
    "Config", "Daemon",
    "HostnameSource", "IPAddress", "Inbound", "Iptables", "ListenAddress", "Listener", "Outbound", "Policy",
    "Profile", "Route", "TLSVersion", "is_valid_hostname", "parse_listener",
]
