"""Option semantics (docs/api.md, "Options"): several chains per server socket chosen by SNI
and key type, trust anchors added to (87) or replacing (120) the policy's, TLS_ERROR cleared
by the next call, SSA's names, and a peer's ragged end (121) -- against real peers:
openssl s_client, Python's ssl, a hashed directory made by `openssl rehash`."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ssaproxy.api.settings import ApiError, Settings, apply, client_context, get, server_context
from ssaproxy.client.values import MAX_DIRECTORY, pem
from ssaproxy.config import Policy
from ssaproxy.proto import options as o
from ssaproxy.tls.sni import valid_for
from tests.api_harness import ApiDaemon, free_port
from tests.lab import REPO, stop, wait_for_text
from tests.pki import PKI

POLICY = Policy()


def _code(settings: Settings, number: int, value: bytes, **kw: bool) -> int:
    try:
        apply(settings, POLICY, number, value, **kw)
    except ApiError as e:
        return e.code
    return 0


def _with_chains(pki: PKI, *cases: str) -> Settings:
    s = Settings()
    for case in cases:
        creds = pki.server(case)
        s = apply(s, POLICY, o.TLS_CERTIFICATE_CHAIN, Path(creds.chain).read_bytes())
        s = apply(s, POLICY, o.TLS_PRIVATE_KEY, Path(creds.key).read_bytes())
    return s


def _other_root(pki: PKI) -> bytes:
    """The root of the "untrusted_root" case: a CA the daemon's policy does not trust."""
    chain = x509.load_pem_x509_certificates(Path(pki.server("untrusted_root").chain).read_bytes())
    return chain[-1].public_bytes(Encoding.PEM)


# ---------------------------------------------------------------- pure: the option layer

def test_chains_key_order_and_limits(pki: PKI) -> None:
    good, rsa, wild = (Path(pki.server(c).chain).read_bytes() for c in ("good", "good_rsa2048", "good_wildcard"))
    good_key, rsa_key = Path(pki.server("good").key).read_bytes(), Path(pki.server("good_rsa2048").key).read_bytes()
    s = apply(Settings(), POLICY, o.TLS_PRIVATE_KEY, rsa_key)  # a key first waits for its chain
    s = apply(s, POLICY, o.TLS_CERTIFICATE_CHAIN, rsa)
    assert s.chains == ((rsa, rsa_key),) and s.pending_key is None
    assert _code(s, o.TLS_CERTIFICATE_CHAIN, good) == 0
    half = apply(s, POLICY, o.TLS_CERTIFICATE_CHAIN, good)
    assert _code(half, o.TLS_CERTIFICATE_CHAIN, wild) == errno.EINVAL  # the previous chain has no key yet
    assert _code(half, o.TLS_PRIVATE_KEY, rsa_key) == errno.EINVAL  # not the last chain's key
    both = apply(half, POLICY, o.TLS_PRIVATE_KEY, good_key)
    assert _code(both, o.TLS_CERTIFICATE_CHAIN, good) == errno.EINVAL  # a second ECDSA chain for the same names
    s = _with_chains(pki, "good", "good_rsa2048", "good_wildcard", "good_ip", "good_localhost")
    with pytest.raises(ApiError) as e:
        client_context(s, POLICY)  # a client presents one chain
    assert e.value.code == errno.EINVAL and "one certificate chain" in e.value.text
    server_context(s, POLICY)  # every chain loads, each with its own intermediates


def test_trust_options_add_replace_and_the_admin_key(pki: PKI) -> None:
    root = _other_root(pki)
    added = apply(apply(Settings(), POLICY, o.TLS_TRUSTED_PEER_CERTIFICATES, root), POLICY,
                  o.TLS_TRUSTED_PEER_CERTIFICATES, Path(pki.root_pem).read_bytes())
    assert not added.trust_only and added.trust_pem is not None and added.trust_pem.count(b"BEGIN") == 2
    only = apply(Settings(), POLICY, o.TLS_TRUSTED_PEER_CERTIFICATES_ONLY, root)
    assert only.trust_only
    assert _code(Settings(), o.TLS_TRUSTED_PEER_CERTIFICATES_ONLY, root, allow_trust_store_replacement=False) \
        == errno.EPERM
    assert _code(Settings(), o.TLS_TRUSTED_PEER_CERTIFICATES, root, allow_trust_store_replacement=False) == 0
    assert _code(Settings(), o.TLS_TRUSTED_PEER_CERTIFICATES, b"-----BEGIN CERTIFICATE-----\nxx") == errno.EINVAL


def test_ssa_names_and_version_numbering() -> None:
    assert (o.TLS_1_2, o.TLS_1_3, o.TLS_CHOSEN_VERSION, o.TLS_HOSTNAME) == (0x0303, 0x0304, 113, 85)
    assert (o.TLS_CACHE_REVOCATION, o.TLS_TRUSTED_PEER_CERTIFICATES_ONLY, o.TLS_ALLOW_RAGGED_EOF) == (106, 120, 121)
    s = apply(Settings(), POLICY, o.TLS_VERSION_MIN, o.pack_int(3))  # SSA's own header: TLS_1_3 = 3
    assert get(s, POLICY, o.TLS_VERSION_MIN) == o.pack_int(0x0304)
    assert _code(Settings(), o.TLS_VERSION_MIN, o.pack_int(1)) == errno.EPERM  # SSA's TLS_1_1
    assert _code(Settings(), o.TLS_COMPRESSION, o.pack_int(1)) == errno.ENOPROTOOPT
    assert _code(Settings(), o.TLS_ALLOW_RAGGED_EOF, o.pack_int(2)) == errno.EINVAL
    assert get(apply(Settings(), POLICY, o.TLS_ALLOW_RAGGED_EOF, o.pack_int(1)), POLICY,
               o.TLS_ALLOW_RAGGED_EOF) == o.pack_int(1)


def test_sni_matching_is_service_identitys(pki: PKI) -> None:
    wild = x509.load_pem_x509_certificates(Path(pki.server("good_wildcard").chain).read_bytes())[0]
    assert valid_for(wild, "a.wild.test") and valid_for(wild, "A.Wild.Test")
    assert not valid_for(wild, "a.b.wild.test") and not valid_for(wild, "wild.test")
    assert not valid_for(wild, "\udcff.wild.test") and not valid_for(wild, "")


# ---------------------------------------------------------------- real peers

SNI_SERVER = """
import socket, sys
import ssaproxy
port, pairs = int(sys.argv[1]), sys.argv[2:]
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
for chain, key in zip(pairs[::2], pairs[1::2]):
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, chain)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, key)
s.bind(("127.0.0.1", port))
s.listen()
print("listening", flush=True)
while True:
    conn, addr = s.accept()
    try:
        with conn:
            conn.sendall(b"sni=" + conn.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_SERVER_NAME) + b"\\n")
            conn.recv(100)
    except OSError as e:
        print("client", addr, e, flush=True)
"""


def _s_client(pki: PKI, port: int, name: str, sigalgs: str, *extra: str) -> str:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
                        "-CAfile", str(pki.root_pem), "-verify_return_error", "-sigalgs", sigalgs, *extra],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    return r.stdout + r.stderr


def test_sni_and_key_type_choose_the_chain(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    script = tmp_path / "sni_server.py"
    script.write_text(SNI_SERVER)
    port = free_port()
    argv = [sys.executable, str(script), str(port)]
    for case in ("good_wildcard", "good", "good_rsa2048"):  # the first chain is the default
        argv += [str(pki.server(case).chain), str(pki.server(case).key)]
    log = tmp_path / "sni.log"
    server = api.spawn(argv, log)
    try:
        wait_for_text(log, "listening", server, 15)
        rsa = "rsa_pss_rsae_sha256:rsa_pss_pss_sha256"
        ecdsa = "ecdsa_secp256r1_sha256"
        seen = {}
        for name, sigalgs, *extra in (("backend.test", rsa), ("backend.test", ecdsa), ("a.wild.test", ecdsa),
                                      ("nothing.test", ecdsa), ("backend.test", "RSA+SHA256", "-tls1_2"),
                                      ("backend.test", "ECDSA+SHA256", "-tls1_2")):
            out = _s_client(pki, port, name, sigalgs, *extra)
            assert "Verify return code: 0 (ok)" in out, out[-2000:]  # each chain with its own intermediate
            subject = re.search(r"^subject=.*?CN ?= ?([^,\n]+)", out, re.M)
            bits = re.search(r"Server public key is (\d+) bit", out)
            assert subject and bits, out[-2000:]
            seen[(name, sigalgs)] = (subject.group(1), int(bits.group(1)))
            assert ("TLSv1.2" if extra else "TLSv1.3") in out
        assert seen[("backend.test", rsa)] == ("backend.test", 2048)  # RSA and ECDSA side by side
        assert seen[("backend.test", ecdsa)] == ("backend.test", 256)
        assert seen[("a.wild.test", ecdsa)] == ("*.wild.test", 256)  # a wildcard, by service-identity
        assert seen[("nothing.test", ecdsa)] == ("*.wild.test", 256)  # no match: the first chain
        assert seen[("backend.test", "RSA+SHA256")] == ("backend.test", 2048)  # TLS 1.2 as well
        assert seen[("backend.test", "ECDSA+SHA256")] == ("backend.test", 256)
    finally:
        stop(server)


MTLS_SERVER = """
import socket, sys
import ssaproxy
port, ca, pairs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
for chain, key in zip(pairs[::2], pairs[1::2]):
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, chain)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, key)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_REQUEST_PEER_AUTH, 1)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_TRUSTED_PEER_CERTIFICATES, ca)
s.bind(("127.0.0.1", port))
s.listen()
print("listening", flush=True)
while True:
    conn, addr = s.accept()
    with conn:
        get = lambda n: conn.getsockopt(ssaproxy.IPPROTO_TLS, n).decode()
        print("peer", get(ssaproxy.TLS_SERVER_NAME), get(ssaproxy.TLS_PEER_IDENTITY), flush=True)
        conn.sendall(b"hello\\n")
"""


def test_client_certificates_are_checked_on_every_chain(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    script = tmp_path / "mtls_server.py"
    script.write_text(MTLS_SERVER)
    port = free_port()
    argv = [sys.executable, str(script), str(port), str(pki.client_ca_pem)]
    for case in ("good_wildcard", "good"):
        argv += [str(pki.server(case).chain), str(pki.server(case).key)]
    log = tmp_path / "mtls.log"
    server = api.spawn(argv, log)
    client = pki.client("client_good")
    try:
        wait_for_text(log, "listening", server, 15)
        for name in ("backend.test", "a.wild.test"):  # the second chain's context, and the first's
            out = _s_client(pki, port, name, "ecdsa_secp256r1_sha256", "-cert", str(client.cert), "-key",
                            str(client.key), "-cert_chain", str(client.chain))
            assert "Verify return code: 0 (ok)" in out, out[-2000:]
            wait_for_text(log, f"peer {name} dns:", server, 15)
        refused = _s_client(pki, port, "backend.test", "ecdsa_secp256r1_sha256")  # no client certificate
        assert "hello" not in refused
        assert "no client certificate" in api.wait_event("accept verify-failed")
        verified = [e for e in api.events() if " accept closed: " in e and "verified=True" in e]
        assert {re.search(r"sni=(\S+)", e).group(1) for e in verified} >= {"backend.test", "a.wild.test"}  # type: ignore[union-attr]
    finally:
        stop(server)


def test_a_client_socket_refuses_a_second_chain(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good_localhost"))
    a, b = pki.client("client_good"), pki.client("client_other")
    r = api.program(f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"localhost")
for creds in (("{a.chain}", "{a.key}"), ("{b.chain}", "{b.key}")):
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, creds[0])
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, creds[1])
try:
    s.connect(("127.0.0.1", {port}))
    result["connected"] = True
except OSError as e:
    result["errno"] = e.errno
    result["tls_error"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()
""")
    assert r.get("errno") == errno.EINVAL, r
    assert "one certificate chain" in r["tls_error"]


TRUST = """
def attempt(port, option, value):
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    try:
        s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
        s.setsockopt(ssaproxy.IPPROTO_TLS, option, value)
        s.connect(("127.0.0.1", port))
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
    finally:
        s.close()
for name, port in (("ours", {ours}), ("other", {other})):
    result[name + " 87"] = attempt(port, ssaproxy.TLS_TRUSTED_PEER_CERTIFICATES, {value!r})
    result[name + " 120"] = attempt(port, ssaproxy.TLS_TRUSTED_PEER_CERTIFICATES_ONLY, {value!r})
"""


@pytest.mark.parametrize("form", ["file", "hashed directory"])
def test_trusted_certificates_add_to_the_policy_and_120_replaces(api: ApiDaemon, pki: PKI, tmp_path: Path,
                                                                 form: str) -> None:
    ours = api.tls_server("echo", pki.server("good"))  # under the policy's root
    other = api.tls_server("echo", pki.server("untrusted_root"))  # under a root only the program trusts
    where = tmp_path / "anchors"
    where.mkdir()
    (where / "other-root.pem").write_bytes(_other_root(pki))
    (where / "README").write_text("not a certificate\n")
    if form == "hashed directory":
        subprocess.run(["openssl", "rehash", str(where)], check=True, capture_output=True, timeout=20)
        assert any(re.fullmatch(r"[0-9a-f]{8}\.0", p.name) for p in where.iterdir())
        value = str(where)
    else:
        value = str(where / "other-root.pem")
    r = api.program(TRUST.format(ours=ours, other=other, value=value))
    assert r["_exit"] == 0, r["_stderr"]
    assert (r["ours 87"], r["other 87"]) == ("ok", "ok")  # added: both roots
    assert (r["ours 120"], r["other 120"]) == ("EPROTO", "ok"), r  # replaced: only the program's root
    api.wait_event(f"target=127.0.0.1:{ours}")
    assert any("verify-failed" in e for e in api.events() if f"target=127.0.0.1:{ours}" in e)


def test_the_admin_can_forbid_replacing_the_trust_store(pki: PKI, tmp_path: Path) -> None:
    daemon = ApiDaemon(tmp_path / "strict", pki, extra="allow_trust_store_replacement = false\n").start()
    try:
        other = daemon.tls_server("echo", pki.server("untrusted_root"))
        anchors = tmp_path / "other-root.pem"
        anchors.write_bytes(_other_root(pki))
        r = daemon.program(TRUST.format(ours=other, other=other, value=str(anchors)) + f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
try:
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_TRUSTED_PEER_CERTIFICATES_ONLY, "{anchors}")
except OSError as e:
    result["tls_error"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()
""")
        assert r["other 87"] == "ok" and r["other 120"] == "EPERM", r
        assert "allow_trust_store_replacement" in r["tls_error"]
    finally:
        daemon.stop()


def test_tls_error_is_cleared_and_bad_values_are_oserrors(api: ApiDaemon) -> None:
    r = api.program("""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
T = ssaproxy.IPPROTO_TLS
codes = {}
for label, option, value in (("text for an int", ssaproxy.TLS_VERSION_MIN, "abc"),
                             ("huge int", ssaproxy.TLS_VERSION_MIN, 2 ** 40),
                             ("a list", ssaproxy.TLS_TRUSTED_PEER_CERTIFICATES, ["x"]),
                             ("NUL in a path", ssaproxy.TLS_PRIVATE_KEY, "/tmp/a\\x00b"),
                             ("no such option", 4242, 1)):
    try:
        s.setsockopt(T, option, value)
        codes[label] = "accepted"
    except OSError as e:
        codes[label] = errno.errorcode.get(e.errno, e.errno)
    except Exception as e:
        codes[label] = "not an OSError: " + type(e).__name__
try:
    s.setsockopt(socket.SOL_TCP, ssaproxy.TCP_UPGRADE_TLS, "x")
except OSError as e:
    codes["upgrade with text"] = errno.errorcode.get(e.errno, e.errno)
result["codes"] = codes
result["after failure"] = s.getsockopt(T, ssaproxy.TLS_ERROR).decode()
result["read twice"] = s.getsockopt(T, ssaproxy.TLS_ERROR).decode()
s.setsockopt(T, ssaproxy.TLS_VERSION_MIN, ssaproxy.TLS_1_3)
result["after success"] = s.getsockopt(T, ssaproxy.TLS_ERROR).decode()
try:
    s.setsockopt(T, ssaproxy.TLS_VERSION_MIN, 0x0301)
except OSError:
    pass
s.getsockopt(T, ssaproxy.TLS_VERSION_MIN)
result["after a get"] = s.getsockopt(T, ssaproxy.TLS_ERROR).decode()
result["min"] = s.getsockopt(T, ssaproxy.TLS_VERSION_MIN)
""")
    assert r["_exit"] == 0, r["_stderr"]
    assert r["codes"] == {"text for an int": "EINVAL", "huge int": "EINVAL", "a list": "EINVAL",
                          "NUL in a path": "EINVAL", "no such option": "ENOPROTOOPT",
                          "upgrade with text": "EINVAL"}, r["codes"]
    assert "option 33: bad value" in r["after failure"] and r["read twice"] == r["after failure"]
    assert r["after success"] == "" and r["after a get"] == "" and r["min"] == 0x0304


# ---------------------------------------------------------------- ragged ends

RAGGED_LISTENER = """
import socket, sys
import ssaproxy
port, pem, allow, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, pem)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ALLOW_RAGGED_EOF, allow)
s.bind(("127.0.0.1", port))
s.listen()
print("listening", flush=True)
for _ in range(count):
    conn, addr = s.accept()
    got = b""
    try:
        with conn:
            option = conn.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ALLOW_RAGGED_EOF)
            while len(got) < 1 << 20:
                data = conn.recv(4096)
                if not data:
                    print("EOF", option, got, flush=True)
                    break
                got += data
    except OSError as e:
        print("ERROR", e.errno, got, flush=True)
"""

RAGGED_CLIENT = """
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
# TLS 1.2: no post-handshake message (a TLS 1.3 ticket) left unread, which would turn the FIN into a RST
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="backend.test")
t.sendall(b"no close_notify follows")
t.close()  # Python's ssl sends no close_notify on close(): a FIN alone
"""


def _combined(pki: PKI, tmp_path: Path) -> Path:
    creds = pki.server("good")
    combined = tmp_path / "server.pem"
    combined.write_bytes(Path(creds.chain).read_bytes() + Path(creds.key).read_bytes())
    return combined


@pytest.mark.parametrize("allow", [0, 1])
def test_a_clients_ragged_end_on_an_accepted_socket(api: ApiDaemon, pki: PKI, tmp_path: Path, allow: int) -> None:
    script, client = tmp_path / "listener.py", tmp_path / "client.py"
    script.write_text(RAGGED_LISTENER)
    client.write_text(RAGGED_CLIENT)
    port = free_port()
    log = tmp_path / "listener.log"
    count = 12  # clients that end at once after their data, each racing the daemon's delivery to the program
    server = api.spawn([sys.executable, str(script), str(port), str(_combined(pki, tmp_path)), str(allow),
                        str(count)], log)
    try:
        wait_for_text(log, "listening", server, 15)
        for _ in range(count):
            r = subprocess.run([sys.executable, str(client), str(port), str(pki.root_pem)], capture_output=True,
                               text=True, timeout=20)
            assert r.returncode == 0, r.stderr
        server.wait(20)
        lines = [line for line in log.read_text().splitlines() if line.startswith(("EOF", "ERROR"))]
        if allow:
            assert lines == ["EOF 1 b'no close_notify follows'"] * count, log.read_text()
        else:
            assert lines == [f"ERROR {errno.ECONNRESET} b'no close_notify follows'"] * count, log.read_text()
        event = api.wait_event("accept truncated")  # the log says what happened either way
        assert "no close_notify" in event or "without close_notify" in event
        if allow:
            assert "TLS_ALLOW_RAGGED_EOF" in event
    finally:
        stop(server)


@pytest.mark.parametrize("allow", [0, 1])
def test_a_servers_ragged_end_on_a_client_socket(api: ApiDaemon, pki: PKI, allow: int) -> None:
    port = api.tls_server("truncate", pki.server("good"))
    r = api.program(f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ALLOW_RAGGED_EOF, {allow})
s.connect(("127.0.0.1", {port}))
result["option"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ALLOW_RAGGED_EOF)
s.sendall(b"request")
got = b""
try:
    while len(got) < 100000:
        data = s.recv(4096)
        if not data:
            result["end"] = "EOF"
            break
        got += data
except OSError as e:
    result["end"] = errno.errorcode[e.errno]
result["bytes"] = len(got)
""")
    assert r["_exit"] == 0, r["_stderr"]
    assert r["bytes"] == 1000 and r["option"] == allow  # every byte before the end, either way
    assert r["end"] == ("EOF" if allow else "ECONNRESET")
    event = api.wait_event(f"target=127.0.0.1:{port}")
    assert " connect truncated: " in event


def test_echo_example_survives_a_client_without_close_notify(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "echo.log"
    example = REPO / "examples" / "echo_server_ssaproxy.py"
    server = api.spawn([sys.executable, str(example), str(port), str(_combined(pki, tmp_path))], log)
    client = f"""
import socket, ssl
ctx = ssl.create_default_context(cafile="{pki.root_pem}")
t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})), server_hostname="backend.test")
t.sendall(b"one line\\n")
print(t.makefile("rb").readline().decode(), end="")
t.close()  # no close_notify: the server's program reads ECONNRESET
"""
    try:
        wait_for_text(log, "listening", server, 15)
        for _ in range(3):
            r = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=20)
            assert r.stdout == "echo: one line\n", (r.stderr, log.read_text())
        wait_for_text(log, "Connection reset by peer", server, 15)
        assert server.poll() is None, log.read_text()  # still serving
        assert log.read_text().count("Connection reset by peer") >= 2
    finally:
        stop(server)


def test_the_library_reads_a_certificate_directory(pki: PKI, tmp_path: Path) -> None:
    where = tmp_path / "dir"
    where.mkdir()
    root = Path(pki.root_pem).read_bytes()
    (where / "a.pem").write_bytes(root + _other_root(pki))
    (where / "notes.txt").write_text("no certificate here\n")
    (where / "sub").mkdir()  # not read: only the directory's own regular files
    (where / "sub" / "c.pem").write_bytes(Path(pki.server("good").chain).read_bytes())
    (where / "1a2b3c4d.0").symlink_to("a.pem")  # as openssl rehash links: read once
    got = pem(str(where), "anchors", directory=True)
    assert got.count(b"-----BEGIN CERTIFICATE-----") == 2
    with pytest.raises(OSError, match="cannot read") as e:
        pem(str(where / "sub"), "chain")  # a directory is a file path only for the trust options
    assert e.value.errno == errno.EISDIR
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("nothing\n")
    with pytest.raises(OSError, match="no PEM certificate") as e:
        pem(str(empty), "anchors", directory=True)
    assert e.value.errno == errno.EINVAL
    big = tmp_path / "big"
    big.mkdir()
    block = b"A" * 64 + b"\n"
    for i in range(MAX_DIRECTORY // (len(block) * 100) + 2):  # distinct blocks, over the limit together
        body = b"".join(b"-----BEGIN CERTIFICATE-----\n" + str(i * 100 + j).encode() + block
                        + b"-----END CERTIFICATE-----\n" for j in range(100))
        (big / f"{i}.pem").write_bytes(body)
    with pytest.raises(OSError, match="bytes together") as e:
        pem(str(big), "anchors", directory=True)
    assert e.value.errno == errno.EINVAL
