"""Frame I/O for the library.

On the carrier, exactly one frame is read and nothing more: the plaintext that follows
ESTABLISHED must stay in the kernel for the program's own reads (`frame_ready` peeks,
`read_frame` reads the counted bytes).  A listening socket carries frames only, so `pump`
reads frame by frame through a buffer kept across calls.
"""

from __future__ import annotations

import array
import errno
import select
import socket
import time
from typing import Optional

from ssaproxy.proto import wire

_std = socket.socket


def send_frame(sock: socket.socket, frame: bytes, fd: Optional[int] = None) -> None:
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


def _recv(sock: socket.socket, n: int, deadline: Optional[float], fds: list[int]) -> bytes:
    """Up to n bytes (at least one), appending any passed descriptors to `fds`; b"" at EOF."""
    while True:
        try:
            return _recvmsg(sock, n, fds)
        except BlockingIOError:
            _wait(sock, deadline)


def read_frame(sock: socket.socket, timeout: Optional[float], fds: Optional[list[int]] = None) -> wire.Message:
    """One whole frame, blocking up to `timeout` seconds overall.  Descriptors that arrive
    are appended to `fds` (closed when it is None): the sender may attach a frame's
    descriptor to an earlier byte than the frame's own (never a later one), so they pair with
    descriptor-carrying frames first in, first out.  EOF before a whole frame is ECONNABORTED."""
    deadline = None if timeout is None else time.monotonic() + timeout
    got: list[int] = []
    try:
        head = b""
        while len(head) < 4:
            chunk = _recv(sock, 4 - len(head), deadline, got)
            if not chunk:
                raise ConnectionAbortedError(errno.ECONNABORTED, "the ssaproxy daemon closed the session")
            head += chunk
        size = wire.frame_size(head)
        body = b""
        while len(body) < size - 4:
            chunk = _recv(sock, size - 4 - len(body), deadline, got)
            if not chunk:
                raise ConnectionAbortedError(errno.ECONNABORTED, "the ssaproxy daemon closed the session")
            body += chunk
        return wire.decode_body(body)
    finally:
        if fds is not None:
            fds.extend(got)
        else:
            for fd in got:
                _close(fd)


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


def pump(sock: socket.socket, buffer: bytearray, fds: list[int],
         timeout: Optional[float]) -> Optional[wire.Message]:
    """The next frame from a stream that carries only frames (a listening socket's).  Reads
    never go past the frame being assembled, so a frame is never left waiting in `buffer`
    while select() says the socket is empty; a partial frame stays in `buffer` between
    calls, descriptors go to `fds`.  timeout 0: None when no whole frame is there yet.  EOF
    is ECONNABORTED.  (Peeking cannot tell whether a frame is complete here: on a Unix
    socket, MSG_PEEK stops after bytes that carry descriptors.)"""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        need = 4 - len(buffer) if len(buffer) < 4 else wire.frame_size(bytes(buffer[:4])) - len(buffer)
        if need == 0:
            body = bytes(buffer[4:])
            del buffer[:]
            return wire.decode_body(body)
        try:
            data = _recvmsg(sock, need, fds)
        except BlockingIOError:
            if timeout == 0:
                return None
            _wait(sock, deadline)
            continue
        if not data:
            raise ConnectionAbortedError(errno.ECONNABORTED, "the ssaproxy daemon closed the listening session")
        buffer += data


def wait_frame(sock: socket.socket, timeout: Optional[float]) -> None:
    """Block until a whole frame (or EOF) is waiting, consuming nothing: a timeout leaves the
    stream in step for the next attempt."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while frame_ready(sock) is False:
        _wait(sock, deadline)


def _close(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass
