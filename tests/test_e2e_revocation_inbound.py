"""Scenario: revocation and OCSP stapling on inbound listeners, with real peers on loopback.

A real `openssl ocsp` responder over an index.txt CA database and a CRL over HTTP; the daemon
terminates TLS in front of an echo backend.  Listener "mtls" asks for client certificates
(revocation "hard"): `openssl s_client` with a revoked one is refused before the backend hears
anything; with a good one it is served.  Its own certificate's OCSP response is fetched from
the AIA and stapled (`openssl s_client -status` shows it).  Listener "airgap" staples a response
read from a file (its certificate names no responder).
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.api_harness import free_port, wait_port
from tests.lab import poll, stop, wait_for_text
from tests.loopback import spawn_backend, spawn_daemon, wait_started
from tests.revpki import RevPKI


class Scene:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.procs: list[subprocess.Popen[Any]] = []
        self.pki = pki = RevPKI(d / "pki", host="127.0.0.1", ocsp_port=free_port(), crl_port=free_port())
        self.responder = self._spawn(pki.responder_argv(), "responder")
        wait_for_text(d / "responder.log", "waiting for OCSP client connections", self.responder, 15)
        crl = self._spawn(pki.crl_server_argv(), "crl-server")
        wait_port(pki.crl_port, crl)
        self.airgap_response = pki.ocsp_response("crl_good", d / "crl_good.der")
        self.mtls, self.airgap, backend_port = free_port(), free_port(), free_port()
        good, crl_good = pki.leaves["good"], pki.leaves["crl_good"]
        self.config = d / "ssaproxy.toml"
        self.config.write_text(f"""
[[inbound]]
name = "mtls"
listen = "tcp:{self.mtls}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
certificates = [ {{ chain = "{good.chain}", key = "{good.key}" }} ]
client_auth = "require"
client_ca = "{pki.ca_pem}"
revocation = "hard"

[[inbound]]
name = "airgap"
listen = "tcp:{self.airgap}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
certificates = [ {{ chain = "{crl_good.chain}", key = "{crl_good.key}" }} ]
ocsp_response_file = "{self.airgap_response}"
""")
        self.log, self.backend_log = d / "daemon.log", d / "backend.log"
        backend = spawn_backend(backend_port, "echo", self.backend_log)
        self.procs.append(backend)
        daemon = spawn_daemon(self.config, self.log)
        self.procs.append(daemon)
        wait_started(backend, self.backend_log, daemon, self.log)

    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen[Any]:
        p = subprocess.Popen(argv, stdout=(self.dir / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def s_client(self, port: int, *args: str, data: bytes = b"hello\n") -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "rev.test",
                               "-CAfile", str(self.pki.ca_pem), "-verify_return_error", *args],
                              input=data.decode(), capture_output=True, text=True, timeout=30)

    def client_cert(self, leaf: str) -> list[str]:
        creds = self.pki.leaves[leaf]
        return ["-cert", str(creds.cert), "-key", str(creds.key)]

    def exchange(self, port: int, leaf: str, data: bytes) -> tuple[bytes, str]:
        """Python's ssl as the client, presenting `leaf`: what came back, and how it ended."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_pem))
        creds = self.pki.leaves[leaf]
        ctx.load_cert_chain(str(creds.cert), str(creds.key))
        got = b""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname="rev.test") as tls:
                tls.sendall(data)
                while len(got) < len(data):
                    chunk = tls.recv(100)
                    if not chunk:
                        return got, "eof"
                    got += chunk
        except (ssl.SSLError, OSError) as e:
            return got, f"error: {e}"
        return got, "ok"

    def close(self) -> None:
        for p in reversed(self.procs):
            stop(p)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    s = Scene(tmp_path_factory.mktemp("revocation-inbound"))
    try:
        yield s
    finally:
        s.close()


def _events(scene: Scene, text: str) -> list[str]:
    return [x for x in scene.log.read_text(errors="replace").splitlines() if "inbound " in x and text in x]


def test_a_good_client_certificate_is_served(scene: Scene) -> None:
    got, end = scene.exchange(scene.mtls, "client_good", b"hello\n")
    assert (got, end) == (b"hello\n", "ok")
    assert poll(lambda: _events(scene, "client=uri:spiffe://test/client_good")), scene.log.read_text()[-2000:]


def test_a_revoked_client_certificate_is_refused_before_the_backend_sees_anything(scene: Scene) -> None:
    before = scene.backend_log.read_text()
    got, end = scene.exchange(scene.mtls, "client_revoked", b"secret for the backend\n")
    assert got == b"" and end != "ok", (got, end)
    event = poll(lambda: _events(scene, "client-refused"))
    assert event and "certificate revoked (OCSP" in event[-1], event
    # Again: now the answer is cached and the refusal comes inside the handshake, with an alert.
    got, end = scene.exchange(scene.mtls, "client_revoked", b"secret for the backend\n")
    assert got == b"" and "ALERT" in end, (got, end)
    assert poll(lambda: len(_events(scene, "certificate revoked")) >= 2 or None)
    # The backend was never connected for it: its log grew by nothing about this client.
    assert "secret for the backend" not in scene.backend_log.read_text()[len(before):]


def test_s_client_status_sees_the_stapled_response_fetched_from_the_aia(scene: Scene) -> None:
    def stapled() -> str | None:
        r = scene.s_client(scene.mtls, "-status", *scene.client_cert("client_good"))
        return r.stdout if "OCSP Response Status: successful" in r.stdout else None

    out = poll(stapled, 20)
    assert out is not None, "no stapled response in 20 s"
    assert "Cert Status: good" in out, out[-3000:]


def test_s_client_status_sees_the_response_from_the_file(scene: Scene) -> None:
    r = scene.s_client(scene.airgap, "-status")
    assert "OCSP Response Status: successful" in r.stdout, r.stdout[-3000:]
    assert "Cert Status: good" in r.stdout, r.stdout[-3000:]
    assert "Verify return code: 0 (ok)" in r.stdout, r.stdout[-3000:]


def test_a_changed_response_file_is_reloaded_with_the_certificate_and_checked(scene: Scene) -> None:
    """SIGHUP rereads the file; one that is not a current "good" for the listener's certificate
    is refused, naming the key, and the previous response goes on being stapled."""
    good = scene.airgap_response.read_bytes()
    wrong = scene.pki.ocsp_response("client_good", scene.dir / "client_good.der").read_bytes()
    daemon = scene.procs[-1]
    try:
        scene.airgap_response.write_bytes(wrong)
        daemon.send_signal(signal.SIGHUP)
        refused = poll(lambda: [x for x in scene.log.read_text().splitlines() if "reload refused" in x])
        assert refused and "ocsp_response_file" in refused[-1] and "not a current good OCSP response" in refused[-1]
        r = scene.s_client(scene.airgap, "-status")
        assert "Cert Status: good" in r.stdout, r.stdout[-3000:]
    finally:
        scene.airgap_response.write_bytes(good)
    daemon.send_signal(signal.SIGHUP)
    assert poll(lambda: [x for x in scene.log.read_text().splitlines() if "reloaded (SIGHUP)" in x
                         and "certificate_files_changed=1" in x])
    r = scene.s_client(scene.airgap, "-status")
    assert "Cert Status: good" in r.stdout, r.stdout[-3000:]
