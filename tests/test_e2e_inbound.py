"""Scenario: inbound TLS termination in front of plaintext backends, with curl, openssl
s_client and haproxy as the real peers.

Client certificates (none, good, not allowed, expired, not yet valid, untrusted, self-signed,
wrong EKU) over TLS 1.2 and 1.3: only the good one reaches the backend; every refused client
gets a TLS alert and the backend never sees a byte.  Certificates are chosen by SNI, ECDSA and
RSA side by side; PROXY v2 reaches a real consumer (haproxy) and carries the TLS facts; the
relay is byte-exact and a backend reset becomes a client reset.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import pytest

from ssaproxy.proxyproto import PP2_TYPE_AUTHORITY, PP2_TYPE_SSAPROXY_SANS, PP2_TYPE_SSL, parse_v2
from tests.lab import SERVER_V4, Lab, poll
from tests.peers.pattern import pattern_digest
from tests.pki import PKI

PORTS = {"mtls": 8443, "open": 8444, "bulk": 8445, "rst": 8446, "modern": 8447, "record": 8448, "reqallow": 8449}
BACKENDS = {"http": 18080, "haproxy": 18081, "source": 18082, "reset": 18083, "echo": 18084}
BULK = 32 * 1024 * 1024 + 7
HAPROXY = """
global
    maxconn 100
defaults
    mode http
    timeout client 10s
    timeout server 10s
    timeout connect 5s
frontend pp
    bind 127.0.0.1:{port} accept-proxy
    http-request return status 200 content-type text/plain lf-string "{reply}"
"""
REPLY = "src=%[src]:%[src_port] dst=%[dst]:%[dst_port] authority=%[fc_pp_authority]\\n"


def _certs(pki: PKI, *cases: str) -> str:
    return ", ".join(f'{{ chain = "{pki.server(c).chain}", key = "{pki.server(c).key}" }}' for c in cases)


@pytest.fixture(scope="module")
def scene(lab: Lab, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("inbound")
    listen = lambda name: f'"tcp:{PORTS[name]}:interface={SERVER_V4}"'  # noqa: E731
    config = d / "ssaproxy.toml"
    config.write_text(f"""
[[inbound]]
name = "mtls"
listen = {listen("mtls")}
backend = "tcp:127.0.0.1:{BACKENDS["http"]}"
certificates = [ {_certs(pki, "good", "good_rsa2048", "good_wildcard")} ]
client_auth = "require"
client_ca = "{pki.client_ca_pem}"
allow = ["dns:client.test", "uri:spiffe://example.org/ns/default/sa/web"]
alpn = ["http/1.1"]

[[inbound]]
name = "open"
listen = {listen("open")}
backend = "tcp:127.0.0.1:{BACKENDS["haproxy"]}"
certificates = [ {_certs(pki, "good")} ]
proxy_protocol = "v2"

[[inbound]]
name = "record"
listen = {listen("record")}
backend = "tcp:127.0.0.1:{BACKENDS["echo"]}"
certificates = [ {_certs(pki, "good")} ]
client_auth = "request"
client_ca = "{pki.client_ca_pem}"
proxy_protocol = "v2"

[[inbound]]
name = "reqallow"
listen = {listen("reqallow")}
backend = "tcp:127.0.0.1:{BACKENDS["http"]}"
certificates = [ {_certs(pki, "good")} ]
client_auth = "request"
client_ca = "{pki.client_ca_pem}"
allow = ["dns:client.test"]

[[inbound]]
name = "bulk"
listen = {listen("bulk")}
backend = "tcp:127.0.0.1:{BACKENDS["source"]}"
certificates = [ {_certs(pki, "good")} ]

[[inbound]]
name = "rst"
listen = {listen("rst")}
backend = "tcp:127.0.0.1:{BACKENDS["reset"]}"
certificates = [ {_certs(pki, "good")} ]

[[inbound]]
name = "modern"
listen = {listen("modern")}
backend = "tcp:127.0.0.1:{BACKENDS["http"]}"
certificates = [ {_certs(pki, "good")} ]
profile = "modern"
""")
    lab.backend("http", BACKENDS["http"], d / "http.log")
    lab.backend("source", BACKENDS["source"], d / "source.log", "--bytes", str(BULK))
    lab.backend("reset", BACKENDS["reset"], d / "reset.log", "--bytes", "1000")
    lab.backend("echo", BACKENDS["echo"], d / "echo.log")
    hap = d / "haproxy.cfg"
    hap.write_text(HAPROXY.format(port=BACKENDS["haproxy"], reply=REPLY))
    lab.spawn(lab.s, ["haproxy", "-db", "-f", str(hap)], log=d / "haproxy.log")
    poll(lambda: str(BACKENDS["haproxy"]) in lab.ns(lab.s, ["ss", "-Hltn"]).stdout)
    lab.start_daemon(config, d / "daemon.log", ns=lab.s)
    return d


def _curl(lab: Lab, pki: PKI, port: int, *args: str, name: str = "backend.test", path: str = "/hello"):  # type: ignore[no-untyped-def]
    return lab.curl(f"https://{name}:{port}{path}", "--cacert", str(pki.root_pem), "--resolve",
                    f"{name}:{port}:{SERVER_V4}", *args, root=True)


def _backend_connections(scene: Path, name: str) -> int:
    return sum(1 for line in (scene / f"{name}.log").read_text().splitlines() if line.startswith("{"))


def _events(scene: Path) -> list[str]:
    return [x for x in (scene / "daemon.log").read_text().splitlines() if "InboundConnection" in x]


VERSIONS = {"1.2": ["--tlsv1.2", "--tls-max", "1.2"], "1.3": ["--tlsv1.3", "--tls-max", "1.3"]}


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_good_client_certificate_reaches_the_backend(lab: Lab, scene: Path, pki: PKI, version: str) -> None:
    c = pki.client("client_good")
    r = _curl(lab, pki, PORTS["mtls"], "--cert", str(c.chain), "--key", str(c.key), *VERSIONS[version],
              path=f"/v{version}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"200 ok /v{version}\n"
    event = poll(lambda: [e for e in _events(scene) if f"tls=TLSv{version} " in e and " closed: " in e])
    assert event and "client=dns:client.test,uri:spiffe://example.org/ns/default/sa/web" in event[-1]


REFUSED = {
    None: "no client certificate",
    "client_other": "client identity not allowed",
    "client_expired": "certificate has expired",
    "client_not_yet_valid": "not yet valid",
    "client_untrusted": "self-signed certificate in certificate chain",
    "client_self_signed": "self-signed certificate",
    "client_wrong_eku": "unsuitable certificate purpose",
}


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("case", list(REFUSED), ids=lambda c: c or "no_cert")
def test_refused_client_gets_an_alert_and_the_backend_nothing(lab: Lab, scene: Path, pki: PKI,
                                                              case: str | None, version: str) -> None:
    before = _backend_connections(scene, "http")
    args = [] if case is None else ["--cert", str(pki.client(case).chain), "--key", str(pki.client(case).key)]
    events_before = len(_events(scene))
    r = _curl(lab, pki, PORTS["mtls"], *args, *VERSIONS[version])
    # 35/56: handshake or receive failure, naming the alert; curl reports some alerts about
    # certificates as 60 without the alert's text (openssl s_client shows it, below).
    assert r.returncode in (35, 56, 60), (r.returncode, r.stderr)
    assert r.returncode == 60 or "alert" in r.stderr.lower(), r.stderr
    events = poll(lambda: _events(scene)[events_before:])
    assert events and " client-refused: " in events[-1] and REFUSED[case] in events[-1], events
    assert _backend_connections(scene, "http") == before  # not a single connection, let alone a byte


def test_openssl_s_client_sees_the_alert_and_the_good_case_works(lab: Lab, scene: Path, pki: PKI) -> None:
    base = ["openssl", "s_client", "-connect", f"{SERVER_V4}:{PORTS['mtls']}", "-servername", "backend.test",
            "-CAfile", str(pki.root_pem), "-verify_return_error", "-ign_eof"]
    good = pki.client("client_good")
    ok = lab.ns(lab.c, [*base, "-cert", str(good.cert), "-key", str(good.key), "-cert_chain", str(good.chain)],
                input="GET /s_client HTTP/1.0\r\n\r\n", check=False)
    assert "200 ok /s_client" in ok.stdout, ok.stdout[-2000:]
    bad = pki.client("client_expired")
    refused = lab.ns(lab.c, [*base, "-cert", str(bad.cert), "-key", str(bad.key), "-cert_chain", str(bad.chain)],
                     input="GET /never HTTP/1.0\r\n\r\n", check=False)
    assert "certificate expired" in (refused.stdout + refused.stderr).lower()
    assert "/never" not in (scene / "http.log").read_text()


@pytest.mark.parametrize(("name", "subject"), [("backend.test", "backend.test"), ("a.wild.test", "*.wild.test"),
                                           ("unknown.test", "backend.test")])
def test_certificate_is_chosen_by_sni(lab: Lab, scene: Path, pki: PKI, name: str, subject: str) -> None:
    c = pki.client("client_good")
    r = lab.ns(lab.c, ["openssl", "s_client", "-connect", f"{SERVER_V4}:{PORTS['mtls']}", "-servername", name,
                       "-cert", str(c.cert), "-key", str(c.key), "-cert_chain", str(c.chain)],
               input="", check=False)
    assert f"0 s:O = ssaproxy tests, CN = {subject}\n" in r.stdout, r.stdout[:1500]


@pytest.mark.parametrize(("sigalgs", "key"), [("ECDSA+SHA256", "ECDSA"), ("RSA-PSS+SHA256:RSA+SHA256", "RSA")])
def test_ecdsa_and_rsa_chains_side_by_side(lab: Lab, scene: Path, pki: PKI, sigalgs: str, key: str) -> None:
    c = pki.client("client_good")
    r = lab.ns(lab.c, ["openssl", "s_client", "-connect", f"{SERVER_V4}:{PORTS['mtls']}", "-servername",
                       "backend.test", "-sigalgs", sigalgs, "-cert", str(c.cert), "-key", str(c.key),
                       "-cert_chain", str(c.chain)], input="", check=False)
    expected = "Server public key is 256 bit" if key == "ECDSA" else "Server public key is 2048 bit"
    assert expected in r.stdout, r.stdout[:2500]


def test_proxy_v2_reaches_haproxy_with_the_real_client_and_sni(lab: Lab, scene: Path, pki: PKI) -> None:
    r = _curl(lab, pki, PORTS["open"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("src=10.77.0.1:"), r.stdout
    assert f"dst={SERVER_V4}:{PORTS['open']} authority=backend.test" in r.stdout


def test_proxy_v2_carries_the_tls_facts_and_client_identity(lab: Lab, scene: Path, pki: PKI) -> None:
    c = pki.client("client_good")
    r = lab.client(SERVER_V4, PORTS["record"], "--tls-ca-pem", pki.root_pem.read_text(), "--sni", "backend.test",
                   "--tls-cert", str(c.chain), "--tls-key", str(c.key), "--send", "payload", "--max-read", "1",
                   root=True)
    assert r["tls_version"] == "TLSv1.3", r
    rep = poll(lambda: [json.loads(x) for x in (scene / "echo.log").read_text().splitlines() if x.startswith("{")])
    header = parse_v2(rep[-1]["head"].encode("latin-1"))
    assert header is not None and header["src"][0] == "10.77.0.1"
    tlvs = header["tlvs"]
    assert tlvs[PP2_TYPE_AUTHORITY] == b"backend.test"  # type: ignore[index]
    ssl_tlv = tlvs[PP2_TYPE_SSL]  # type: ignore[index]
    assert ssl_tlv[0] == 0x03 and ssl_tlv[1:5] == b"\x00\x00\x00\x00"  # TLS, cert presented; verified
    assert b"TLSv1.3" in ssl_tlv
    assert tlvs[PP2_TYPE_SSAPROXY_SANS] == b"dns:client.test,uri:spiffe://example.org/ns/default/sa/web"  # type: ignore[index]
    assert rep[-1]["head"].encode("latin-1")[header["length"]:] == b"payload"  # type: ignore[index]


def test_relay_is_byte_exact_and_backend_fin_becomes_close_notify(lab: Lab, scene: Path, pki: PKI) -> None:
    r = lab.client(SERVER_V4, PORTS["bulk"], "--tls-ca-pem", pki.root_pem.read_text(), "--sni", "backend.test",
                   root=True, timeout=60)
    assert r["end"] == "eof" and r["received"] == BULK and r["sha256"] == pattern_digest(BULK), r


def test_backend_reset_resets_the_client(lab: Lab, scene: Path, pki: PKI) -> None:
    r = lab.client(SERVER_V4, PORTS["rst"], "--tls-ca-pem", pki.root_pem.read_text(), "--sni", "backend.test",
                   root=True)
    # Python's ssl reports a RST without close_notify as it reports a FIN without it: "unclean".
    assert r["received"] == 1000 and r["end"] in ("reset", "unclean"), r
    assert " reset: " in poll(lambda: [e for e in _events(scene) if "listener=rst " in e])[-1]


def test_modern_profile_refuses_tls12(lab: Lab, scene: Path, pki: PKI) -> None:
    assert _curl(lab, pki, PORTS["modern"], *VERSIONS["1.3"]).returncode == 0
    r = _curl(lab, pki, PORTS["modern"], *VERSIONS["1.2"])
    assert r.returncode == 35 and "alert" in r.stderr.lower(), (r.returncode, r.stderr)


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("case", list(REFUSED), ids=lambda c: c or "no_cert")
def test_openssl_s_client_is_refused_with_an_alert(lab: Lab, scene: Path, pki: PKI, case: str | None,
                                                   version: str) -> None:
    before = _backend_connections(scene, "http")
    args = ["openssl", "s_client", "-connect", f"{SERVER_V4}:{PORTS['mtls']}", "-servername", "backend.test",
            "-CAfile", str(pki.root_pem), f"-tls1_{version[-1]}", "-ign_eof"]
    if case is not None:
        c = pki.client(case)
        args += ["-cert", str(c.cert), "-key", str(c.key), "-cert_chain", str(c.chain)]
    r = lab.ns(lab.c, args, input=f"GET /s_client-{case} HTTP/1.0\r\n\r\n", check=False, timeout=30)
    out = (r.stdout + r.stderr).lower()
    assert "alert" in out, out[-2000:]
    assert f"/s_client-{case}" not in (scene / "http.log").read_text()
    assert _backend_connections(scene, "http") == before


def test_request_mode_with_an_allow_list_refuses_anonymous_clients_with_an_alert(lab: Lab, scene: Path,
                                                                                  pki: PKI) -> None:
    r = lab.ns(lab.c, ["openssl", "s_client", "-connect", f"{SERVER_V4}:{PORTS['reqallow']}", "-servername",
                       "backend.test", "-CAfile", str(pki.root_pem), "-ign_eof"],
               input="GET /anonymous HTTP/1.0\r\n\r\n", check=False, timeout=30)
    assert "alert" in (r.stdout + r.stderr).lower() and "/anonymous" not in (scene / "http.log").read_text()


def test_plaintext_on_the_tls_port_is_a_handshake_failure_not_a_certificate_refusal(lab: Lab, scene: Path) -> None:
    before = len(_events(scene))
    r = lab.client(SERVER_V4, PORTS["mtls"], "--send", "GET / HTTP/1.0\\r\\n\\r\\n", root=True)
    assert r["received"] == 0
    event = poll(lambda: _events(scene)[before:])[-1]
    assert " handshake-failed: " in event and "client-refused" not in event


def test_non_ascii_sni_reaches_the_proxy_header_as_sent(lab: Lab, scene: Path, pki: PKI) -> None:
    """A server name that is not ASCII must neither crash the header nor hang the connection."""
    code = (
        "import socket, sys\n"
        "from OpenSSL import SSL\n"
        "ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n"
        "s.settimeout(None)  # pyOpenSSL wants a blocking socket; the test's timeout bounds it\n"
        "c = SSL.Connection(ctx, s); c.set_connect_state(); c.set_tlsext_host_name(b'b\\xc3\\xa4ckend.test')\n"
        "c.do_handshake(); c.sendall(b'hi'); print(c.recv(16)); c.shutdown()\n"
    )
    before = len(_events(scene))
    r = lab.ns(lab.c, [sys.executable, "-c", code, SERVER_V4, str(PORTS["record"])], check=False, timeout=30)
    assert "b'" in r.stdout, r.stderr  # the echo came back: relayed, not hung
    rep = poll(lambda: [json.loads(x) for x in (scene / "echo.log").read_text().splitlines()
                        if x.startswith("{") and "hi" in json.loads(x).get("head", "")])
    header = parse_v2(rep[-1]["head"].encode("latin-1"))
    assert header is not None and header["tlvs"][PP2_TYPE_AUTHORITY] == "bäckend.test".encode()  # type: ignore[index]
    assert "Traceback" not in (scene / "daemon.log").read_text()
    assert poll(lambda: _events(scene)[before:])
