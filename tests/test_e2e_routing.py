"""Scenario: routing decisions and their failure modes, each ending in a reset and a log line.

HTTP Host routing with curl as the legacy app; refusals (reject route, no route, a direct connection to the
listener itself, no usable Host, a stalled request head, a `resolved` route without a name); upstream failures (refused,
connect timeout, handshake timeout); IPv6 through ip6tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.lab import SERVER_V4, SERVER_V6, Lab, log_events, poll
from tests.pki import PKI

P = {"web": 80, "web_tls": 23443, "reject": 23081, "refused": 23082, "dropped": 23083, "hold": 23084,
     "v6": 23085, "unrouted": 23086, "resolved": 23087}


@pytest.fixture(scope="module")
def scene(lab: Lab, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("routing")
    config = d / "ssaproxy.toml"
    config.write_text(f"""
[policy]
trust_store = "{pki.root_pem}"

[outbound]
listen = ["tcp:15001:interface=127.0.0.1", 'tcp6:15001:interface=\\:\\:1']
connect_timeout = 1
handshake_timeout = 1
sniff_timeout = 1

[[outbound.route]]
name = "web"
destination = "{SERVER_V4}/32"
ports = [{P["web"]}]
tls_port = {P["web_tls"]}
hostname_from = "http-host"

[[outbound.route]]
name = "blocked"
destination = "{SERVER_V4}/32"
ports = [{P["reject"]}]
action = "reject"

[[outbound.route]]
name = "fixed"
destination = "{SERVER_V4}/32"
ports = [{P["refused"]}, {P["dropped"]}, {P["hold"]}]
hostname = "backend.test"

[[outbound.route]]
name = "by-name"
destination = "{SERVER_V4}/32"
ports = [{P["resolved"]}]
hostname_from = "resolved"

[[outbound.route]]
name = "six"
destination = "{SERVER_V6}/128"
ports = [{P["v6"]}]
hostname = "backend.test"
""")
    good = pki.server("good")
    lab.tls_server("http", good, P["web_tls"], d / "web.log")
    lab.tls_server("hold", None, P["hold"], d / "hold.log")
    lab.tls_server("echo", good, P["v6"], d / "v6.log", host=SERVER_V6)
    # SYNs to this port vanish: the upstream connect can only time out.
    lab.ns(lab.s, ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(P["dropped"]), "-j", "DROP"])
    lab.apply_rules(config)
    # A redirect the routes do not cover, as a too-broad admin rule would make.
    lab.ns(lab.c, ["iptables", "-t", "nat", "-I", "SSAPROXY_OUTPUT", "3", "-p", "tcp", "-d", SERVER_V4,
                   "--dport", str(P["unrouted"]), "-j", "REDIRECT", "--to-ports", "15001"])
    lab.start_daemon(config, d / "daemon.log")
    return d


def _event(scene: Path, needle: str) -> str:
    events = poll(lambda: [e for e in log_events(scene / "daemon.log") if needle in e])
    assert events, f"no event with {needle!r}"
    return events[-1]


def test_curl_http_is_upgraded_using_the_host_header(lab: Lab, scene: Path) -> None:
    r = lab.curl("http://backend.test/hello", "--resolve", f"backend.test:80:{SERVER_V4}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from the TLS server\n"
    web = (scene / "web.log").read_text()
    assert '"sni": "backend.test"' in web and "GET /hello HTTP/1.1" in web
    event = _event(scene, f"orig_dst={SERVER_V4}:80 ")
    assert " closed: " in event and "hostname=backend.test" in event and "verified=True" in event


def test_host_header_naming_another_server_fails_verification(lab: Lab, scene: Path) -> None:
    r = lab.curl("http://other.test/", "--resolve", f"other.test:80:{SERVER_V4}")
    assert r.returncode == 56, (r.returncode, r.stderr)  # curl: failure receiving (reset)
    assert "reset" in r.stderr.lower()
    assert "identity mismatch" in _event(scene, "hostname=other.test")


@pytest.mark.parametrize(("request_head", "why"), [
    ("GET / HTTP/1.0\\r\\n\\r\\n", "expected one Host header, found 0"),
    ("HELO example\\r\\n\\r\\n", "not an HTTP/1.x request"),
    ("GET / HTTP/1.1\\r\\nHost: a\\r\\nHost: b\\r\\n\\r\\n", "expected one Host header, found 2"),
])
def test_request_without_one_valid_host_is_reset(lab: Lab, scene: Path, request_head: str, why: str) -> None:
    r = lab.client(SERVER_V4, P["web"], "--send", request_head)
    assert r["end"] == "reset" and r["received"] == 0, r
    assert " no-host: " in _event(scene, why)


def test_stalled_request_head_is_reset_after_sniff_timeout(lab: Lab, scene: Path) -> None:
    r = lab.client(SERVER_V4, P["web"], "--send", "GET / HTTP/1.1\\r\\n", "--timeout", "10")
    assert r["end"] == "reset", r
    assert " no-host: " in _event(scene, "no complete request head in time")


def test_reject_route_resets(lab: Lab, scene: Path) -> None:
    r = lab.client(SERVER_V4, P["reject"], "--send", "x")
    assert r["end"] == "reset", r
    assert " rejected: " in _event(scene, "route=blocked")


def test_connection_without_route_resets(lab: Lab, scene: Path) -> None:
    r = lab.client(SERVER_V4, P["unrouted"], "--send", "x")
    assert r["end"] == "reset", r
    assert " no-route: " in _event(scene, f"orig_dst={SERVER_V4}:{P['unrouted']} ")


def test_resolved_route_resets_a_connection_iptables_redirected(lab: Lab, scene: Path) -> None:
    # Only the client library (ssaproxy run) knows the name the program resolved: a redirected
    # connection has none, and is reset rather than sent in clear or verified against a guess.
    r = lab.client(SERVER_V4, P["resolved"], "--send", "secret")
    assert r["end"] == "reset" and r["received"] == 0, r
    event = _event(scene, f"orig_dst={SERVER_V4}:{P['resolved']} ")
    assert " no-name: " in event and "route=by-name" in event and 'hostname_from = "resolved"' in event


@pytest.mark.parametrize(("name", "outcome"), [("refused", "connect-refused"), ("dropped", "connect-timeout"),
                                           ("hold", "handshake-timeout")])
def test_upstream_failures_reset_the_client(lab: Lab, scene: Path, name: str, outcome: str) -> None:
    r = lab.client(SERVER_V4, P[name], "--send", "secret", "--timeout", "10")
    assert r["end"] == "reset" and r["received"] == 0, r
    assert f" {outcome}: " in _event(scene, f"orig_dst={SERVER_V4}:{P[name]} ")


def test_direct_connection_to_listener_is_refused_quietly(lab: Lab, scene: Path) -> None:
    r = lab.client("127.0.0.1", 15001, "--send", "x")
    assert r["end"] == "reset", r
    event = _event(scene, "orig_dst=127.0.0.1:15001 ")
    assert " not-redirected: " in event and "#info]" in event  # a health check is no warning


def test_ipv6_destination_through_ip6tables(lab: Lab, scene: Path) -> None:
    r = lab.client(SERVER_V6, P["v6"], "--send", "over six\\n", "--shutdown")
    assert r["end"] == "eof" and r["head"] == "over six\n", r
    event = _event(scene, f"orig_dst=[{SERVER_V6}]:{P['v6']} ")
    assert " closed: " in event and "verified=True" in event
