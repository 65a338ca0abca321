"""A subset of the path-validation corpus through real handshakes on loopback.

Outbound: a daemon under twistd serves the socket API and trusts the corpus root; for each
case `openssl s_server` presents the case's chain, and a program using the client library
connects to it through the daemon: a good case connects, a bad one gets EPROTO and TLS_ERROR
says why (the same categories as tests/test_path_corpus.py).  A second daemon runs with
`insecure_allow_non_rfc5280_chains` and logs where it made a difference.

Inbound: an mTLS listener requiring client certificates under the corpus root, with
`openssl s_client -cert` presenting each client case's chain.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from tests.api_harness import ApiDaemon
from tests.lab import poll
from tests.loopback import LoopbackDaemon
from tests.pathcorpus import Corpus
from tests.pki import PKI
from tests.test_path_corpus import CASES, CATEGORIES, CRYPTOGRAPHY, write_case

SERVER_CASES = ("good", "good_two_intermediates", "good_wildcard", "good_ed25519_leaf", "wrong_name", "ip_v4",
                "ip_mismatch",
                "nc_wildcard_covers_excluded", "nc_excluded", "eku_client_only", "ku_leaf_ke_only_ec",
                "bc_leaf_is_ca", "pathlen_0_exceeded", "policy_inhibit_any", "expired_leaf", "sha1_leaf",
                "rsa1024_leaf", "leaf_without_aki", "incomplete_chain", "ed25519_intermediate",
                "san_critical_with_subject")
CLIENT_CASES = ("client_good", "client_two_intermediates", "client_no_san", "client_nc_wildcard",
                "client_server_eku", "client_without_aki", "client_expired")

PROGRAM = """
for name, host, port in CASES:
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    if not host[0].isdigit():  # no name: the daemon verifies the address connected to
        s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, host.encode())
    try:
        s.connect(("127.0.0.1", port))
        result[name] = {"connected": True}
    except OSError as e:
        result[name] = {"errno": e.errno, "error": s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()}
    s.close()
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("corpus"))


def _daemon(directory: Path, pki: PKI, corpus: Corpus, extra: str = "") -> ApiDaemon:
    api = ApiDaemon(directory, pki)
    text = api.config.read_text().replace(str(pki.root_pem), str(corpus.default_root_pem))
    api.config.write_text(text.replace("[policy]\n", "[policy]\n" + extra, 1))
    return api


@pytest.fixture(scope="module")
def outbound(pki: PKI, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("outbound")
    api = _daemon(d, pki, corpus).start()
    try:
        wanted = []
        for name in SERVER_CASES:
            case, _ = CASES[name]
            chain, key, _trust = write_case(corpus, case, d / name)
            port, _log = api.s_server(SimpleNamespace(chain=chain, key=key), "-cipher", "DEFAULT:@SECLEVEL=0")
            wanted.append((name, case.target if name != "good_wildcard" else "x.a.test", port))
        r = api.program(f"CASES = {wanted!r}\n" + PROGRAM, timeout=120)
        assert r["_exit"] == 0, r["_stderr"]
        yield {"results": r, "daemon": api}
    finally:
        api.stop()


@pytest.mark.parametrize("name", SERVER_CASES)
def test_outbound_through_the_socket_api(outbound: dict[str, object], name: str) -> None:
    case, by = CASES[name]
    got = outbound["results"][name]  # type: ignore[index]
    if case.expect == "ok":
        assert got == {"connected": True}, got
        return
    assert got.get("errno") == 71, got  # EPROTO
    assert re.search(CATEGORIES[case.expect], got["error"], re.I), got
    assert (CRYPTOGRAPHY in got["error"]) == (by == "cryptography"), got


def test_the_waiver_accepts_and_logs_where_it_mattered(pki: PKI, corpus: Corpus, tmp_path: Path) -> None:
    api = _daemon(tmp_path, pki, corpus, "insecure_allow_non_rfc5280_chains = true\n").start()
    try:
        started = api.log.read_text()
        assert "insecure_allow_non_rfc5280_chains is set for policy.trust_store" in started
        ports = []
        for name in ("leaf_without_aki", "good", "nc_wildcard_covers_excluded"):
            chain, key, _ = write_case(corpus, CASES[name][0], tmp_path / name)
            port, _ = api.s_server(SimpleNamespace(chain=chain, key=key))
            ports.append((name, CASES[name][0].target, port))
        r = api.program(f"CASES = {ports!r}\n" + PROGRAM, timeout=60)
        assert r["leaf_without_aki"] == {"connected": True}, r
        assert r["good"] == {"connected": True}, r
        assert r["nc_wildcard_covers_excluded"]["errno"] == 71, r  # the waiver is not a licence
        lines = poll(lambda: [x for x in api.log.read_text().splitlines() if "accepted a chain for" in x])
        assert len(lines) == 1 and "authorityKeyIdentifier" in lines[0], lines  # the one that needed it
    finally:
        api.stop()


INBOUND = """[[inbound]]
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:127.0.0.1:{backend_port}"
client_auth = "require"
client_ca = "{client_ca}"
handshake_timeout = 5
{certificates}
"""


@pytest.fixture(scope="module")
def inbound(pki: PKI, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackDaemon]:
    d = tmp_path_factory.mktemp("inbound")
    with LoopbackDaemon(pki, d, INBOUND, mode="http", client_ca=corpus.default_root_pem) as daemon:
        yield daemon


@pytest.mark.parametrize("name", CLIENT_CASES)
def test_inbound_mtls_with_openssl_s_client(inbound: LoopbackDaemon, corpus: Corpus, pki: PKI, name: str,
                                            tmp_path: Path) -> None:
    case, by = CASES[name]
    chain, key, _ = write_case(corpus, case, tmp_path / name)
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(chain.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    message = f"GET /{name} HTTP/1.0\r\n\r\n"
    before = len(_refusals(inbound))
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{inbound.port}", "-servername",
                        "backend.test", "-CAfile", str(pki.root_pem), "-cert", str(leaf), "-key", str(key),
                        "-cert_chain", str(chain), "-ign_eof"],
                       input=message, capture_output=True, text=True, timeout=30, check=False)
    if case.expect == "ok":
        assert f"200 ok /{name}" in r.stdout, (r.stdout, r.stderr[-2000:])
        return
    assert f"/{name}" not in r.stdout
    assert "alert" in r.stderr.lower(), r.stderr[-2000:]
    new = poll(lambda: _refusals(inbound)[before:])
    assert len(new) == 1, new  # this connection's one record
    assert re.search(CATEGORIES[case.expect], new[0], re.I), new[0]
    assert (CRYPTOGRAPHY in new[0]) == (by == "cryptography"), new[0]


def _refusals(daemon: LoopbackDaemon) -> list[str]:
    return [x for x in daemon.text().splitlines() if " client-refused: " in x]
