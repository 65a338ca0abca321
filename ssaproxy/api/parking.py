"""Parking: a program's own socket becomes its carrier, and stays "connecting" until we decide.

Theory of operation.  A program's TLS socket must keep its identity from socket() to close():
an epoll registration, a dup() or a child's copy made before connect() must stay valid, and a
non-blocking connect must report its end through the same readiness events as TCP (writability,
edge-triggered included; SO_ERROR).  So the daemon never replaces the program's descriptor: the
program passes it (SCM_RIGHTS shares the open file) and the daemon connects *to* that socket
over loopback, at the moment it chooses.  The daemon never calls connect() *on* it: O_NONBLOCK
lives on the open file it shares with the program, so a program thread could make any such
call block the daemon's one event loop.

1. Parking is the library's: WELCOME names this worker's parking ports (`ports`), and before
   CONNECT or REDIRECT the library makes a non-blocking connect of its socket N to the parking
   address of N's family, a loopback listener whose classic-BPF socket filter drops every
   packet.  The SYN vanishes without a reset, so N stays in SYN_SENT: neither readable nor
   writable, exactly a TCP connect still in progress.  (Its own retransmissions, after 1 s,
   3 s, ..., vanish too; the kernel gives up after about two minutes.)
2. `check(sock)`: the daemon only looks: TCP_INFO's state must be SYN_SENT (a stream socket,
   not listening); anything else is EINVAL "the socket was not parked".  The state says
   nothing of *where* N's SYN went; step 3 checks that by construction.
3. `begin(sock)` looks again (the program may have changed N meanwhile) and starts completing
   it: a socket D of ours, bound to the parking address, makes a non-blocking connect to N's
   address.  If N's SYN_SENT is towards D's address, both ends have sent a SYN to each other:
   a TCP simultaneous open, and both become ESTABLISHED (N polls writable once, SO_ERROR 0).
   If it is not (N never parked here, or since disconnected, or now a listener), D meets no
   socket that answers, a reset, or a full accept queue: `finished` sees D fail, or the caller's
   deadline passes, and the session fails closed.  `verified` then checks the pair: N
   ESTABLISHED with D's address as its peer and D's peer as its own, so D is N's other end and
   nothing else's.  Nothing here blocks: D is our own socket and non-blocking from the start;
   the waiting is the caller's (`ssaproxy.api.completion` in the reactor, bounded).
   Binding the parking address needs SO_REUSEPORT under the same uid as the listener, so no
   other user can complete someone's parked socket (processes of the daemon's own uid could:
   run the daemon under a user of its own, as the packaging does).
4. Failing N: complete it, then reset D (SO_LINGER 0).  N polls writable with POLLERR|POLLHUP,
   and reading or writing gives ECONNRESET.  The library reports the real reason (the result
   frame sent before on the control connection).

Requirement: the program's socket and the daemon live in one network namespace (the loopback
addresses must be the same); `same_netns` checks it with SO_NETNS_COOKIE.

Without privilege (a daemon that dropped root, a worker) the kernel may refuse a socket filter
on a TCP socket (EPERM).  The listener then drops SYNs another way: its accept queue is kept
full by connections of our own that are never accepted, and Linux drops a SYN for a listener
whose accept queue is full, silently (LISTEN_OVERFLOWS).  Same behaviour, no privilege.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import select
import socket
import struct
from typing import Optional

__all__ = ["COMPLETE_TIMEOUT", "Parking", "reset", "same_netns", "tcp_state"]

SO_NETNS_COOKIE = 71  # Linux 5.14
_SO_ATTACH_FILTER = 26
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, 0: keep no byte of any packet
_LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_SYN_RECV, TCP_CLOSE_WAIT = 1, 2, 3, 8  # tcp_info.tcpi_state (tcp_states.h)
COMPLETE_TIMEOUT = 2.0  # a completion on loopback takes microseconds; past this, it failed


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of `sock` (TCP_INFO's first byte); -1 if it has none."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except OSError:
        return -1


def reset(mine: socket.socket) -> None:
    """Close our end with a reset (SO_LINGER 0): the other end reads ECONNRESET, never an end."""
    with contextlib.suppress(OSError):
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    mine.close()


def _attach_drop_filter(sock: socket.socket) -> None:
    program = ctypes.create_string_buffer(_DROP_ALL)
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog {len; *filter}
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def netns_cookie(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)


def same_netns(theirs: socket.socket, ours: socket.socket) -> bool:
    """Whether a program's socket lives in the network namespace of one of ours."""
    try:
        return netns_cookie(theirs) == netns_cookie(ours)
    except OSError:
        return False


_FILLERS = 8  # at most this many connections fill a parking listener's accept queue


class Parking:
    """One parking listener per address family, made on first use, kept for the process's life.
    `drop_filter=False` makes it keep its accept queue full instead (what it falls back to when
    the kernel refuses the filter), for tests of that way."""

    def __init__(self, drop_filter: bool = True) -> None:
        self._listeners: dict[int, socket.socket] = {}
        self._fillers: list[socket.socket] = []
        self._drop_filter = drop_filter

    def listener(self, family: int) -> socket.socket:
        if family not in self._listeners:
            lsock = socket.socket(family, socket.SOCK_STREAM)
            try:
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                filtered = False
                if self._drop_filter:
                    try:
                        _attach_drop_filter(lsock)  # before bind and listen: no SYN is ever answered
                        filtered = True
                    except PermissionError:
                        pass  # unprivileged: the full accept queue below does it
                lsock.bind((_LOOPBACK[family], 0))
                lsock.listen(1)
                if not filtered:
                    self._fill(lsock)
            except BaseException:
                lsock.close()
                raise
            self._listeners[family] = lsock
        return self._listeners[family]

    def _fill(self, lsock: socket.socket) -> None:
        """Connect to `lsock` until a connection is no longer taken: its accept queue is full,
        and every later SYN is dropped without an answer."""
        address = lsock.getsockname()[:2]
        for _ in range(_FILLERS):
            filler = socket.socket(lsock.family, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(address)
            poller = select.poll()
            poller.register(filler.fileno(), select.POLLOUT)
            if not poller.poll(200):  # loopback answers at once, or never
                filler.close()  # still SYN_SENT: dropped, the queue is full
                return
            self._fillers.append(filler)
        raise OSError(errno.EIO, "the parking listener's accept queue does not fill up")

    def same_netns(self, sock: socket.socket) -> bool:
        return same_netns(sock, self.listener(socket.AF_INET))

    def ports(self) -> tuple[int, int]:
        """WELCOME's PARK_PORT4 and PARK_PORT6: where the library parks a socket of each family
        (0: the daemon cannot park that family here, say no ::1 in this namespace)."""
        found = []
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                found.append(self.listener(family).getsockname()[1])
            except OSError:
                found.append(0)
        return found[0], found[1]

    def check(self, sock: socket.socket) -> None:
        """N must be parked: a TCP socket in SYN_SENT.  OSError(EINVAL) otherwise.  Only looks:
        nothing here can block, whatever the program does to N meanwhile."""
        if sock.family not in _LOOPBACK or sock.type != socket.SOCK_STREAM or tcp_state(sock) != TCP_SYN_SENT:
            raise OSError(errno.EINVAL, "the socket was not parked")

    def begin(self, sock: socket.socket) -> socket.socket:
        """Start completing the parked N: D, our end, non-blocking, its connect to N started
        (see the module docstring).  OSError: N is not parked any more, or D failed at once."""
        self.check(sock)
        family = sock.family
        mine = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            mine.bind(self.listener(family).getsockname())
            code = mine.connect_ex(sock.getsockname()[:2])
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, f"cannot complete the socket: {errno.errorcode.get(code, code)}")
            mine.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            mine.close()
            raise
        return mine

    @staticmethod
    def finished(mine: socket.socket) -> Optional[bool]:
        """D's connect: None while in progress, True once established (whatever the program did
        with its end since), False once failed."""
        if mine.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return False
        state = tcp_state(mine)
        # CLOSE_WAIT: established, and the program has already written and shut down its side.
        return None if state in (TCP_SYN_SENT, TCP_SYN_RECV) else state in (TCP_ESTABLISHED, TCP_CLOSE_WAIT)

    @staticmethod
    def verified(sock: socket.socket, mine: socket.socket) -> bool:
        """D established is N's other end: N is connected (the kernel names no peer for a socket
        in SYN_SENT, closed or listening) with D's address as its peer, and D's peer is N's own
        address (a 4-tuple no other pair of sockets can have at once)."""
        try:
            return bool(sock.getpeername()[:2] == mine.getsockname()[:2]
                        and sock.getsockname()[:2] == mine.getpeername()[:2])
        except OSError:
            return False

    def complete_waiting(self, sock: socket.socket, timeout: float = COMPLETE_TIMEOUT) -> socket.socket:
        """`begin`, then wait (poll, bounded) until D is N's other end: for a caller with a
        thread of its own per connection (the fake daemon), never for the reactor.  OSError
        (and D reset) if it is not."""
        mine = self.begin(sock)
        try:
            poller = select.poll()
            poller.register(mine.fileno(), select.POLLOUT)
            poller.poll(int(timeout * 1000))
            if not (self.finished(mine) and self.verified(sock, mine)):
                raise OSError(errno.ECONNRESET, "the parked socket could not be completed")
        except BaseException:
            reset(mine)
            raise
        return mine

    def fail_waiting(self, sock: socket.socket, timeout: float = COMPLETE_TIMEOUT) -> None:
        """End N's connect with a reset (bounded wait; the fake daemon's way)."""
        with contextlib.suppress(OSError):
            reset(self.complete_waiting(sock, timeout))

    def close(self) -> None:
        for sock in [*self._listeners.values(), *self._fillers]:
            sock.close()
        self._listeners.clear()
        self._fillers.clear()
