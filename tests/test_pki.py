"""Self-test of tests/pki.py: every case verified through a real TLS handshake.

Two clients check every case against a Python `ssl` server on 127.0.0.1:

- Python's `ssl` (the system OpenSSL, security level 2, VERIFY_X509_STRICT, hostname check):
  good cases complete the handshake, bad cases fail with the expected verification error.
- pyOpenSSL (the OpenSSL that ssaproxy itself uses, via cryptography) with a verify callback
  that records every error instead of stopping at the first, followed by `service_identity`
  as ssaproxy uses it: good cases show no error at all, and each bad case shows exactly the
  errors its one defect explains, which is what makes a refusal test of the proxy meaningful.

Client certificates get the mirror image: an mTLS Python `ssl` server (CERT_REQUIRED, trusting
only `PKI.client_ca_pem`, VERIFY_X509_STRICT) must complete the handshake with a good client
case and fail it, with the expected verification error, for a bad one; and a pyOpenSSL server
recording every error shows that each bad client case has exactly its one defect.
"""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import service_identity
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from tests.pki import PKI, ClientCreds, ServerCreds

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

# The error an mTLS server reports for each bad client case (OpenSSL verifies client
# certificates for the sslclient purpose, so serverAuth alone is an invalid purpose).
CLIENT_FIRST_ERROR: dict[str, int] = {
    "client_expired": CERT_HAS_EXPIRED,
    "client_not_yet_valid": CERT_NOT_YET_VALID,
    "client_untrusted": SELF_SIGNED_CERT_IN_CHAIN,
    "client_self_signed": DEPTH_ZERO_SELF_SIGNED_CERT,
    "client_wrong_eku": INVALID_PURPOSE,
}

# Every (depth, X509_V_ERR) an mTLS server's chain verification reports for each bad client
# case; good client cases have none.
CLIENT_FINDINGS: dict[str, set[tuple[int, int]]] = {
    "client_expired": {(0, CERT_HAS_EXPIRED)},
    "client_not_yet_valid": {(0, CERT_NOT_YET_VALID)},
    "client_untrusted": {(2, SELF_SIGNED_CERT_IN_CHAIN)},
    "client_self_signed": {(0, DEPTH_ZERO_SELF_SIGNED_CERT)},
    "client_wrong_eku": {(0, INVALID_PURPOSE)},
}

ALL_CLIENT_CASES = PKI.CLIENT_GOOD_CASES + PKI.CLIENT_BAD_CASES

# The (dNSName, URI) in each client leaf's SAN.
CLIENT_IDENTITY: dict[str, tuple[str, str]] = {
    case: ("client.test", "spiffe://example.org/ns/default/sa/web") for case in ALL_CLIENT_CASES
}
CLIENT_IDENTITY["client_other"] = ("other-client.test", "spiffe://example.org/ns/default/sa/other")

TLS_VERSIONS = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


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
        except SSL.WantWriteError:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "TLS handshake timed out"
            select.select([], [sock], [], remaining)


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


# -- client certificates: an mTLS Python ssl server --------------------------------------------


@dataclass
class MTLSOutcome:
    server_error: BaseException | None = None  # what the server's handshake or exchange raised
    peer_cert: bytes | None = None  # DER of the client leaf the server verified
    client_error: BaseException | None = None
    client_received: bytes = b""


def mtls_server_context(pki: PKI) -> ssl.SSLContext:
    """An inbound TLS terminator's view: the good server certificate, client certs required."""
    creds = pki.server("good")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(creds.chain, creds.key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=pki.client_ca_pem)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


@contextmanager
def mtls_server(ctx: ssl.SSLContext, outcome: MTLSOutcome) -> Iterator[int]:
    """A Python ssl server on 127.0.0.1 for one connection: yields its port.

    After the handshake it reads one byte and answers with it upper-cased; the verified client
    leaf and any error land in `outcome`.
    """
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(TIMEOUT)
                with conn, ctx.wrap_socket(conn, server_side=True) as tls:
                    outcome.peer_cert = tls.getpeercert(binary_form=True)
                    tls.sendall(tls.recv(1).upper())
            except OSError as exc:  # ssl.SSLError included
                outcome.server_error = exc

        thread = threading.Thread(target=serve, name="mtls-server")
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            thread.join(TIMEOUT)
    assert not thread.is_alive(), "mTLS server thread did not finish"


def mtls_client_context(pki: PKI, chain: Path, key: Path,
                        version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    ctx = python_client_context(pki)
    ctx.minimum_version = ctx.maximum_version = version
    ctx.load_cert_chain(chain, key)
    return ctx


def mtls_exchange(pki: PKI, chain: Path, key: Path,
                  version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> MTLSOutcome:
    """Connect to the mTLS server presenting `chain`/`key`, send b"x" and read the answer.

    With TLS 1.3 the client's handshake completes before the server has looked at the client
    certificate, so a refusal may only show on the client's first read (as an alert, an EOF or
    a reset); whatever the client sees is recorded, not raised.
    """
    outcome = MTLSOutcome()
    server_ctx = mtls_server_context(pki)
    client_ctx = mtls_client_context(pki, chain, key, version)
    with (
        mtls_server(server_ctx, outcome) as port,
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
    ):
        try:
            with client_ctx.wrap_socket(sock, server_hostname="backend.test") as tls:
                assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                         ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
                tls.sendall(b"x")
                outcome.client_received = tls.recv(1)
        except OSError as exc:  # ssl.SSLError included
            outcome.client_error = exc
    return outcome


def test_mtls_server_context_is_strict(pki: PKI) -> None:
    ctx = mtls_server_context(pki)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
    assert ctx.security_level >= 2


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize("case", PKI.CLIENT_GOOD_CASES)
def test_good_client_case_accepted_by_mtls_server(pki: PKI, case: str,
                                                  version: ssl.TLSVersion) -> None:
    creds = pki.client(case)
    outcome = mtls_exchange(pki, creds.chain, creds.key, version)
    assert outcome.server_error is None, outcome.server_error
    assert outcome.client_error is None, outcome.client_error
    assert outcome.client_received == b"X"
    assert outcome.peer_cert == x509.load_pem_x509_certificate(
        creds.cert.read_bytes()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize("case", PKI.CLIENT_BAD_CASES)
def test_bad_client_case_refused_by_mtls_server(pki: PKI, case: str,
                                                version: ssl.TLSVersion) -> None:
    creds = pki.client(case)
    outcome = mtls_exchange(pki, creds.chain, creds.key, version)
    error = outcome.server_error
    assert isinstance(error, ssl.SSLCertVerificationError), error
    assert error.reason == "CERTIFICATE_VERIFY_FAILED"
    assert error.verify_code == CLIENT_FIRST_ERROR[case], error.verify_message
    assert outcome.peer_cert is None
    # The client never gets its byte echoed: it sees the refusal as an error or an EOF.
    assert outcome.client_received == b""
    if version == ssl.TLSVersion.TLSv1_2:  # refused before the client's handshake completes
        assert outcome.client_error is not None


def test_client_hierarchy_does_not_trust_server_certificates(pki: PKI) -> None:
    """A server certificate offered as a client certificate chains to the wrong root."""
    creds = pki.server("good")
    outcome = mtls_exchange(pki, creds.chain, creds.key)
    error = outcome.server_error
    assert isinstance(error, ssl.SSLCertVerificationError), error
    assert error.verify_code == UNABLE_TO_GET_ISSUER_CERT_LOCALLY, error.verify_message


def test_server_hierarchy_does_not_trust_client_ca(pki: PKI) -> None:
    """A client trusting only `client_ca_pem` refuses the good server certificate."""
    creds = pki.server("good")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=pki.client_ca_pem)
    with (
        pytest.raises(ssl.SSLCertVerificationError) as info,
        tls_server(creds) as (port, _),
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
        ctx.wrap_socket(sock, server_hostname=creds.hostname),
    ):
        pass
    assert info.value.verify_code == UNABLE_TO_GET_ISSUER_CERT_LOCALLY, info.value.verify_message


# -- client certificates: every error, as a pyOpenSSL server sees them ---------------------------


def client_findings(pki: PKI, case: str) -> set[tuple[int, int]]:
    """Every chain-verification error of `case` as an mTLS pyOpenSSL server sees it."""
    server = pki.server("good")
    client = pki.client(case)
    found: set[tuple[int, int]] = set()

    def record(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
               ok: int) -> bool:
        if not ok:
            found.add((depth, errno))
        return True  # keep going, to see every error and not just the first

    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=2")
    ctx.use_certificate_chain_file(str(server.chain))
    ctx.use_privatekey_file(str(server.key))
    ctx.load_verify_locations(str(pki.client_ca_pem))
    store = ctx.get_cert_store()
    assert store is not None
    store.set_flags(crypto.X509StoreFlags.X509_STRICT)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, record)
    errors: list[BaseException] = []

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def serve() -> None:
            try:
                sock, _ = listener.accept()
                with sock:
                    sock.setblocking(False)
                    conn = SSL.Connection(ctx, sock)
                    conn.set_accept_state()
                    deadline = time.monotonic() + TIMEOUT
                    _retry(conn.do_handshake, sock, deadline)
                    assert conn.get_peer_certificate() is not None
                    _retry(lambda: conn.sendall(b"ok"), sock, deadline)
            except (OSError, SSL.Error, AssertionError) as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve, name=f"mtls-findings-{case}")
        thread.start()
        try:
            ctx_client = mtls_client_context(pki, client.chain, client.key)
            with (
                socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT) as sock,
                ctx_client.wrap_socket(sock, server_hostname="backend.test") as tls,
            ):
                assert tls.recv(2) == b"ok"
        finally:
            thread.join(TIMEOUT)
    assert not thread.is_alive(), "pyOpenSSL mTLS server thread did not finish"
    assert errors == []
    return found


@pytest.mark.parametrize("case", ALL_CLIENT_CASES)
def test_each_client_case_has_exactly_its_own_defect(pki: PKI, case: str) -> None:
    assert client_findings(pki, case) == CLIENT_FINDINGS.get(case, set())


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


def test_client_cases_are_listed_once() -> None:
    assert len(set(ALL_CLIENT_CASES)) == len(ALL_CLIENT_CASES) == 7
    assert PKI.CLIENT_GOOD_CASES == ("client_good", "client_other")
    assert set(CLIENT_FIRST_ERROR) == set(CLIENT_FINDINGS) == set(PKI.CLIENT_BAD_CASES)
    assert not set(ALL_CLIENT_CASES) & set(ALL_CASES)  # case directories never collide


def test_client_is_cached_and_writes_pem(pki: PKI) -> None:
    creds = pki.client("client_good")
    assert isinstance(creds, ClientCreds)
    assert pki.client("client_good") is creds
    assert creds.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert creds.key.stat().st_mode & 0o777 == 0o600
    chain = x509.load_pem_x509_certificates(creds.chain.read_bytes())
    assert len(chain) == 2
    leaf, intermediate = chain
    assert x509.load_pem_x509_certificates(creds.cert.read_bytes()) == [leaf]
    key = serialization.load_pem_private_key(creds.key.read_bytes(), password=None)
    assert key.public_key() == leaf.public_key()
    assert leaf.issuer == intermediate.subject
    client_root = x509.load_pem_x509_certificate(pki.client_ca_pem.read_bytes())
    assert intermediate.issuer == client_root.subject
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    # Separate hierarchies: nothing in the client chain is, or is issued by, the server root.
    root = x509.load_pem_x509_certificate(pki.root_pem.read_bytes())
    assert client_root != root and client_root.subject != root.subject
    assert root.subject not in {cert.issuer for cert in chain}
    server_leaf = x509.load_pem_x509_certificates(pki.server("good").chain.read_bytes())[0]
    assert server_leaf.public_key() != leaf.public_key()
    with pytest.raises(KeyError):
        pki.client("no_such_case")
    with pytest.raises(KeyError):
        pki.client("good")  # a server case is not a client case


@pytest.mark.parametrize("case", ALL_CLIENT_CASES)
def test_client_leaf_profile(pki: PKI, case: str) -> None:
    creds = pki.client(case)
    chain = x509.load_pem_x509_certificates(creds.chain.read_bytes())
    leaf = chain[0]
    assert x509.load_pem_x509_certificate(creds.cert.read_bytes()) == leaf
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    assert leaf.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256

    dns, uri = CLIENT_IDENTITY[case]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [dns]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
    assert len(list(san)) == 2
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == dns

    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    expected_eku = (ExtendedKeyUsageOID.SERVER_AUTH if case == "client_wrong_eku"
                    else ExtendedKeyUsageOID.CLIENT_AUTH)
    assert list(eku) == [expected_eku]
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_encipherment or usage.value.key_cert_sign
                or usage.value.key_agreement)

    now = datetime.datetime.now(datetime.UTC)
    valid = leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc
    assert valid == (case not in ("client_expired", "client_not_yet_valid"))
    if case == "client_expired":
        assert leaf.not_valid_after_utc < now
    if case == "client_not_yet_valid":
        assert leaf.not_valid_before_utc > now

    expected_length = {"client_untrusted": 3, "client_self_signed": 1}.get(case, 2)
    assert len(chain) == expected_length
    client_root = x509.load_pem_x509_certificate(pki.client_ca_pem.read_bytes())
    if case == "client_self_signed":
        assert leaf.issuer == leaf.subject
    elif case == "client_untrusted":
        assert chain[-1].subject == chain[-1].issuer != client_root.subject
        assert chain[1].issuer == chain[2].subject
    else:
        assert chain[1].issuer == client_root.subject


def test_building_everything_is_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    fresh = PKI(tmp_path)
    for case in ALL_CASES:
        fresh.server(case)
    for case in ALL_CLIENT_CASES:
        fresh.client(case)
    assert time.monotonic() - start < 5.0  # typically well under one second
