"""Scenario: an external TLS scanner (sslyze) checks inbound listeners against Mozilla's
server-side recommendations: the default profile against "intermediate", `profile = "modern"`
against "modern"."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REQUIRE_NETNS
from tests.lab import REPO, SERVER_V4, Lab
from tests.pki import PKI

PORTS = {"intermediate": 8543, "modern": 8544}


def _sslyze() -> str:
    found = REPO / ".tools" / "sslyze" / "bin" / "sslyze"
    if found.exists():
        return str(found)
    on_path = shutil.which("sslyze")
    if on_path:
        return on_path
    reason = "sslyze not installed (tests/setup.sh puts it in .tools/sslyze)"
    if REQUIRE_NETNS:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def scene(lab: Lab, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("scanner")
    ec, rsa = pki.server("good"), pki.server("good_rsa2048")
    certs = f'[ {{ chain = "{ec.chain}", key = "{ec.key}" }}, {{ chain = "{rsa.chain}", key = "{rsa.key}" }} ]'
    config = d / "ssaproxy.toml"
    config.write_text("".join(f"""
[[inbound]]
name = "{profile}"
listen = "tcp:{port}:interface={SERVER_V4}"
backend = "tcp:127.0.0.1:18090"
certificates = {certs}
profile = "{profile}"
""" for profile, port in PORTS.items()))
    lab.start_daemon(config, d / "daemon.log", ns=lab.s)
    return d


@pytest.mark.parametrize("profile", sorted(PORTS))
def test_mozilla_profile_compliance(lab: Lab, scene: Path, pki: PKI, profile: str) -> None:
    scanner = _sslyze()
    r = lab.ns(lab.c, [scanner, f"--mozilla_config={profile}", "--certinfo_ca_file", str(pki.root_pem),
                       f"{SERVER_V4}:{PORTS[profile]}", "--sni", "backend.test"], check=False, timeout=180)
    assert f"{SERVER_V4}:{PORTS[profile]}: OK - Compliant." in r.stdout, r.stdout[-3000:]
