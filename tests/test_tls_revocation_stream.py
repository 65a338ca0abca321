"""In memory: a TLS stream whose revocation check is still running holds every byte both ways,
and a refusal after the handshake is a verification failure with a reset."""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytest
from OpenSSL import SSL

from ssaproxy.streams import How
from tests.pki import PKI
from tests.test_tls_stream import Pair


class PendingCheck:
    """Stands in for tls.revcheck.RevocationCheck with a fetch in flight: the verdict is ours to give."""

    def __init__(self) -> None:
        self.verdict: Optional[Callable[[Optional[str]], None]] = None
        self.client: Optional[bool] = None

    def in_handshake(self, chain: Any, staple: Any, *, client: bool) -> None:
        return None

    def after_handshake(self, conn: SSL.Connection, verdict: Callable[[Optional[str]], None], *,
                        client: bool, chain: Any = ()) -> None:
        self.verdict, self.client, self.chain = verdict, client, tuple(chain)


@pytest.fixture
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki-rev-stream"))


def _pair(pki: PKI) -> tuple[Pair, PendingCheck]:
    p = Pair(pki)
    check = PendingCheck()
    p.verifier.revocation = check
    p.pump()
    assert check.verdict is not None and check.client is True  # the handshake is over, the check runs
    return p, check


def test_nothing_crosses_until_the_check_passes(pki: PKI) -> None:
    p, check = _pair(pki)
    assert not p.sink.ready and not p.proto.handshake_done
    assert p.transport.producerState == "paused"  # the peer's bytes wait in the kernel meanwhile
    p.server.sendall(b"server spoke first")
    p.proto.write(b"program's first bytes")
    p.pump()
    assert p.sink.data == b"" and p.server_plain == b""
    assert check.verdict is not None
    check.verdict(None)
    assert p.transport.producerState == "producing"
    p.pump()
    assert p.sink.ready
    assert p.sink.data == b"server spoke first" and p.server_plain == b"program's first bytes"


def test_a_refusal_after_the_handshake_is_a_verification_failure(pki: PKI) -> None:
    p, check = _pair(pki)
    p.server.sendall(b"never delivered")
    p.proto.write(b"never sent")
    p.pump()
    assert check.verdict is not None
    check.verdict("certificate revoked (OCSP, reason key_compromise)")
    p.proto.connectionLost()
    assert not p.sink.ready and p.sink.data == b"" and p.server_plain == b""
    assert p.transport.aborted  # a client side resets
    assert p.sink.lost is not None and p.sink.lost[0] is How.VERIFY_FAILED
    assert "certificate revoked" in str(p.sink.lost[1]) and not p.verifier.verified
