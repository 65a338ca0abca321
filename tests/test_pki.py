"""Self-test of tests/pki.py: every case verified through a real TLS handshake.

Two clients check every case against a Python `ssl` server on 127.0.0.1:

- Python's `ssl` (the system OpenSSL, security level 2, VERIFY_X509_STRICT, hostname check):
  good cases complete the handshake, bad cases fail with the expected verification error.
- pyOpenSSL (the OpenSSL that ssaproxy itself uses, via cryptography) with a verify callback
  that records every error instead of stopping at the first, followed by `service_identity`
  as ssaproxy uses it: good cases show no error at all, and each bad case shows exactly the
  errors its one defect explains, which is what makes a refusal test of the proxy meaningful.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import service_identity
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import SignatureAlgorithmOID
from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from tests.pki import PKI, ServerCreds

TIMEOUT = 10.0  # seconds; bounds every socket operation and thread join

# OpenSSL X509_V_ERR_* codes.
CERT_NOT_YET_VALID = 9
CERT_HAS_EXPIRED = 10
DEPTH_ZERO_SELF_SIGNED_CERT = 18
SELF_SIGNED_CERT_IN_CHAIN = 19
UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
INVALID_PURPOSE = 26
PERMITTED_VIOLATION = 47
HOSTNAME_MISMATCH = 62
IP_ADDRESS_MISMATCH = 64
EE_KEY_TOO_SMALL = 66
CA_MD_TOO_WEAK = 68
INVALID_CA = 79

# The first error Python's ssl client reports for each bad case.
FIRST_ERROR: dict[str, int] = {
    "expired": CERT_HAS_EXPIRED,
    "not_yet_valid": CERT_NOT_YET_VALID,
    "wrong_host": HOSTNAME_MISMATCH,
    "wildcard_too_deep": HOSTNAME_MISMATCH,
    "self_signed": DEPTH_ZERO_SELF_SIGNED_CERT,
    "untrusted_root": SELF_SIGNED_CERT_IN_CHAIN,
    "incomplete_chain": UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    "intermediate_not_ca": INVALID_CA,
    "name_constraint": PERMITTED_VIOLATION,
    "wrong_eku": INVALID_PURPOSE,
    "no_san": HOSTNAME_MISMATCH,
    "ip_mismatch": IP_ADDRESS_MISMATCH,
    "rsa_1024": EE_KEY_TOO_SMALL,
    "sha1_signature": CA_MD_TOO_WEAK,
}

# What ssaproxy's stack finds for each bad case: every (depth, X509_V_ERR) the chain
# verification reports, or, for a chain without errors, "name" when service_identity
# refuses the hostname.  Any further finding would be a second defect.
FINDINGS: dict[str, set[tuple[int, int] | str]] = {
    "expired": {(0, CERT_HAS_EXPIRED)},
    "not_yet_valid": {(0, CERT_NOT_YET_VALID)},
    "wrong_host": {"name"},
    "wildcard_too_deep": {"name"},
    "self_signed": {(0, DEPTH_ZERO_SELF_SIGNED_CERT)},
    "untrusted_root": {(2, SELF_SIGNED_CERT_IN_CHAIN)},
    # OpenSSL stops building at the leaf, and the callback is then asked about it twice.
    "incomplete_chain": {(0, UNABLE_TO_GET_ISSUER_CERT_LOCALLY),
                         (0, UNABLE_TO_VERIFY_LEAF_SIGNATURE)},
    # Both come from cA=FALSE: not a CA, hence not a CA for the sslserver purpose either.
    "intermediate_not_ca": {(1, INVALID_CA), (1, INVALID_PURPOSE)},
    "name_constraint": {(0, PERMITTED_VIOLATION)},
    "wrong_eku": {(0, INVALID_PURPOSE)},
    "no_san": {"name"},
    "ip_mismatch": {"name"},
    "rsa_1024": {(0, EE_KEY_TOO_SMALL)},
    "sha1_signature": {(0, CA_MD_TOO_WEAK)},
}

ALL_CASES = PKI.GOOD_CASES + PKI.BAD_CASES


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


# -- the server ------------------------------------------------------------------------------


@contextmanager
def tls_server(creds: ServerCreds) -> Iterator[tuple[int, list[BaseException]]]:
    """A Python ssl server on 127.0.0.1 for one connection: yields (port, its errors).

    After a successful handshake it sends b"ok" and closes.  Its security level is 0 so that
    it agrees to *serve* the rsa_1024 and sha1_signature certificates; refusing them is the
    client's business.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(creds.chain, creds.key)
    errors: list[BaseException] = []

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(TIMEOUT)
                with conn, ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except OSError as exc:  # ssl.SSLError included
                errors.append(exc)

        thread = threading.Thread(target=serve, name=f"tls-server-{creds.chain.parent.name}")
        thread.start()
        try:
            yield listener.getsockname()[1], errors
        finally:
            thread.join(TIMEOUT)
    assert not thread.is_alive(), "TLS server thread did not finish"


# -- Python ssl client ---------------------------------------------------------------------------


def python_client_context(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=pki.root_pem)
    ctx.check_hostname = True
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    # Like service_identity (what ssaproxy uses), never fall back to the subject CN when the
    # certificate has no SAN: Python's default would accept "no_san".
    ctx.hostname_checks_common_name = False
    return ctx


def python_handshake(pki: PKI, case: str) -> None:
    creds = pki.server(case)
    ctx = python_client_context(pki)
    with (
        tls_server(creds) as (port, server_errors),
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
        ctx.wrap_socket(sock, server_hostname=creds.hostname) as tls,
    ):
        assert tls.recv(2) == b"ok"
    assert server_errors == []


def test_python_client_context_is_strict(pki: PKI) -> None:
    ctx = python_client_context(pki)
    assert ctx.security_level >= 2
    assert ctx.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("case", PKI.GOOD_CASES)
def test_good_case_accepted_by_python_ssl(pki: PKI, case: str) -> None:
    python_handshake(pki, case)


@pytest.mark.parametrize("case", PKI.BAD_CASES)
def test_bad_case_refused_by_python_ssl(pki: PKI, case: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        python_handshake(pki, case)
    assert info.value.verify_code == FIRST_ERROR[case], info.value.verify_message


# -- ssaproxy's stack: pyOpenSSL + service_identity ----------------------------------------------


def _retry(call: Callable[[], object], sock: socket.socket, deadline: float) -> None:
    while True:
        try:
            call()
            return
        except SSL.WantReadError:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "TLS handshake timed out"
            select.select([sock], [], [], remaining)


def findings(pki: PKI, case: str) -> set[tuple[int, int] | str]:
    """Everything wrong with `case` as a client like ssaproxy's sees it."""
    creds = pki.server(case)
    found: set[tuple[int, int] | str] = set()

    def record(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
               ok: int) -> bool:
        if not ok:
            found.add((depth, errno))
        return True  # keep going, to see every error and not just the first

    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=2")
    ctx.load_verify_locations(str(pki.root_pem))
    store = ctx.get_cert_store()
    assert store is not None
    store.set_flags(crypto.X509StoreFlags.X509_STRICT)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, record)

    with (
        tls_server(creds) as (port, _),
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
    ):
        sock.setblocking(False)
        conn = SSL.Connection(ctx, sock)
        if not _is_ip(creds.hostname):
            conn.set_tlsext_host_name(creds.hostname.encode("ascii"))
        conn.set_connect_state()
        deadline = time.monotonic() + TIMEOUT
        _retry(conn.do_handshake, sock, deadline)
        leaf = conn.get_peer_certificate(as_cryptography=True)
        assert leaf is not None
        _retry(lambda: conn.recv(2), sock, deadline)

    if not found:
        try:
            if _is_ip(creds.hostname):
                verify_certificate_ip_address(leaf, creds.hostname)
            else:
                verify_certificate_hostname(leaf, creds.hostname)
        except (service_identity.VerificationError, service_identity.CertificateError):
            found.add("name")
    return found


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("case", ALL_CASES)
def test_each_case_has_exactly_its_own_defect(pki: PKI, case: str) -> None:
    assert findings(pki, case) == FINDINGS.get(case, set())


# -- the factory itself ------------------------------------------------------------------------


def test_cases_are_listed_once() -> None:
    assert len(set(ALL_CASES)) == len(ALL_CASES) == 18
    assert set(FIRST_ERROR) == set(FINDINGS) == set(PKI.BAD_CASES)


def test_server_is_cached_and_writes_pem(pki: PKI) -> None:
    creds = pki.server("good")
    assert pki.server("good") is creds
    assert creds.hostname == "backend.test"
    assert creds.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    chain = x509.load_pem_x509_certificates(creds.chain.read_bytes())
    assert len(chain) == 2
    leaf, intermediate = chain
    assert leaf.issuer == intermediate.subject
    root = x509.load_pem_x509_certificate(pki.root_pem.read_bytes())
    assert intermediate.issuer == root.subject
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    with pytest.raises(KeyError):
        pki.server("no_such_case")


def test_sha1_case_is_really_sha1(pki: PKI) -> None:
    leaf, _ = x509.load_pem_x509_certificates(
        pki.server("sha1_signature").chain.read_bytes())
    assert leaf.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA1
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA1)
    good_leaf = x509.load_pem_x509_certificates(pki.server("good").chain.read_bytes())[0]
    assert good_leaf.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert leaf.issuer == good_leaf.issuer


def test_building_everything_is_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    fresh = PKI(tmp_path)
    for case in ALL_CASES:
        fresh.server(case)
    assert time.monotonic() - start < 5.0  # typically well under one second
