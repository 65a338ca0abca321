"""ROUTES and REDIRECT in the API's rulebook (ssaproxy.proto): pure tests, both ends."""

from __future__ import annotations

import errno

import pytest

from ssaproxy.proto import wire
from ssaproxy.proto.connection import (
    Connection,
    Error,
    LocalProtocolError,
    Ok,
    Phase,
    Redirect,
    RemoteProtocolError,
    Role,
    Routes,
    Value,
)
from tests.test_proto_connection import deliver, pair


def test_routes_then_redirect_with_a_name() -> None:
    client, daemon = pair()
    assert deliver(client, daemon, Routes()) == Routes()
    assert deliver(daemon, client, Value(b"upgrade 10.0.0.0/8 80\n")) == Value(b"upgrade 10.0.0.0/8 80\n")
    assert client.phase == daemon.phase == Phase.OPEN  # ROUTES may come before any other request
    sent = Redirect("192.0.2.7", 80, 4, "api.test", fd=-1)
    assert deliver(client, daemon, sent, fds=[41]) == Redirect("192.0.2.7", 80, 4, "api.test", fd=41)
    assert deliver(daemon, client, Ok()) == Ok()
    # The socket is the outbound face's now: the session has nothing more to say.
    assert client.phase == daemon.phase == Phase.CONNECTED
    with pytest.raises(LocalProtocolError) as e:
        client.send(Routes())
    assert e.value.errno == errno.EINVAL


def test_redirect_without_a_name_leaves_the_tag_out() -> None:
    frame = wire.encode(wire.Kind.REDIRECT, {wire.Tag.HOST: "2001:db8::1", wire.Tag.PORT: 443, wire.Tag.FAMILY: 6})
    client, daemon = pair()
    assert client.send(Redirect("2001:db8::1", 443, 6, fd=-1)) == frame
    daemon.receive_fds([5])
    daemon.receive_data(frame)
    assert daemon.next_event() == Redirect("2001:db8::1", 443, 6, None, fd=5)


def test_enoent_leaves_the_session_open_for_the_next_request() -> None:
    client, daemon = pair()
    deliver(client, daemon, Redirect("192.0.2.7", 80, 4), fds=[41])
    assert deliver(daemon, client, Error(errno.ENOENT, "no route")) == Error(errno.ENOENT, "no route")
    assert client.phase == Phase.OPEN


def test_redirect_needs_its_descriptor() -> None:
    client, daemon = pair()
    daemon.receive_data(client.send(Redirect("192.0.2.7", 80, 4)))
    with pytest.raises(RemoteProtocolError) as e:
        daemon.next_event()
    assert e.value.errno == errno.EINVAL and "REDIRECT needs 1 file descriptor" in e.value.text


def test_routes_is_not_allowed_before_hello_and_name_must_be_text() -> None:
    daemon = Connection(Role.DAEMON)
    daemon.receive_data(wire.encode(wire.Kind.ROUTES))
    with pytest.raises(RemoteProtocolError, match="ROUTES not allowed now"):
        daemon.next_event()
    body = (wire.Kind.REDIRECT.to_bytes(2, "big") + b"".join(
        tag.to_bytes(2, "big") + len(v).to_bytes(4, "big") + v
        for tag, v in ((wire.Tag.HOST, b"192.0.2.7"), (wire.Tag.PORT, (80).to_bytes(4, "big")),
                       (wire.Tag.FAMILY, (4).to_bytes(4, "big")), (wire.Tag.NAME, b"\xff"))))
    with pytest.raises(wire.ProtocolError, match="NAME is not UTF-8"):
        wire.decode_body(body)


def test_a_daemon_cannot_send_routes() -> None:
    _, daemon = pair()
    with pytest.raises(LocalProtocolError, match="not a daemon's message"):
        daemon.send(Routes())
