"""Parking: a program's own socket becomes its carrier, and stays "connecting" until we decide.

Theory of operation.  A program's TLS socket must keep its identity from socket() to close():
an epoll registration, a dup() or a child's copy made before connect() must stay valid, and a
non-blocking connect must report its end through the same readiness events as TCP (writability,
edge-triggered included; SO_ERROR).  So the daemon never replaces the program's descriptor: the
program passes it (SCM_RIGHTS shares the open file) and the daemon connects *that* socket to
itself over loopback, at the moment it chooses:

1. `park(sock)`: a non-blocking connect of the program's socket to a *parking* listener, a
   loopback listener whose classic-BPF socket filter drops every packet.  The SYN vanishes
   without a reset, so the socket stays in SYN_SENT: neither readable nor writable, exactly a
   TCP connect still in progress.  (Its own retransmissions, after 1 s, 3 s, ..., vanish too;
   the kernel would give up after about two minutes, longer than any of the daemon's deadlines.)
2. `complete(sock)`: a new socket, bound to the parking address, connects to the program's
   socket's address.  Both ends have sent a SYN to each other: a TCP simultaneous open, which
   Linux completes within the connect call on loopback.  The program's socket becomes
   ESTABLISHED (one writability edge, SO_ERROR 0) and the new socket is the daemon's end.
   Binding the parking address needs SO_REUSEPORT under the same uid as the listener, so no
   other user can complete someone's parked socket (processes of the daemon's own uid could:
   run the daemon under a user of its own, as the packaging does).
3. `fail(sock)`: complete, then reset the daemon's end at once (SO_LINGER 0).  The program's
   socket polls writable with POLLERR|POLLHUP, and reading or writing gives ECONNRESET.  The
   library reports the real reason (the result frame sent before on the control connection).

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
import fcntl
import select
import socket
import struct

__all__ = ["Parking", "same_netns"]

SO_NETNS_COOKIE = 71  # Linux 5.14
_SO_ATTACH_FILTER = 26
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, 0: keep no byte of any packet
_LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


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

    def park(self, sock: socket.socket) -> None:
        """Start the program's socket connecting to the parking address.  OSError: it cannot
        (not a TCP socket of a family we park, already connected, ...)."""
        family = sock.family
        if family not in _LOOPBACK or sock.type != socket.SOCK_STREAM:
            raise OSError(errno.EAFNOSUPPORT, "not a TCP socket")
        address = self.listener(family).getsockname()
        # The program's socket may be blocking (O_NONBLOCK lives on the file it shares with
        # us): a blocking connect would wait in the daemon for the SYN's answer, which never
        # comes.  Non-blocking for this one call, then the program's own flag again.
        flags = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            code = sock.connect_ex(address[:2])
            if code in (errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT):
                # A socket whose earlier connect failed reports that once to the next connect
                # (the kernel's bookkeeping for the old attempt); the one after starts anew.
                code = sock.connect_ex(address[:2])
        finally:
            sock.settimeout(timeout)
            fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, flags)
        if code not in (errno.EINPROGRESS, errno.EAGAIN):
            raise OSError(code, f"cannot park the socket: {errno.errorcode.get(code, code)}")

    def complete(self, sock: socket.socket) -> socket.socket:
        """Connect to the parked socket (simultaneous open); the daemon's end of the carrier,
        non-blocking, with TCP_NODELAY."""
        family = sock.family
        mine = socket.socket(family, socket.SOCK_STREAM)
        try:
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            mine.bind(self.listener(family).getsockname())
            mine.settimeout(2.0)  # loopback completes within the call; this only bounds a bug
            mine.connect(sock.getsockname()[:2])
            mine.setblocking(False)
            mine.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            mine.close()
            raise
        return mine

    def fail(self, sock: socket.socket) -> None:
        """End the program's connect with a reset; it reads the reason on its control connection."""
        with contextlib.suppress(OSError):
            mine = self.complete(sock)
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            mine.close()

    def close(self) -> None:
        for sock in [*self._listeners.values(), *self._fillers]:
            sock.close()
        self._listeners.clear()
        self._fillers.clear()
