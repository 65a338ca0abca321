"""The client session cache and resumed verification, with real OpenSSL handshakes in memory
(pyOpenSSL connections pumped against each other), plus the config keys that drive them."""

from __future__ import annotations

import contextlib
import datetime

import pytest
from OpenSSL import SSL

from ssaproxy.config import Config, Policy
from ssaproxy.errors import ConfigError
from ssaproxy.policy import Identity
from ssaproxy.tls import sessions
from ssaproxy.tls._openssl import session_reused
from ssaproxy.tls.connection import session_key, verifier_for
from ssaproxy.tls.context import Tickets, client_context, new_context, use_identity
from ssaproxy.tls.sessions import SessionCache, SessionKey, SessionSaver
from ssaproxy.tls.verify import Verifier
from tests.pki import PKI


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(n: int = 0, **kw: object) -> SessionKey:
    fields: dict[str, object] = {"context": 1, "identity": "backend.test", "peer": "10.0.0.1", "port": 443 + n}
    fields.update(kw)
    return SessionKey(**fields)  # type: ignore[arg-type]


def test_cache_is_bounded_lru_and_expires() -> None:
    clock = Clock()
    cache = SessionCache(size=2, lifetime=60, clock=clock)
    session = SSL.Session()
    cache.put(key(1), session, "backend.test", ())
    cache.put(key(2), session, "backend.test", ())
    assert cache.get(key(1)) is not None  # now the most recently used
    cache.put(key(3), session, "backend.test", ())
    assert len(cache) == 2 and cache.get(key(2)) is None and cache.get(key(1)) is not None
    clock.now += 60
    assert cache.get(key(1)) is None and cache.get(key(3)) is None  # expired: gone
    cache.configure(size=0, lifetime=60)
    cache.put(key(4), session, "backend.test", ())
    assert len(cache) == 0  # size 0 keeps nothing


def test_key_fields_all_matter() -> None:
    base = key()
    for changed in (key(context=2), key(identity="other.test"), key(peer="10.0.0.2"), key(1), key(alpn=("h2",)),
                    key(min_rsa_bits=3072), key(owner=1000)):
        assert changed != base


def test_context_tokens_are_never_reused() -> None:
    a = SSL.Context(SSL.TLS_METHOD)
    token = sessions.context_token(a)
    assert sessions.context_token(a) == token
    del a
    assert sessions.context_token(SSL.Context(SSL.TLS_METHOD)) != token


# ---- real handshakes in memory

def pump(client: SSL.Connection, server: SSL.Connection, *, read: bool) -> None:
    """Shuttle bytes until both handshakes are done; with `read`, the client also reads what
    the server sent after its handshake (TLS 1.3 tickets).  Bounded."""
    for _ in range(50):
        for a, b in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                a.do_handshake()
            try:
                data = a.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                b.bio_write(data)
        if read:
            with contextlib.suppress(SSL.WantReadError, SSL.ZeroReturnError):
                client.recv(1024)
    assert server.get_state_string() == b"SSL negotiation finished successfully"


@pytest.fixture(scope="module")
def contexts(pki: PKI) -> tuple[SSL.Context, SSL.Context]:
    creds = pki.server("good")
    server = new_context("TLSv1.2", "TLSv1.3", "ECDHE+AESGCM", None, "X25519:P-256", server=True,
                         tickets=Tickets.bound_to("test", lifetime=300))
    use_identity(server, str(creds.chain), str(creds.key))
    return client_context(Policy(trust_store=str(pki.root_pem))), server


def connect(contexts: tuple[SSL.Context, SSL.Context], cache: SessionCache, resume: bool = True,
            name: str = "backend.test", offer: bool = True) -> tuple[SSL.Connection, Verifier]:
    client_ctx, server_ctx = contexts
    identity = Identity.of(name)
    verifier = verifier_for(identity, 2048)
    conn = SSL.Connection(client_ctx, None)
    conn.set_app_data(verifier)
    conn.set_tlsext_host_name(name.encode())
    conn.set_connect_state()
    k = session_key(client_ctx, identity, "127.0.0.1", 443, 2048)
    offered = cache.get(k) if resume else None
    if offered is not None:
        conn.set_session(offered.session)
        if offer:
            verifier.offered = offered
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    pump(conn, server, read=False)
    saver = SessionSaver(cache, k, verifier.offered)
    if verifier.accept(conn):
        saver.verified(conn, verifier.identity, tuple(conn.get_verified_chain() or ()) or verifier.resumed_chain)
        pump(conn, server, read=True)  # the tickets arrive, as they do after the daemon's handshake
        saver.poll(conn)
    return conn, verifier


def test_second_handshake_resumes_and_keeps_what_the_first_proved(contexts: tuple[SSL.Context, SSL.Context]) -> None:
    cache = SessionCache()
    first, v1 = connect(contexts, cache)
    assert not session_reused(first) and v1.verified and len(cache) == 1
    second, v2 = connect(contexts, cache)
    assert session_reused(second) and v2.verified and v2.resumed
    assert len(v2.resumed_chain) == 3
    assert "backend.test" in str(v2.resumed_chain[0].to_cryptography().subject)


def test_a_resumed_session_without_its_cache_entry_is_refused(contexts: tuple[SSL.Context, SSL.Context]) -> None:
    """OpenSSL resumes whatever it is given and calls no verify callback: without the entry
    that carries the verification, the connection never counts as verified."""
    cache = SessionCache()
    connect(contexts, cache)
    conn, verifier = connect(contexts, cache, offer=False)
    assert session_reused(conn)
    assert not verifier.verified and "not verified for" in str(verifier.error)


def test_an_entry_for_another_identity_is_refused() -> None:
    v = Verifier(hostname="backend.test")
    v.offered = sessions.CachedSession(session=SSL.Session(), identity="other.test", chain=(), expires=0)
    assert not v.accept_resumed(SSL.Connection(SSL.Context(SSL.TLS_METHOD)))
    assert "not verified for 'backend.test'" in str(v.error)


def test_ticket_binding_follows_everything_given() -> None:
    a = Tickets.bound_to("inbound", "x", Policy(), lifetime=1)
    assert a == Tickets.bound_to("inbound", "x", Policy(), lifetime=1)
    assert a.session_id != Tickets.bound_to("inbound", "y", Policy(), lifetime=1).session_id
    assert a.session_id != Tickets.bound_to("inbound", "x", Policy(min_rsa_bits=3072), lifetime=1).session_id
    assert len(a.session_id) == 32


# ---- configuration

def parse(text: str) -> Config:
    return Config.from_toml(text)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def test_policy_keys_and_defaults() -> None:
    assert Policy().session_resumption is True
    c = parse("[policy]\nsession_resumption = false\nsession_cache_size = 10\nsession_lifetime = 600\n")
    assert (c.policy.session_resumption, c.policy.session_cache_size, c.policy.session_lifetime) == (False, 10, 600)


@pytest.mark.parametrize(("text", "where", "fragment"), [
    ("[policy]\nsession_resumption = 1\n", "policy.session_resumption", "expected"),
    ("[policy]\nsession_cache_size = -1\n", "policy.session_cache_size", "0-1000000"),
    ("[policy]\nsession_lifetime = 0\n", "policy.session_lifetime", "greater than 0"),
    ("[policy]\nsession_lifetime = 700000\n", "policy.session_lifetime", "at most 604800"),
])
def test_bad_policy_values_name_the_key(text: str, where: str, fragment: str) -> None:
    err = error(text)
    assert err.key == where and fragment in err.message, err


ROUTE = """[outbound]
listen = "tcp:15001:interface=127.0.0.1"
[[outbound.route]]
name = "r"
destination = "10.0.0.0/8"
{extra}
"""


def test_route_switch() -> None:
    route = parse(ROUTE.format(extra='hostname = "a.test"\nsession_resumption = false')).outbound.routes[0]
    assert route.session_resumption is False
    assert parse(ROUTE.format(extra='hostname = "a.test"')).outbound.routes[0].session_resumption is None
    err = error(ROUTE.format(extra='action = "passthrough"\nsession_resumption = true'))
    assert err.key == "outbound.route[0].session_resumption" and "only applies" in err.message


def test_listener_switch(pki: PKI) -> None:
    creds = pki.server("good")
    text = (f'[[inbound]]\nlisten = "tcp:8443"\nbackend = "tcp:127.0.0.1:8080"\n'
            f'certificates = [ {{ chain = "{creds.chain}", key = "{creds.key}" }} ]\nsession_resumption = {{value}}\n')
    assert parse(text.replace("{value}", "false")).inbound[0].session_resumption is False
    err = error(text.replace("{value}", '"no"'))
    assert err.key == "inbound[0].session_resumption"


def test_resuming_never_stretches_one_full_verification(contexts: tuple[SSL.Context, SSL.Context]) -> None:
    """A resumed TLS 1.3 session's new ticket keeps the expiry of the session it resumed: one
    full handshake's verification lasts `lifetime`, however often it is resumed."""
    clock = Clock()
    cache = SessionCache(lifetime=100, clock=clock)
    connect(contexts, cache)
    (first,) = cache._entries.values()
    for _ in range(3):  # resumed every 40 s: each time a new ticket is stored
        clock.now += 40
        if clock.now >= first.expires:
            break
        conn, verifier = connect(contexts, cache)
        assert session_reused(conn) and verifier.verified
        (entry,) = cache._entries.values()
        assert entry.expires == first.expires
    clock.now = first.expires
    conn, verifier = connect(contexts, cache)
    assert not session_reused(conn)  # past the first verification's lifetime: a full handshake


def test_a_session_never_outlives_its_chain() -> None:
    """Cached no later than the earliest notAfter of the verified chain."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415
    from OpenSSL import crypto  # noqa: PLC0415

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "soon")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(seconds=30)).sign(k, hashes.SHA256()))
    clock = Clock()
    cache = SessionCache(lifetime=3600, clock=clock)
    entry = cache.put(key(), SSL.Session(), "backend.test", (crypto.X509.from_cryptography(cert),))
    assert entry is not None and entry.expires <= clock.now + 31


def test_a_session_refused_after_resuming_is_not_offered_again() -> None:
    cache = SessionCache()
    entry = cache.put(key(), SSL.Session(), "backend.test", ())
    saver = SessionSaver(cache, key(), entry)
    saver.refused()  # e.g. its chain was found revoked after the resumed handshake
    assert cache.get(key()) is None
