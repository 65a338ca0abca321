"""What is built on the library: the examples (and how few lines a port changes), the
`ssaproxy connect` command and the `ssa:` Twisted endpoint, each run as a real process."""

from __future__ import annotations

import ast
import difflib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api_harness import ApiDaemon, free_port, wait_port
from tests.lab import PEERS, REPO, stop, wait_for_text
from tests.pki import PKI

EXAMPLES = REPO / "examples"
PAIRS = {  # (before, after): the most code lines a port may change, as the README says
    ("http_client_plain.py", "http_client_ssaproxy.py"): 2,
    ("echo_server_plain.py", "echo_server_ssaproxy.py"): 3,
    ("smtp_starttls_client_ssl.py", "smtp_starttls_client_ssaproxy.py"): 2,
}
C_PAIRS = {  # the C examples (libssaproxy): at most 5 lines added or changed, as the README says
    ("http_client_plain.c", "https_client_ssa.c"): 5,
    ("echo_server_plain.c", "echo_server_ssa.c"): 5,
    ("prefork_server_plain.c", "prefork_server_ssa.c"): 4,
    ("threaded_server_plain.c", "threaded_server_ssa.c"): 4,
    ("epoll_client_plain.c", "epoll_client_ssa.c"): 3,
    ("smtp_client_plain.c", "smtp_starttls_client_ssa.c"): 5,
}



def _code_lines(path: Path) -> list[str]:
    """The file's non-blank lines, without its module docstring."""
    text = path.read_text()
    tree = ast.parse(text)
    doc = tree.body[0] if tree.body and isinstance(tree.body[0], ast.Expr) else None
    lines = text.splitlines()
    if doc is not None:
        del lines[doc.lineno - 1:doc.end_lineno]
    return [line for line in lines if line.strip()]


@pytest.mark.parametrize("pair", list(PAIRS))
def test_a_port_changes_few_lines_and_the_readme_says_how_many(pair: tuple[str, str]) -> None:
    before, after = (_code_lines(EXAMPLES / name) for name in pair)
    changed = [line for line in difflib.ndiff(before, after) if line[:2] in ("+ ", "- ")]
    added = sum(1 for line in changed if line.startswith("+ "))
    assert added == PAIRS[pair] <= 3, changed
    readme = (REPO / "README.md").read_text()
    assert f"`{pair[1]}`" in readme and re.search(rf"{PAIRS[pair]} lines?\b[^\n]*`{pair[1]}`|`{pair[1]}`[^\n]*"
                                                  rf"\b{PAIRS[pair]} lines?\b", readme), pair


def _c_code_lines(path: Path) -> list[str]:
    """The C file's non-blank lines, without its opening comment."""
    text = path.read_text()
    assert text.startswith("/*"), path
    return [line for line in text[text.index("*/") + 2:].splitlines() if line.strip()]


@pytest.mark.parametrize("pair", list(C_PAIRS))
def test_a_c_port_changes_few_lines_and_the_readme_says_how_many(pair: tuple[str, str]) -> None:
    before, after = (_c_code_lines(EXAMPLES / name) for name in pair)
    changed = [line for line in difflib.ndiff(before, after) if line[:2] in ("+ ", "- ")]
    added = sum(1 for line in changed if line.startswith("+ "))
    assert added == C_PAIRS[pair] <= 5, changed
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"`{re.escape(pair[1])}`[^\n]*\b{C_PAIRS[pair]} lines?\b", readme), pair


def test_http_client_example_against_a_tls_server(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("http", pki.server("good_localhost"))
    r = subprocess.run([sys.executable, str(EXAMPLES / "http_client_ssaproxy.py"), "localhost", str(port)],
                       env=api.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HTTP/1.1 200 OK") and "hello from the TLS server" in r.stdout


def test_plain_examples_work_as_the_baseline(api: ApiDaemon, tmp_path: Path) -> None:
    port = free_port()
    server = api.spawn([sys.executable, str(EXAMPLES / "echo_server_plain.py"), str(port)], tmp_path / "plain.log")
    try:
        wait_for_text(tmp_path / "plain.log", "listening", server, 15)
        r = subprocess.run([sys.executable, "-c", f"""
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"plain\\n"); print(s.recv(100).decode(), end="")
"""], capture_output=True, text=True, timeout=20)
        assert r.stdout == "echo: plain\n"
    finally:
        stop(server)
    web = free_port()
    http = api.spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(web)], tmp_path / "web.log",
                     cwd=EXAMPLES)
    try:
        wait_port(web, http)
        r = subprocess.run([sys.executable, str(EXAMPLES / "http_client_plain.py"), "127.0.0.1", str(web),
                            "/http_client_plain.py"], capture_output=True, text=True, timeout=20)
        assert "200 OK" in r.stdout and "Fetch a page over plain TCP" in r.stdout
    finally:
        stop(http)


def test_echo_server_example_with_a_python_ssl_client(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    creds = pki.server("good")
    combined = tmp_path / "server.pem"  # chain and key in one file, as the example takes them
    combined.write_bytes(Path(creds.chain).read_bytes() + Path(creds.key).read_bytes())
    port = free_port()
    log = tmp_path / "echo.log"
    server = api.spawn([sys.executable, str(EXAMPLES / "echo_server_ssaproxy.py"), str(port), str(combined)], log)
    try:
        wait_for_text(log, "listening", server, 15)
        client = f"""
import socket, ssl
ctx = ssl.create_default_context(cafile="{pki.root_pem}")
with ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})), server_hostname="backend.test") as t:
    t.sendall(b"first line\\nsecond line\\n")
    f = t.makefile("rb")
    print(f.readline().decode() + f.readline().decode(), end="")
"""
        r = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=20)
        assert r.stdout == "echo: first line\necho: second line\n", r.stderr
        assert re.search(r"client 127\.0\.0\.1:\d+", log.read_text())  # the client's real address
    finally:
        stop(server)


def test_starttls_example_upgrades_smtplib_in_place(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    creds = pki.server("good_localhost")
    port = free_port()
    log = tmp_path / "smtp.log"
    peer = api.spawn([sys.executable, str(PEERS / "starttls_server.py"), "--port", str(port),
                      "--cert", str(creds.chain), "--key", str(creds.key)], log)
    wait_for_text(log, "READY", peer, 15)
    r = subprocess.run([sys.executable, str(EXAMPLES / "smtp_starttls_client_ssaproxy.py"), "localhost", str(port)],
                       env=api.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "sent\n", r.stderr
    peer.wait(15)
    seen = json.loads(log.read_text().splitlines()[-1])
    assert seen["version"] == "TLSv1.3" and "sent over STARTTLS" in seen["data"]
    assert seen["commands"][:3] == ["EHLO", "MAIL", "RCPT"]


def test_connect_command(api: ApiDaemon, pki: PKI) -> None:
    echo = api.tls_server("echo", pki.server("good_localhost"))
    r = subprocess.run([sys.executable, "-m", "ssaproxy.cli", "connect", "localhost", str(echo)], env=api.env,
                       input="one\ntwo\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "one\ntwo\n", r.stderr
    assert "verified 'localhost'; TLSv1.3" in r.stderr and "chain of 3 certificates" in r.stderr
    cut = api.tls_server("truncate", pki.server("good_localhost"))
    cut_run = subprocess.run([sys.executable, "-m", "ssaproxy.cli", "connect", "localhost", str(cut)], env=api.env,
                             input=b"request\n", capture_output=True, timeout=30)
    assert cut_run.returncode == 1 and len(cut_run.stdout) == 1000, cut_run.stderr
    assert b"reset or truncated" in cut_run.stderr
    bad = api.tls_server("echo", pki.server("good"))  # its certificate names backend.test, not localhost
    r = subprocess.run([sys.executable, "-m", "ssaproxy.cli", "connect", "localhost", str(bad)], env=api.env,
                       input="secret\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "identity mismatch" in r.stderr and r.stdout == ""


TWISTED_PROGRAM = """
import sys
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer
from twisted.internet.interfaces import IHalfCloseableProtocol

@implementer(IHalfCloseableProtocol)
class P(Protocol):
    def __init__(self): self.got = b""
    def connectionMade(self):
        self.transport.write(b"from twisted\\n"); self.transport.loseWriteConnection()
    def dataReceived(self, data): self.got += data
    def readConnectionLost(self): self.transport.loseConnection()
    def writeConnectionLost(self): pass
    def connectionLost(self, reason):
        print(repr(self.got), reason.type.__name__, flush=True); reactor.stop()

def failed(f):
    print("FAILED", f.type.__name__, f.getErrorMessage(), flush=True); reactor.stop()

d = clientFromString(reactor, sys.argv[1]).connect(Factory.forProtocol(P))
d.addErrback(failed)
reactor.callLater(20, reactor.stop)
reactor.run()
"""


def test_twisted_endpoint_string(api: ApiDaemon, pki: PKI) -> None:
    def run(description: str) -> str:
        r = subprocess.run([sys.executable, "-c", TWISTED_PROGRAM, description], env=api.env, capture_output=True,
                           text=True, timeout=30)
        return r.stdout.strip() + r.stderr[-2000:]
    echo = api.tls_server("echo", pki.server("good_localhost"))
    assert run(f"ssa:host=localhost:port={echo}") == "b'from twisted\\n' ConnectionDone"
    cut = api.tls_server("truncate", pki.server("good"))
    out = run(f"ssa:host=127.0.0.1:port={cut}:hostname=backend.test")
    assert out.endswith(" ConnectionLost") and "b'" in out, out  # truncation is not a clean end
    bad = api.tls_server("echo", pki.server("wrong_host"))
    out = run(f"ssa:host=127.0.0.1:port={bad}:hostname=backend.test")
    assert out.startswith("FAILED ConnectError") and "identity mismatch" in out, out
