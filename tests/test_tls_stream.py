"""In-memory tests of TLSStream and the verifier: the paths real peers cannot reach.

A pyOpenSSL server connection in memory-BIO mode stands in for the peer; bytes are pumped
between it and a StringTransport.  These cover the belt-and-braces checks (a handshake that
finishes without our leaf check is refused; an exception inside identity checking is a
refusal) and the precise endings (close_notify vs truncation).
"""

from __future__ import annotations

import datetime
from typing import Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from ssaproxy.config import Policy
from ssaproxy.streams import End, How
from ssaproxy.tls._openssl import BATCH
from ssaproxy.tls.context import client_context
from ssaproxy.tls.stream import TLSStream
from ssaproxy.tls.verify import Verifier
from tests.memtls import TLSServer, Transport
from tests.pki import PKI, _resign_with_sha1


class Sink:
    def __init__(self) -> None:
        self.ready = False
        self.data = b""
        self.eof = False
        self.lost: Optional[tuple[str, Optional[str]]] = None

    def end_ready(self, end: End) -> None:
        self.ready = True

    def end_data(self, end: End, data: bytes) -> None:
        self.data += data

    def end_eof(self, end: End) -> None:
        self.eof = True

    def end_lost(self, end: End, how: How, detail: Optional[str]) -> None:
        self.lost = (how, detail)


class Pair:
    """Our TLSStream on a StringTransport, and an in-memory pyOpenSSL server."""

    def __init__(self, pki: PKI, case: str = "good", *, context: Optional[SSL.Context] = None,
                 hostname: str = "backend.test") -> None:
        self.peer = TLSServer(pki.server(case))
        self.server = self.peer.conn
        self.verifier = Verifier(hostname=hostname)
        ctx = context or client_context(Policy(trust_store=str(pki.root_pem)))
        conn = SSL.Connection(ctx, None)
        conn.set_app_data(self.verifier)
        conn.set_tlsext_host_name(hostname.encode())
        self.proto = TLSStream(conn, self.verifier)
        self.sink = Sink()
        self.proto.sink = self.sink
        self.transport = Transport()
        self.proto.makeConnection(self.transport)

    @property
    def server_plain(self) -> bytes:
        return self.peer.received

    @property
    def server_closed(self) -> bool:
        return self.peer.closed

    def pump(self) -> None:
        self.peer.pump(self.transport, self.proto)


@pytest.fixture
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki-mem"))


def test_handshake_data_and_close_notify_both_ways(pki: PKI) -> None:
    p = Pair(pki)
    p.pump()
    assert p.sink.ready and p.verifier.verified
    p.proto.write(b"to server")
    p.pump()
    assert p.server_plain == b"to server"
    p.server.sendall(b"to client")
    p.server.shutdown()  # the server's close_notify
    p.pump()
    assert p.sink.data == b"to client" and p.sink.eof
    assert not p.transport.disconnecting  # we may still write: half-close
    p.proto.write(b" and more")
    p.proto.shutdown_write()
    p.pump()
    assert p.server_plain == b"to server and more" and p.server_closed
    assert p.transport.disconnecting  # both close_notifys exchanged: close the TCP connection


def test_handshake_without_our_leaf_check_is_refused(pki: PKI) -> None:
    # A context that never calls our verify callback: OpenSSL is satisfied, we are not.
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)
    p = Pair(pki, context=ctx)
    p.pump()
    assert not p.sink.ready
    # The server is told (an alert, then a FIN; a reset if it lingers), and the sink hears at
    # once: the program behind a client side does not wait for the server to read the alert.
    assert p.transport.write_closed and not p.transport.aborted
    assert p.sink.lost == (How.VERIFY_FAILED, "certificate was not verified")


def test_exception_during_identity_check_rejects(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object) -> None:
        raise RuntimeError("surprise")

    monkeypatch.setattr("ssaproxy.tls.verify.verify_certificate_hostname", explode)
    p = Pair(pki)
    p.pump()
    assert not p.sink.ready and p.transport.write_closed
    assert p.sink.lost is not None and p.sink.lost[0] == How.VERIFY_FAILED
    assert "identity check failed: RuntimeError: surprise" in (p.sink.lost[1] or "")


def test_app_data_that_is_not_a_verifier_rejects(pki: PKI) -> None:
    p = Pair(pki)
    p.proto.tls.set_app_data(object())  # a connection set up wrongly must fail, not pass
    p.pump()
    assert not p.sink.ready and p.transport.write_closed
    assert p.sink.lost is not None and p.sink.lost[0] in (How.VERIFY_FAILED, How.HANDSHAKE_FAILED)


def test_tcp_end_without_close_notify_is_truncation(pki: PKI) -> None:
    p = Pair(pki)
    p.pump()
    p.server.sendall(b"partial")
    p.pump()
    p.proto.readConnectionLost()  # FIN without close_notify
    assert p.sink.data == b"partial" and not p.sink.eof
    assert p.transport.aborted
    p.proto.connectionLost()
    assert p.sink.lost == (How.TRUNCATED, "connection closed without close_notify")


def test_verifier_needs_exactly_one_identity() -> None:
    with pytest.raises(ValueError, match="exactly one of hostname or ip is required"):
        Verifier()
    with pytest.raises(ValueError, match="exactly one of hostname or ip is required"):
        Verifier(hostname="a.test", ip="10.0.0.1")


def _self_issued_sha1() -> crypto.X509:
    """A self-issued CA certificate (subject == issuer, as in a key rollover) signed with SHA-1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rollover CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return crypto.X509.from_cryptography(_resign_with_sha1(cert, key))


def test_sha1_is_refused_below_the_anchor_even_when_self_issued(pki: PKI) -> None:
    sha1 = _self_issued_sha1()
    root = crypto.X509.from_cryptography(x509.load_pem_x509_certificate(pki.root_pem.read_bytes()))
    v = Verifier(hostname="backend.test")
    assert v.check(root, 0, 2, 1)  # the trust anchor, reported first
    assert not v.check(sha1, 0, 1, 1)  # a self-issued intermediate: its SHA-1 signature counts
    assert v.error is not None and "SHA1" in str(v.error) and v.error.depth == 1
    # As the anchor itself, the same certificate's self-signature is not judged.
    anchor_only = Verifier(hostname="backend.test")
    assert anchor_only.check(sha1, 0, 1, 1) and anchor_only.error is None


def _count_hand_offs(p: Pair) -> list[int]:
    sizes: list[int] = []
    record = p.sink.end_data

    def end_data(end: End, data: bytes) -> None:
        sizes.append(len(data))
        record(end, data)

    p.sink.end_data = end_data  # type: ignore[method-assign]
    return sizes


def test_every_record_of_one_read_is_handed_on_at_once_and_in_order(pki: PKI) -> None:
    p = Pair(pki)
    p.pump()
    sizes = _count_hand_offs(p)
    pieces = [bytes([i]) * 5000 for i in range(1, 6)]
    for piece in pieces:  # five records
        p.server.sendall(piece)
    p.server.shutdown()
    p.pump()  # all of it in one dataReceived
    assert p.sink.data == b"".join(pieces) and p.sink.eof
    assert sizes == [25000]  # one event, one hand-off: the relay writes once


def test_more_than_a_batch_arrives_whole_and_in_order(pki: PKI) -> None:
    p = Pair(pki)
    p.pump()
    sizes = _count_hand_offs(p)
    big = bytes(range(256)) * (3 * BATCH // 256) + b"tail"
    p.server.sendall(big)
    p.pump()
    assert p.sink.data == big and not p.sink.eof
    assert sizes == [BATCH, BATCH, BATCH, 4]


def test_a_bad_record_after_good_ones_delivers_them_then_ends_with_an_alert(pki: PKI) -> None:
    p = Pair(pki)
    p.pump()
    p.server.sendall(b"good")
    good = p.server.bio_read(65536)
    forged = b"\x17\x03\x03\x00\x20" + b"\x00" * 32  # application data that fails authentication
    p.proto.dataReceived(good + forged)
    assert p.sink.data == b"good"
    # The server gets its alert with a FIN (a reset if it lingers); the sink hears at once that
    # the stream did not end cleanly, so the program behind it gets its reset.
    assert p.transport.write_closed and not p.transport.aborted
    assert p.sink.lost is not None and p.sink.lost[0] == How.RESET
    assert (p.sink.lost[1] or "").startswith("TLS error: ")


def test_an_idle_connection_holds_no_record_buffers(pki: PKI) -> None:
    # Our contexts set SSL_MODE_RELEASE_BUFFERS (tls/context.py): about 21 KiB less per idle
    # connection.  pyOpenSSL does not set it by default.
    from ssaproxy.tls._openssl import _lib  # noqa: PLC0415 - the mode bit itself

    p = Pair(pki)
    p.pump()
    assert _lib.SSL_set_mode(p.proto.tls._ssl, 0) & _lib.SSL_MODE_RELEASE_BUFFERS  # (adding 0 returns the mode)


def test_a_large_write_arrives_whole_and_in_order(pki: PKI) -> None:
    p = Pair(pki)
    p.pump()
    big = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: many records, one call
    p.proto.write(big)
    p.pump()
    assert p.server_plain == big
    p.proto.write(b"then more")
    p.pump()
    assert p.server_plain == big + b"then more"


def test_a_relaying_end_keeps_nothing_the_handshake_checks_needed(pki: PKI) -> None:
    """Once ready, the verifier drops the parsed chain and the store (kilobytes per connection
    for its whole life); the verdict stays."""
    p = Pair(pki)
    p.pump()
    assert p.sink.ready and p.proto.verifier.verified
    assert p.proto.verifier._path == [] and p.proto.verifier.by_depth == {}
    assert p.proto.verifier.store is None and p.proto.verifier.validator is None
