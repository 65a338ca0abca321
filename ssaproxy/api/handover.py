"""Sockets a program hands to the daemon (UPGRADE, LISTEN), taken over safely.

Theory of operation: a descriptor passed with SCM_RIGHTS shares its open file with the
program, and a program may keep a copy.  O_NONBLOCK lives on that shared file, so the program
can turn it off again at any moment; any recv, send or accept the daemon then makes could
block, and the daemon has one thread.  Hence:

* a connected socket (UPGRADE) is read and written with MSG_DONTWAIT on every call, which no
  file flag can override (`DontWaitSocket`);
* a listening socket (LISTEN) has no per-call flag for accept(), so it is accepted in a thread
  of its own (`Acceptor`); the reactor only ever sees the accepted connections, which are new
  files that nobody else holds (their SO_LINGER, inherited from the listener, is turned off);
* SO_LINGER with a timeout makes close() wait even on a non-blocking socket, so it is turned
  off before the daemon closes a socket it shares with a program.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
import struct
import threading
from typing import Any, Callable

from ssaproxy.api.settings import ApiError


def take(fd: int) -> socket.socket:
    """A socket object owning `fd`; ApiError (and `fd` closed) for anything else."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ApiError(errno.ENOTSOCK, "the file descriptor passed is not a socket")
        return socket.socket(fileno=fd)
    except ApiError:
        close_fd(fd)
        raise
    except OSError as e:
        close_fd(fd)
        raise ApiError(errno.EINVAL, f"unusable file descriptor: {e.strerror}") from None


def close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def no_linger(sock: socket.socket) -> None:
    """SO_LINGER off: with it on, close() waits for unsent data even on a non-blocking socket."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))


def close_shared(sock: socket.socket) -> None:
    """Close our reference to a socket a program shares, never waiting for a linger it set."""
    with contextlib.suppress(OSError):
        onoff, seconds = struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
        if onoff and seconds:
            no_linger(sock)
    sock.close()


class DontWaitSocket(socket.socket):
    """recv, send and close that never block, whatever the program sets on the shared socket
    (O_NONBLOCK on the file, SO_LINGER on the socket).  A reset (SO_LINGER 0) is left alone:
    it never waits."""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            onoff, seconds = struct.unpack("ii", self.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
            if onoff and seconds:
                no_linger(self)
        super().close()

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return super().recv(bufsize, flags | socket.MSG_DONTWAIT)

    def send(self, data: Any, flags: int = 0) -> int:
        return super().send(data, flags | socket.MSG_DONTWAIT)


def adopt_connection(reactor: Any, sock: socket.socket, factory: Any) -> Any:
    """Give a program's connected socket to the reactor, read and written with MSG_DONTWAIT.
    `sock` stays the caller's to close."""
    sock.setblocking(False)
    transport = reactor.adoptStreamConnection(sock.fileno(), sock.family, factory)
    if transport is not None:
        # The reactor made its own socket object on a duplicate, and has done no I/O yet (the
        # protocol's first writes are only buffered): put ours around the same descriptor.
        own = DontWaitSocket(transport.socket.family, transport.socket.type, 0, fileno=transport.socket.detach())
        own.setblocking(False)
        transport.socket = own
        transport.fileno = own.fileno
    return transport


class Acceptor(threading.Thread):
    """accept() on a program's listening socket, in a thread: `deliver(conn)` runs in the
    reactor thread for each connection.  `pause()` holds accepting back; `stop()` ends it."""

    def __init__(self, reactor: Any, sock: socket.socket, deliver: Callable[[socket.socket], None]) -> None:
        super().__init__(name=f"ssaproxy-accept-{sock.fileno()}", daemon=True)
        self.reactor = reactor
        self.sock = sock
        self.deliver = deliver
        self.running = threading.Event()
        self.running.set()
        self.stopping = threading.Event()

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        try:
            while not self.stopping.is_set():
                if not self.running.wait(0.5) or not poller.poll(500):
                    continue
                if self.stopping.is_set():
                    break
                try:
                    conn, _ = self.sock.accept()  # may wait if the program took this one: only we wait
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError as e:
                    if self.stopping.is_set() or e.errno in (errno.EINVAL, errno.EBADF):
                        break
                    self.stopping.wait(0.1)  # EMFILE and the like: do not spin
                    continue
                self.reactor.callFromThread(self.deliver, conn)
        finally:
            self.sock.close()

    def pause(self, paused: bool) -> None:
        (self.running.clear if paused else self.running.set)()

    def stop(self) -> None:
        """End the thread: shutting the listening socket down wakes a waiting accept()."""
        self.stopping.set()
        self.running.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
