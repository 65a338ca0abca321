"""The client library: the Secure Socket API's calls on a real file descriptor.

    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
    s.connect(("192.0.2.10", 443))   # after a verified handshake, or OSError(errno)

Modules, one job each: `tlssocket` (the socket class), `serving` (its bind, listen and
accept), `result` (taking a connect's or an upgrade's result), `record` (what it knows about
one socket; connect()'s address rules), `_io` (the control connection, frames between a
socket and a `ssaproxy.proto.connection.Connection`, errors), `values` (option values),
`starttls` (`upgrade`, `Context`), `redirect` (ROUTES and REDIRECT for one plain socket: what
the C library does under `ssaproxy run`), `run` (`ssaproxy run`, `ssaproxy c-flags`); `install`
is here.  The protocol's rules are the Connection's, shared with the daemon.  Only the standard
library is used here, so a program does not load the daemon's code.
"""

from __future__ import annotations

import socket as _socket_module

from ssaproxy.client._io import DEFAULT_SOCKET, ENV_SOCKET, socket_path
from ssaproxy.client._io import error as _error
from ssaproxy.client.starttls import Context, upgrade
from ssaproxy.client.tlssocket import TLS_UPGRADE_CLIENT, TLS_UPGRADE_SERVER, socket
from ssaproxy.client.values import Value
from ssaproxy.proto.options import *  # noqa: F401,F403 - the SSA constants, as the library's API

CONTROL_TIMEOUT = 30.0  # seconds; a daemon that takes longer to answer a local request is broken
RESULT_TIMEOUT = 300.0  # seconds a blocking connect() without a timeout waits for the daemon's result
_original = _socket_module.socket


def install() -> None:
    """Make `socket.socket` the library's class, so unmodified code that asks for IPPROTO_TLS
    gets TLS from the daemon; every other socket stays an ordinary one."""
    _socket_module.socket = socket  # type: ignore[misc]


def uninstall() -> None:
    _socket_module.socket = _original  # type: ignore[misc]


__all__ = ["CONTROL_TIMEOUT", "DEFAULT_SOCKET", "ENV_SOCKET", "RESULT_TIMEOUT", "TLS_UPGRADE_CLIENT",
           "TLS_UPGRADE_SERVER", "Context", "Value", "install", "socket", "socket_path", "uninstall", "upgrade",
           "_error"]
