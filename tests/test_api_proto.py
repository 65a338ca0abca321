"""Pure tests of the API's wire protocol, option table, state table and option policy."""

from __future__ import annotations

import contextlib
import errno
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssaproxy.api.settings import ApiError, Settings, apply, get, policy_ciphers
from ssaproxy.config import Policy
from ssaproxy.proto import options as o
from ssaproxy.proto import wire
from ssaproxy.proto.connection import Phase as State
from ssaproxy.proto.connection import check


def test_round_trip_keeps_every_field() -> None:
    frame = wire.encode(wire.Kind.ESTABLISHED, {wire.Tag.PEER_HOST: "2001:db8::1", wire.Tag.PEER_PORT: 443,
                                                wire.INFO_BASE + o.TLS_CHOSEN_CIPHER: b"TLS_AES_128_GCM_SHA256"})
    decoder = wire.Decoder()
    for i in range(len(frame)):  # byte by byte: framing must not depend on read sizes
        assert decoder.next_message() is None
        decoder.receive_data(frame[i:i + 1])
    m = decoder.next_message()
    assert m is not None and m.kind == wire.Kind.ESTABLISHED
    assert m.text(wire.Tag.PEER_HOST) == "2001:db8::1" and m.int(wire.Tag.PEER_PORT) == 443
    assert m.info == {o.TLS_CHOSEN_CIPHER: b"TLS_AES_128_GCM_SHA256"}
    assert decoder.next_message() is None and decoder.buffered == 0


def test_two_frames_in_one_read_and_plaintext_after() -> None:
    decoder = wire.Decoder()
    decoder.receive_data(wire.encode(wire.Kind.OK) + wire.encode(wire.Kind.OK, {wire.Tag.TOKEN: b"t" * 32})
                         + b"plaintext")
    kinds = [decoder.next_message().kind, decoder.next_message().kind]  # type: ignore[union-attr]
    assert kinds == [wire.Kind.OK, wire.Kind.OK]
    assert decoder.pending() == b"plaintext"


@pytest.mark.parametrize(("raw", "why"), [
    (struct.pack("!I", 1) + b"x", "outside"),
    (struct.pack("!I", wire.MAX_FRAME + 1), "outside"),
    (struct.pack("!IH", 2, 4242), "unknown message kind"),
    (struct.pack("!IHHI", 8, 1, 1, 9), "claims"),
    (struct.pack("!IHHIH", 10, 1, 1, 2, 1), "must be 4 bytes"),
    (struct.pack("!IH", 2, 1), "lacks VERSION"),
    (struct.pack("!IHHIiHI", 18, 3, 4, 4, 1, 99, 0), "not allowed"),
    (struct.pack("!IHHIiHIi", 22, 1, 1, 4, 1, 1, 4, 1), "repeated"),
    (struct.pack("!IHHI", 10, 67, 3, 2) + b"\xff\xfe", "not UTF-8"),
])
def test_malformed_frames_are_protocol_errors(raw: bytes, why: str) -> None:
    decoder = wire.Decoder()
    decoder.receive_data(raw)
    with pytest.raises(wire.ProtocolError, match=why):
        decoder.next_message()
    with pytest.raises(wire.ProtocolError):  # a broken stream stays broken
        decoder.next_message()


def test_encode_refuses_what_the_schema_refuses() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.encode(wire.Kind.HELLO)  # lacks VERSION
    with pytest.raises(TypeError):
        wire.encode(wire.Kind.SETOPT, {wire.Tag.OPTION: 85, wire.Tag.VALUE: 3})
    assert wire.carries_fd(wire.Kind.LISTEN) and not wire.carries_fd(wire.Kind.SETOPT)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=40))
def test_any_bytes_give_messages_or_protocol_error(data: bytes, step: int) -> None:
    decoder = wire.Decoder(max_frame=4096)
    try:
        for i in range(0, len(data), step):
            decoder.receive_data(data[i:i + step])
            while decoder.next_message() is not None:
                pass
    except wire.ProtocolError:
        pass


attr_values = st.one_of(st.integers(min_value=-2**31, max_value=2**31 - 1), st.text(max_size=20),
                        st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(wire.Kind)), st.dictionaries(st.integers(0, 0x1100), attr_values, max_size=6))
def test_valid_frames_survive_mutation_without_crashing(kind: wire.Kind, fields: dict[int, object]) -> None:
    try:
        frame = wire.encode(kind, fields)
    except (wire.ProtocolError, TypeError):
        return
    decoder = wire.Decoder()
    decoder.receive_data(frame)
    message = decoder.next_message()
    assert message is not None and message.kind == kind
    for cut in range(len(frame)):  # every truncation and every one-byte corruption
        for mutated in (frame[:cut], frame[:cut] + bytes([frame[cut] ^ 0x5A]) + frame[cut + 1:]):
            d = wire.Decoder()
            d.receive_data(mutated)
            with contextlib.suppress(wire.ProtocolError):
                d.next_message()


def test_state_table_matches_posix() -> None:
    assert check("connect", State.CONNECTED) == errno.EISCONN
    assert check("connect", State.CONNECTING) == errno.EALREADY
    assert check("listen", State.CONNECTED) == errno.EINVAL
    assert check("accept", State.OPEN) == errno.EINVAL
    assert check("setopt", State.LISTENING) == errno.EISCONN
    assert check("connect", State.FAILED) is None  # a new attempt after a failed one


def test_every_option_number_is_known_and_unsupported_ones_say_why() -> None:
    assert set(o.OPTIONS) == set(range(85, 99)) | set(range(100, 114)) | {120, 121, 122}
    assert o.TLS_HOSTNAME == o.TLS_REMOTE_HOSTNAME == 85 and o.IPPROTO_TLS == 205 == 715 % 255
    assert (o.AF_HOSTNAME, o.TCP_UPGRADE_TLS) == (43, 33)
    for option in o.OPTIONS.values():
        assert option.unsupported or option.settable or option.gettable, option


POLICY = Policy()


def code(settings_: Settings, number: int, value: bytes, policy: Policy = POLICY) -> int:
    try:
        apply(settings_, policy, number, value)
    except ApiError as e:
        return e.code
    return 0


def test_options_tighten_but_never_loosen() -> None:
    s = Settings()
    assert code(s, o.TLS_VERSION_MIN, o.pack_int(0x0301)) == errno.EPERM
    assert code(s, o.TLS_VERSION_MAX, o.pack_int(0x0304), Policy(max_version="TLSv1.2")) == errno.EPERM
    assert code(s, o.TLS_VERSION_MIN, o.pack_int(0x0304), Policy(max_version="TLSv1.2")) == errno.EINVAL
    assert code(s, o.TLS_TRUSTED_CIPHERS, b"AES256-SHA") == errno.EPERM  # RSA key exchange: excluded
    assert code(s, o.TLS_TRUSTED_CIPHERS, b"NO-SUCH") == errno.EINVAL
    assert code(s, o.TLS_VERSION_MIN, b"\x00\x03") == errno.EINVAL
    tight = apply(s, POLICY, o.TLS_VERSION_MIN, o.pack_int(0x0304))
    assert get(tight, POLICY, o.TLS_VERSION_MIN) == o.pack_int(0x0304)
    assert code(tight, o.TLS_VERSION_MAX, o.pack_int(0x0303)) == errno.EINVAL  # min above max
    only12 = apply(s, POLICY, o.TLS_VERSION_MAX, o.pack_int(0x0303))
    tls12 = [c for c in policy_ciphers(POLICY) if not c.startswith("TLS_")]
    for cipher in tls12[:-1]:
        only12 = apply(only12, POLICY, o.TLS_DISABLE_CIPHER, cipher.encode())
    assert code(only12, o.TLS_DISABLE_CIPHER, tls12[-1].encode()) == errno.EINVAL  # nothing would be left


def test_option_values_are_checked() -> None:
    s = Settings()
    assert code(s, o.TLS_REMOTE_HOSTNAME, b"exa mple.test") == errno.EINVAL
    assert apply(s, POLICY, o.TLS_REMOTE_HOSTNAME, b"Example.TEST.\x00").hostname == "example.test"
    assert code(s, o.TLS_ALPN, b",,") == errno.EINVAL
    assert code(s, o.TLS_REQUEST_PEER_AUTH, o.pack_int(7)) == errno.EINVAL
    assert code(s, o.TLS_PRIVATE_KEY, b"/etc/ssl/private/key.pem") == errno.EINVAL  # a path is not PEM
    assert code(s, o.TLS_SESSION_TTL, o.pack_int(5)) == errno.ENOPROTOOPT
    assert code(s, 4242, b"") == errno.ENOPROTOOPT
    with pytest.raises(ApiError) as e:
        get(s, POLICY, o.TLS_PEER_CERTIFICATE_CHAIN)
    assert e.value.code == errno.ENOTCONN


def test_key_must_match_chain(pki) -> None:  # type: ignore[no-untyped-def]
    good = pki.server("good")
    rsa = pki.server("good_rsa2048")
    s = apply(Settings(), POLICY, o.TLS_CERTIFICATE_CHAIN, Path(good.chain).read_bytes())
    assert code(s, o.TLS_PRIVATE_KEY, Path(rsa.key).read_bytes()) == errno.EINVAL
    assert apply(s, POLICY, o.TLS_PRIVATE_KEY, Path(good.key).read_bytes()).chains[0][1] is not None


def test_the_exported_constants_are_every_public_constant() -> None:
    # __all__ is spelled out for type checkers; it must still name every SSA constant.
    public = {name for name in vars(o) if name.isupper() and not name.startswith("_")}
    internal = {"TEXT", "INT", "PEM", "OPTIONS", "LEGACY_VERSIONS", "LOCAL_OPTIONS", "INFO_OPTIONS",
                "REVOCATION_OPTIONS", "SSA_ORDINAL_VERSIONS"}
    assert set(o.__all__) == public - internal
