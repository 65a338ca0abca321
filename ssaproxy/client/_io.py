"""The library's conversation with the daemon: frame I/O (bytes and descriptors between a
socket and a Connection), the control connection, and the errors a program sees.

Reads never go past the frame being assembled (`Connection.wanted`).  On the carrier that
keeps the plaintext after ESTABLISHED in the kernel for the program's own reads; on a
listening socket it means a whole frame never waits in a user-space buffer while select()
says the socket is empty.  Peeking cannot tell whether a frame is complete on a Unix socket
(MSG_PEEK stops after bytes that carry descriptors), so only the carrier (TCP) is peeked at:
`frame_ready` and `wait_frame`.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import select
import socket
import sys
import time
from typing import Optional

from ssaproxy.proto import connection as c
from ssaproxy.proto import wire

_std = socket.socket
DEFAULT_SOCKET = "/run/ssaproxy/api.sock"
ENV_SOCKET = "SSAPROXY_SOCKET"  # where a program (or ssaproxy.testing) points the library

# The OSError subclass Python's own sockets raise for an errno (ConnectionRefusedError for
# ECONNREFUSED, ...), so that the library's errors look like a kernel socket's.
_CLASSES: dict[int, type[OSError]] = {
    errno.ECONNREFUSED: ConnectionRefusedError, errno.ECONNRESET: ConnectionResetError,
    errno.ECONNABORTED: ConnectionAbortedError, errno.ETIMEDOUT: TimeoutError, errno.EPERM: PermissionError,
}


def error(code: int, text: str) -> OSError:
    return _CLASSES.get(code, OSError)(code, text)


def send_frame(sock: socket.socket, frame: bytes, fd: Optional[int] = None) -> None:
    """Write one frame; `fd` goes as SCM_RIGHTS on its first byte."""
    if fd is None:
        _std.sendall(sock, frame)
        return
    fds = array.array("i", [fd])
    sent = _std.sendmsg(sock, [frame[:1]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    if sent != 1:
        raise OSError(errno.EIO, "could not pass the file descriptor")
    _std.sendall(sock, frame[1:])


def _wait(sock: socket.socket, deadline: Optional[float]) -> None:
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is not None and remaining <= 0:
        raise TimeoutError("timed out")
    ready, _, _ = select.select([sock], [], [], remaining)
    if not ready:
        raise TimeoutError("timed out")


def _recvmsg(sock: socket.socket, n: int, fds: list[int]) -> bytes:
    """One non-blocking recvmsg (BlockingIOError when empty); descriptors go to `fds`,
    close-on-exec."""
    data, ancillary, _flags, _ = _std.recvmsg(sock, n, socket.CMSG_SPACE(4 * 8),
                                               socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(raw[: len(raw) - len(raw) % got.itemsize])
            fds.extend(got)
    return data


def next_event(sock: socket.socket, conn: c.Connection, timeout: Optional[float]) -> Optional[c.Event]:
    """The connection's next event, reading `sock` as needed for up to `timeout` seconds
    overall (TimeoutError after that; with timeout 0, None when no whole frame is there).
    The end of the stream is fed to the connection, which makes it ConnectionClosed (or a
    RemoteProtocolError in the middle of a frame).  Descriptors received go to the
    connection, which pairs them with frames first in, first out."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        event = conn.next_event()
        if event is not c.NEED_DATA:
            return event
        fds: list[int] = []
        try:
            data = _recvmsg(sock, conn.wanted, fds)
        except BlockingIOError:
            if timeout == 0:
                return None
            _wait(sock, deadline)
            continue
        finally:
            if fds:
                conn.receive_fds(fds)
        conn.receive_data(data)


def frame_ready(sock: socket.socket) -> Optional[bool]:
    """Without blocking: True when a whole frame is waiting, False when not yet, None at EOF
    (raises the socket's error, ECONNRESET for instance)."""
    try:
        head = _std.recv(sock, 4, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    if not head:
        return None
    if len(head) < 4:
        return False
    size = wire.frame_size(head)
    try:
        whole = _std.recv(sock, size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    return len(whole) >= size


def wait_frame(sock: socket.socket, timeout: Optional[float]) -> None:
    """Block until a whole frame (or EOF) is waiting, consuming nothing: a timeout leaves the
    stream in step for the next attempt."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while frame_ready(sock) is False:
        _wait(sock, deadline)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def socket_path() -> str:
    """Where the daemon listens: $SSAPROXY_SOCKET, else the default path."""
    return os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET


def control_timeout() -> float:
    """ssaproxy.client.CONTROL_TIMEOUT, read at each request so that a program (or a test)
    may change it."""
    return float(getattr(sys.modules["ssaproxy.client"], "CONTROL_TIMEOUT", 30.0))


class Control:
    """One control connection: connected and greeted (HELLO, WELCOME) on construction."""

    def __init__(self, conn: c.Connection) -> None:
        self.conn = conn
        path = socket_path()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(control_timeout())
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise error(e.errno or errno.ECONNREFUSED,
                        f"the ssaproxy daemon is not reachable at {path}: {e.strerror or e}") from None
        try:
            self.request(c.Hello(wire.VERSION))
        except BaseException:
            self.close()
            raise

    def request(self, event: c.Event, fd: Optional[int] = None) -> c.Event:
        """Send `event` (with `fd`), return the daemon's reply; an ERROR reply is raised as
        its errno.  A Carrier's descriptor is the caller's."""
        try:
            frame = self.conn.send(event)
        except c.LocalProtocolError as e:
            raise error(e.errno, e.text) from None
        try:
            send_frame(self.sock, frame, fd)
            reply = next_event(self.sock, self.conn, control_timeout())
        except c.RemoteProtocolError as e:
            close_all(self.conn.discard_fds())
            if e.errno == errno.ECONNABORTED:
                raise error(errno.ECONNABORTED, "the ssaproxy daemon closed the session") from None
            raise error(errno.EPROTO, f"malformed reply from the ssaproxy daemon: {e.text}") from None
        except (BrokenPipeError, ConnectionResetError):
            raise error(errno.ECONNABORTED, "the ssaproxy daemon closed the session") from None
        if reply is None or isinstance(reply, c.ConnectionClosed):
            raise error(errno.ECONNABORTED, "the ssaproxy daemon closed the session")
        if isinstance(reply, c.Error):
            raise error(reply.errno, reply.text)
        return reply

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
