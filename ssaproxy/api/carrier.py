"""The carrier: the TCP connection over loopback on which a program's socket reads and writes.

Why TCP and not the Unix socket itself: a Unix stream has no reset.  When the peer's TLS
stream is truncated or reset, the program must read ECONNRESET, not a clean end of file, and
only a TCP connection closed with SO_LINGER 0 gives every reader that (read(2), select, a
Python file object, a C library that never heard of us).  The daemon makes the pair itself,
passes the program its end over the Unix socket (SCM_RIGHTS), and the library puts it in
place of the program's file descriptor number (dup2), so the number a program holds never
changes.

The pair is made with a listening socket on 127.0.0.1 that lives for one accept and is
checked: the accepted peer must be the very socket we connected, so a local process that
races to the port gets nothing.
"""

from __future__ import annotations

import socket

from ssaproxy.streams import TCPEnd


def make_pair() -> tuple[socket.socket, socket.socket]:
    """(daemon end, program end) of a fresh loopback TCP connection."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(2.0)  # loopback connects complete at once; this only bounds a bug
        program = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            program.settimeout(2.0)
            program.connect(listener.getsockname())
            mine = program.getsockname()
            for _ in range(8):
                daemon, peer = listener.accept()
                if peer == mine:
                    for s in (daemon, program):
                        s.settimeout(None)
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return daemon, program
                daemon.close()  # someone else raced to the port
            raise OSError("could not make a carrier connection")
        except BaseException:
            program.close()
            raise
    finally:
        listener.close()


class Carrier(TCPEnd):
    """The daemon's end: the near end of the program's session.  Until the session is
    established, the lifecycle holds what the program writes (bounded; beyond that the program's
    writes block in its kernel buffer) and hears an early close at once, so a program that
    gives up mid-handshake leaves nothing behind."""
