"""Scenario: every certificate a verifying client must refuse, served by real TLS servers.

One daemon, one route per case (each case's server listens on its own port).  A good case
relays the legacy client's bytes; a bad case resets the client (RST, not FIN), the server
never receives a byte of plaintext, and the daemon logs why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from tests.lab import SERVER_V4, Lab, log_events, poll
from tests.pki import PKI

BASE_PORT = 21000
CASES = PKI.GOOD_CASES + PKI.BAD_CASES
# What the daemon's log must say for each refusal (a fragment of the verify reason).
REASONS = {
    "expired": "certificate has expired",
    "not_yet_valid": "not yet valid",
    "wrong_host": "identity mismatch",
    "wildcard_too_deep": "identity mismatch",
    "self_signed": "self-signed certificate",
    "untrusted_root": "self-signed certificate in certificate chain",
    "incomplete_chain": "unable to get local issuer certificate",
    "intermediate_not_ca": "invalid CA certificate",
    "name_constraint": "permitted subtree violation",
    "wrong_eku": "unsuitable certificate purpose",
    "no_san": "does not contain any `subjectAltName`s",
    "ip_mismatch": "identity mismatch",
    "rsa_1024": "too weak",
    "sha1_signature": "too weak",
}
# Policy refusals: a valid certificate, but a server that only offers what the policy forbids.
POLICY = {
    "tls11_only": ["--max-version", "TLSv1.1", "--ciphers", "DEFAULT:@SECLEVEL=0"],
    "weak_cipher_only": ["--max-version", "TLSv1.2", "--ciphers", "AES128-SHA:@SECLEVEL=0"],
    "null_cipher_only": ["--max-version", "TLSv1.2", "--ciphers", "NULL-SHA256:@SECLEVEL=0"],
}


def port_of(name: str) -> int:
    return BASE_PORT + (CASES + tuple(POLICY)).index(name)


def _route(name: str, hostname: str) -> str:
    key = "hostname_from = \"address\"" if hostname[0].isdigit() else f'hostname = "{hostname}"'
    return (f'[[outbound.route]]\nname = "{name}"\ndestination = "{SERVER_V4}/32"\n'
            f"ports = [{port_of(name)}]\n{key}\n")


@pytest.fixture(scope="module")
def scene(lab: Lab, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("verify")
    routes = [_route(c, pki.server(c).hostname) for c in CASES] + [_route(p, "backend.test") for p in POLICY]
    config = d / "ssaproxy.toml"
    config.write_text(f'[policy]\ntrust_store = "{pki.root_pem}"\n\n[outbound]\n'
                      f'listen = "tcp:15001:interface=127.0.0.1"\nhandshake_timeout = 5\n\n' + "\n".join(routes))
    for case in CASES:
        # SECLEVEL=0 lets the server load the deliberately weak certificates.
        lab.tls_server("echo", pki.server(case), port_of(case), d / f"server-{case}.log",
                       extra=["--ciphers", "DEFAULT:@SECLEVEL=0"])
    for name, extra in POLICY.items():
        lab.tls_server("echo", pki.server("good"), port_of(name), d / f"server-{name}.log", extra=extra)
    lab.apply_rules(config)
    lab.start_daemon(config, d / "daemon.log")
    return d


@pytest.mark.parametrize("case", PKI.GOOD_CASES)
def test_good_certificate_relays_bytes(lab: Lab, scene: Path, case: str) -> None:
    message = f"hello {case}\n"
    r = lab.client(SERVER_V4, port_of(case), "--send", message, "--shutdown")
    assert r["end"] == "eof", r
    assert r["head"] == message
    server = _server_reports(scene, case)
    assert server[-1]["received"] == len(message)
    assert server[-1]["end"] == "close_notify"  # our half-close arrived as close_notify
    assert server[-1]["version"] == "TLSv1.3"


@pytest.mark.parametrize("case", PKI.BAD_CASES)
def test_bad_certificate_resets_client(lab: Lab, scene: Path, case: str) -> None:
    r = lab.client(SERVER_V4, port_of(case), "--send", "secret plaintext\n", "--shutdown")
    assert r["end"] == "reset", r
    assert r["received"] == 0
    server = _server_reports(scene, case)
    assert server and all("received" not in rep for rep in server), server  # no plaintext reached it
    event = _event_for(scene, case)
    assert "verify-failed" in event
    assert REASONS[case] in event, event


@pytest.mark.parametrize("name", list(POLICY))
def test_policy_refuses_old_versions_and_weak_ciphers(lab: Lab, scene: Path, name: str) -> None:
    r = lab.client(SERVER_V4, port_of(name), "--send", "secret plaintext\n", "--shutdown")
    assert r["end"] == "reset", r
    assert r["received"] == 0
    server = _server_reports(scene, name)
    assert server and all("received" not in rep for rep in server), server
    assert "handshake-failed" in _event_for(scene, name)


def _server_reports(scene: Path, case: str) -> list[dict[str, object]]:
    log = scene / f"server-{case}.log"
    lines = poll(lambda: [x for x in log.read_text().splitlines() if x.startswith("{")])
    return [json.loads(line) for line in lines]


def _event_for(scene: Path, route: str) -> str:
    events = poll(lambda: [e for e in log_events(scene / "daemon.log") if f"route={route} " in e])
    assert events, f"no log event for route {route}"
    return events[-1]
