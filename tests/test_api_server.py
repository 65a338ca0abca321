"""The local socket API, server side and STARTTLS: programs that accept TLS clients (curl,
openssl s_client) through the daemon, and programs that upgrade a connection in place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.api_harness import ApiDaemon, free_port
from tests.lab import PEERS, stop, wait_for_text
from tests.pki import PKI


def _server(api: ApiDaemon, pki: PKI, tmp: Path, *extra: str, count: int = 1) -> tuple[int, Path, Any]:
    port = free_port()
    creds = pki.server("good")
    log = tmp / f"server-{port}.log"
    p = api.spawn([sys.executable, str(PEERS / "api_server.py"), "--port", str(port), "--chain", str(creds.chain),
                   "--key", str(creds.key), "--count", str(count), *extra], log)
    wait_for_text(log, "READY", p, 15)
    return port, log, p


def _lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _curl(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"backend.test:{port}:127.0.0.1",
                           "-w", "\n%{local_port}", *args, f"https://backend.test:{port}/"],
                          capture_output=True, text=True, timeout=20)


def test_accept_gives_only_verified_clients_with_their_real_address(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    port, log, server = _server(api, pki, tmp_path, count=2)
    untrusting = _curl(port)  # curl does not trust our test root: it aborts the handshake
    assert untrusting.returncode == 60, untrusting.stderr
    good = _curl(port, "--cacert", str(pki.root_pem))
    assert good.returncode == 0, good.stderr
    body, _, local_port = good.stdout.rpartition("\n")
    assert body == "you said!\n"
    s_client = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "backend.test",
                               "-CAfile", str(pki.root_pem), "-verify_return_error", "-quiet"],
                              input="hello from s_client\n", capture_output=True, text=True, timeout=20)
    assert "you said!" in s_client.stdout, s_client.stderr
    server.wait(15)
    lines = _lines(log)
    assert lines[0]["ready"] and lines[0]["sockname"] == ["127.0.0.1", port]
    assert lines[1] == {"nonblocking_accept": "EAGAIN"}
    first, second = lines[2], lines[3]
    assert first["peer"] == ["127.0.0.1", int(local_port)]  # the client's own address, not the carrier's
    assert first["sni"] == "backend.test" and first["line"].startswith("GET / HTTP/1.1")
    assert first["identity"] == "" and first["chain_certs"] == 0  # no client certificate asked for
    assert first["proto"] == 205 and first["version"] in (0x0303, 0x0304)
    assert second["line"] == "hello from s_client\n"
    assert len(lines) == 4  # the client that refused our certificate was never accepted
    event = api.wait_event(" accept closed: ")
    assert "sni=backend.test" in event


def test_a_burst_of_clients_is_accepted_in_order(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    # Handshakes that finish in the same reactor turn queue several ACCEPTED frames, each with
    # a descriptor; the library must pair them in order.
    port, log, server = _server(api, pki, tmp_path, count=12)
    curls = [subprocess.Popen(["curl", "-sS", "--max-time", "20", "--cacert", str(pki.root_pem), "--resolve",
                               f"backend.test:{port}:127.0.0.1", f"https://backend.test:{port}/"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(12)]
    outs = [c.communicate(timeout=40) for c in curls]
    assert all(out == "you said!\n" for out, _ in outs), outs
    server.wait(30)
    accepted = _lines(log)[2:]
    assert len(accepted) == 12 and all(a["sni"] == "backend.test" for a in accepted), accepted


def test_mutual_tls_server(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    port, log, server = _server(api, pki, tmp_path, "--mtls", "--ca", str(pki.client_ca_pem), count=1)
    anonymous = _curl(port, "--cacert", str(pki.root_pem))
    assert anonymous.returncode != 0
    wrong = pki.client("client_untrusted")
    refused = _curl(port, "--cacert", str(pki.root_pem), "--cert", str(wrong.chain), "--key", str(wrong.key))
    assert refused.returncode != 0
    good = pki.client("client_good")
    ok = _curl(port, "--cacert", str(pki.root_pem), "--cert", str(good.chain), "--key", str(good.key))
    assert ok.returncode == 0, ok.stderr
    server.wait(15)
    accepted = _lines(log)[2:]
    assert len(accepted) == 1, accepted
    assert "dns:client.test" in accepted[0]["identity"] and accepted[0]["chain_certs"] == 3


SMTP_SERVER = """
import socket, ssaproxy, sys
srv = socket.create_server(("127.0.0.1", {port}))
print("READY", flush=True)
conn, addr = srv.accept()
fd = conn.fileno()
f = conn.makefile("rb", buffering=0)
conn.sendall(b"220 program ESMTP\\r\\n")
f.readline()
conn.sendall(b"250-program\\r\\n250 STARTTLS\\r\\n")
f.readline()
conn.sendall(b"220 Go ahead\\r\\n")
info = ssaproxy.upgrade(conn, server_side=True, options={{
    ssaproxy.TLS_CERTIFICATE_CHAIN: "{chain}", ssaproxy.TLS_PRIVATE_KEY: "{key}"}})
conn.sendall(b"250 hello over TLS\\r\\n")
line = f.readline()
print("RESULT", conn.fileno() == fd, info[ssaproxy.TLS_VERSION_CONN], info[ssaproxy.TLS_SERVER_NAME], line, flush=True)
"""


def test_starttls_server_side_with_openssl_s_client(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    port = free_port()
    creds = pki.server("good")
    log = tmp_path / "smtp.log"
    p = api.spawn([sys.executable, "-c", SMTP_SERVER.format(port=port, chain=creds.chain, key=creds.key)], log)
    wait_for_text(log, "READY", p, 15)
    r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
                        "-servername", "backend.test", "-CAfile", str(pki.root_pem), "-verify_return_error",
                        "-quiet"], input="QUIT after TLS\n", capture_output=True, text=True, timeout=20)
    assert "250 hello over TLS" in r.stdout, (r.stdout, r.stderr)
    p.wait(15)
    result = [line for line in log.read_text().splitlines() if line.startswith("RESULT")]
    assert result == ["RESULT True 772 b'backend.test' b'QUIT after TLS\\n'"], log.read_text()


def test_starttls_client_side_with_smtplib_and_setsockopt(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    creds = pki.server("good")
    for how in ("context", "setsockopt"):
        port = free_port()
        log = tmp_path / f"starttls-{how}.log"
        peer = api.spawn([sys.executable, str(PEERS / "starttls_server.py"), "--port", str(port),
                          "--cert", str(creds.chain), "--key", str(creds.key)], log)
        wait_for_text(log, "READY", peer, 15)
        if how == "context":
            code = f"""
import smtplib
smtp = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
smtp._host = "backend.test"  # the name to verify (smtplib passes the host it connected to)
smtp.ehlo("program.test")
fd = smtp.sock.fileno()
smtp.starttls(context=ssaproxy.Context())
result["same_fd"] = smtp.sock.fileno() == fd
result["identity"] = "backend.test"  # verified, or starttls() would have raised
smtp.ehlo("program.test")
result["reply"] = smtp.docmd("ECHO", "through ssaproxy")[1].decode()
"""
        else:
            code = f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(("127.0.0.1", {port}))
fd = s.fileno()
f = s.makefile("rb", buffering=0)
f.readline(); s.sendall(b"EHLO program.test\\r\\n")
while not f.readline().startswith(b"250 "): pass
s.sendall(b"STARTTLS\\r\\n"); f.readline()
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.setsockopt(ssaproxy.SOL_TCP, ssaproxy.TCP_UPGRADE_TLS, ssaproxy.TLS_UPGRADE_CLIENT)
result["same_fd"] = s.fileno() == fd
result["identity"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PEER_IDENTITY).decode()
s.sendall(b"EHLO program.test\\r\\n"); f.readline()
s.sendall(b"ECHO through ssaproxy\\r\\n")
result["reply"] = f.readline().decode().strip()[4:]
"""
        r = api.program(code)
        assert r["_exit"] == 0, r["_stderr"]
        assert r["same_fd"] and r["identity"] == "backend.test" and r["reply"] == "through ssaproxy", (how, r)
        peer.wait(15)
        seen = json.loads(log.read_text().splitlines()[-1])
        assert seen["line"] == "ECHO through ssaproxy" and seen["version"] == "TLSv1.3", seen


def test_starttls_context_drops_plaintext_injected_before_the_handshake(api: ApiDaemon, pki: PKI,
                                                                        tmp_path: Path) -> None:
    creds = pki.server("good_localhost")
    port = free_port()
    log = tmp_path / "inject.log"
    peer = api.spawn([sys.executable, str(PEERS / "starttls_server.py"), "--port", str(port), "--inject",
                      "--cert", str(creds.chain), "--key", str(creds.key)], log)
    wait_for_text(log, "READY", peer, 15)
    r = api.program(f"""
import smtplib
smtp = smtplib.SMTP("localhost", {port}, timeout=20)
smtp.ehlo("program.test")
try:
    smtp.starttls(context=ssaproxy.Context())
    smtp.ehlo("program.test")
    result["features"] = sorted(smtp.esmtp_features)
    result["reply"] = smtp.docmd("ECHO", "over TLS")[1].decode()
except OSError as e:
    result["errno"] = e.errno  # the forged bytes reached the TLS layer instead: refused, also fine
""")
    assert r["_exit"] == 0, r["_stderr"]
    if "errno" not in r:
        assert not any("inject" in f for f in r["features"]) and "auth" not in r["features"], r
        assert r["reply"] == "over TLS", r
    else:
        assert r["errno"] == 71, r


def test_starttls_refuses_a_wrong_certificate(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    creds = pki.server("wrong_host")
    port = free_port()
    log = tmp_path / "starttls-bad.log"
    peer = api.spawn([sys.executable, str(PEERS / "starttls_server.py"), "--port", str(port),
                      "--cert", str(creds.chain), "--key", str(creds.key)], log)
    wait_for_text(log, "READY", peer, 15)
    r = api.program(f"""
import smtplib
smtp = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
smtp.ehlo("program.test")
smtp.docmd("STARTTLS")
try:
    ssaproxy.upgrade(smtp.sock, hostname="backend.test")
except OSError as e:
    result["errno"], result["text"] = e.errno, str(e)
try:
    smtp.sock.sendall(b"AUTH PLAIN c2VjcmV0\\r\\n")
    result["after"] = "sent"
except OSError as e:
    result["after"] = errno.errorcode[e.errno]
""")
    assert r["errno"] == 71 and "identity mismatch" in r["text"], r
    stop(peer)


RECORDING_PEER = """
import json, socket, time
srv = socket.create_server(("127.0.0.1", {port}))
print("READY", flush=True)
conn, _ = srv.accept()
f = conn.makefile("rb", buffering=0)
conn.sendall(b"220 ready\\r\\n"); f.readline()
conn.sendall(b"250 STARTTLS\\r\\n"); f.readline()
conn.sendall(b"220 go ahead\\r\\n")
time.sleep(0.3)
conn.sendall(b"this is not TLS at all\\r\\n" * 20)
conn.settimeout(3)
seen = b""
try:
    while len(seen) < 100000:
        chunk = conn.recv(65536)
        if not chunk:
            break
        seen += chunk
except OSError:
    pass
print(json.dumps({{"auth_seen": b"AUTH" in seen, "bytes": len(seen)}}), flush=True)
"""


def test_a_failed_upgrade_never_continues_in_plaintext(api: ApiDaemon, tmp_path: Path) -> None:
    for how in ("upgrade", "setsockopt"):
        port = free_port()
        log = tmp_path / f"recording-{how}.log"
        peer = api.spawn([sys.executable, "-c", RECORDING_PEER.format(port=port)], log)
        wait_for_text(log, "READY", peer, 15)
        attempt = ("ssaproxy.upgrade(s, hostname='backend.test')" if how == "upgrade" else
                   "s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b'backend.test'); "
                   "s.setsockopt(ssaproxy.SOL_TCP, ssaproxy.TCP_UPGRADE_TLS, ssaproxy.TLS_UPGRADE_CLIENT)")
        maker = "socket.socket()" if how == "upgrade" else "ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM)"
        r = api.program(f"""
s = {maker}
s.connect(("127.0.0.1", {port}))
f = s.makefile("rb", buffering=0)
f.readline(); s.sendall(b"EHLO x\\r\\n"); f.readline(); s.sendall(b"STARTTLS\\r\\n"); f.readline()
try:
    {attempt}
except OSError as e:
    result["errno"] = e.errno
for _ in range(3):
    try:
        s.sendall(b"AUTH PLAIN c2VjcmV0\\r\\n")
        result["after"] = "sendall returned"
    except OSError as e:
        result["after"] = errno.errorcode[e.errno]
    time.sleep(0.2)
""")
        assert r["errno"] == 71, (how, r)
        peer.wait(20)
        seen = json.loads(log.read_text().splitlines()[-1])
        assert seen["auth_seen"] is False and seen["bytes"] > 0, (how, seen, r)  # our ClientHello, nothing else


def test_settings_openssl_refuses_are_EINVAL_before_anything_starts(api: ApiDaemon, pki: PKI) -> None:
    weak = pki.server("rsa_1024")  # below the policy's security level: OpenSSL will not load it
    r = api.program(f"""
srv = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, b"{weak.chain}")
srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, b"{weak.key}")
srv.bind(("127.0.0.1", 0))
try:
    srv.listen()
except OSError as e:
    result["errno"], result["text"] = e.errno, str(e)
""")
    assert r["errno"] == 22 and "cannot be used" in r["text"], r
    assert "Unhandled Error" not in api.log.read_text()
