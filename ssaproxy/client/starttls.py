"""STARTTLS for sockets the library did not make: `upgrade()` for any connected socket
object, and `Context` for standard-library clients that take an ssl.SSLContext."""

from __future__ import annotations

import contextlib
import os
import socket as _socket_module
from typing import Any, Mapping, Optional

from ssaproxy.client.tlssocket import TLS_UPGRADE_CLIENT, TLS_UPGRADE_SERVER, socket
from ssaproxy.client.values import Value, decode
from ssaproxy.proto import options as o

_std = _socket_module.socket


def upgrade(sock: _std, *, server_side: bool = False, hostname: Optional[str] = None,
            options: Optional[Mapping[int, Value]] = None) -> dict[int, Any]:
    """STARTTLS on any connected TCP socket (say, smtplib's): after it returns, the same file
    descriptor number carries the plaintext of a verified TLS session.  Returns the session's
    getsockopt values by option number.  `options` are IPPROTO_TLS options to set first."""
    helper = socket(sock.family, _socket_module.SOCK_STREAM, 0, fileno=os.dup(sock.fileno()))
    timeout = sock.gettimeout()
    try:
        if hostname is not None:
            helper.setsockopt(o.IPPROTO_TLS, o.TLS_REMOTE_HOSTNAME, hostname)
        for number, value in (options or {}).items():
            helper.setsockopt(o.IPPROTO_TLS, number, value)
        helper.setsockopt(o.SOL_TCP, o.TCP_UPGRADE_TLS, TLS_UPGRADE_SERVER if server_side else TLS_UPGRADE_CLIENT)
    except BaseException:
        # Fail closed: sock must never go on in plaintext after a failed upgrade.
        if not helper._tls.plain:  # the daemon has the connection: sock gets the dead carrier
            os.dup2(helper.fileno(), sock.fileno(), inheritable=False)
        else:
            with contextlib.suppress(OSError):
                sock.shutdown(_socket_module.SHUT_RDWR)
        helper.close()
        raise
    try:
        os.dup2(helper.fileno(), sock.fileno(), inheritable=False)  # sock's own number now holds the carrier
        sock.settimeout(timeout)
        info = dict(helper._tls.info)
    finally:
        helper.close()
    return {number: decode(number, raw) for number, raw in info.items()}


class Context:
    """Stands in for an ssl.SSLContext where standard-library code does STARTTLS (smtplib's
    starttls(), imaplib's, poplib's stls(), ftplib's auth()): wrap_socket() upgrades the
    socket in place through the daemon, under the admin's policy, and returns it.  Those
    libraries then throw away what they had buffered before TLS, as they do with ssl, so
    plaintext injected before the handshake is never read as if it came over TLS."""

    def __init__(self, options: Optional[Mapping[int, Value]] = None) -> None:
        self.options = dict(options or {})

    def wrap_socket(self, sock: _std, server_side: bool = False, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: Optional[str] = None,
                    session: Any = None) -> _std:
        upgrade(sock, server_side=server_side, hostname=server_hostname, options=self.options)
        return sock
