"""The local socket API, client side: programs using the library against real TLS servers
(Python's ssl, openssl s_server), through a real daemon under twistd."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.api_harness import ApiDaemon, free_port
from tests.lab import poll, stop
from tests.pki import PKI

CONNECT = """
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
fd = s.fileno()
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"{host}")
s.connect(("127.0.0.1", {port}))
result["same_fd"] = s.fileno() == fd
"""


def test_connect_gives_verified_plaintext_and_real_getters(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good"))
    r = api.program(CONNECT.format(host="backend.test", port=port) + """
f = s.makefile("rwb")
f.write(b"hello over ssaproxy\\n"); f.flush()
result["echo"] = f.readline().decode()
get = lambda opt: s.getsockopt(ssaproxy.IPPROTO_TLS, opt)
result["version"] = get(ssaproxy.TLS_VERSION_CONN)
result["cipher"] = get(ssaproxy.TLS_CHOSEN_CIPHER).decode()
result["chain"] = get(ssaproxy.TLS_PEER_CERTIFICATE_CHAIN).decode()
result["identity"] = get(ssaproxy.TLS_PEER_IDENTITY).decode()
result["sni"] = get(ssaproxy.TLS_SERVER_NAME).decode()
result["peer"] = s.getpeername()
result["family"], result["proto"] = int(s.family), s.proto
result["isinstance"] = isinstance(s, socket.socket)
result["inheritable"] = os.get_inheritable(s.fileno())
s.shutdown(socket.SHUT_WR)
result["eof"] = s.recv(10).decode()
""")
    assert r["_exit"] == 0, r["_stderr"]
    assert r["same_fd"] and r["isinstance"] and r["inheritable"] is False
    assert r["echo"] == "hello over ssaproxy\n"
    assert r["version"] == 0x0304 and r["cipher"].startswith("TLS_")
    assert r["chain"].count("BEGIN CERTIFICATE") == 3  # leaf, intermediate, root: the whole verified chain
    assert r["identity"] == "backend.test" and r["sni"] == "backend.test"
    assert r["peer"] == ["127.0.0.1", port]  # the server, not the loopback carrier
    assert (r["family"], r["proto"]) == (socket_af_inet(), 205)
    assert r["eof"] == ""  # our FIN went as close_notify, the server's close_notify came back as EOF
    event = api.wait_event(f"target=127.0.0.1:{port}")
    assert " connect closed: " in event and "verified=True" in event
    assert "uid=0 " in event and "exe=" in event and "pid=" in event


def socket_af_inet() -> int:
    return int(socket.AF_INET)


@pytest.mark.parametrize(("case", "text"), [
    ("wrong_host", "identity mismatch"),
    ("expired", "certificate has expired"),
    ("self_signed", "self-signed certificate"),
    ("incomplete_chain", "unable to get local issuer certificate"),
])
def test_bad_certificates_are_EPROTO_with_the_reason(api: ApiDaemon, pki: PKI, case: str, text: str) -> None:
    port = api.tls_server("sink", pki.server(case))
    r = api.program(f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
try:
    s.connect(("127.0.0.1", {port}))
    s.sendall(b"secret")
except OSError as e:
    result["errno"] = e.errno
result["error"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()
""")
    assert r["errno"] == errno.EPROTO, r
    assert text in r["error"], r["error"]
    assert " verify-failed: " in api.wait_event(f"target=127.0.0.1:{port}")


def test_refused_unresolvable_and_timeout_errnos(api_quick_timeouts: ApiDaemon, pki: PKI) -> None:
    api = api_quick_timeouts  # each waits for the daemon's deadline once
    closed = free_port()
    hold = api.tls_server("hold", None)
    r = api.program(f"""
def attempt(family, addr, hostname=None):
    s = ssaproxy.socket(family, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    if hostname:
        s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, hostname)
    try:
        s.connect(addr)
        return 0, ""
    except OSError as e:
        return e.errno, s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()
    finally:
        s.close()
result["refused"] = attempt(socket.AF_INET, ("127.0.0.1", {closed}), b"backend.test")
result["unresolvable"] = attempt(ssaproxy.AF_HOSTNAME, ("no-such-host.invalid", 443))
result["handshake_timeout"] = attempt(socket.AF_INET, ("127.0.0.1", {hold}), b"backend.test")
""")
    assert r["refused"][0] == errno.ECONNREFUSED, r
    assert r["unresolvable"][0] == errno.EHOSTUNREACH and "resolve" in r["unresolvable"][1], r
    assert r["handshake_timeout"][0] == errno.ETIMEDOUT and "handshake" in r["handshake_timeout"][1], r


def test_af_hostname_resolves_in_the_daemon_and_verifies_that_name(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good_localhost"))
    r = api.program(f"""
s = ssaproxy.socket(ssaproxy.AF_HOSTNAME, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.connect(("localhost", {port}))
s.sendall(b"ping\\n")
result["echo"] = s.recv(100).decode()
result["identity"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PEER_IDENTITY).decode()
result["family"] = s.family
result["peer"] = s.getpeername()
""")
    assert r["echo"] == "ping\n" and r["identity"] == "localhost", r
    assert r["family"] == 43
    assert r["peer"][1] == port and r["peer"][0] in ("127.0.0.1", "::1")


def test_policy_loosening_options_are_EPERM_and_bad_values_EINVAL(api: ApiDaemon) -> None:
    r = api.program("""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
def code(opt, value, level=ssaproxy.IPPROTO_TLS):
    try:
        s.setsockopt(level, opt, value)
        return 0
    except OSError as e:
        return e.errno
result["tls11"] = code(ssaproxy.TLS_VERSION_MIN, 0x0302)
result["cbc_sha1_cipher"] = code(ssaproxy.TLS_TRUSTED_CIPHERS, b"AES128-SHA")
result["enable_rc4"] = code(ssaproxy.TLS_ENABLE_CIPHER, b"RC4-SHA")
result["unknown_cipher"] = code(ssaproxy.TLS_TRUSTED_CIPHERS, b"NOT-A-CIPHER")
result["bad_version"] = code(ssaproxy.TLS_VERSION_MAX, 0x0999)
result["bad_hostname"] = code(ssaproxy.TLS_HOSTNAME, b"bad host!")
result["not_pem_chain"] = code(ssaproxy.TLS_CERTIFICATE_CHAIN, b"-----BEGIN CERTIFICATE-----\\nnope\\n")
result["unknown_option"] = code(99, b"x")
result["tls_id"] = code(ssaproxy.TLS_ID, 1)
result["context"] = code(ssaproxy.TLS_CONTEXT, 123456)
result["session_reuse"] = code(ssaproxy.TLS_SESSION_REUSE, 2)
result["revocation_off"] = code(ssaproxy.TLS_REVOCATION_CHECKS, 0)
result["revocation_bad"] = code(ssaproxy.TLS_CRL_CHECKS, 7)
result["session_ttl"] = code(ssaproxy.TLS_SESSION_TTL, 60)
result["read_only"] = code(ssaproxy.TLS_PEER_CERTIFICATE_CHAIN, b"x")
result["tighten_min"] = code(ssaproxy.TLS_VERSION_MIN, 0x0304)
result["min_now"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_VERSION_MIN)
result["upgrade_tls_socket"] = code(ssaproxy.TCP_UPGRADE_TLS, 1, ssaproxy.SOL_TCP)
try:
    s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PEER_CERTIFICATE_CHAIN)
except OSError as e:
    result["chain_before_connect"] = e.errno
result["error_text"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()
h = ssaproxy.socket(ssaproxy.AF_HOSTNAME, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
try:
    h.bind(("127.0.0.1", 0))
except OSError as e:
    result["hostname_bind"] = e.errno
""")
    assert r["tls11"] == errno.EPERM and r["cbc_sha1_cipher"] == errno.EPERM, r
    assert r["enable_rc4"] in (errno.EPERM, errno.EINVAL), r  # EINVAL where OpenSSL no longer knows RC4
    assert r["unknown_cipher"] == errno.EINVAL and r["bad_version"] == errno.EINVAL, r
    assert r["bad_hostname"] == errno.EINVAL and r["not_pem_chain"] == errno.EINVAL, r
    assert r["unknown_option"] == r["session_ttl"] == r["read_only"] == errno.ENOPROTOOPT, r
    assert r["revocation_off"] == errno.EPERM and r["revocation_bad"] == errno.EINVAL, r  # soft by default
    assert r["tls_id"] == errno.ENOPROTOOPT, r
    assert r["context"] == r["session_reuse"] == errno.EINVAL, r  # no such context; reuse is 0 or 1
    assert r["tighten_min"] == 0 and r["min_now"] == 0x0304, r
    assert r["upgrade_tls_socket"] == errno.EOPNOTSUPP, r
    assert r["chain_before_connect"] == errno.ENOTCONN, r
    assert "connected" in r["error_text"], r
    assert r["hostname_bind"] == errno.EOPNOTSUPP, r


def test_wrong_state_calls_give_posix_errnos(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good"))
    r = api.program(CONNECT.format(host="backend.test", port=port) + f"""
for name, call in [("setopt", lambda: s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ALPN, b"h2")),
                   ("connect", lambda: s.connect(("127.0.0.1", {port}))),
                   ("listen", lambda: s.listen()),
                   ("accept", lambda: s.accept())]:
    try:
        call()
        result[name] = 0
    except OSError as e:
        result[name] = e.errno
""")
    assert r["setopt"] == errno.EISCONN and r["connect"] == errno.EISCONN, r
    assert r["listen"] == errno.EINVAL and r["accept"] == errno.EINVAL, r


def test_truncation_and_reset_reach_the_program_as_ECONNRESET(api: ApiDaemon, pki: PKI) -> None:
    for mode in ("truncate", "reset"):
        port = api.tls_server(mode, pki.server("good"))
        r = api.program(CONNECT.format(host="backend.test", port=port) + """
s.sendall(b"request\\n")  # the server answers a request
got = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            result["end"] = "eof"
            break
        got += chunk
except ConnectionResetError:
    result["end"] = "reset"
result["bytes"] = len(got)
""")
        assert r == {**r, "end": "reset", "bytes": 1000}, (mode, r)
        # A raw read(2) on the same fd number sees it as well: not only the Python wrapper.
        r = api.program(CONNECT.format(host="backend.test", port=port) + """
s.sendall(b"request\\n")
n = 0
try:
    while True:
        data = os.read(s.fileno(), 65536)
        if not data:
            result["end"] = "eof"
            break
        n += len(data)
except OSError as e:
    result["end"] = errno.errorcode[e.errno]
result["bytes"] = n
""")
        assert r["end"] == "ECONNRESET" and r["bytes"] == 1000, (mode, r)


def test_nonblocking_connect_reports_through_writability_as_tcp_does(api: ApiDaemon, pki: PKI) -> None:
    good = api.tls_server("echo", pki.server("good"))
    bad = api.tls_server("echo", pki.server("wrong_host"))
    r = api.program(f"""
import selectors
def run(port):
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
    s.setblocking(False)
    first = s.connect_ex(("127.0.0.1", port))
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_WRITE)
    ready = sel.select(timeout=10)
    calls = [s.connect_ex(("127.0.0.1", port))]
    error = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()  # the next call clears it (SSA)
    calls.append(s.connect_ex(("127.0.0.1", port)))
    out = dict(first=first, ready=len(ready), calls=calls, error=error)
    if calls[0] == 0:
        sel.modify(s, selectors.EVENT_READ)
        s.sendall(b"nonblocking\\n")
        got = b""
        while not got.endswith(b"\\n"):
            if sel.select(timeout=10):
                got += s.recv(100)
        out["echo"] = got.decode()
        try:
            s.recv(100)
        except BlockingIOError:
            out["would_block"] = True
    sel.close(); s.close()
    return out
result["good"] = run({good})
result["bad"] = run({bad})
""")
    g, b = r["good"], r["bad"]
    # connect() again: 0 once the socket is connected, then EISCONN; the failure's errno once.
    assert g["first"] == errno.EINPROGRESS and g["ready"] == 1 and g["calls"] == [0, errno.EISCONN], g
    assert g["echo"] == "nonblocking\n" and g["would_block"], g
    assert b["first"] == errno.EINPROGRESS and b["ready"] == 1 and b["calls"][0] == errno.EPROTO, b
    assert "identity mismatch" in b["error"], b


def test_client_certificate_alpn_and_install(api_quick_timeouts: ApiDaemon, pki: PKI) -> None:
    api = api_quick_timeouts  # each waits for the daemon's deadline once
    client = pki.client("client_good")
    port, log = api.s_server(pki.server("good"), "-Verify", "2", "-CAfile", str(pki.client_ca_pem),
                             "-verify_return_error", "-alpn", "h2,http/1.1", "-rev")
    r = api.program(f"""
ssaproxy.install()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
result["installed"] = type(s).__module__
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, b"{client.chain}")
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, "{client.key}")
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ALPN, b"h2")
s.connect(("127.0.0.1", {port}))
result["alpn"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ALPN).decode()
s.sendall(b"reverse me\\n")
result["reply"] = s.recv(100).decode()
plain = socket.socket()
result["plain_proto"] = plain.proto
plain.close()
n = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
n.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
try:
    n.connect(("127.0.0.1", {port}))
    n.sendall(b"x\\n"); n.recv(10)
    result["anonymous"] = "accepted"
except OSError as e:
    result["anonymous"] = e.errno
""")
    assert r["installed"] == "ssaproxy.client", r
    assert r["alpn"] == "h2" and "em esrever" in r["reply"], r
    assert r["plain_proto"] == 0
    # Refused by s_server; with TLS 1.3 the refusal may arrive after our side's handshake, and
    # s_server may hold the connection without an alert until our handshake timeout.
    assert r["anonymous"] in (errno.EPROTO, errno.ECONNRESET, errno.ETIMEDOUT), r
    assert "client.test" in log.read_text(errors="replace")  # s_server saw our client certificate


def test_daemon_absent_fails_at_once_naming_the_path(api: ApiDaemon, tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.sock"
    code = f"""
os.environ["SSAPROXY_SOCKET"] = "{missing}"
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
try:
    s.connect(("127.0.0.1", 443))
except OSError as e:
    result["errno"], result["text"] = e.errno, str(e)
"""
    r = api.program(code, timeout=15)
    assert r["errno"] == errno.ENOENT and str(missing) in r["text"], r


def test_daemon_stopped_while_a_program_waits(pki: PKI, tmp_path: Path) -> None:
    # handshake_timeout 3 in the harness config; the daemon is stopped well before it, without a
    # drain (with one, the handshake would be let run to its own timeout: tests/test_e2e_drain.py).
    daemon = ApiDaemon(tmp_path / "d", pki, extra="[daemon]\ndrain_timeout = 0\n").start()
    hold = daemon.tls_server("hold", None)
    out = tmp_path / "program.out"
    code = f"""
import json, socket, ssaproxy, sys
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
print("connecting", flush=True)
try:
    s.connect(("127.0.0.1", {hold}))
    print(json.dumps({{"errno": 0}}))
except OSError as e:
    print(json.dumps({{"errno": e.errno, "text": str(e)}}))
"""
    program = daemon.spawn([sys.executable, "-c", code], out)
    try:
        assert poll(lambda: "connecting" in out.read_text())
        time.sleep(0.5)  # let the connect reach the daemon
        assert daemon.proc is not None
        stop(daemon.proc)  # the daemon alone: its peers stay up
        program.wait(10)
    finally:
        stop(program)
        daemon.stop()
    result = out.read_text().strip().splitlines()[-1]
    assert f'"errno": {errno.ECONNABORTED}' in result and "daemon stopping" in result, result


def test_concurrent_programs(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good"))
    code = f"""
import threading, hashlib
results = {{}}
def one(i):
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
    s.settimeout(30)
    s.connect(("127.0.0.1", {port}))
    payload = (b"%d-" % i) * 20000
    t = threading.Thread(target=s.sendall, args=(payload,)); t.start()
    got = b""
    while len(got) < len(payload):
        got += s.recv(65536)
    t.join(); s.close()
    results[i] = got == payload
threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
for t in threads: t.start()
for t in threads: t.join(60)
result["ok"] = sum(results.values())
"""
    programs = [subprocess.Popen([sys.executable, "-c", "import errno, json, os, socket, sys, time\nimport ssaproxy\n"
                                  "result = {}\n" + code + "\nprint(json.dumps(result))"],
                                 env=api.env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=90)[0] for p in programs]
    assert all('"ok": 12' in out for out in outs), outs


def test_program_leaving_mid_handshake_leaves_nothing(api: ApiDaemon) -> None:
    hold = api.tls_server("hold", None)
    assert api.proc is not None
    fds = lambda: len(os.listdir(f"/proc/{api.proc.pid}/fd"))  # noqa: E731
    before = fds()
    r = api.program(f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.setblocking(False)
result["first"] = s.connect_ex(("127.0.0.1", {hold}))
s.close()
""")
    assert r["first"] == errno.EINPROGRESS
    event = api.wait_event(f"target=127.0.0.1:{hold}")
    assert " program-gone: " in event, event
    assert poll(lambda: fds() <= before, 5), (before, fds())


def test_cipher_version_and_trust_options_take_effect(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good"))
    foreign = api.tls_server("echo", pki.server("untrusted_root"))
    foreign_root = Path(pki.server("untrusted_root").chain).read_text().split("-----END CERTIFICATE-----")[-2]
    foreign_root += "-----END CERTIFICATE-----\n"
    r = api.program(f"""
def connect(port, *opts):
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
    for opt, value in opts:
        s.setsockopt(ssaproxy.IPPROTO_TLS, opt, value)
    try:
        s.connect(("127.0.0.1", port))
    except OSError as e:
        return {{"errno": e.errno}}
    get = lambda n: s.getsockopt(ssaproxy.IPPROTO_TLS, n)
    out = {{"cipher": get(ssaproxy.TLS_CHOSEN_CIPHER).decode(), "version": get(ssaproxy.TLS_VERSION_CONN),
           "resumed": get(ssaproxy.TLS_RESUMED_SESSION), "trusted": get(ssaproxy.TLS_TRUSTED_CIPHERS).decode()}}
    s.close()
    return out
result["only_chacha"] = connect({port}, (ssaproxy.TLS_TRUSTED_CIPHERS, b"TLS_CHACHA20_POLY1305_SHA256"))
result["no_aes256"] = connect({port}, (ssaproxy.TLS_DISABLE_CIPHER, b"TLS_AES_256_GCM_SHA384"))
result["reenabled"] = connect({port}, (ssaproxy.TLS_DISABLE_CIPHER, b"TLS_AES_256_GCM_SHA384"),
                              (ssaproxy.TLS_ENABLE_CIPHER, b"TLS_AES_256_GCM_SHA384"))
result["tls12"] = connect({port}, (ssaproxy.TLS_VERSION_MAX, ssaproxy.TLS1_2_VERSION))
root = {foreign_root!r}.encode()
result["own_anchor"] = connect({foreign}, (ssaproxy.TLS_TRUSTED_PEER_CERTIFICATES, root))
result["own_anchor_adds"] = connect({port}, (ssaproxy.TLS_TRUSTED_PEER_CERTIFICATES, root))
result["own_anchor_replaces"] = connect({port}, (ssaproxy.TLS_TRUSTED_PEER_CERTIFICATES_ONLY, root))
result["policy_anchor"] = connect({foreign})
""")
    assert r["only_chacha"]["cipher"] == "TLS_CHACHA20_POLY1305_SHA256", r
    assert r["only_chacha"]["trusted"] == "TLS_CHACHA20_POLY1305_SHA256" and r["only_chacha"]["resumed"] == 0, r
    assert r["no_aes256"]["cipher"] != "TLS_AES_256_GCM_SHA384" and "AES_256" not in r["no_aes256"]["trusted"], r
    assert r["reenabled"]["cipher"] == "TLS_AES_256_GCM_SHA384", r  # the server's first choice again
    assert r["tls12"]["version"] == 0x0303 and r["tls12"]["cipher"].startswith("ECDHE-"), r
    assert r["own_anchor"]["version"] == 0x0304, r  # the program's private CA is trusted for this socket
    assert r["own_anchor_adds"]["version"] == 0x0304, r  # ... beside the policy's store (SSA)
    assert r["own_anchor_replaces"] == {"errno": errno.EPROTO}, r  # 120: instead of the policy's store
    assert r["policy_anchor"] == {"errno": errno.EPROTO}, r
