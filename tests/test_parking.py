"""ssaproxy.api.parking against the kernel: a parked socket polls like a TCP connect in
progress, and completes or fails with the readiness events of TCP."""

from __future__ import annotations

import errno
import select
import socket

import pytest

from ssaproxy.api.parking import Parking


@pytest.fixture(params=["filter", "full-queue"])
def parking(request):
    """Both ways of dropping SYNs: the socket filter, and (what an unprivileged daemon falls
    back to) an accept queue kept full."""
    p = Parking(drop_filter=request.param == "filter")
    yield p
    p.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_a_parked_socket_is_neither_readable_nor_writable_until_completed(parking, family):
    program = socket.socket(family, socket.SOCK_STREAM)
    program.setblocking(False)
    edge = select.epoll()
    level = select.epoll()
    try:
        # Registered before connect, as an event loop may do: the registration must stay valid.
        edge.register(program.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
        edge.poll(0)  # a fresh TCP socket reports OUT|HUP once, as without us
        parking.park(program)
        level.register(program.fileno(), select.EPOLLIN | select.EPOLLOUT)
        assert level.poll(0.2) == []
        assert edge.poll(0.1) == []
        with pytest.raises(BlockingIOError):
            program.send(b"early")
        daemon_end = parking.complete(program)
        try:
            assert edge.poll(1) == [(program.fileno(), select.EPOLLOUT)]
            assert edge.poll(0.05) == []  # one edge
            assert program.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            program.send(b"hello")
            assert select.select([daemon_end], [], [], 1)[0]
            assert daemon_end.recv(16) == b"hello"
            daemon_end.send(b"back")
            select.select([program], [], [], 1)
            assert program.recv(16) == b"back"
        finally:
            daemon_end.close()
    finally:
        edge.close()
        level.close()
        program.close()


def test_a_failed_socket_reads_a_reset(parking):
    program = socket.socket()
    program.setblocking(False)
    poller = select.epoll()
    try:
        parking.park(program)
        poller.register(program.fileno(), select.EPOLLIN | select.EPOLLOUT)
        parking.fail(program)
        events = dict(poller.poll(1))
        assert events[program.fileno()] & select.EPOLLOUT
        assert events[program.fileno()] & (select.EPOLLERR | select.EPOLLHUP)
        with pytest.raises(ConnectionResetError):
            program.recv(16)
    finally:
        poller.close()
        program.close()


def test_nobody_else_can_complete_a_parked_socket(parking):
    """Another socket (without SO_REUSEPORT here; another uid in life) cannot bind the parking
    address, and a plain connect to the parking listener gets no answer (dropped, no reset)."""
    address = parking.listener(socket.AF_INET).getsockname()
    intruder = socket.socket()
    try:
        with pytest.raises(OSError, match="in use"):
            intruder.bind(address)
    finally:
        intruder.close()
    prober = socket.socket()
    prober.setblocking(False)
    try:
        assert prober.connect_ex(address) == errno.EINPROGRESS
        assert select.select([prober], [prober], [], 0.3) == ([], [], [])
    finally:
        prober.close()


def test_a_connected_socket_cannot_be_parked(parking):
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    try:
        with pytest.raises(OSError, match="cannot park"):
            parking.park(client)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError, match="not a TCP socket"):
            parking.park(udp)
        udp.close()
    finally:
        client.close()
        server.close()


def test_same_netns(parking):
    mine = socket.socket()
    try:
        assert parking.same_netns(mine)
    finally:
        mine.close()
