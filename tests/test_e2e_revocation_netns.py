"""Scenario: revocation on the transparent outbound path, in network namespaces with real
iptables rules.

The server namespace runs a real `openssl ocsp` responder over an index.txt CA database, an
HTTP server holding the CA's CRL, and one TLS server per certificate; the daemon in the client
namespace, with `[policy] revocation = "hard"`, upgrades a legacy client's plaintext.  A good
certificate relays; one revoked by OCSP or by CRL resets the client, and the server never gets
a byte of plaintext.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab import SERVER_V4, Lab, wait_for_text
from tests.revpki import RevPKI
from tests.test_e2e_verification import _event_for, _server_reports  # the same log files, the same reading

pytestmark = pytest.mark.netns

OCSP_PORT, CRL_PORT = 28080, 28081
PORTS = {"good": 24001, "revoked": 24002, "crl_good": 24003, "crl_revoked": 24004}


@pytest.fixture(scope="module")
def scene(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("revocation-netns")
    pki = RevPKI(d / "pki", host=SERVER_V4, ocsp_port=OCSP_PORT, crl_port=CRL_PORT)
    responder = lab.spawn(lab.s, pki.responder_argv(), log=d / "responder.log")
    wait_for_text(d / "responder.log", "waiting for OCSP client connections", responder, 15)
    crl = lab.spawn(lab.s, pki.crl_server_argv(), log=d / "crl-server.log")
    wait_for_text(d / "crl-server.log", "Serving HTTP", crl, 15)
    routes = "".join(f'[[outbound.route]]\nname = "{name}"\ndestination = "{SERVER_V4}/32"\nports = [{port}]\n'
                     f'hostname = "rev.test"\n\n' for name, port in PORTS.items())
    config = d / "ssaproxy.toml"
    config.write_text(f'[policy]\ntrust_store = "{pki.ca_pem}"\nrevocation = "hard"\n\n'
                      f'[outbound]\nlisten = "tcp:15001:interface=127.0.0.1"\nhandshake_timeout = 10\n\n{routes}')
    for name, port in PORTS.items():
        lab.tls_server("echo", pki.leaves[name], port, d / f"server-{name}.log")
    lab.apply_rules(config)
    lab.start_daemon(config, d / "daemon.log")
    return d


@pytest.mark.parametrize("name", ["good", "crl_good"])
def test_a_certificate_that_is_not_revoked_relays(lab: Lab, scene: Path, name: str) -> None:
    message = f"hello {name}\n"
    r = lab.client(SERVER_V4, PORTS[name], "--send", message, "--shutdown")
    assert r["end"] == "eof", r
    assert r["head"] == message
    assert _server_reports(scene, name)[-1]["received"] == len(message)


@pytest.mark.parametrize(("name", "how"), [("revoked", "OCSP"), ("crl_revoked", "CRL")])
def test_a_revoked_certificate_resets_the_client(lab: Lab, scene: Path, name: str, how: str) -> None:
    r = lab.client(SERVER_V4, PORTS[name], "--send", "secret plaintext\n", "--shutdown")
    assert r["end"] == "reset", r
    assert r["received"] == 0
    reports = _server_reports(scene, name)
    # No plaintext reached it (refused in the handshake, or after it and before the relay began).
    assert reports and all(rep.get("received", 0) == 0 for rep in reports), reports
    event = _event_for(scene, name)
    assert "verify-failed" in event and f"certificate revoked ({how}" in event, event
