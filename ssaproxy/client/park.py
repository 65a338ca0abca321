"""Parking the program's own socket before CONNECT or REDIRECT (docs/api.md, "Parking").

The daemon completes the program's socket N later by connecting *to* it from its parking
address (a TCP simultaneous open), and it never calls connect() *on* N itself: O_NONBLOCK
lives on the open file the daemon would share with the program, so a call of the daemon's on N
could be made to block by any thread of the program.  So the library starts N's connect, here,
in the program: a non-blocking connect to the parking address of N's family, which WELCOME
named.  The listener there drops every SYN, so N stays in SYN_SENT and polls exactly as a TCP
connect in progress until the daemon completes it or resets it.  The program's own blocking
mode is put back afterwards.  `unpark` undoes it (connect with AF_UNSPEC) when the daemon
refused the request, so the socket can connect again.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
from typing import Optional

from ssaproxy.client._io import error

__all__ = ["park", "refusal", "try_park", "unpark"]

_LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
_STALE = (errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT)
_libc = ctypes.CDLL(None, use_errno=True)


def park(fd: int, ports: tuple[Optional[int], Optional[int]]) -> None:
    """Start fd's connect to the daemon's parking address for its family; OSError if it cannot
    (EAFNOSUPPORT: the daemon named no parking port for that family)."""
    probe = socket.socket(fileno=os.dup(fd))  # the same open file: its family, its connect
    try:
        family = probe.family
        port = ports[0] if family == socket.AF_INET else ports[1] if family == socket.AF_INET6 else None
        if not port:
            raise error(errno.EAFNOSUPPORT, "the ssaproxy daemon named no parking address for this socket's family")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            probe.settimeout(0.0)  # O_NONBLOCK on the shared file, for this one call
            code = probe.connect_ex((_LOOPBACK[family], port))
            if code in _STALE:
                # A socket whose earlier connect failed reports that once to the next connect
                # (the kernel's bookkeeping for the old attempt); the one after starts anew.
                code = probe.connect_ex((_LOOPBACK[family], port))
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)  # the program's own blocking mode
        if code not in (errno.EINPROGRESS, errno.EAGAIN):
            raise error(code or errno.EIO, f"cannot start connecting the socket: {os.strerror(code)}")
    finally:
        probe.close()


def unpark(fd: int) -> None:
    """Back to unconnected (connect with AF_UNSPEC), so a later connect starts anew."""
    unspec = (ctypes.c_char * 16)()  # struct sockaddr with sa_family AF_UNSPEC (0)
    _libc.connect(fd, unspec, ctypes.c_uint(16))


def try_park(fd: int, ports: tuple[Optional[int], Optional[int]]) -> Optional[str]:
    """`park`, or why it could not: the request then goes with the socket as it is, and the
    daemon's checks say what is wrong with it (another network namespace, say, where loopback
    is not the daemon's) rather than a guess of ours."""
    try:
        park(fd, ports)
    except OSError as e:
        return e.strerror or str(e)
    return None


def refusal(e: OSError, unparked: Optional[str]) -> str:
    """The daemon's refusal, with why the socket could not be parked when that is the reason."""
    text = e.strerror or str(e)
    return f"{text} (it could not be parked: {unparked})" if unparked and e.errno == errno.EINVAL else text
