"""Client session resumption through the socket API, against real servers that count it:
Python's ssl (`session_reused` in its per-connection report) and openssl s_server ("Reused
session-id" in its per-connection output), through a real daemon under twistd."""

from __future__ import annotations

import errno
import json
import signal
from typing import Any

import pytest

from tests.api_harness import ApiDaemon
from tests.lab import poll
from tests.pki import PKI

TWICE = """
out = []
for name in {names!r}:
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, name.encode())
    {setup}
    try:
        s.connect(("127.0.0.1", {port}))
        s.sendall(b"ping\\n")
        got = s.recv(100)
        out.append([s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_RESUMED_SESSION),
                    len(s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PEER_CERTIFICATE_CHAIN)),
                    s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PEER_IDENTITY).decode(), got.decode()])
        s.close()
    except OSError as e:
        out.append(["error", e.errno, str(e), ""])
    time.sleep(0.3)  # a TLS 1.3 ticket comes after the handshake: let the daemon read it
result["out"] = out
"""


# For s_server -www: one request, the whole page; the program's and the server's words on
# whether the handshake resumed ("New," or "Reused," in the page).
WWW_FETCH = """
def fetch(s, port):
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    page = b""
    while len(page) < 1 << 20:
        data = s.recv(65536)
        if not data:
            break
        page += data
    said = [x for x in page.decode(errors="replace").splitlines() if ", Cipher is " in x][0].split(",")[0]
    return [s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_RESUMED_SESSION), said]
"""


def server_reports(api: ApiDaemon, port: int, count: int) -> list[dict[str, Any]]:
    """The first `count` per-connection reports of the tls_server.py peer on `port`."""
    log = next(api.directory.glob(f"tls-*-{port}.log"))

    def reports() -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        return lines if len(lines) >= count else []

    found = poll(reports, 10)
    assert found, log.read_text()
    return found[:count]


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_second_connection_to_the_same_server_is_resumed(api: ApiDaemon, pki: PKI, version: str) -> None:
    port = api.tls_server("echo", pki.server("good"), "--max-version", version)
    r = api.program(TWICE.format(names=["backend.test"] * 3, port=port, setup=""))
    assert r["_exit"] == 0, r["_stderr"]
    resumed = [x[0] for x in r["out"]]
    assert resumed == [0, 1, 1], r["out"]
    # The resumed connections still answer with the verified chain and identity.
    assert all(x[1] > 0 and x[2] == "backend.test" and x[3] == "ping\n" for x in r["out"]), r["out"]
    assert [x["reused"] for x in server_reports(api, port, 3)] == [False, True, True]
    assert all(x["version"] == version for x in server_reports(api, port, 3))
    event = api.wait_event(f"target=127.0.0.1:{port}")
    assert "resumed=" in event


def test_another_name_is_not_resumed(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good_wildcard"))
    r = api.program(TWICE.format(names=["a.wild.test", "b.wild.test", "a.wild.test", "b.wild.test"], port=port,
                                 setup=""))
    assert r["_exit"] == 0, r["_stderr"]
    assert [x[0] for x in r["out"]] == [0, 0, 1, 1], r["out"]
    assert [x["reused"] for x in server_reports(api, port, 4)] == [False, False, True, True]


def test_a_session_that_failed_verification_is_never_offered(api: ApiDaemon, pki: PKI) -> None:
    """If the refused connection's session were kept, the second would resume it and pass."""
    port = api.tls_server("echo", pki.server("wrong_host"))
    r = api.program(TWICE.format(names=["backend.test"] * 2, port=port, setup=""))
    assert [x[0] for x in r["out"]] == ["error", "error"], r["out"]
    assert all("identity mismatch" in x[2] for x in r["out"]), r["out"]


def test_session_reuse_off_for_a_socket(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good"))
    setup = "s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_SESSION_REUSE, 0)"
    r = api.program(TWICE.format(names=["backend.test"] * 3, port=port, setup=setup))
    assert [x[0] for x in r["out"]] == [0, 0, 0], r["out"]
    assert [x["reused"] for x in server_reports(api, port, 3)] == [False, False, False]


def test_another_client_certificate_is_not_resumed(api: ApiDaemon, pki: PKI) -> None:
    # -www: s_server answers each request with a page that says "New," or "Reused," and counts
    # its session cache hits.
    port, _log = api.s_server(pki.server("good"), "-Verify", "2", "-CAfile", str(pki.client_ca_pem),
                              "-verify_return_error", "-www")
    good, other = pki.client("client_good"), pki.client("client_other")
    code = WWW_FETCH + """
out = []
for chain, key in {pairs!r}:
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, chain)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, key)
    out.append(fetch(s, {port}))
    s.close()
    time.sleep(0.3)
result["out"] = out
"""
    pairs = [(str(good.chain), str(good.key)), (str(other.chain), str(other.key)), (str(good.chain), str(good.key)),
             (str(other.chain), str(other.key))]
    r = api.program(code.format(pairs=pairs, port=port))
    assert r["_exit"] == 0, r["_stderr"]
    assert r["out"] == [[0, "New"], [0, "New"], [1, "Reused"], [1, "Reused"]], r["out"]


def test_tls_context_shares_settings_and_sessions_with_the_same_user_only(api: ApiDaemon, pki: PKI) -> None:
    port, _log = api.s_server(pki.server("good"), "-Verify", "2", "-CAfile", str(pki.client_ca_pem),
                              "-verify_return_error", "-www")
    client = pki.client("client_good")
    r = api.program(WWW_FETCH + f"""
first = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
first.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
first.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, b"{client.chain}")
first.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, b"{client.key}")
ctx = first.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CONTEXT)
result["same_id"] = ctx == first.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CONTEXT)
result["first"] = fetch(first, {port})
first.close()  # s_server serves one connection at a time
time.sleep(0.3)
second = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
second.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CONTEXT, ctx)
second.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
result["second"] = fetch(second, {port})
try:
    second.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CONTEXT)
except OSError as e:
    result["connected_get"] = e.errno
result["ctx"] = ctx
""")
    assert r["_exit"] == 0, r["_stderr"]
    assert r["same_id"] and r["first"] == [0, "New"] and r["second"] == [1, "Reused"], r
    assert r["connected_get"] == errno.EOPNOTSUPP, r
    other = api.program(f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
try:
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CONTEXT, {r["ctx"]})
    result["code"] = 0
except OSError as e:
    result["code"] = e.errno
""", user="nobody")
    assert other["code"] == errno.EINVAL, other


def test_a_reload_that_changes_trust_resumes_nothing_made_before(pki: PKI, tmp_path_factory: pytest.TempPathFactory) \
        -> None:
    """The trust store moves to another file (same anchors): a changed policy.  Sessions made
    under the old one are not offered again; new ones are made and resumed."""
    api = ApiDaemon(tmp_path_factory.mktemp("resumption-reload"), pki).start()
    try:
        port = api.tls_server("echo", pki.server("good"))
        r = api.program(TWICE.format(names=["backend.test"] * 2, port=port, setup=""))
        assert [x[0] for x in r["out"]] == [0, 1], r["out"]
        bundle = api.directory / "moved-root.pem"
        bundle.write_bytes(pki.root_pem.read_bytes())
        api.config.write_text(api.config.read_text().replace(str(pki.root_pem), str(bundle)))
        assert api.proc is not None
        api.proc.send_signal(signal.SIGHUP)
        assert poll(lambda: "reloaded (" in api.log.read_text(), 15), api.log.read_text()[-2000:]
        r = api.program(TWICE.format(names=["backend.test"] * 2, port=port, setup=""))
        assert [x[0] for x in r["out"]] == [0, 1], r["out"]
        assert [x["reused"] for x in server_reports(api, port, 4)] == [False, True, False, True]
    finally:
        api.stop()


def test_another_users_sessions_are_not_offered(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good"))
    code = TWICE.format(names=["backend.test"] * 2, port=port, setup="")
    assert [x[0] for x in api.program(code)["out"]] == [0, 1]
    r = api.program(code, user="nobody")
    assert [x[0] for x in r["out"]] == [0, 1], r
    assert [x["reused"] for x in server_reports(api, port, 4)] == [False, True, False, True]
