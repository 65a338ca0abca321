"""The library's conversation with the daemon: frame I/O (bytes and descriptors between a
socket and a Connection), the control connection, accepted connections' first bytes, and the
errors a program sees.

Reads never go past the frame being assembled (`Connection.wanted`).  On an upgraded carrier
that keeps the plaintext after ESTABLISHED in the kernel for the program's own reads; on the
control connection it means a whole frame never waits in a user-space buffer while select()
says the socket is empty.  Peeking cannot tell whether a frame is complete on a Unix socket
(MSG_PEEK stops after bytes that carry descriptors), so only the carrier (TCP) is peeked at:
`frame_ready` and `wait_frame`.  An accepted connection starts with the listener's token and
one ACCEPTED frame; `read_delivery` takes exactly those bytes, within a bounded time.
"""

from __future__ import annotations

import array
import contextlib
import errno
import hmac
import os
import select
import socket
import sys
import time
from typing import Optional, Sequence

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


def send_frame(sock: socket.socket, frame: bytes, fds: Sequence[int] = ()) -> None:
    """Write one frame; `fds` go as one SCM_RIGHTS message on its first byte, in order.  The
    socket may be non-blocking (the control connection is): a full buffer is waited out, for
    at most CONTROL_TIMEOUT."""
    deadline = time.monotonic() + control_timeout()
    view = memoryview(frame)
    while fds:
        raw = array.array("i", list(fds))
        try:
            sent = _std.sendmsg(sock, [view[:1]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, raw.tobytes())])
        except (BlockingIOError, InterruptedError):
            _wait(sock, deadline, write=True)
            continue
        if sent != 1:
            raise OSError(errno.EIO, "could not pass the file descriptor")
        view = view[1:]
        break
    while view:
        try:
            view = view[_std.send(sock, view):]
        except (BlockingIOError, InterruptedError):
            _wait(sock, deadline, write=True)


def _wait(sock: socket.socket, deadline: Optional[float], write: bool = False) -> None:
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is not None and remaining <= 0:
        raise TimeoutError("timed out")
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT if write else select.POLLIN)
    if not poller.poll(None if remaining is None else remaining * 1000):
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


def wait_writable(fd: int, timeout: float) -> bool:
    """Whether `fd` polls writable (or in error: a connect that ended) within `timeout` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))
        except InterruptedError:
            continue


DELIVERY_TIMEOUT = 2.0  # seconds for an accepted connection's token and ACCEPTED frame, at most
HEAD_TIMEOUT = 0.1  # seconds for its first bytes (the token and the frame's length): a stranger costs no more
DEFER_ACCEPT = 30  # TCP_DEFER_ACCEPT on the loopback listener: a connection reaches accept() once it sent data


def read_delivery(sock: socket.socket, token: bytes, timeout: float = DELIVERY_TIMEOUT) -> Optional[c.Accepted]:
    """The ACCEPTED frame that follows the listener's token on a connection accepted on the
    program's loopback listener; None (the caller resets the connection) when the first bytes
    are not the token, the frame is malformed, or it is not all there within `timeout`.  Reads
    never go past the frame: the plaintext after it stays in the kernel for the program.
    `sock` must be non-blocking (timeout 0): the waits are ours, bounded by `timeout`.

    Any local user can connect to the loopback listener, so what a stranger can make accept()
    wait is bounded by HEAD_TIMEOUT, not `timeout`: the daemon writes the token and the frame
    in one write, and the listener defers accept() until data arrived (DEFER_ACCEPT), so the
    token and the length are there at once; only the rest of a frame that came with the right
    token (the daemon's) is waited for longer."""
    start = time.monotonic()
    head = _recv_exactly(sock, wire.TOKEN_SIZE + 4, start + min(HEAD_TIMEOUT, timeout))
    if head is None or not hmac.compare_digest(head[:wire.TOKEN_SIZE], token):
        return None
    deadline = start + timeout
    try:
        size = wire.frame_size(head[wire.TOKEN_SIZE:])
    except wire.ProtocolError:
        return None
    body = _recv_exactly(sock, size - 4, deadline)
    if body is None:
        return None
    conn = c.Connection(c.Role.CLIENT, phase=c.Phase.LISTENING)
    conn.receive_data(head[wire.TOKEN_SIZE:] + body)
    try:
        event = conn.next_event()
    except c.RemoteProtocolError:
        return None
    return event if isinstance(event, c.Accepted) else None


def _recv_exactly(sock: socket.socket, n: int, deadline: float) -> Optional[bytes]:
    """Exactly `n` bytes by `deadline`, or None (the end of the stream, an error, or late)."""
    got = b""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while len(got) < n:
        try:
            chunk = _std.recv(sock, n - len(got), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(InterruptedError):
                poller.poll(remaining * 1000)
            continue
        except OSError:
            return None
        if not chunk:
            return None
        got += chunk
    return got


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def socket_path() -> str:
    """Where the daemon listens: $SSAPROXY_SOCKET, else the default path."""
    return os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET


def result_timeout() -> float:
    """ssaproxy.client.RESULT_TIMEOUT: how long a blocking connect() waits for its result when
    the socket has no timeout of its own (the daemon's deadlines end every attempt long before)."""
    return float(getattr(sys.modules["ssaproxy.client"], "RESULT_TIMEOUT", 300.0))


def control_timeout() -> float:
    """ssaproxy.client.CONTROL_TIMEOUT, read at each request so that a program (or a test)
    may change it."""
    return float(getattr(sys.modules["ssaproxy.client"], "CONTROL_TIMEOUT", 30.0))


def park_ports(welcome: c.Event) -> tuple[Optional[int], Optional[int]]:
    """WELCOME's parking ports (IPv4, IPv6)."""
    if isinstance(welcome, c.Welcome):
        return welcome.park_port4, welcome.park_port6
    return None, None


class Control:
    """One control connection: connected and greeted (HELLO, WELCOME) on construction."""

    def __init__(self, conn: c.Connection, path: Optional[str] = None, unreachable: Optional[int] = None) -> None:
        """`unreachable`: the errno for a daemon that cannot be reached (default: the connect's
        own, ENOENT / ECONNREFUSED / EACCES); redirection says ECONNREFUSED whatever the cause,
        since its ENOENT means "no route"."""
        self.conn = conn
        path = path or socket_path()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(control_timeout())
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise error(unreachable or e.errno or errno.ECONNREFUSED,
                        f"the ssaproxy daemon does not answer at {path}: {e.strerror or e}") from None
        self.sock.settimeout(0.0)  # reads and writes wait in `_wait`, bounded by their own deadlines
        try:
            welcome = self.request(c.Hello(wire.VERSION))
        except BaseException:
            self.close()
            raise
        # Where the library parks a socket before CONNECT (ssaproxy.client.park).
        self.park_ports = park_ports(welcome)

    def request(self, event: c.Event, fds: Sequence[int] = ()) -> c.Event:
        """Send `event` (with `fds`), return the daemon's reply; an ERROR reply is raised as
        its errno.  A Carrier's descriptor is the caller's."""
        try:
            frame = self.conn.send(event)
        except c.LocalProtocolError as e:
            raise error(e.errno, e.text) from None
        try:
            # Closed at once is a refusal (a share is full): its ERROR frame may wait to be read.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                send_frame(self.sock, frame, fds)
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

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
