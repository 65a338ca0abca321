"""The result of a connect() or an upgrade, as the library takes it.

CONNECT: ESTABLISHED or ERROR arrives on the control connection, and the daemon completes (or
resets) the program's socket right after, so once the socket polls writable the frame is
there.  UPGRADE: the result is the first frame on the carrier, read without a byte of the
plaintext after it.  A failure is remembered so that connect() and SO_ERROR each report it
once, as the kernel does for a TCP connect.
"""

from __future__ import annotations

import contextlib
import errno
import socket as _socket_module
from typing import Any, Optional

from ssaproxy.client import _io
from ssaproxy.client._io import error
from ssaproxy.proto import connection as c
from ssaproxy.proto.connection import Phase

_std = _socket_module.socket
SETTLE = 2.0  # seconds: the daemon completes or resets the socket right after the result frame


def settle(sock: Any, *, block: bool) -> bool:
    """True once connected; False when the result is not there yet (non-blocking); the
    failure's errno as an OSError.  `sock` is the library's socket."""
    t = sock._tls
    if t.phase != Phase.CONNECTING:
        return bool(t.phase == Phase.CONNECTED)
    try:
        event = _from_control(sock, block) if t.control is not None else _from_carrier(sock, block)
    except TimeoutError:
        raise
    except OSError as e:
        _failed(sock, e.errno or errno.ECONNABORTED, f"the ssaproxy daemon ended the connection: {e.strerror or e}")
        raise error(t.failed_errno, t.error) from None
    except c.RemoteProtocolError as e:
        _failed(sock, errno.EPROTO, f"malformed result from the ssaproxy daemon: {e.text}")
        raise error(errno.EPROTO, t.error) from None
    if event is None:
        return False
    if isinstance(event, c.Established):
        sock._established(event)
        return True
    if isinstance(event, c.Error):  # the connection is FAILED now
        t.error, t.failed_errno = event.text, event.errno
        t.unreported = {"connect": True, "so_error": True}
    else:
        _failed(sock, errno.ECONNABORTED, "the ssaproxy daemon ended the connection")
    raise sock._err(t.failed_errno, t.error)


def _from_control(sock: Any, block: bool) -> Optional[c.Event]:
    t = sock._tls
    source = t.control.sock
    if block:
        timeout = sock.gettimeout()
        event = _io.next_event(source, t.conn, _io.result_timeout() if timeout is None else timeout)
    else:
        event = _io.next_event(source, t.conn, 0)
        if event is None and _io.wait_writable(sock.fileno(), 0):
            # The socket was completed or reset: its result is already on its way.
            event = _io.next_event(source, t.conn, SETTLE)
        if event is None:
            return None
    t.close_control()
    _io.wait_writable(sock.fileno(), SETTLE)  # completed (or reset) right after the frame
    if isinstance(event, c.Error):
        with contextlib.suppress(OSError):  # the reset's ECONNRESET: the result's errno replaces it
            _std.getsockopt(sock, _socket_module.SOL_SOCKET, _socket_module.SO_ERROR)
    return event if event is not None else c.ConnectionClosed()


def _from_carrier(sock: Any, block: bool) -> Optional[c.Event]:
    if block:
        _io.wait_frame(sock, sock.gettimeout())  # TimeoutError leaves the frame where it is
    elif _io.frame_ready(sock) is False:
        return None
    event = _io.next_event(sock, sock._tls.conn, 1.0)  # whole (or EOF), so this does not wait
    return event if event is not None else c.ConnectionClosed()


def _failed(sock: Any, code: int, text: str) -> None:
    sock._tls.close_control()
    sock._tls.failed(code, text)
