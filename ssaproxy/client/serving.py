"""bind(), listen() and accept() of an IPPROTO_TLS socket (protocol version 2).

bind(N, X) binds a second socket B, with the options the program set on N, to X (so the
program's permissions and bind's own errors apply), and N itself to port 0 of loopback.
listen() makes both listen and passes [B, N] with LISTEN; the daemon answers OK{TOKEN},
accepts TLS clients on B and delivers each verified one to N as a new loopback connection
that starts with TOKEN and one ACCEPTED frame.  accept() is the kernel's accept on N, so
fork()ed processes and threads accepting at once each get whole connections, as on TCP; a
connection that does not start with the token (a local process that found N's port) is reset
and the next one taken.  The control connection stays open for the listener's life
(close-on-exec); closing the listening socket closes it and the daemon stops the listener.
"""

from __future__ import annotations

import contextlib
import errno
import socket as _socket_module
import struct
from typing import Any

from ssaproxy.client import _io
from ssaproxy.proto import connection as c
from ssaproxy.proto import options as o
from ssaproxy.proto import wire
from ssaproxy.proto.connection import Phase, check

socket = Any  # the library's socket class (ssaproxy.client.tlssocket imports this module)

_std = _socket_module.socket
_LOOPBACK = {_socket_module.AF_INET: "127.0.0.1", _socket_module.AF_INET6: "::1"}
_ANY = {_socket_module.AF_INET: "0.0.0.0", _socket_module.AF_INET6: "::"}
# Options a program sets on its socket before bind() that decide how B binds.
_FOR_B = {_socket_module.SOL_SOCKET, _socket_module.IPPROTO_IPV6}


def remember_option(sock: socket, level: int, optname: int, args: tuple[Any, ...]) -> None:
    """An option set on N at a level B needs: kept for bind(), and applied to B if it exists."""
    if level not in _FOR_B:
        return
    t = sock._tls
    t.sockopts.append((level, optname, args))
    if t.public is not None:
        t.public.setsockopt(level, optname, *args)


def bind(sock: socket, address: Any) -> None:
    t = sock._tls
    if t.family == o.AF_HOSTNAME:
        raise sock._err(errno.EOPNOTSUPP, "an AF_HOSTNAME socket cannot bind")
    if t.bound:
        raise sock._err(errno.EINVAL, "the socket is bound already")
    public = _std(sock.family, _socket_module.SOCK_STREAM)
    try:
        for level, optname, args in t.sockopts:
            public.setsockopt(level, optname, *args)
        public.bind(address)  # the program's address, with the program's permissions and errors
        _std.bind(sock, (_LOOPBACK[sock.family], 0))  # N: where the daemon delivers
    except BaseException:
        public.close()
        raise
    t.public = public
    t.bound = True


def listen(sock: socket, backlog: int) -> None:
    t = sock._tls
    problem = check("listen", t.phase)
    if problem is not None:
        raise sock._err(problem, f"listen() while {t.phase.value}")
    if t.phase == Phase.LISTENING:
        _std.listen(sock, backlog)  # a new backlog, as the kernel allows
        return
    if not t.bound:
        bind(sock, (_ANY[sock.family], 0))  # as the kernel binds an unbound socket at listen()
    public = t.public
    assert public is not None
    public.listen(backlog)
    # Any local user can connect to N; only connections that sent something (the daemon's
    # token, at once) reach accept(), so a silent stranger cannot hold it up (_io.read_delivery).
    _std.setsockopt(sock, _socket_module.IPPROTO_TCP, _socket_module.TCP_DEFER_ACCEPT, _io.DEFER_ACCEPT)
    _std.listen(sock, backlog)
    reply = sock._request(c.Listen(backlog, (public.fileno(), sock.fileno())), (public.fileno(), sock.fileno()))
    token = reply.token if isinstance(reply, c.Ok) else None
    if token is None or len(token) != wire.TOKEN_SIZE:
        t.close_control()
        t.conn = c.Connection(c.Role.CLIENT)
        raise sock._err(errno.EPROTO, "the ssaproxy daemon's answer to LISTEN lacks its token")
    t.token = token
    t.local = public.getsockname()[:2]
    t.close_public()  # the daemon has its own copy; the address stays B's, in t.local


def accept(sock: socket) -> tuple[socket, Any]:
    """The kernel's accept on N, then the token and the ACCEPTED frame (at most
    `_io.DELIVERY_TIMEOUT`); a connection that fails that is reset and the next one taken
    (non-blocking: while the kernel has connections, then EAGAIN)."""
    t = sock._tls
    problem = check("accept", t.phase)
    if problem is not None:
        raise sock._err(problem, "accept() on a socket that is not listening")
    while True:
        fd, _ = sock._accept()  # blocking, timeout or EAGAIN: the kernel's
        probe = _std(sock.family, _socket_module.SOCK_STREAM, 0, fileno=fd)
        try:
            probe.settimeout(0.0)
            event = _io.read_delivery(probe, t.token)
            if event is None:
                with contextlib.suppress(OSError):  # not ours, or broken: a reset, never a half
                    probe.setsockopt(_socket_module.SOL_SOCKET, _socket_module.SO_LINGER, struct.pack("ii", 1, 0))
                probe.close()
                continue
            probe.setblocking(True)  # a new socket is blocking (or the default timeout's, below)
        except BaseException:
            probe.close()
            raise
        probe.detach()
        conn = type(sock)(t.family, _socket_module.SOCK_STREAM, o.IPPROTO_TLS, fileno=fd)
        conn._established(event)
        conn._tls.options = [(n, v) for n, v in t.options if n == o.TLS_ALLOW_RAGGED_EOF]  # the listener's applies
        if _socket_module.getdefaulttimeout() is None:
            conn.settimeout(None)
        peer = event.peer
        address = (peer[0], peer[1], 0, 0) if t.family == _socket_module.AF_INET6 else peer
        return conn, address
