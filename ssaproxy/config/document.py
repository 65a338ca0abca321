"""The whole document: `Config`, its named constructors and the embedded default.

Parsing is pure: no OpenSSL, no certificate files, no user database.  The checks that need
those run afterwards in `ssaproxy.tls.load`; a `Config` keeps its source text (outside
equality and hashing) so that step can still name the line of the key it refuses.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any, Mapping, Optional

import attrs

from ssaproxy.config.api import Api, parse_api
from ssaproxy.config.inbound import Inbound, parse_inbound
from ssaproxy.config.iptables import Iptables, parse_iptables
from ssaproxy.config.outbound import Outbound, parse_outbound
from ssaproxy.config.policy import Policy, parse_policy
from ssaproxy.config.reader import Reader, line_of
from ssaproxy.errors import ConfigError

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
        inbound = parse_inbound(r.take("inbound", list, [], "an array of tables ([[inbound]])"), "inbound",
                                policy.max_version)
        outbound_table = r.table("outbound")
        if not has_outbound and (inbound or "api" in r.data):
            outbound = Outbound(listen=())  # an inbound-only sidecar or API-only daemon opens no outbound listener
        else:
            outbound = parse_outbound(outbound_table)
        iptables = parse_iptables(r.table("iptables"))
        api = parse_api(r.table("api")) if "api" in r.data else None
        r.done()
        return cls(policy=policy, outbound=outbound, inbound=inbound, iptables=iptables, api=api, source=source)

    def line_of(self, key: str) -> Optional[int]:
        """The line of a dotted key path in the source text (None without one)."""
        return line_of(self._text, key) if self._text is not None else None

    def locate(self, error: ConfigError) -> ConfigError:
        """`error` with the line of its key, for errors found after parsing."""
        return error if error.line is not None else error.at(self.line_of(error.key))
