"""Scenario: revocation on the socket API, against real peers on loopback.

A real `openssl ocsp` responder over an index.txt CA database, a CRL served over HTTP,
`openssl s_server` peers (one stapling a real response), and the daemon under twistd with the
default policy ("soft").  A program that sets TLS_REVOCATION_CHECKS = 2 asks for hard-fail; one
that tries to turn checking off is refused (EPERM).  A second CA whose responder and CRL server
do not exist shows soft against hard when nobody answers.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.api_harness import ApiDaemon, free_port, wait_port
from tests.lab import PEERS, poll, stop, wait_for_text
from tests.revpki import RevPKI

HARD = "s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_REVOCATION_CHECKS, 2)\n"
CONNECT = """
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
{before}s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"rev.test")
try:
    s.connect(("127.0.0.1", {port}))
    s.sendall(b"hello\\n")
    result["reply"] = s.recv(100).decode()
    result["errno"] = 0
except OSError as e:
    result["errno"] = e.errno
    result["error"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()
"""


class Scene:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.procs: list[subprocess.Popen[Any]] = []
        self.pki = RevPKI(directory / "pki", host="127.0.0.1", ocsp_port=free_port(), crl_port=free_port())
        # A CA nobody answers for: its URLs point at ports where nothing listens.
        self.down = RevPKI(directory / "down", host="127.0.0.1", ocsp_port=free_port(), crl_port=free_port())
        # And one whose CRL the daemon has no file of either: nobody can answer for it at all.
        self.dark = RevPKI(directory / "dark", host="127.0.0.1", ocsp_port=free_port(), crl_port=free_port())
        # And one whose responder accepts and never answers, and whose CRL is far too large.
        self.slow = RevPKI(directory / "slow", host="127.0.0.1", ocsp_port=free_port(), crl_port=free_port())
        (self.slow.crl_dir / "ca.crl").write_bytes(b"\0" * (5 << 20))
        self.trust = directory / "trust.pem"
        self.trust.write_bytes(b"".join(p.ca_pem.read_bytes() for p in (self.pki, self.down, self.dark, self.slow)))
        self.spawn(self.pki.responder_argv(), "responder", self.pki.ocsp_port)
        self.spawn(self.pki.crl_server_argv(), "crl-server", self.pki.crl_port)
        self.servers: dict[str, int] = {}

    def spawn(self, argv: list[str], name: str, port: int) -> None:
        log = self.dir / f"{name}.log"
        p = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        if name == "responder":  # a probe connection would hold up the one-at-a-time responder
            wait_for_text(log, "waiting for OCSP client connections", p, 15)
        else:
            wait_port(port, p)

    def s_server(self, pki: RevPKI, leaf: str, *extra: str) -> int:
        port = free_port()
        creds = pki.leaves[leaf]
        self.spawn(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(creds.cert), "-key",
                    str(creds.key), "-rev", "-quiet", *extra], f"s_server-{port}", port)
        return port

    def close(self) -> None:
        for p in reversed(self.procs):
            stop(p)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    s = Scene(tmp_path_factory.mktemp("revocation-api"))
    try:
        staple = s.pki.ocsp_response("must_staple", s.dir / "must_staple.der")
        for leaf in ("good", "revoked", "crl_good", "crl_revoked", "must_staple"):
            s.servers[leaf] = s.s_server(s.pki, leaf)
        s.servers["must_staple_stapled"] = s.s_server(s.pki, "must_staple", "-status_file", str(staple))
        s.servers["dark_good"] = s.s_server(s.dark, "good")
        s.servers["slow_good"] = s.s_server(s.slow, "good")
        s.spawn([sys.executable, str(PEERS / "tls_server.py"), "--host", "127.0.0.1", "--port",
                 str(s.slow.ocsp_port), "--mode", "hold"], "hold", s.slow.ocsp_port)
        s.spawn(s.slow.crl_server_argv(), "slow-crl", s.slow.crl_port)
        s.servers["down_revoked"] = s.s_server(s.down, "revoked")
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def api(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiDaemon]:
    class Trust:
        root_pem = scene.trust

    d = ApiDaemon(tmp_path_factory.mktemp("revocation-api-daemon"), Trust(), handshake_timeout=10)  # type: ignore[arg-type]
    # The down CA's CRL as a file: known locally although its distribution point is dead.
    d.config.write_text(d.config.read_text().replace(
        "[api]", f'crl_files = ["{scene.down.crl_pem}"]\nrevocation_timeout = 2\n[api]'))
    d.start()
    try:
        yield d
    finally:
        d.stop()


def _connect(api: ApiDaemon, port: int, before: str = HARD) -> dict[str, Any]:
    return api.program(CONNECT.format(port=port, before=before))


@pytest.mark.parametrize("leaf", ["good", "crl_good", "must_staple_stapled"])
def test_not_revoked_servers_are_reached_under_hard(api: ApiDaemon, scene: Scene, leaf: str) -> None:
    r = _connect(api, scene.servers[leaf])
    assert r["errno"] == 0, r
    assert r["reply"] == "olleh\n" or r["reply"].startswith("olleh"), r  # s_server -rev reverses the line


@pytest.mark.parametrize(("leaf", "how"), [("revoked", "OCSP"), ("crl_revoked", "CRL")])
def test_revoked_servers_are_refused_like_a_verification_failure(api: ApiDaemon, scene: Scene, leaf: str,
                                                                 how: str) -> None:
    r = _connect(api, scene.servers[leaf])
    assert r["errno"] == errno.EPROTO, r  # as for any certificate that fails verification (docs/api.md)
    assert f"certificate revoked ({how}" in r["error"], r
    event = api.wait_event(f"target=127.0.0.1:{scene.servers[leaf]} ")
    assert "verify-failed" in event and "revoked" in event, event


def test_revoked_is_refused_under_soft_too(api: ApiDaemon, scene: Scene) -> None:
    r = _connect(api, scene.servers["revoked"], before="")
    assert r["errno"] == errno.EPROTO and "revoked" in r["error"], r


def test_must_staple_without_a_staple_is_refused(api: ApiDaemon, scene: Scene) -> None:
    r = _connect(api, scene.servers["must_staple"], before="")
    assert r["errno"] == errno.EPROTO, r
    assert "must-staple" in r["error"], r
    # Refused inside the handshake: the server got our alert (not just a reset).
    assert _alerted(scene, "must_staple")


def _alerted(scene: Scene, leaf: str) -> bool:
    log = scene.dir / f"s_server-{scene.servers[leaf]}.log"
    return bool(poll(lambda: "bad certificate status response" in log.read_text() or None))


def test_a_cached_revoked_answer_refuses_inside_the_handshake_with_an_alert(api: ApiDaemon, scene: Scene) -> None:
    for _ in range(2):  # the first may fetch; the second finds the answer cached
        r = _connect(api, scene.servers["revoked"])
        assert r["errno"] == errno.EPROTO and "certificate revoked (OCSP" in r["error"], r
    assert _alerted(scene, "revoked")


def test_responder_down_soft_passes_and_logs_hard_refuses(api: ApiDaemon, scene: Scene) -> None:
    soft = _connect(api, scene.servers["dark_good"], before="")
    assert soft["errno"] == 0, soft
    poll(lambda: "revocation status unknown" in api.log.read_text() or None)
    hard = _connect(api, scene.servers["dark_good"])
    assert hard["errno"] == errno.EPROTO, hard
    assert "revocation status unknown (hard)" in hard["error"], hard


def test_a_crl_file_answers_when_the_distribution_point_is_down(api: ApiDaemon, scene: Scene) -> None:
    r = _connect(api, scene.servers["down_revoked"], before="")
    assert r["errno"] == errno.EPROTO and "certificate revoked (CRL" in r["error"], r


def test_a_program_may_demand_more_checking_never_less(api: ApiDaemon) -> None:
    r = api.program("""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
def code(opt, value):
    try:
        s.setsockopt(ssaproxy.IPPROTO_TLS, opt, value)
        return 0
    except OSError as e:
        return e.errno
for name in ("TLS_REVOCATION_CHECKS", "TLS_OCSP_STAPLED_CHECKS", "TLS_OCSP_CHECKS", "TLS_CRL_CHECKS",
             "TLS_CACHED_REV_CHECKS"):
    opt = getattr(ssaproxy, name)
    result[name] = [s.getsockopt(ssaproxy.IPPROTO_TLS, opt), code(opt, 1), code(opt, 0)]
result["hard"] = code(ssaproxy.TLS_REVOCATION_CHECKS, 2)
result["bad"] = code(ssaproxy.TLS_OCSP_CHECKS, 2)
""")
    for name in ("TLS_REVOCATION_CHECKS", "TLS_OCSP_STAPLED_CHECKS", "TLS_OCSP_CHECKS", "TLS_CRL_CHECKS",
                 "TLS_CACHED_REV_CHECKS"):
        value, on, off = r[name]
        assert value == 1 and on == 0 and off == errno.EPERM, (name, r)
    assert r["hard"] == 0 and r["bad"] == errno.EINVAL, r


def test_a_responder_that_never_answers_and_an_oversized_crl_are_no_answer(api: ApiDaemon, scene: Scene) -> None:
    """revocation_timeout (2 s here) bounds the OCSP fetch; a CRL over the size limit is dropped."""
    r = _connect(api, scene.servers["slow_good"])
    assert r["errno"] == errno.EPROTO, r
    assert "revocation status unknown (hard)" in r["error"], r
    assert "no answer in time" in r["error"] and "over the limit" in r["error"], r


def test_a_program_s_tls_server_refuses_a_revoked_client_certificate(api: ApiDaemon, scene: Scene) -> None:
    """accept() side: a program's listener asking for client certificates (94) under the
    policy's soft mode hands over only the client whose certificate is not revoked."""
    port, log = free_port(), scene.dir / "api-server.log"
    good = scene.pki.leaves["good"]
    p = api.spawn([sys.executable, str(PEERS / "api_server.py"), "--port", str(port), "--chain", str(good.chain),
                   "--key", str(good.key), "--mtls", "--ca", str(scene.pki.ca_pem), "--count", "1"], log)
    wait_for_text(log, "READY", p, 15)

    def s_client(leaf: str) -> subprocess.CompletedProcess[str]:
        creds = scene.pki.leaves[leaf]
        return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "rev.test",
                               "-CAfile", str(scene.pki.ca_pem), "-cert", str(creds.cert), "-key", str(creds.key),
                               "-quiet"], input=f"hello from {leaf}\n", capture_output=True, text=True, timeout=20)

    refused = s_client("client_revoked")
    assert "you said!" not in refused.stdout, refused.stdout
    served = s_client("client_good")
    assert "you said!" in served.stdout, served.stderr
    p.wait(15)
    accepted = [line for line in log.read_text().splitlines() if line.startswith('{"peer"')]
    assert len(accepted) == 1 and "hello from client_good" in accepted[0], accepted  # never the revoked one
    event = api.wait_event(" accept verify-failed: ")
    assert "certificate revoked (" in event, event  # OCSP, or the CRL an earlier test left cached
