"""Strict TOML configuration: the embedded default, a full round trip, every kind of error
(with its dotted key path and line), route matching, `ssaproxy check-config`, and a fuzz
property that nothing but `ConfigError` ever escapes `Config.from_toml` (and the check step,
`ssaproxy.tls.load.check_config`, after it).

Error cases mark the line the error must point at with a ``# HERE`` comment, so a test's
expected line number is read from its own text rather than counted by hand.
"""

from __future__ import annotations

import datetime
import ipaddress
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssaproxy import cli
from ssaproxy.config import (
    DEFAULT_CIPHERS,
    DEFAULT_CIPHERSUITES,
    DEFAULT_GROUPS,
    Api,
    Config,
    Outbound,
    Policy,
    Route,
)
from ssaproxy.errors import ConfigError
from ssaproxy.tls.load import check_config

MARK = "# HERE"


def _text(toml: str) -> str:
    return textwrap.dedent(toml).lstrip("\n")


def marked_line(text: str) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), 1) if MARK in line]
    assert len(lines) == 1, f"test bug: expected exactly one {MARK!r} marker, found {len(lines)}"
    return lines[0]


def config_error(text: str) -> ConfigError:
    """The error the daemon and `check-config` report: from parsing, or from the check step."""
    with pytest.raises(ConfigError) as info:
        check_config(Config.from_toml(text))
    return info.value


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real self-signed CA certificate in PEM, usable as a trust store."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ssaproxy test root")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("trust") / "root.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


# --------------------------------------------------------------------------- the default


def test_embedded_default_loads_and_listens_on_loopback_only() -> None:
    config = Config.default()
    assert config.source == "<embedded default>"
    # Loopback only, both families (REDIRECT delivers to 127.0.0.1 and ::1).
    assert config.outbound.listen == ("tcp:15001:interface=127.0.0.1", r"tcp6:15001:interface=\:\:1")
    assert config.policy == Policy()
    assert config.policy.min_version == "TLSv1.2"
    assert config.policy.trust_store is None
    route, route6 = config.outbound.routes
    assert (route6.destination, route6.ports, route6.tls_port, route6.hostname_from) == (
        ipaddress.ip_network("::/0"), (80,), 443, "http-host")
    assert route.name == "http-to-https"
    assert route.destination == ipaddress.ip_network("0.0.0.0/0")
    assert route.ports == (80,)
    assert route.action == "upgrade"
    assert route.tls_port == 443
    assert route.hostname_from == "http-host"
    assert route.hostname is None


def test_empty_document_gives_the_attrs_defaults() -> None:
    config = Config.from_toml("", source="empty.toml")
    assert config.policy == Policy()
    assert config.outbound == Outbound()
    assert config.outbound.routes == ()
    assert config.source == "empty.toml"


# --------------------------------------------------------------------------- full round trip


FULL = """\
[policy]
min_version = "TLSv1.3"
max_version = "TLSv1.3"
ciphers = "ECDHE+AESGCM"
ciphersuites = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"
groups = "X25519:P-384"
trust_store = '{trust}'
min_rsa_bits = 3072

[outbound]
listen = ["tcp:15001:interface=127.0.0.1", 'tcp6:15001:interface=\\:\\:1']
connect_timeout = 7
handshake_timeout = 2.5
sniff_timeout = 1.25
max_header_bytes = 4096

[[outbound.route]]
name = "internal-api"
destination = "10.0.0.0/8"
ports = [8080, 8081]
action = "upgrade"
tls_port = 8443
hostname = "API.Example.com."

[[outbound.route]]
name = "web"
destination = "0.0.0.0/0"
ports = [80]
hostname_from = "http-host"

[[outbound.route]]
name = "v6-pass"
destination = "2001:db8::/32"
action = "passthrough"

[[outbound.route]]
name = "block"
destination = "192.0.2.0/24"
ports = [25]
action = "reject"

[[outbound.route]]
destination = "::/0"
hostname_from = "address"
"""


def test_full_config_round_trips_every_key(ca_pem: str) -> None:
    config = Config.from_toml(FULL.format(trust=ca_pem), source="full.toml")
    assert config.source == "full.toml"
    assert config.policy == Policy(
        min_version="TLSv1.3",
        max_version="TLSv1.3",
        ciphers="ECDHE+AESGCM",
        ciphersuites="TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
        groups="X25519:P-384",
        trust_store=ca_pem,
        min_rsa_bits=3072,
    )
    out = config.outbound
    assert out.listen == ("tcp:15001:interface=127.0.0.1", "tcp6:15001:interface=\\:\\:1")
    # Integers given for float keys become floats.
    assert out.connect_timeout == 7.0 and isinstance(out.connect_timeout, float)
    assert out.handshake_timeout == 2.5
    assert out.sniff_timeout == 1.25
    assert out.max_header_bytes == 4096
    assert out.routes == (
        Route(name="internal-api", destination=ipaddress.IPv4Network("10.0.0.0/8"), ports=(8080, 8081),
              action="upgrade", tls_port=8443, hostname="API.Example.com", hostname_from=None),
        Route(name="web", destination=ipaddress.IPv4Network("0.0.0.0/0"), ports=(80,), action="upgrade",
              tls_port=None, hostname=None, hostname_from="http-host"),
        Route(name="v6-pass", destination=ipaddress.IPv6Network("2001:db8::/32"), ports=(),
              action="passthrough"),
        Route(name="block", destination=ipaddress.IPv4Network("192.0.2.0/24"), ports=(25,), action="reject"),
        # An unnamed route is named after its index.
        Route(name="route4", destination=ipaddress.IPv6Network("::/0"), hostname_from="address"),
    )
    # Frozen and hashable: the TLS layer caches one context per policy.
    assert hash(config.policy) == hash(Policy(**{f.name: getattr(config.policy, f.name)
                                                   for f in Policy.__attrs_attrs__}))
    with pytest.raises(AttributeError):
        config.policy.min_version = "TLSv1.2"  # type: ignore[misc,assignment]


def test_listen_may_be_a_single_string() -> None:
    config = Config.from_toml('[outbound]\nlisten = "tcp6:15009"\n')
    assert config.outbound.listen == ("tcp6:15009",)


def test_omitted_policy_keys_take_the_defaults() -> None:
    policy = Config.from_toml('[policy]\nmin_version = "TLSv1.3"\n').policy
    assert policy.ciphers == DEFAULT_CIPHERS
    assert policy.ciphersuites == DEFAULT_CIPHERSUITES
    assert policy.groups == DEFAULT_GROUPS
    assert policy.max_version == "TLSv1.3"


# --------------------------------------------------------------------------- errors

# A valid configuration with two routes; route[1] holds {second}, so errors in it must name
# `outbound.route[1]` (route[0] carries the same keys, so the line must be the second's).
TWO_ROUTES = """\
[policy]
min_version = "TLSv1.2"

[outbound]
listen = "tcp:15001:interface=127.0.0.1"

[[outbound.route]]
name = "first"
destination = "10.0.0.0/8"
ports = [80]
hostname = "first.example"

{header}
{second}
"""

SECOND_DEFAULT = 'name = "second"\ndestination = "0.0.0.0/0"\nports = [80]\nhostname_from = "http-host"'


def two_routes(second: str, header: str = "[[outbound.route]]") -> str:
    return TWO_ROUTES.format(header=header, second=second)


def test_two_routes_template_is_valid() -> None:
    config = Config.from_toml(two_routes(SECOND_DEFAULT))
    assert [r.name for r in config.outbound.routes] == ["first", "second"]


ROUTE_ERRORS = [
    # (id, body of route[1] with the offending line marked, key leaf, message fragment)
    ("unknown-key", SECOND_DEFAULT + '\ncolour = "blue"  # HERE', "colour", "unknown key"),
    ("name-int", 'name = 5  # HERE\ndestination = "0.0.0.0/0"\nhostname_from = "http-host"',
     "name", "expected a string, got an integer"),
    ("name-bad-chars", 'name = "has space"  # HERE\ndestination = "0.0.0.0/0"\nhostname_from = "address"',
     "name", "1-64 characters"),
    ("duplicate-name", 'name = "first"  # HERE\ndestination = "0.0.0.0/0"\nhostname_from = "address"',
     "name", "duplicate route name 'first'"),
    ("upgrade-without-hostname", 'name = "second"\ndestination = "0.0.0.0/0"\naction = "upgrade"',
     "hostname", "needs hostname or hostname_from"),
    ("implicit-upgrade-without-hostname", 'name = "second"\ndestination = "0.0.0.0/0"',
     "hostname", "needs hostname or hostname_from"),
    ("hostname-and-hostname-from",
     'name = "second"\ndestination = "0.0.0.0/0"\nhostname = "a.example"  # HERE\nhostname_from = "http-host"',
     "hostname", "not both"),
    ("bad-cidr", 'name = "second"\ndestination = "10.0.0.300/8"  # HERE\nhostname_from = "address"',
     "destination", "not a CIDR network"),
    ("cidr-is-a-name", 'name = "second"\ndestination = "example.com"  # HERE\nhostname_from = "address"',
     "destination", "not a CIDR network"),
    ("cidr-host-bits", 'name = "second"\ndestination = "10.0.0.1/8"  # HERE\nhostname_from = "address"',
     "destination", "host bits set"),
    ("cidr-v6-host-bits", 'name = "second"\ndestination = "2001:db8::1/32"  # HERE\nhostname_from = "address"',
     "destination", "host bits set"),
    ("destination-missing", 'name = "second"\nhostname_from = "address"', "destination", "is required"),
    ("destination-int", 'name = "second"\ndestination = 10  # HERE\nhostname_from = "address"',
     "destination", "expected a string, got an integer"),
    ("port-zero", 'name = "second"\ndestination = "0.0.0.0/0"\nports = [80, 0]  # HERE\nhostname_from = "address"',
     "ports", "port must be 1-65535, got 0"),
    ("port-70000", 'name = "second"\ndestination = "0.0.0.0/0"\nports = [70000]  # HERE\nhostname_from = "address"',
     "ports", "got 70000"),
    ("port-string", 'name = "second"\ndestination = "0.0.0.0/0"\nports = ["80"]  # HERE\nhostname_from = "address"',
     "ports", "array of integers"),
    ("port-bool", 'name = "second"\ndestination = "0.0.0.0/0"\nports = [true]  # HERE\nhostname_from = "address"',
     "ports", "array of integers"),
    ("ports-not-array", 'name = "second"\ndestination = "0.0.0.0/0"\nports = 80  # HERE\nhostname_from = "address"',
     "ports", "expected an array, got an integer"),
    ("tls-port-zero", 'name = "second"\ndestination = "0.0.0.0/0"\ntls_port = 0  # HERE\nhostname_from = "address"',
     "tls_port", "port must be 1-65535, got 0"),
    ("tls-port-70000",
     'name = "second"\ndestination = "0.0.0.0/0"\ntls_port = 70000  # HERE\nhostname_from = "address"',
     "tls_port", "got 70000"),
    ("tls-port-string",
     'name = "second"\ndestination = "0.0.0.0/0"\ntls_port = "443"  # HERE\nhostname_from = "address"',
     "tls_port", "expected an integer, got a string"),
    ("tls-port-bool",
     'name = "second"\ndestination = "0.0.0.0/0"\ntls_port = true  # HERE\nhostname_from = "address"',
     "tls_port", "expected an integer, got a boolean"),
    ("hostname-underscore", 'name = "second"\ndestination = "0.0.0.0/0"\nhostname = "exa_mple.com"  # HERE',
     "hostname", "not a valid DNS name"),
    ("hostname-leading-hyphen", 'name = "second"\ndestination = "0.0.0.0/0"\nhostname = "-bad.example"  # HERE',
     "hostname", "not a valid DNS name"),
    ("hostname-wildcard", 'name = "second"\ndestination = "0.0.0.0/0"\nhostname = "*.example.com"  # HERE',
     "hostname", "not a valid DNS name"),
    ("hostname-empty", 'name = "second"\ndestination = "0.0.0.0/0"\nhostname = ""  # HERE',
     "hostname", "not a valid DNS name"),
    ("hostname-label-too-long",
     'name = "second"\ndestination = "0.0.0.0/0"\nhostname = "' + "a" * 64 + '.example"  # HERE',
     "hostname", "not a valid DNS name"),
    ("hostname-trailing-newline",
     'name = "second"\ndestination = "0.0.0.0/0"\nhostname = "example.com\\n"  # HERE',
     "hostname", "not a valid DNS name"),
    ("hostname-on-reject",
     'name = "second"\ndestination = "0.0.0.0/0"\naction = "reject"\nhostname = "a.example"  # HERE',
     "hostname", "only applies to action = \"upgrade\", not 'reject'"),
    ("hostname-from-on-passthrough",
     'name = "second"\ndestination = "0.0.0.0/0"\naction = "passthrough"\nhostname_from = "address"  # HERE',
     "hostname_from", "not 'passthrough'"),
    ("tls-port-on-reject", 'name = "second"\ndestination = "0.0.0.0/0"\naction = "reject"\ntls_port = 443  # HERE',
     "tls_port", "not 'reject'"),
    ("bad-action", 'name = "second"\ndestination = "0.0.0.0/0"\naction = "drop"  # HERE',
     "action", "must be one of 'upgrade', 'passthrough', 'reject', got 'drop'"),
    ("bad-hostname-from", 'name = "second"\ndestination = "0.0.0.0/0"\nhostname_from = "sni"  # HERE',
     "hostname_from", "must be one of 'http-host', 'address'"),
]


@pytest.mark.parametrize(("body", "leaf", "fragment"), [c[1:] for c in ROUTE_ERRORS], ids=[c[0] for c in ROUTE_ERRORS])
def test_route_errors_name_the_second_route_and_its_line(body: str, leaf: str, fragment: str) -> None:
    # Without a marker the error belongs to a key that is absent: the route's header line.
    header = "[[outbound.route]]" if MARK in body else f"[[outbound.route]]  {MARK}"
    text = two_routes(body, header)
    err = config_error(text)
    assert err.key == f"outbound.route[1].{leaf}"
    assert fragment in err.message
    assert err.line == marked_line(text)
    assert f"outbound.route[1].{leaf} (line {marked_line(text)})" in str(err)


OTHER_ERRORS = [
    # (id, document with the offending line marked, key, message fragment)
    ("unknown-top-level-key",
     '# comment\nsidecar = true  # HERE\n\n[policy]\nmin_version = "TLSv1.2"\n',
     "sidecar", "unknown key"),
    ("unknown-top-level-table",
     '[policy]\nmin_version = "TLSv1.2"\n\n[sidecar]  # HERE\nlisten = "tcp:1"\n',
     "sidecar", "unknown key"),
    ("unknown-policy-key",
     '[outbound]\nlisten = "tcp:15001"\n\n[policy]\nmin_version = "TLSv1.2"\nmax_verison = "TLSv1.3"  # HERE\n',
     "policy.max_verison", "unknown key"),
    ("unknown-outbound-key",
     '[outbound]\nlisten = "tcp:15001"\nlisten_backlog = 5  # HERE\n',
     "outbound.listen_backlog", "unknown key"),
    ("policy-not-a-table", 'policy = "strict"  # HERE\n', "policy", "expected a table, got a string"),
    ("route-not-array-of-tables",
     '[outbound]\nroute = "everything"  # HERE\n',
     "outbound.route", "array of tables"),
    ("route-element-not-table",
     '[outbound]\nroute = [1]  # HERE\n',
     "outbound.route[0]", "expected a table, got an integer"),
    ("string-for-int",
     '[outbound]\nlisten = "tcp:15001"\nmax_header_bytes = "4096"  # HERE\n',
     "outbound.max_header_bytes", "expected an integer, got a string"),
    ("bool-for-int",
     '[policy]\nmin_rsa_bits = true  # HERE\n',
     "policy.min_rsa_bits", "expected an integer, got a boolean"),
    ("float-for-int",
     '[policy]\nmin_rsa_bits = 2048.0  # HERE\n',
     "policy.min_rsa_bits", "expected an integer, got a number"),
    ("bool-for-number",
     '[outbound]\nconnect_timeout = false  # HERE\n',
     "outbound.connect_timeout", "expected a number, got a boolean"),
    ("string-for-number",
     '[outbound]\nsniff_timeout = "5"  # HERE\n',
     "outbound.sniff_timeout", "expected a number, got a string"),
    ("int-for-string",
     '[policy]\nciphers = 5  # HERE\n',
     "policy.ciphers", "expected a string, got an integer"),
    ("int-for-version",
     '[policy]\nmin_version = 12  # HERE\n',
     "policy.min_version", "expected a string, got an integer"),
    ("min-above-max",
     '[policy]\nmax_version = "TLSv1.2"\nmin_version = "TLSv1.3"  # HERE\n',
     "policy.min_version", "min_version TLSv1.3 is above max_version TLSv1.2"),
    ("bad-min-version",
     '[policy]\nmin_version = "TLSv1.1"  # HERE\n',
     "policy.min_version", "must be one of 'TLSv1.2', 'TLSv1.3', got 'TLSv1.1'"),
    ("bad-max-version-spelling",
     '[policy]\nmin_version = "TLSv1.2"\nmax_version = "tls1.3"  # HERE\n',
     "policy.max_version", "got 'tls1.3'"),
    ("cipher-unknown",
     '[policy]\nciphers = "NOT-A-CIPHER"  # HERE\n',
     "policy.ciphers", "OpenSSL refused 'NOT-A-CIPHER'"),
    ("cipher-null-only",
     '[policy]\nciphers = "NULL-SHA256"  # HERE\n',
     "policy.ciphers", "OpenSSL refused 'NULL-SHA256'"),
    ("cipher-rc4-only",
     '[policy]\nciphers = "RC4-SHA"  # HERE\n',
     "policy.ciphers", "OpenSSL refused 'RC4-SHA'"),
    ("cipher-3des-only",
     '[policy]\nciphers = "DES-CBC3-SHA"  # HERE\n',
     "policy.ciphers", "OpenSSL refused"),
    ("cipher-sha1-only",
     '[policy]\nciphers = "ECDHE-RSA-AES128-SHA"  # HERE\n',
     "policy.ciphers", "OpenSSL refused"),
    ("cipher-not-ascii",
     '[policy]\nciphers = "ECDHE+AESGCM:\u00e9"  # HERE\n',
     "policy.ciphers", "OpenSSL refused"),
    ("ciphersuite-unknown",
     '[policy]\nciphersuites = "TLS_FAKE_SUITE"  # HERE\n',
     "policy.ciphersuites", "OpenSSL refused"),
    ("ciphersuite-empty",
     '[policy]\nciphersuites = ""  # HERE\n',
     "policy.ciphersuites", "OpenSSL refused"),
    ("unknown-group",
     '[policy]\ngroups = "X25519:P-999"  # HERE\n',
     "policy.groups", "OpenSSL refused 'X25519:P-999'"),
    ("trust-store-missing",
     '[policy]\ntrust_store = "/nonexistent/ssaproxy/root.pem"  # HERE\n',
     "policy.trust_store", "cannot load '/nonexistent/ssaproxy/root.pem': No such file or directory"),
    ("trust-store-empty",
     '[policy]\ntrust_store = ""  # HERE\n',
     "policy.trust_store", "must be a path"),
    ("rsa-bits-too-low",
     '[policy]\nmin_rsa_bits = 1024  # HERE\n',
     "policy.min_rsa_bits", "must be at least 2048, got 1024"),
    ("connect-timeout-zero",
     '[outbound]\nconnect_timeout = 0  # HERE\n',
     "outbound.connect_timeout", "must be greater than 0"),
    ("handshake-timeout-negative",
     '[outbound]\nhandshake_timeout = -1  # HERE\n',
     "outbound.handshake_timeout", "must be greater than 0 and at most 300, got -1"),
    ("sniff-timeout-negative-float",
     '[outbound]\nsniff_timeout = -0.5  # HERE\n',
     "outbound.sniff_timeout", "got -0.5"),
    ("sniff-timeout-zero-float",
     '[outbound]\nsniff_timeout = 0.0  # HERE\n',
     "outbound.sniff_timeout", "must be greater than 0"),
    ("connect-timeout-too-long",
     '[outbound]\nconnect_timeout = 301  # HERE\n',
     "outbound.connect_timeout", "at most 300"),
    ("idle-timeout-negative",
     '[outbound]\nidle_timeout = -1  # HERE\n',
     "outbound.idle_timeout", "must be 0 (off) up to 604800 seconds, got -1"),
    ("idle-timeout-nan",
     '[outbound]\nidle_timeout = nan  # HERE\n',
     "outbound.idle_timeout", "must be 0 (off) up to 604800 seconds"),
    ("timeout-nan",
     '[outbound]\nconnect_timeout = nan  # HERE\n',
     "outbound.connect_timeout", "must be greater than 0"),
    ("timeout-inf",
     '[outbound]\nhandshake_timeout = inf  # HERE\n',
     "outbound.handshake_timeout", "at most 300"),
    ("max-header-too-small",
     '[outbound]\nmax_header_bytes = 255  # HERE\n',
     "outbound.max_header_bytes", "must be 256-65536, got 255"),
    ("max-header-too-large",
     '[outbound]\nmax_header_bytes = 65537  # HERE\n',
     "outbound.max_header_bytes", "got 65537"),
    ("listen-empty-array",
     '[outbound]\nlisten = []  # HERE\n',
     "outbound.listen", "non-empty array"),
    ("listen-array-of-ints",
     '[outbound]\nlisten = [15001]  # HERE\n',
     "outbound.listen", "Twisted server endpoint string"),
    ("listen-empty-string",
     '[outbound]\nlisten = ""  # HERE\n',
     "outbound.listen", "Twisted server endpoint string"),
    ("listen-int",
     '[outbound]\nlisten = 15001  # HERE\n',
     "outbound.listen", "expected a string or an array of strings, got an integer"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), [c[1:] for c in OTHER_ERRORS], ids=[c[0] for c in OTHER_ERRORS])
def test_errors_name_the_dotted_key_and_its_line(text: str, key: str, fragment: str) -> None:
    err = config_error(text)
    assert err.key == key
    assert fragment in err.message
    assert err.line == marked_line(text)
    assert str(err).startswith(f"{key} (line {marked_line(text)}): ")


def test_min_version_error_points_at_min_version_even_when_it_comes_last() -> None:
    text = _text("""
        [policy]
        min_version = "TLSv1.3"  # HERE
        ciphers = "ECDHE+AESGCM"
        max_version = "TLSv1.2"
        """)
    err = config_error(text)
    assert (err.key, err.line) == ("policy.min_version", 2)


def test_error_line_in_the_third_route_skips_same_keys_in_earlier_routes() -> None:
    text = _text("""
        [[outbound.route]]
        name = "a"
        destination = "10.0.0.0/8"
        ports = [1]
        hostname = "a.example"

        [[outbound.route]]
        name = "b"
        destination = "10.0.0.0/8"
        ports = [2]
        hostname = "b.example"

        [[outbound.route]]
        name = "c"
        destination = "10.0.0.0/8"
        ports = [3, 65536]  # HERE
        hostname = "c.example"
        """)
    err = config_error(text)
    assert err.key == "outbound.route[2].ports"
    assert err.line == marked_line(text) == 16


def test_unknown_key_in_second_route_named_by_index_not_by_name() -> None:
    # The exact path the brief names: `outbound.route[1].<key>`.
    text = two_routes(SECOND_DEFAULT + "\nverify = false  # HERE")
    err = config_error(text)
    assert err.key == "outbound.route[1].verify"
    assert err.message == "unknown key"
    assert err.line == marked_line(text)


def test_trust_store_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    err = config_error(f"[policy]\ntrust_store = '{junk}'\n")
    assert err.key == "policy.trust_store"
    assert err.message == f"cannot load '{junk}': no certificate found"
    assert err.line == 2


def test_trust_store_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    err = config_error(f"[policy]\ntrust_store = '{tmp_path}'\n")
    assert err.key == "policy.trust_store"
    assert err.line == 2


def test_invalid_toml_reports_its_line() -> None:
    text = '[policy]\nmin_version = "TLSv1.2"\nmax_version = TLSv1.3\n'
    err = config_error(text)
    assert err.key == ""
    assert "not valid TOML" in err.message
    assert "line 3" in err.message  # tomllib's own text
    # ConfigError.line is the structured field the CLI and twistd show; it must be set too.
    assert err.line == 3


def test_duplicate_toml_key_is_a_syntax_error() -> None:
    err = config_error('[policy]\nmin_version = "TLSv1.2"\nmin_version = "TLSv1.3"\n')
    assert err.key == ""
    assert "not valid TOML" in err.message


def test_from_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        Config.from_file(str(missing))
    err = info.value
    assert err.key == "" and f"cannot read {missing}" in err.message

    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        Config.from_file(str(latin1))
    assert "is not UTF-8 text" in info.value.message


def test_from_file_records_the_source(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(two_routes(SECOND_DEFAULT))
    config = Config.from_file(str(path))
    assert config.source == str(path)
    assert len(config.outbound.routes) == 2


# Each of these escapes `Config.from_toml` as something other than ConfigError today.


def test_quoted_key_without_word_characters_is_a_config_error() -> None:
    # `_locate` does `parts[-1]` on an empty findall() result for the key "!".
    err = config_error('"!" = 1\n')
    assert err.key == "!"
    assert err.message == "unknown key"


def test_huge_integer_for_a_timeout_is_a_config_error() -> None:
    # `_Reader.take` converts ints to float for float keys; float(10**400) overflows.
    err = config_error("[outbound]\nconnect_timeout = 1" + "0" * 400 + "\n")
    assert err.key == "outbound.connect_timeout"
    assert err.line == 2


def test_integer_over_python_digit_limit_is_a_config_error() -> None:
    # tomllib calls int() on the literal, which raises ValueError past sys.get_int_max_str_digits().
    err = config_error("x = " + "1" * 5000 + "\n")
    assert "not valid TOML" in err.message or err.key == "x"


def test_deeply_nested_array_is_a_config_error() -> None:
    # tomllib parses arrays recursively: RecursionError, not TOMLDecodeError.
    err = config_error("x = " + "[" * 3000 + "\n")
    assert "not valid TOML" in err.message


# --------------------------------------------------------------------------- route matching

MATCHING = _text("""
    [outbound]
    listen = ["tcp:15001:interface=127.0.0.1", 'tcp6:15001:interface=\\:\\:1']

    [[outbound.route]]
    name = "narrow-http"
    destination = "10.1.0.0/16"
    ports = [80]
    hostname_from = "http-host"

    [[outbound.route]]
    name = "ten-any-port"
    destination = "10.0.0.0/8"
    action = "passthrough"

    [[outbound.route]]
    name = "ten-http-shadowed"
    destination = "10.1.2.0/24"
    ports = [80, 8080]
    action = "reject"

    [[outbound.route]]
    name = "v6-web"
    destination = "::/0"
    ports = [443]
    action = "passthrough"

    [[outbound.route]]
    name = "mapped"
    destination = "::ffff:0.0.0.0/96"
    action = "reject"
    """)


@pytest.fixture(scope="module")
def matching() -> Outbound:
    return Config.from_toml(MATCHING).outbound


def _name(out: Outbound, ip: str, port: int) -> str | None:
    route = out.match(ipaddress.ip_address(ip), port)
    return None if route is None else route.name


def test_first_match_wins(matching: Outbound) -> None:
    # 10.1.2.3:80 matches routes 0, 1 and 2; the first in file order wins.
    assert _name(matching, "10.1.2.3", 80) == "narrow-http"
    # Port 8080 is not in route 0; route 1 (all ports) wins over the later, narrower route 2.
    assert _name(matching, "10.1.2.3", 8080) == "ten-any-port"
    assert _name(matching, "10.200.0.1", 80) == "ten-any-port"


def test_empty_ports_match_every_port(matching: Outbound) -> None:
    for port in (1, 22, 80, 443, 65535):
        assert _name(matching, "10.9.9.9", port) == "ten-any-port"


def test_no_match_is_none(matching: Outbound) -> None:
    assert _name(matching, "192.0.2.1", 80) is None
    assert _name(matching, "11.0.0.0", 80) is None
    assert _name(matching, "2001:db8::1", 80) is None


def test_ipv4_and_ipv6_never_cross_match(matching: Outbound) -> None:
    # An IPv4-mapped IPv6 address is an IPv6 destination: it never matches 10.0.0.0/8 ...
    assert _name(matching, "::ffff:10.1.2.3", 80) == "mapped"
    assert _name(matching, "::ffff:10.1.2.3", 443) == "v6-web"
    # ... and an IPv4 address never matches ::/0 or ::ffff:0:0/96.
    assert _name(matching, "192.0.2.1", 443) is None
    v4_all = Config.from_toml('[[outbound.route]]\ndestination = "0.0.0.0/0"\naction = "reject"\n').outbound
    v6_all = Config.from_toml("[outbound]\nlisten = 'tcp6:15001:interface=\\:\\:1'\n"
                              '[[outbound.route]]\ndestination = "::/0"\naction = "reject"\n').outbound
    assert v4_all.match(ipaddress.ip_address("::"), 80) is None
    assert v4_all.match(ipaddress.ip_address("::ffff:1.2.3.4"), 80) is None
    assert v6_all.match(ipaddress.ip_address("0.0.0.0"), 80) is None
    assert v6_all.match(ipaddress.ip_address("1.2.3.4"), 80) is None
    assert v4_all.match(ipaddress.ip_address("1.2.3.4"), 80) is not None
    assert v6_all.match(ipaddress.ip_address("::1"), 80) is not None


def test_no_routes_matches_nothing() -> None:
    assert Outbound().match(ipaddress.ip_address("10.0.0.1"), 80) is None


# --------------------------------------------------------------------------- CLI


def test_check_config_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.toml"
    path.write_text(two_routes(SECOND_DEFAULT))
    assert cli.main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{path}: OK (2 routes, 0 inbound, api off)\n"
    assert captured.err == ""


def test_check_config_rejects_a_bad_file_naming_key_and_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    text = two_routes('name = "second"\ndestination = "0.0.0.0/0"\nports = [80, 70000]  # HERE\n'
                      'hostname_from = "http-host"')
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert cli.main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = marked_line(text)
    assert captured.err == (f"ssaproxy: {path}: outbound.route[1].ports (line {line}): "
                            "port must be 1-65535, got 70000\n")


def test_check_config_reports_toml_syntax_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "syntax.toml"
    path.write_text("[policy]\nmin_version = \n")
    assert cli.main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ssaproxy: {path}: <top>")
    assert "not valid TOML" in err and "line 2" in err


def test_check_config_on_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    assert cli.main(["check-config", str(path)]) == 2
    assert "cannot read" in capsys.readouterr().err


# --------------------------------------------------------------------------- fuzzing

_KEYS = ["policy", "outbound", "min_version", "max_version", "ciphers", "ciphersuites", "groups",
         "trust_store", "min_rsa_bits", "listen", "connect_timeout", "handshake_timeout", "sniff_timeout",
         "max_header_bytes", "route", "name", "destination", "ports", "action", "tls_port", "hostname",
         "hostname_from", "bogus"]
_HEADERS = ["[policy]", "[outbound]", "[[outbound.route]]", "[outbound.route]", "[[policy]]", "[extra]"]
_SCALARS = st.one_of(
    st.sampled_from(['"TLSv1.2"', '"TLSv1.3"', '"upgrade"', '"reject"', '"passthrough"', '"http-host"',
                     '"address"', '"10.0.0.0/8"', '"::/0"', '"10.0.0.1/8"', '"tcp:15001"', '"X25519"',
                     '"example.com"', '""', "true", "false", "nan", "-inf", "1979-05-27", "[]", "{}",
                     '"ECDHE+AESGCM"', '"NULL"', "[80, 443]", "[0]", '["a"]', "[[1]]"]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\\n\r'),
            max_size=20).map(lambda s: f'"{s}"'),
)
_LINES = st.one_of(
    st.sampled_from(_HEADERS),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(_KEYS), _SCALARS),
)


def _load_or_error(text: str, *, check: bool = False) -> Config | ConfigError:
    """The Config that `text` loads to (checked too, with `check`), or the ConfigError that
    loading raised; any other exception propagates.  Either outcome is legitimate for fuzzed
    input, so the tests judge the one they got (pytest.raises would demand an error)."""
    try:
        config = Config.from_toml(text)
        if check:
            check_config(config)
    except ConfigError as e:
        return e
    return config


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    config = _load_or_error(text)
    if isinstance(config, ConfigError):
        assert isinstance(config.key, str)
        assert config.line is None or (isinstance(config.line, int) and config.line >= 1)
    else:
        assert isinstance(config, Config)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINES, max_size=12).map("\n".join))
def test_toml_shaped_text_raises_only_config_error(text: str) -> None:
    config = _load_or_error(text, check=True)
    if isinstance(config, ConfigError):
        assert isinstance(config.key, str) and isinstance(config.message, str)
        if config.line is not None:
            assert 1 <= config.line <= max(1, len(text.splitlines()))
    else:
        # Whatever loads is well-formed.
        assert config.policy.min_version in ("TLSv1.2", "TLSv1.3")
        for route in config.outbound.routes:
            assert all(1 <= p <= 65535 for p in route.ports)


# -- [api] ---------------------------------------------------------------------------------------


def test_api_table_defaults_and_the_embedded_default_serves_it() -> None:
    assert Config.default().api == Api()
    assert Config.from_toml("[policy]\n").api is None  # no table, no API
    c = Config.from_toml('[api]\nsocket = "/tmp/x/api.sock"\nmode = 0o600\n')
    assert (c.api.socket, c.api.mode) == ("/tmp/x/api.sock", 0o600)  # type: ignore[union-attr]
    assert c.outbound.listen == ()  # an API-only daemon opens no outbound listener
    assert Config.from_toml('[api]\nmode = "0666"\n').api.mode == 0o666  # type: ignore[union-attr]


@pytest.mark.parametrize(("body", "key", "message"), [
    ('socket = "relative/api.sock"', "api.socket", "absolute path"),
    ('socket = "/' + "x" * 120 + '"', "api.socket", "shorter than 108"),
    ('mode = "rw-rw----"', "api.mode", "octal mode"),
    ("mode = 0o1777", "api.mode", "between"),
    ('group = "no-such-group-here"', "api.group", "no such group"),
    ("handshake_timeout = 0", "api.handshake_timeout", "greater than 0"),
    ("max_sessions = true", "api.max_sessions", "expected an integer"),
    ("hello_timeout = 0", "api.hello_timeout", "greater than 0"),
    ("frame_timeout = 301", "api.frame_timeout", "at most 300"),
    ("idle_timeout = -1", "api.idle_timeout", "greater than 0"),
    ("session_idle_timeout = -1", "api.session_idle_timeout", "0 (never)"),
    ("max_controls = 0", "api.max_controls", "must be 1-"),
    ("max_controls_per_uid = 0", "api.max_controls_per_uid", "must be 1-"),
    ("max_sessions_per_uid = 1.5", "api.max_sessions_per_uid", "expected an integer"),
    ("max_fds_in_flight_per_uid = 0", "api.max_fds_in_flight_per_uid", "must be 1-"),
    ("max_buffer_per_uid = 1024", "api.max_buffer_per_uid", "must be 1048580-"),
    ('allow_trust_store_replacement = "no"', "api.allow_trust_store_replacement", "expected true or false"),
    ("sockets = 1", "api.sockets", "unknown key"),
])
def test_api_table_errors_name_key_and_line(body: str, key: str, message: str) -> None:
    e = config_error(f"[policy]\n\n[api]\n{body}\n")
    assert e.key == key and e.line == 4 and message in e.message, str(e)


def test_idle_timeouts_default_to_an_hour_and_zero_turns_them_off() -> None:
    assert Config.default().outbound.idle_timeout == 3600
    config = Config.from_toml('[outbound]\nidle_timeout = 0\n')
    assert config.outbound.idle_timeout == 0


def test_daemon_and_admin_tables() -> None:
    plain = Config.from_toml("")
    assert (plain.daemon.user, plain.daemon.drain_timeout, plain.daemon.watch_interval, plain.admin) == (
        None, 30.0, 5.0, None)
    c = Config.from_toml('[daemon]\nuser = "ssaproxy"\ngroup = "ssaproxy"\ndrain_timeout = 0\n[admin]\n')
    assert (c.daemon.user, c.daemon.group, c.daemon.drain_timeout) == ("ssaproxy", "ssaproxy", 0.0)
    assert c.admin is not None and c.admin.listen == "tcp:9901:interface=127.0.0.1"


@pytest.mark.parametrize(("text", "key", "message"), [
    ('[daemon]\ngroup = "x"  # HERE\n', "daemon.group", "only applies with user"),
    ('[daemon]\nuser = "a b"  # HERE\n', "daemon.user", "must be a user or group name or number"),
    ('[daemon]\ndrain_timeout = -1  # HERE\n', "daemon.drain_timeout", "must be 0 (never) or seconds up to 3600"),
    ('[admin]\nlisten = "unix:/x"  # HERE\n', "admin.listen", "needs a tcp or tcp6 endpoint"),
    ('[admin]\nport = 9901  # HERE\n', "admin.port", "unknown key"),
])
def test_daemon_and_admin_errors_name_key_and_line(text: str, key: str, message: str) -> None:
    e = config_error(text)
    assert (e.key, e.line) == (key, marked_line(text)) and message in e.message, e
