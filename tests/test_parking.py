"""ssaproxy.api.parking against the kernel: a socket the library parked (ssaproxy.client.park)
polls like a TCP connect in progress, and completes or fails with the readiness events of TCP;
the daemon only checks it, and its completion (ssaproxy.api.completion) never blocks."""

from __future__ import annotations

import errno
import select
import socket

import pytest
from twisted.internet.testing import MemoryReactorClock

from ssaproxy.api.completion import complete
from ssaproxy.api.parking import Parking, tcp_state
from ssaproxy.client.park import park, unpark


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
        park(program.fileno(), parking.ports())
        level.register(program.fileno(), select.EPOLLIN | select.EPOLLOUT)
        assert level.poll(0.2) == []
        assert edge.poll(0.1) == []
        with pytest.raises(BlockingIOError):
            program.send(b"early")
        parking.check(program)
        daemon_end = parking.complete_waiting(program)
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
        park(program.fileno(), parking.ports())
        poller.register(program.fileno(), select.EPOLLIN | select.EPOLLOUT)
        parking.fail_waiting(program)
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


def test_only_a_parked_socket_passes_the_check(parking):
    """check() only looks (TCP_INFO): fresh, connected, listening, UDP and disconnected sockets
    are "not parked"; begin() refuses them the same way, without connecting anything."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    fresh = socket.socket()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    parked = socket.socket()
    try:
        for sock in (client, server, fresh, udp):
            with pytest.raises(OSError, match="not parked"):
                parking.check(sock)
            with pytest.raises(OSError, match="not parked"):
                parking.begin(sock)
        park(parked.fileno(), parking.ports())
        assert parked.getblocking()  # the program's blocking mode is back
        parking.check(parked)
        unpark(parked.fileno())  # what the library does when the daemon refuses the request
        with pytest.raises(OSError, match="not parked"):
            parking.check(parked)
        park(parked.fileno(), parking.ports())  # and it can be parked again
        parking.check(parked)
    finally:
        for sock in (client, server, fresh, udp, parked):
            sock.close()


def test_park_needs_a_port_for_the_family():
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError, match="no parking address") as caught:
            park(sock.fileno(), (1234, 0))
        assert caught.value.errno == errno.EAFNOSUPPORT
    finally:
        sock.close()


def _completed(reactor, parking, sock):
    results = []
    completion = complete(reactor, parking, sock, lambda mine, why: results.append((mine, why)))
    return completion, results


def test_completion_hands_over_a_verified_d(parking):
    """D non-blocking, established and N's other end; on loopback it is usually done by the
    time connect() returns, else the reactor's writability event finishes it."""
    reactor = MemoryReactorClock()
    program = socket.socket()
    try:
        park(program.fileno(), parking.ports())
        completion, results = _completed(reactor, parking, program)
        if not results:
            assert completion in reactor.getWriters()
            select.select([], [completion], [], 2)
            completion.doWrite()
        assert completion not in reactor.getWriters()
        [(mine, why)] = results
        assert mine is not None and why == ""
        assert not mine.getblocking()
        assert mine.getpeername() == program.getsockname()
        assert not reactor.getDelayedCalls()
        mine.close()
    finally:
        program.close()


def _pending(clock, parking, program, fillers):
    """A completion that waits: between the check and D's connect, the program disconnects N
    and makes it a listener whose accept queue is full, so D's SYN is dropped."""
    program.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    park(program.fileno(), parking.ports())
    results = []
    real_check = parking.check

    def check_then_turn(sock):
        real_check(sock)
        unpark(program.fileno())
        program.listen(0)
        fill(program, fillers)

    parking.check = check_then_turn
    try:
        completion = complete(clock, parking, program, lambda mine, why: results.append((mine, why)))
    finally:
        parking.check = real_check
    return completion, results


def test_completion_of_a_listener_with_a_full_queue_fails_at_its_deadline(parking):
    """D's SYN is dropped: the completion waits in the reactor, not in a call, and fails at its
    deadline with D reset; N is left to the program."""
    clock = MemoryReactorClock()
    program = socket.socket()
    fillers = []
    try:
        completion, results = _pending(clock, parking, program, fillers)
        assert results == []  # nothing answered D: it waits, registered, not in a call
        assert completion in clock.getWriters()
        for _ in range(3):
            completion.doWrite()  # spurious wake-ups change nothing
        assert results == []
        clock.advance(2.0)
        assert results and results[0][0] is None and "did not complete" in results[0][1]
        assert completion not in clock.getWriters()
        assert tcp_state(program) == 10  # still the program's listener
    finally:
        for sock in (program, *fillers):
            sock.close()


def fill(listener, fillers):
    """Fill `listener`'s accept queue: connect until a connection is no longer taken."""
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
        if not select.select([], [filler], [], 0.3)[1]:
            return  # still SYN_SENT: dropped, the queue is full
    raise AssertionError("the accept queue does not fill up")


def test_cancelled_completion_never_reports(parking):
    """A session that ends while its completion waits cancels it: D gone, no callback."""
    clock = MemoryReactorClock()
    program = socket.socket()
    fillers = []
    try:
        completion, results = _pending(clock, parking, program, fillers)
        assert results == [] and completion in clock.getWriters()
        completion.cancel()
        assert completion.fileno() == -1
        completion.doWrite()
        clock.advance(5)
        assert results == []
        assert completion not in clock.getWriters()
        assert not clock.getDelayedCalls()
    finally:
        for sock in (program, *fillers):
            sock.close()


def test_a_completion_from_another_parking_does_not_connect(parking):
    """N parked at one daemon's address and completed by another's: D's SYN meets no socket
    that answers it as N (a reset), and the completion fails closed."""
    other = Parking()
    program = socket.socket()
    try:
        park(program.fileno(), parking.ports())
        with pytest.raises(OSError, match="could not be completed"):
            other.complete_waiting(program, timeout=1.0)
        clock = MemoryReactorClock()  # the same through the daemon's reactor-side completion
        completion, results = _completed(clock, other, program)
        if not results:
            select.select([], [completion], [], 2)
            completion.doWrite()
        assert len(results) == 1 and results[0][0] is None, results
        assert completion not in clock.getWriters()
    finally:
        program.close()
        other.close()


def test_same_netns(parking):
    mine = socket.socket()
    try:
        assert parking.same_netns(mine)
    finally:
        mine.close()
