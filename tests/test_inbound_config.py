"""Pure tests of the [[inbound]] configuration and of PROXY v2 headers."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from ssaproxy.config import Config
from ssaproxy.errors import ConfigError
from ssaproxy.inbound import InboundConnection, InboundFactory
from ssaproxy.proxyproto import PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL, parse_v2, v2_header
from ssaproxy.tls.load import check_config, load_certificates
from ssaproxy.tls.server import TICKET_KEY_ROTATION
from tests.memtls import Transport
from tests.pki import PKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki-inbound-config"))


def inbound(pki: PKI, extra: str = "", *, chain: str | None = None, key: str | None = None) -> str:
    good = pki.server("good")
    return (f'[[inbound]]\nlisten = "tcp:8443"\nbackend = "tcp:127.0.0.1:8080"\n'
            f'certificates = [ {{ chain = "{chain or good.chain}", key = "{key or good.key}" }} ]\n{extra}')


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_config(Config.from_toml(text))
    return info.value


def test_minimal_inbound_loads_and_opens_no_outbound_listener(pki: PKI) -> None:
    config = Config.from_toml(inbound(pki))
    (i,) = config.inbound
    certificates = load_certificates(i)
    assert certificates[0].names == ("backend.test",) and certificates[0].key_type == "EC"
    assert (i.client_auth, i.proxy_protocol, i.profile, i.listen_port, i.families) == (
        "none", "off", "intermediate", 8443, (4,))
    assert config.outbound.listen == ()
    assert i.worker_affinity == "source-address"
    assert Config.from_toml(inbound(pki, 'worker_affinity = "none"\n')).inbound[0].worker_affinity == "none"


def test_key_that_does_not_match_its_certificate_is_refused_at_load(pki: PKI) -> None:
    e = error(inbound(pki, key=str(pki.server("good_rsa2048").key)))
    assert e.key == "inbound[0].certificates[0].key" and "is not the private key" in e.message
    assert e.line == 4


@pytest.mark.parametrize(("extra", "key", "fragment"), [
    ('client_auth = "require"\n', "inbound[0].client_ca", "is required"),
    ('allow = ["dns:a.test"]\n', "inbound[0].allow", "needs client_auth"),
    ('client_auth = "request"\nclient_ca = "/nonexistent.pem"\n', "inbound[0].client_ca", "cannot load"),
    ('client_auth = "maybe"\n', "inbound[0].client_auth", "must be one of"),
    ('proxy_protocol = "v1"\n', "inbound[0].proxy_protocol", "must be one of"),
    ('profile = "old"\n', "inbound[0].profile", "must be one of"),
    ('ports = [8080]\n', "inbound[0].ports", "only applies"),
    ('alpn = [""]\n', "inbound[0].alpn", "protocol names"),
    ('colour = "blue"\n', "inbound[0].colour", "unknown key"),
    ('worker_affinity = "sticky"\n', "inbound[0].worker_affinity", "must be one of"),
])
def test_inbound_errors_name_the_key(pki: PKI, extra: str, key: str, fragment: str) -> None:
    e = error(inbound(pki, extra))
    assert e.key == key and fragment in e.message, e


def test_allow_entries_must_be_typed_sans(pki: PKI) -> None:
    e = error(inbound(pki, f'client_auth = "require"\nclient_ca = "{pki.client_ca_pem}"\nallow = ["client.test"]\n'))
    assert e.key == "inbound[0].allow" and "dns:NAME" in e.message


def test_transparent_listener_must_listen_everywhere_on_both_families(pki: PKI) -> None:
    text = inbound(pki).replace('backend = "tcp:127.0.0.1:8080"', 'backend = "original"\nports = [8080]')
    text = text.replace('listen = "tcp:8443"', 'listen = "tcp6:8443"')
    assert Config.from_toml(text).inbound[0].families == (4, 6)
    e = error(text.replace('listen = "tcp6:8443"', r"listen = 'tcp6:8443:interface=\:\:1'"))
    assert e.key == "inbound[0].listen" and "every address" in e.message
    e = error(text.replace('listen = "tcp6:8443"', 'listen = "tcp:8443"'))  # IPv4 only: IPv6 would bypass
    assert e.key == "inbound[0].listen" and "IPv4 and IPv6" in e.message
    e = error(text.replace("ports = [8080]", "ports = [8080, 8443]"))
    assert e.key == "inbound[0].ports" and "own port" in e.message
    e = error(text.replace("ports = [8080]\n", ""))
    assert e.key == "inbound[0].ports"
    twice = text + text.replace("tcp6:8443", "tcp6:8444").replace("[[inbound]]", '[[inbound]]\nname = "second"')
    e = error(twice)
    assert e.key == "inbound[1].ports" and "already redirected" in e.message


def test_modern_profile_needs_tls13_in_the_policy(pki: PKI) -> None:
    e = error('[policy]\nmax_version = "TLSv1.2"\n' + inbound(pki, 'profile = "modern"\n'))
    assert e.key == "inbound[0].profile"


def test_route_client_certificate_is_checked(pki: PKI, tmp_path: Path) -> None:
    good = pki.client("client_good")
    route = ('[[outbound.route]]\ndestination = "10.0.0.0/8"\nhostname = "a.test"\n'
             f'client_certificate = "{good.chain}"\n')
    e = error(route)
    assert e.key == "outbound.route[0].client_key" and "go together" in e.message
    e = error(route + f'client_key = "{pki.server("good_rsa2048").key}"\n')
    assert e.key == "outbound.route[0].client_key" and "not the private key" in e.message
    assert Config.from_toml(route + f'client_key = "{good.key}"\n').outbound.routes[0].client_key == str(good.key)


@pytest.mark.parametrize(("src", "dst"), [(("10.77.0.1", 40000), ("10.77.0.2", 8443)),
                                      (("fd77::1", 40000), ("fd77::2", 8443)),
                                      (("::ffff:10.0.0.1", 1), ("10.0.0.2", 2))])
def test_proxy_v2_header_round_trips(src: tuple[str, int], dst: tuple[str, int]) -> None:
    raw = v2_header(src, dst, authority=b"backend.test", alpn="h2", tls_version="TLSv1.3",
                    cipher="TLS_AES_128_GCM_SHA256", client_cert=True, client_verified=True, client_cn="c")
    parsed = parse_v2(raw + b"payload")
    assert parsed is not None and parsed["length"] == len(raw)
    assert parsed["src"][1] == src[1] and parsed["dst"] == (dst[0], dst[1])  # type: ignore[index]
    tlvs = parsed["tlvs"]
    assert tlvs[PP2_TYPE_AUTHORITY] == b"backend.test" and tlvs[PP2_TYPE_ALPN] == b"h2"  # type: ignore[index]
    assert tlvs[PP2_TYPE_SSL][:5] == b"\x03\x00\x00\x00\x00"  # type: ignore[index]
    assert parse_v2(raw[:20]) is None  # incomplete
    with pytest.raises(ValueError, match="not a PROXY v2 PROXY header"):
        parse_v2(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")


def test_inbound_connections_over_the_limit_are_reset(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[dict[str, object]] = []
    monkeypatch.setattr(InboundConnection, "log", Logger(observer=events.append))
    config = Config.from_toml(inbound(pki, "max_connections = 1\n"))
    factory = InboundFactory(config.inbound[0], config.policy, MemoryReactorClock())
    transports = [Transport(peer=IPv4Address("TCP", "10.0.0.1", 40000 + n)) for n in range(2)]
    for t in transports:
        factory.buildProtocol(None).makeConnection(t)
    assert [t.aborted for t in transports] == [False, True]
    assert len(factory.active) == 1
    assert events[-1]["outcome"] == "overload" and events[-1]["peer"] == "10.0.0.1:40001"  # who was refused


def test_proxy_v2_anonymous_client_is_not_marked_verified() -> None:
    raw = v2_header(("10.0.0.1", 1), ("10.0.0.2", 2), tls_version="TLSv1.3", client_cert=False)
    parsed = parse_v2(raw)
    assert parsed is not None
    assert parsed["tlvs"][PP2_TYPE_SSL][:5] == b"\x01\x00\x00\x00\x01"  # TLS, no certificate; verify != 0


def test_idle_timeout_per_listener(pki: PKI) -> None:
    (i,) = Config.from_toml(inbound(pki)).inbound
    assert i.idle_timeout == 3600
    (i,) = Config.from_toml(inbound(pki, "idle_timeout = 90\n")).inbound
    assert i.idle_timeout == 90
    e = error(inbound(pki, "idle_timeout = 700000\n"))
    assert e.key == "inbound[0].idle_timeout" and e.line == 5, (e.key, e.line)


def test_ticket_keys_rotate_by_rebuilding_the_context(pki: PKI) -> None:
    """A resuming listener's context (which holds OpenSSL's ticket keys) is replaced once a day;
    one with resumption off has no keys to rotate."""
    clock = MemoryReactorClock()
    config = Config.from_toml(inbound(pki))
    factory = InboundFactory(config.inbound[0], config.policy, clock)
    first = factory.context
    factory.buildProtocol(None)
    assert factory.context is first
    clock.advance(TICKET_KEY_ROTATION)
    factory.buildProtocol(None)
    assert factory.context is not first and factory.rotate_at == clock.seconds() + TICKET_KEY_ROTATION
    stapler = factory.context.get_app_data()  # the new context's stapler runs, as the first one's did
    assert stapler is not None and stapler.started
    off = Config.from_toml(inbound(pki, "session_resumption = false\n"))
    assert InboundFactory(off.inbound[0], off.policy, clock).rotate_at is None
