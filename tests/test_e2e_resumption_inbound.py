"""Scenario: session tickets on inbound listeners, seen by openssl s_client.

A real daemon on loopback terminates TLS for four listeners in front of one echo backend:
`open` (resumption on, the default), `off` (`session_resumption = false`), `mtls` (client
certificates required, not checked for revocation) and `mtls-checked` (client certificates
checked for revocation, the policy's default: no tickets).  s_client saves its session with -sess_out and offers it
again with -sess_in; its "New," / "Reused," line says which handshake it got.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.api_harness import free_port
from tests.lab import poll, stop
from tests.loopback import LoopbackDaemon
from tests.pki import PKI

CONFIG = """[admin]
listen = "tcp:{admin_port}:interface=127.0.0.1"

[[inbound]]
name = "open"
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
{certificates}

[[inbound]]
name = "off"
listen = "tcp:{off_port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
session_resumption = false
{certificates}

[[inbound]]
name = "mtls"
listen = "tcp:{mtls_port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
client_auth = "require"
client_ca = "{client_ca}"
revocation = "off"
{certificates}

[[inbound]]
name = "mtls-checked"
listen = "tcp:{checked_port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
client_auth = "require"
client_ca = "{client_ca}"
{certificates}
"""


@pytest.fixture(scope="module")
def daemon(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackDaemon]:
    d = LoopbackDaemon(pki, tmp_path_factory.mktemp("resumption-inbound"), CONFIG, off_port=free_port(),
                       mtls_port=free_port(), checked_port=free_port(), client_ca=pki.client_ca_pem)
    with d:
        yield d


class Handshake:
    def __init__(self, output: str) -> None:
        self.output = output
        self.reused = "Reused, TLSv" in output
        self.new = "New, TLSv" in output
        self.tickets = output.count("Post-Handshake New Session Ticket arrived")


def s_client(d: LoopbackDaemon, port: int, directory: Path, *args: str, expect_echo: bool = True) -> Handshake:
    """One s_client connection for backend.test sending a line: its whole output, once the
    backend's echo came back (every ticket the server sends comes before that) or s_client
    ended by itself."""
    out = directory / f"s_client-{port}-{free_port()}.log"
    with out.open("wb") as sink:
        p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "backend.test",
                              "-CAfile", str(d.pki.root_pem), "-verify_return_error", *args],
                             stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT)
    try:
        assert p.stdin is not None
        p.stdin.write(b"hello-resumption\n")
        p.stdin.flush()

        def done() -> Optional[str]:
            text = out.read_text(errors="replace")
            if expect_echo and text.count("hello-resumption") >= 1 and "Cipher is" in text:
                return text
            return text if p.poll() is not None else None

        assert poll(done, 15) is not None, out.read_text(errors="replace")
        # s_client's own lines are buffered (what it receives is not): end its input and let
        # it exit so that they are all written.
        p.stdin.close()
        p.wait(15)
        return Handshake(out.read_text(errors="replace"))
    finally:
        stop(p)


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_a_saved_session_is_resumed(daemon: LoopbackDaemon, tmp_path: Path, version: str) -> None:
    session = tmp_path / "session.pem"
    first = s_client(daemon, daemon.port, tmp_path, version, "-sess_out", str(session))
    assert first.new and not first.reused, first.output
    if version == "-tls1_3":
        assert first.tickets >= 1, first.output
    second = s_client(daemon, daemon.port, tmp_path, version, "-sess_in", str(session))
    assert second.reused, second.output
    assert "Verify return code: 0 (ok)" in second.output
    line = daemon.wait_log("resumed=True")
    assert "listener=open" in line
    metrics = poll(lambda: _metric(daemon, 'ssaproxy_tls_resumed_handshakes_total{kind="inbound",side="near"}'), 10)
    assert metrics and float(metrics) >= 1


def _metric(d: LoopbackDaemon, series: str) -> Optional[str]:
    """A series' value from the daemon's admin endpoint."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{d.admin_port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(series + " "):
            return line.split()[-1]
    return None


def test_resumption_off_resumes_nothing(daemon: LoopbackDaemon, tmp_path: Path) -> None:
    for version in ("-tls1_3", "-tls1_2"):
        session = tmp_path / f"off{version}.pem"
        first = s_client(daemon, daemon.values["off_port"], tmp_path, version, "-sess_out", str(session))
        assert first.new, first.output
        if version == "-tls1_2":
            assert "TLS session ticket:" not in first.output, first.output  # no TLS 1.2 ticket at all
        if session.exists() and session.stat().st_size:
            again = s_client(daemon, daemon.values["off_port"], tmp_path, version, "-sess_in", str(session))
            assert again.new and not again.reused, again.output


def test_mtls_listener_refuses_a_session_made_without_a_client_certificate(daemon: LoopbackDaemon, pki: PKI,
                                                                          tmp_path: Path) -> None:
    client = pki.client("client_good")
    mtls = daemon.values["mtls_port"]
    # A session from the open listener, offered to the mTLS one without a certificate: no
    # resumption, and the full handshake asks for the certificate it does not have.
    anonymous = tmp_path / "open.pem"
    s_client(daemon, daemon.port, tmp_path, "-sess_out", str(anonymous))
    refused = s_client(daemon, mtls, tmp_path, "-sess_in", str(anonymous), expect_echo=False)
    assert not refused.reused, refused.output
    assert "hello-resumption" not in refused.output.split("Cipher is")[-1] or "alert" in refused.output
    daemon.wait_log("listener=mtls")
    assert "no client certificate" in daemon.wait_log("listener=mtls")
    # With the certificate: a session of the mTLS listener resumes there (the leaf is checked
    # again) and nowhere else.
    mine = tmp_path / "mtls.pem"
    creds = ("-cert", str(client.chain), "-cert_chain", str(client.chain), "-key", str(client.key))
    first = s_client(daemon, mtls, tmp_path, *creds, "-sess_out", str(mine))
    assert first.new, first.output
    again = s_client(daemon, mtls, tmp_path, *creds, "-sess_in", str(mine))
    assert again.reused, again.output
    elsewhere = s_client(daemon, daemon.port, tmp_path, "-sess_in", str(mine))
    assert elsewhere.new and not elsewhere.reused, elsewhere.output
    line = poll(lambda: [x for x in daemon.text().splitlines() if "listener=mtls" in x and "resumed=True" in x], 10)
    assert line and "verified=True" in line[-1] and "dns:client.test" in line[-1], line


def test_a_listener_checking_client_certificates_for_revocation_resumes_nothing(daemon: LoopbackDaemon, pki: PKI,
                                                                                tmp_path: Path) -> None:
    """`mtls-checked` has the policy's revocation mode (soft) for client certificates: a ticket
    carries the client's leaf but not its issuer, so that listener issues none, and each
    connection's certificate is checked again in a full handshake."""
    client = pki.client("client_good")
    checked = daemon.values["checked_port"]
    creds = ("-cert", str(client.chain), "-cert_chain", str(client.chain), "-key", str(client.key))
    for version in ("-tls1_3", "-tls1_2"):
        session = tmp_path / f"checked{version}.pem"
        first = s_client(daemon, checked, tmp_path, *creds, version, "-sess_out", str(session))
        assert first.new, first.output
        if version == "-tls1_2":
            assert "TLS session ticket:" not in first.output, first.output
        if session.exists() and session.stat().st_size:
            again = s_client(daemon, checked, tmp_path, *creds, version, "-sess_in", str(session))
            assert again.new and not again.reused, again.output
