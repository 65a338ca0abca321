"""The decision core, table-driven: every routing rule without a socket."""

from __future__ import annotations

import ipaddress
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssaproxy.config import Config, Route
from ssaproxy.policy import NOTHING_YET, Decision, FirstBytes, Identity, Step, decide

CONFIG = Config.from_toml("""
[outbound]
listen = ["tcp:15001:interface=127.0.0.1", 'tcp6:15001:interface=\\:\\:1']
[[outbound.route]]
name = "blocked"
destination = "10.0.0.0/8"
ports = [23]
action = "reject"
[[outbound.route]]
name = "raw"
destination = "10.0.0.0/8"
ports = [7000]
action = "passthrough"
[[outbound.route]]
name = "smtp"
destination = "10.0.0.0/8"
ports = [25]
hostname = "mail.test"
[[outbound.route]]
name = "by-address"
destination = "10.0.0.0/8"
ports = [8080]
hostname_from = "address"
tls_port = 8443
[[outbound.route]]
name = "web"
destination = "0.0.0.0/0"
ports = [80]
tls_port = 443
hostname_from = "http-host"
[[outbound.route]]
name = "web6"
destination = "::/0"
ports = [80]
tls_port = 443
hostname_from = "http-host"
""")

V4 = ipaddress.IPv4Address("10.1.2.3")
V6 = ipaddress.IPv6Address("2001:db8::1")
HELLO = FirstBytes(tls=True)
PLAIN = FirstBytes(tls=False)


def route_for(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> Optional[Route]:
    return CONFIG.outbound.match(ip, port)


@pytest.mark.parametrize(("ip", "port", "first", "expected"), [
    (V4, 9999, NOTHING_YET, Decision(step=Step.REFUSE, outcome="no-route")),
    (V4, 23, NOTHING_YET, Decision(step=Step.REFUSE, outcome="rejected")),
    (V4, 23, HELLO, Decision(step=Step.REFUSE, outcome="rejected")),  # reject wins over a ClientHello
    (V4, 7000, NOTHING_YET, Decision(step=Step.PASSTHROUGH, port=7000)),
    (V4, 25, NOTHING_YET, Decision(step=Step.UPGRADE, identity=Identity(dns_name="mail.test"), port=25)),
    (V4, 25, HELLO, Decision(step=Step.PASSTHROUGH, port=25)),  # never TLS inside TLS
    (V4, 8080, NOTHING_YET, Decision(step=Step.UPGRADE, identity=Identity(ip="10.1.2.3"), port=8443)),
    (V4, 80, NOTHING_YET, Decision(step=Step.WAIT)),
    (V4, 80, PLAIN, Decision(step=Step.WAIT)),
    (V4, 80, HELLO, Decision(step=Step.PASSTHROUGH, port=80)),
    (V4, 80, FirstBytes(tls=False, head_complete=True, host="api.test"),
     Decision(step=Step.UPGRADE, identity=Identity(dns_name="api.test"), port=443)),
    (V4, 80, FirstBytes(tls=False, head_complete=True, host="192.0.2.7"),
     Decision(step=Step.UPGRADE, identity=Identity(ip="192.0.2.7"), port=443)),
    (V4, 80, FirstBytes(tls=False, head_complete=True, host_error="no Host header"),
     Decision(step=Step.REFUSE, outcome="no-host", detail="no Host header")),
    (V6, 80, FirstBytes(tls=False, head_complete=True, host="v6.test"),
     Decision(step=Step.UPGRADE, identity=Identity(dns_name="v6.test"), port=443)),
    (V6, 25, NOTHING_YET, Decision(step=Step.REFUSE, outcome="no-route")),  # the smtp route is IPv4 only
])
def test_decisions(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, first: FirstBytes,
                   expected: Decision) -> None:
    assert decide((ip, port), route_for(ip, port), first) == expected


def test_a_client_certificate_travels_with_the_upgrade() -> None:
    route = Route(name="mtls", destination=ipaddress.ip_network("10.0.0.0/8"), hostname="peer.test",
                  client_certificate="/c.pem", client_key="/k.pem")
    d = decide((V4, 443), route)
    assert (d.step, d.client_certificate, d.client_key) == (Step.UPGRADE, "/c.pem", "/k.pem")


@pytest.mark.parametrize(("host", "identity"), [
    ("example.com", Identity(dns_name="example.com")),
    ("192.0.2.1", Identity(ip="192.0.2.1")),
    ("2001:db8::5", Identity(ip="2001:db8::5")),
    ("::ffff:192.0.2.1", Identity(ip="::ffff:c000:201")),
])
def test_identity_of_a_host(host: str, identity: Identity) -> None:
    assert Identity.of(host) == identity
    assert str(identity) in (host, identity.ip)


@given(port=st.integers(1, 65535), tls=st.sampled_from([None, True, False]),
       host=st.one_of(st.none(), st.from_regex(r"[a-z]{1,10}\.test", fullmatch=True)),
       complete=st.booleans(), v6=st.booleans())
def test_decide_is_total_and_consistent(port: int, tls: Optional[bool], host: Optional[str], complete: bool,
                                        v6: bool) -> None:
    ip = V6 if v6 else V4
    first = FirstBytes(tls=tls, head_complete=complete or host is not None, host=host)
    route = route_for(ip, port)
    d = decide((ip, port), route, first)
    if route is None or route.action == "reject":
        assert d.step is Step.REFUSE
    elif tls or route.action == "passthrough":
        assert d == Decision(step=Step.PASSTHROUGH, port=port)
    elif d.step is Step.UPGRADE:
        assert d.identity is not None and d.port == (route.tls_port or port)
    else:
        # Only a Host-header route can wait or fail for want of a name.
        assert route.hostname_from == "http-host" and route.hostname is None
        assert d.step is (Step.REFUSE if first.head_complete else Step.WAIT)
    assert decide((ip, port), route, first) == d  # pure: the same question, the same answer


RESOLVED = Route(name="by-name", destination=ipaddress.ip_network("10.0.0.0/8"), tls_port=443,
                 hostname_from="resolved")


@pytest.mark.parametrize(("first", "resolved", "expected"), [
    # Only the client library hands a name over (REDIRECT's NAME); without one: refused, never clear.
    (NOTHING_YET, None, Decision(step=Step.REFUSE, outcome="no-name",
                                 detail='hostname_from = "resolved" needs the name the program resolved; only a '
                                        "connection handed over by the client library (ssaproxy run) carries one")),
    (NOTHING_YET, "api.test", Decision(step=Step.UPGRADE, identity=Identity(dns_name="api.test"), port=443)),
    (PLAIN, "api.test", Decision(step=Step.UPGRADE, identity=Identity(dns_name="api.test"), port=443)),
    (HELLO, "api.test", Decision(step=Step.PASSTHROUGH, port=80)),  # never TLS inside TLS
    (HELLO, None, Decision(step=Step.PASSTHROUGH, port=80)),
])
def test_hostname_from_resolved(first: FirstBytes, resolved: Optional[str], expected: Decision) -> None:
    assert decide((V4, 80), RESOLVED, first, resolved) == expected


def test_a_resolved_name_does_not_override_a_route_of_another_source() -> None:
    # The name only counts where the admin asked for it: a fixed hostname stays the one verified.
    route = route_for(V4, 25)
    assert decide((V4, 25), route, NOTHING_YET, "evil.test").identity == Identity(dns_name="mail.test")


def test_the_config_takes_hostname_from_resolved() -> None:
    config = Config.from_toml('[outbound]\n[[outbound.route]]\nname = "r"\ndestination = "10.0.0.0/8"\n'
                              'hostname_from = "resolved"\n')
    assert config.outbound.routes[0].hostname_from == "resolved"
