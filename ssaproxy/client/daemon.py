"""The library's control connection to the daemon: a Unix socket, request and reply, with
the rules kept by a `Connection(Role.CLIENT)`."""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Optional

from ssaproxy.client import _io
from ssaproxy.client.errors import error
from ssaproxy.proto import connection as c
from ssaproxy.proto import wire

DEFAULT_SOCKET = "/run/ssaproxy/api.sock"
ENV_SOCKET = "SSAPROXY_SOCKET"  # where a program (or ssaproxy.testing) points the library


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
            _io.send_frame(self.sock, frame, fd)
            reply = _io.next_event(self.sock, self.conn, control_timeout())
        except c.RemoteProtocolError as e:
            _io.close_all(self.conn.discard_fds())
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
