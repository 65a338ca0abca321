"""ssaproxy.proto.connection: the API conversation as one sans-IO object (pure tests)."""

from __future__ import annotations

import errno
from typing import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssaproxy.proto import wire
from ssaproxy.proto.connection import (
    NEED_DATA,
    OUTCOME_ERRNO,
    Accepted,
    Carrier,
    Connect,
    Connection,
    ConnectionClosed,
    Error,
    Established,
    Event,
    GetOption,
    Hello,
    Listen,
    LocalProtocolError,
    Ok,
    Phase,
    Redirect,
    RemoteProtocolError,
    Role,
    Routes,
    SetOption,
    Upgrade,
    Value,
    Welcome,
)


def deliver(sender: Connection, receiver: Connection, event: Event, fds: Sequence[int] = ()) -> Event:
    data = sender.send(event)
    receiver.receive_fds(fds)
    receiver.receive_data(data)
    got = receiver.next_event()
    assert got is not NEED_DATA
    assert not isinstance(got, ConnectionClosed)
    return got


def pair() -> tuple[Connection, Connection]:
    client, daemon = Connection(Role.CLIENT), Connection(Role.DAEMON)
    assert deliver(client, daemon, Hello()) == Hello(wire.VERSION)
    assert deliver(daemon, client, Welcome(wire.VERSION, 9)) == Welcome(wire.VERSION, 9)
    assert client.phase == daemon.phase == Phase.OPEN and client.session == 9
    return client, daemon


def test_connect_conversation_both_sides_agree_on_the_phase() -> None:
    client, daemon = pair()
    assert deliver(client, daemon, SetOption(85, b"backend.test")) == SetOption(85, b"backend.test")
    assert deliver(daemon, client, Ok()) == Ok()
    assert deliver(client, daemon, GetOption(90)) == GetOption(90)
    assert deliver(daemon, client, Value(b"h2")) == Value(b"h2")
    # The program's own socket rides with CONNECT; the fd received is the one given.
    assert deliver(client, daemon, Connect("192.0.2.1", 443, 4, -1), fds=[33]) == Connect("192.0.2.1", 443, 4, 33)
    assert deliver(daemon, client, Ok()) == Ok()
    assert client.phase == daemon.phase == Phase.CONNECTING
    result = Established(("192.0.2.1", 443), ("127.0.0.1", 5555), {113: b"\x00\x00\x03\x04"})
    got = deliver(daemon, client, result)  # on the control connection (version 2)
    assert got == result and (client.phase.value, daemon.phase.value) == ("connected", "connected")


def test_connect_without_its_descriptor_is_refused() -> None:
    client, daemon = pair()
    daemon.receive_data(client.send(Connect("192.0.2.1", 443, 4, -1)))
    with pytest.raises(RemoteProtocolError, match="needs 1 file descriptor") as e:
        daemon.next_event()
    assert e.value.errno == errno.EINVAL


def test_failed_result_is_failed_and_an_error_reply_leaves_the_phase() -> None:
    client, daemon = pair()
    deliver(client, daemon, SetOption(111, b"\x00\x00\x03\x01"))
    assert deliver(daemon, client, Error(errno.EPERM, "below policy")) == Error(errno.EPERM, "below policy")
    assert client.phase == Phase.OPEN
    deliver(client, daemon, Upgrade(wire.ROLE_CLIENT, -1), fds=[7])
    deliver(daemon, client, Carrier(8), fds=[8])
    deliver(daemon, client, Error(OUTCOME_ERRNO["verify-failed"], "verify-failed: expired"))
    assert client.phase == daemon.phase == Phase.FAILED


def test_listen_takes_two_descriptors_in_order_and_is_answered_with_a_token() -> None:
    client, daemon = pair()
    assert deliver(client, daemon, Listen(5, (-1, -1)), fds=[40, 41]) == Listen(5, (40, 41))
    token = bytes(range(wire.TOKEN_SIZE))
    assert deliver(daemon, client, Ok(token)) == Ok(token)
    assert client.phase == daemon.phase == Phase.LISTENING
    with pytest.raises(LocalProtocolError):
        client.send(GetOption(85))  # nothing more travels on a listener's control connection
    # Each accepted connection carries one ACCEPTED frame, decoded in the LISTENING phase.
    delivered = Connection(Role.CLIENT, phase=Phase.LISTENING)
    delivered.receive_data(Connection(Role.DAEMON, phase=Phase.LISTENING).send(Accepted(("10.0.0.1", 1), None)))
    got = delivered.next_event()
    assert isinstance(got, Accepted) and got.peer == ("10.0.0.1", 1)
    one = Connection(Role.DAEMON)
    one.receive_data(Connection(Role.CLIENT).send(Hello()))
    one.next_event()
    one.send(Welcome(wire.VERSION, 1))
    one.receive_fds([7])  # one descriptor where LISTEN takes two
    one.receive_data(wire.encode(wire.Kind.LISTEN, {wire.Tag.BACKLOG: 1}))
    with pytest.raises(RemoteProtocolError, match="needs 2 file descriptors"):
        one.next_event()


def test_local_errors_carry_the_posix_errno_and_change_nothing() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.send(SetOption(85, b"x"))  # HELLO first
    client.send(Hello())
    with pytest.raises(LocalProtocolError, match="before the reply"):
        client.send(Hello())
    client, daemon = pair()
    deliver(client, daemon, Connect("h.example", 443, 0, -1), fds=[3])
    deliver(daemon, client, Ok())
    with pytest.raises(LocalProtocolError) as e:
        client.send(SetOption(85, b"x"))
    assert e.value.errno == errno.EISCONN and client.phase == Phase.CONNECTING
    with pytest.raises(LocalProtocolError) as e:
        client.send(Connect("h.example", 443, 0, -1))
    assert e.value.errno == errno.EALREADY
    with pytest.raises(LocalProtocolError):
        daemon.send(Ok())  # nothing asked
    with pytest.raises(LocalProtocolError):
        client.send(Ok())  # not a program's message
    with pytest.raises(LocalProtocolError):
        Connection(Role.CLIENT).refuse(errno.EPROTO, "x")


def test_daemon_refusals() -> None:
    daemon = Connection(Role.DAEMON)
    daemon.receive_data(wire.encode(wire.Kind.HELLO, {wire.Tag.VERSION: 99}))
    with pytest.raises(RemoteProtocolError) as e:
        daemon.next_event()
    assert e.value.errno == errno.EPROTONOSUPPORT and daemon.phase == Phase.CLOSED
    with pytest.raises(RemoteProtocolError):
        daemon.next_event()  # dead for good
    final = wire.Decoder()
    final.receive_data(daemon.refuse(e.value.errno, e.value.text))
    message = final.next_message()
    assert message is not None and message.kind == wire.Kind.ERROR

    daemon = Connection(Role.DAEMON)
    daemon.receive_fds([5])
    daemon.receive_data(wire.encode(wire.Kind.HELLO, {wire.Tag.VERSION: wire.VERSION}))
    assert daemon.next_event() == Hello()
    daemon.send(Welcome(1, 1))
    with pytest.raises(RemoteProtocolError, match="takes none"):
        daemon.next_event()
    assert daemon.discard_fds() == [5]

    daemon = Connection(Role.DAEMON)
    with pytest.raises(RemoteProtocolError, match="too many"):
        daemon.receive_fds(range(10, 20))


def test_a_daemon_must_answer_before_reading_on() -> None:
    daemon = Connection(Role.DAEMON)
    daemon.receive_data(wire.encode(wire.Kind.HELLO, {wire.Tag.VERSION: wire.VERSION}) * 2)
    assert daemon.next_event() == Hello()
    with pytest.raises(LocalProtocolError):
        daemon.next_event()


def test_end_of_stream() -> None:
    client, daemon = pair()
    daemon.receive_data(b"")
    assert daemon.next_event() == ConnectionClosed() and daemon.phase == Phase.CLOSED
    client.receive_data(wire.encode(wire.Kind.OK)[:3])
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as e:
        client.next_event()
    assert e.value.errno == errno.ECONNABORTED


def test_wanted_never_reaches_past_the_frame() -> None:
    client, _daemon = pair()
    client.send(GetOption(85))
    whole = wire.encode(wire.Kind.VALUE, {wire.Tag.VALUE: b"abcdef"})
    assert client.wanted == 4
    client.receive_data(whole[:3])
    assert client.wanted == 1
    client.receive_data(whole[3:4])
    assert client.wanted == len(whole) - 4
    client.receive_data(whole[4:])
    assert client.next_event() == Value(b"abcdef")


def test_outcomes_map_to_errnos() -> None:
    assert OUTCOME_ERRNO["refused"] == errno.ECONNREFUSED
    assert OUTCOME_ERRNO["verify-failed"] == errno.EPROTO


def test_secrets_stay_out_of_reprs() -> None:
    assert "KEY" not in repr(SetOption(89, b"-----BEGIN PRIVATE KEY-----"))
    assert "secret" not in repr(Value(b"secret"))


# ---- hypothesis: a conversation as bytes, split anywhere ----------------------------------
def _program_bytes() -> list[bytes]:
    return [wire.encode(wire.Kind.HELLO, {wire.Tag.VERSION: wire.VERSION}),
            wire.encode(wire.Kind.SETOPT, {wire.Tag.OPTION: 85, wire.Tag.VALUE: b"backend.test"}),
            wire.encode(wire.Kind.GETOPT, {wire.Tag.OPTION: 90}),
            wire.encode(wire.Kind.GETOPT, {wire.Tag.OPTION: 86})]


def _drain(daemon: Connection) -> list[Event]:
    events: list[Event] = []
    while True:
        event = daemon.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, Hello):
            daemon.send(Welcome(1, 1))
        elif isinstance(event, (SetOption, GetOption, Connect, Listen, Upgrade)):
            daemon.send(Error(errno.EINVAL, "no"))


def _feed(daemon: Connection, chunks: Iterable[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        daemon.receive_data(chunk)
        events += _drain(daemon)
    return events


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    data = b"".join(_program_bytes())
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]
    whole = _feed(Connection(Role.DAEMON), [data])
    assert whole == _feed(Connection(Role.DAEMON), chunks)
    assert [type(e) for e in whole] == [Hello, SetOption, GetOption, GetOption]


_KINDS = st.sampled_from(list(wire.Kind))


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    """Mostly valid frames of any kind (so the phase rules are reached), sometimes junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    kind = draw(_KINDS)
    table: dict[wire.Kind, dict[int, object]] = {
        wire.Kind.HELLO: {wire.Tag.VERSION: draw(st.sampled_from([2, 2, 2, 1]))},
        wire.Kind.SETOPT: {wire.Tag.OPTION: 85, wire.Tag.VALUE: b"x"},
        wire.Kind.GETOPT: {wire.Tag.OPTION: 85},
        wire.Kind.CONNECT: {wire.Tag.HOST: "h", wire.Tag.PORT: 1, wire.Tag.FAMILY: 0},
        wire.Kind.LISTEN: {wire.Tag.BACKLOG: 1},
        wire.Kind.UPGRADE: {wire.Tag.ROLE: 1},
        wire.Kind.REDIRECT: {wire.Tag.HOST: "192.0.2.1", wire.Tag.PORT: 1, wire.Tag.FAMILY: 4},
        wire.Kind.WELCOME: {wire.Tag.VERSION: 1, wire.Tag.SESSION: 1},
        wire.Kind.VALUE: {wire.Tag.VALUE: b""},
        wire.Kind.ERROR: {wire.Tag.ERRNO: 1, wire.Tag.TEXT: "x"},
        wire.Kind.ESTABLISHED: {wire.Tag.PEER_HOST: "a", wire.Tag.PEER_PORT: 1},
        wire.Kind.ACCEPTED: {wire.Tag.PEER_HOST: "a", wire.Tag.PEER_PORT: 1},
    }
    return wire.encode(kind, table.get(kind, {}))


def _answer(conn: Connection, event: Event) -> None:
    """Play the receiving side's part: whatever reply fits, if one is owed."""
    if conn.role == Role.DAEMON and isinstance(event, Hello):
        conn.send(Welcome(1, 1))
    elif conn.role == Role.DAEMON and isinstance(event, (SetOption, Connect, Redirect)):
        conn.send(Ok())
    elif conn.role == Role.DAEMON and isinstance(event, Listen):
        conn.send(Ok(b"t" * wire.TOKEN_SIZE))
    elif conn.role == Role.DAEMON and isinstance(event, (GetOption, Routes)):
        conn.send(Value(b""))
    elif conn.role == Role.DAEMON and isinstance(event, Upgrade):
        conn.send(Carrier(-1))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([Role.CLIENT, Role.DAEMON]), st.lists(_frames(), max_size=8),
       st.lists(st.booleans(), max_size=8), st.integers(1, 64))
def test_any_sequence_gives_events_or_remote_protocol_error(role: Role, frames: list[bytes], fds: list[bool],
                                                           step: int) -> None:
    conn = Connection(role)
    if role == Role.CLIENT:
        conn.send(Hello())  # the library speaks first; the rest is the daemon's to get wrong
    data = b"".join(frames)
    next_fd = 100
    error: RemoteProtocolError | None = None  # either ending is fine, so no pytest.raises around the feed
    try:
        for i, at in enumerate(range(0, len(data), step)):
            if i < len(fds) and fds[i]:
                conn.receive_fds([next_fd])
                next_fd += 1
            conn.receive_data(data[at:at + step])
            while (event := conn.next_event()) is not NEED_DATA:
                assert not isinstance(event, ConnectionClosed)
                _answer(conn, event)
                if conn.role == Role.CLIENT and conn.awaiting is None and conn.phase == Phase.OPEN:
                    conn.send(GetOption(85))  # keep asking, so replies stay in order
    except RemoteProtocolError as e:
        error = e
    if error is not None:
        assert conn.phase == Phase.CLOSED and error.errno > 0
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
