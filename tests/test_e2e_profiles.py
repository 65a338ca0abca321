"""Scenario: per-application policy (`[[profile]]`), both ways a program is recognised.

The upstream is `openssl s_server -tls1_2`: it speaks TLS 1.2 only.  The admin's `[policy]`
allows TLS 1.2; profile "strict" (users 4242) and profile "grouped" (group 4300) demand TLS 1.3.

- Redirected traffic: `ssaproxy iptables apply` generates owner-match rules that lead each
  profile's programs to the profile's own listener, before the general rule.  The same plain
  request, from three unprivileged users in the client namespace: nobody is upgraded and
  served; uid 4242 and gid 4300 are refused (the server cannot speak TLS 1.3), and each log
  record names the profile that applied.
- The socket API: a program running as uid 4242 gets profile "strict" (SO_PEERCRED), so its
  connection to the same server is refused, and it cannot loosen the profile with
  TLS_VERSION_MIN (EPERM); as nobody, the same program connects.
- A profile's client certificate: `openssl s_server -Verify 1` on port 4433 demands one.
  Profile "mtls" (uid 4244) names one: that user's redirected request and its API program are
  served; nobody's are refused (no certificate to show).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.lab import CLIENT_PY, PEERS, REPO, SERVER_V4, Lab, log_events, poll
from tests.pki import PKI

REQUEST = "GET / HTTP/1.0\r\nHost: backend.test\r\n\r\n"
STRICT = ["setpriv", "--reuid", "4242", "--regid", "4242", "--clear-groups"]
GROUPED = ["setpriv", "--reuid", "4243", "--regid", "4300", "--clear-groups"]
MTLS = ["setpriv", "--reuid", "4244", "--regid", "4244", "--clear-groups"]
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


@pytest.fixture(scope="module")
def scene(lab: Lab, pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("profiles")
    client = pki.client("client_good")
    sockdir = Path(tempfile.mkdtemp(prefix="ssaproxy-profiles-"))
    os.chmod(sockdir, 0o755)  # the programs run as other users
    config = d / "ssaproxy.toml"
    config.write_text(f"""
[policy]
trust_store = "{pki.root_pem}"
min_version = "TLSv1.2"

[api]
socket = "{sockdir}/api.sock"
mode = "0666"

[outbound]
listen = "tcp:15001:interface=127.0.0.1"

[[outbound.route]]
name = "to-server"
destination = "{SERVER_V4}/32"
ports = [80]
tls_port = 443
hostname = "backend.test"

[[profile]]
name = "strict"
match_users = [4242]
listen = "tcp:15002:interface=127.0.0.1"
min_version = "TLSv1.3"

[[outbound.route]]
name = "to-mtls"
destination = "{SERVER_V4}/32"
ports = [81]
tls_port = 4433
hostname = "backend.test"

[[profile]]
name = "grouped"
match_groups = [4300]
listen = "tcp:15003:interface=127.0.0.1"
min_version = "TLSv1.3"

[[profile]]
name = "mtls"
match_users = [4244]
listen = "tcp:15004:interface=127.0.0.1"
client_certificate = "{client.chain}"
client_key = "{client.key}"
""")
    good = pki.server("good")
    lab.openssl_server(good, 443, d / "s_server.log", "-cert_chain", str(good.chain), "-www", "-tls1_2")
    lab.openssl_server(good, 4433, d / "s_server-mtls.log", "-cert_chain", str(good.chain), "-www",
                       "-Verify", "1", "-verify_return_error", "-CAfile", str(pki.client_ca_pem))
    rules = lab.ns(lab.c, [sys.executable, "-m", "ssaproxy.cli", "iptables", "apply", "--config", str(config),
                           "--uid", "0"], cwd=REPO)
    assert rules.returncode == 0, rules.stderr
    lab.start_daemon(config, d / "daemon.log")
    try:
        yield d, sockdir
    finally:
        lab.ns(lab.c, [sys.executable, "-m", "ssaproxy.cli", "iptables", "remove"], cwd=REPO, check=False)
        shutil.rmtree(sockdir, ignore_errors=True)


def _client(lab: Lab, user: list[str], port: int = 80) -> dict[str, Any]:
    out = lab.ns(lab.c, [*user, CLIENT_PY, str(PEERS / "client.py"), SERVER_V4, str(port), "--send", REQUEST])
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def _event(log: Path, client_port_hint: str) -> str:
    found = poll(lambda: [e for e in log_events(log) if client_port_hint in e])
    assert found, log.read_text()[-3000:]
    return found[-1]


def test_the_rules_lead_each_profile_to_its_listener_before_the_general_rule(lab: Lab, scene: Any) -> None:
    rules = lab.ns(lab.c, ["iptables", "-t", "nat", "-S", "SSAPROXY_OUTPUT"]).stdout.splitlines()
    redirects = [r for r in rules if "REDIRECT" in r]
    ports = [r.split("--to-ports ")[1] for r in redirects]
    assert ports == ["15002", "15002", "15003", "15003", "15004", "15004", "15001", "15001"], rules
    assert "--uid-owner 4242" in redirects[0] and "--gid-owner 4300" in redirects[2], rules
    assert "--uid-owner 4244" in redirects[4] and "--dports 81" in redirects[5], rules


def test_each_user_gets_its_own_profiles_policy(lab: Lab, scene: Any) -> None:
    d, _ = scene
    log = d / "daemon.log"
    served = _client(lab, NOBODY)
    assert served["end"] == "eof" and b"HTTP/1.0 200" in served["head"].encode(), served
    event = _event(log, "profile=None")
    assert " closed: " in event and "verified=True" in event and "tls=TLSv1.2" in event, event

    for user, name in ((STRICT, "strict"), (GROUPED, "grouped")):
        refused = _client(lab, user)
        assert refused["end"] == "reset" and refused["received"] == 0, (name, refused)
        event = _event(log, f"profile={name}")
        assert " handshake-failed: " in event and "verified=False" in event, event

    # The general listener is still the admin's: nobody again, after the others.
    again = _client(lab, NOBODY)
    assert again["end"] == "eof" and b"HTTP/1.0 200" in again["head"].encode(), again


PROGRAM = """
import errno, json, socket, sys
sys.path.insert(0, sys.argv[1])
import ssaproxy.client as ssaproxy
result = {}
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
result["min_before"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_VERSION_MIN)
try:
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_VERSION_MIN, 0x0303)
    result["loosen"] = 0
except OSError as e:
    result["loosen"] = e.errno
try:
    s.connect((sys.argv[2], int(sys.argv[3])))
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    result["connect"] = 0
    result["reply"] = s.recv(100).decode(errors="replace")
except OSError as e:
    result["connect"] = e.errno
print(json.dumps(result))
"""


def _program(lab: Lab, sockdir: Path, user: list[str], port: int = 443) -> dict[str, Any]:
    out = lab.ns(lab.c, [*user, "env", f"SSAPROXY_SOCKET={sockdir}/api.sock", CLIENT_PY, "-c", PROGRAM, str(REPO),
                         SERVER_V4, str(port)])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_an_api_program_gets_its_uids_profile_and_cannot_loosen_it(lab: Lab, scene: Any) -> None:
    d, sockdir = scene
    strict = _program(lab, sockdir, STRICT)
    assert strict["min_before"] == 0x0304, strict  # the profile's floor, not the admin's
    assert strict["loosen"] == errno.EPERM, strict
    assert strict["connect"] != 0, strict  # the server speaks TLS 1.2 only
    log = d / "daemon.log"
    found = poll(lambda: [x for x in log.read_text().splitlines() if "api session" in x and "uid=4242" in x])
    assert found and "profile=strict" in found[-1], log.read_text()[-3000:]

    free = _program(lab, sockdir, NOBODY)
    assert free["min_before"] == 0x0303 and free["loosen"] == 0, free
    assert free["connect"] == 0 and free["reply"].startswith("HTTP/1.0 200"), free
    found = poll(lambda: [x for x in log.read_text().splitlines() if "api session" in x and "uid=65534" in x])
    assert found and "profile=None" in found[-1], found


def test_a_profiles_client_certificate_is_presented_for_its_programs(lab: Lab, scene: Any) -> None:
    d, sockdir = scene
    log = d / "daemon.log"
    served = _client(lab, MTLS, 81)
    assert served["end"] == "eof" and b"HTTP/1.0 200" in served["head"].encode(), served
    event = _event(log, "profile=mtls")
    assert " closed: " in event and "verified=True" in event, event
    refused = _client(lab, NOBODY, 81)
    assert refused["end"] == "reset" and refused["received"] == 0, refused  # no certificate to show

    api = _program(lab, sockdir, MTLS, 4433)
    assert api["connect"] == 0 and api["reply"].startswith("HTTP/1.0 200"), api
    bare = _program(lab, sockdir, NOBODY, 4433)
    assert bare["connect"] != 0 and "reply" not in bare, bare  # the server refused it: an error, never data
