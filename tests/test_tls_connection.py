"""The one place an SSL.Connection is made: SNI for names only, the verifier attached, the
stream kind chosen by the caller."""

from __future__ import annotations

from OpenSSL import SSL

from ssaproxy.config import Policy
from ssaproxy.policy import Identity
from ssaproxy.tls.connection import client_stream, server_stream
from ssaproxy.tls.context import client_context
from ssaproxy.tls.stream import TLSStream
from ssaproxy.tls.verify import ClientCheck, Verifier


def test_a_name_is_sent_as_sni_and_verified() -> None:
    stream = client_stream(client_context(Policy()), Identity.of("backend.test"), 3072)
    assert isinstance(stream.verifier, Verifier) and stream.verifier.hostname == "backend.test"
    assert stream.verifier.min_rsa_bits == 3072
    assert stream.tls.get_app_data() is stream.verifier
    assert stream.tls.get_servername() == b"backend.test"
    assert not stream.server


def test_an_address_is_verified_but_never_sent_as_sni() -> None:
    stream = client_stream(client_context(Policy()), Identity.of("192.0.2.1"), 2048)
    assert isinstance(stream.verifier, Verifier) and str(stream.verifier.ip) == "192.0.2.1"
    assert stream.tls.get_servername() is None  # RFC 6066: no IP literals in server_name


def test_a_server_stream_of_the_callers_kind() -> None:
    class Mine(TLSStream):
        pass

    check = ClientCheck(required=True)
    stream = server_stream(SSL.Context(SSL.TLS_METHOD), check, Mine)
    assert isinstance(stream, Mine) and stream.server and stream.verifier is check
    assert stream.tls.get_app_data() is check
