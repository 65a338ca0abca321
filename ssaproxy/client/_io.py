"""Blocking frame I/O for the library: exactly one frame per read, nothing more.

Reading exactly one frame matters on the carrier: the plaintext that follows ESTABLISHED
must stay in the kernel for the program's own reads.
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


def _recv(sock: socket.socket, n: int, deadline: Optional[float], fds: list[int]) -> bytes:
    """Up to n bytes (at least one), collecting any passed descriptors; b"" at EOF."""
    while True:
        try:
            data, ancillary, _flags, _ = _std.recvmsg(sock, n, socket.CMSG_SPACE(4 * 4), socket.MSG_DONTWAIT)
        except BlockingIOError:
            _wait(sock, deadline)
            continue
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(raw[: len(raw) - len(raw) % got.itemsize])
                fds.extend(got)
        return data


def read_frame(sock: socket.socket, timeout: Optional[float]) -> tuple[wire.Message, list[int]]:
    """One whole frame (blocking up to `timeout` seconds overall) and the descriptors that
    came with it.  EOF before a whole frame is ECONNABORTED."""
    deadline = None if timeout is None else time.monotonic() + timeout
    fds: list[int] = []
    try:
        head = b""
        while len(head) < 4:
            chunk = _recv(sock, 4 - len(head), deadline, fds)
            if not chunk:
                raise ConnectionAbortedError(errno.ECONNABORTED, "the ssaproxy daemon closed the session")
            head += chunk
        size = wire.frame_size(head)
        body = b""
        while len(body) < size - 4:
            chunk = _recv(sock, size - 4 - len(body), deadline, fds)
            if not chunk:
                raise ConnectionAbortedError(errno.ECONNABORTED, "the ssaproxy daemon closed the session")
            body += chunk
        return wire.decode_body(body), fds
    except BaseException:
        for fd in fds:
            _close(fd)
        raise


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


def _close(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass
