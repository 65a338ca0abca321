"""The private-binding shims in `ssaproxy.tls._openssl`, against a real libssl."""

from __future__ import annotations

from OpenSSL import SSL

from ssaproxy.tls import _openssl


def test_groups_list_accepts_known_groups_and_refuses_unknown_ones() -> None:
    assert _openssl.set_groups_list(SSL.Context(SSL.TLS_METHOD), "X25519:P-256")
    assert not _openssl.set_groups_list(SSL.Context(SSL.TLS_METHOD), "X25519:P-999")


def test_a_connection_before_its_handshake_resumed_nothing() -> None:
    assert _openssl.session_reused(SSL.Connection(SSL.Context(SSL.TLS_METHOD))) is False


def test_verify_error_text_is_openssls() -> None:
    assert _openssl.verify_error_string(10) == "certificate has expired"  # X509_V_ERR_CERT_HAS_EXPIRED


def test_strict_flag_is_an_int_the_store_accepts() -> None:
    flags = _openssl.x509_strict_flags()
    assert isinstance(flags, int) and flags
    store = SSL.Context(SSL.TLS_METHOD).get_cert_store()
    assert store is not None
    store.set_flags(flags)
