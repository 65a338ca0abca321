"""Make `socket.socket` the library's class, so unmodified code that asks for IPPROTO_TLS
gets TLS from the daemon; every other socket stays an ordinary one."""

from __future__ import annotations

import socket as _socket_module

from ssaproxy.client.tlssocket import socket

_original = _socket_module.socket


def install() -> None:
    _socket_module.socket = socket  # type: ignore[misc]


def uninstall() -> None:
    _socket_module.socket = _original  # type: ignore[misc]
