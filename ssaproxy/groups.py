"""The daemon's TCP listeners bound as SO_REUSEPORT groups, one socket per worker.

The main process of a daemon with workers binds them as root, before anything drops
privileges, and keeps its copies (ssaproxy.supervisor): the kernel spreads new connections
evenly over the group's accept queues, and a worker's replacement gets the same socket (and so
the same place in the group, which ssaproxy.reuseport's steering relies on)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.tcp import _resolveIPv6

from ssaproxy import kernel
from ssaproxy.capacity import Overload, Port, listen_text
from ssaproxy.config import Config, ListenAddress
from ssaproxy.errors import StartupError
from ssaproxy.service import _os_text


def tcp_listeners(config: Config) -> list[tuple[str, ListenAddress]]:
    """Every TCP listener of `config` as (config key, address)."""
    found = [("outbound.listen", ListenAddress.parse(d, "outbound.listen")) for d in config.outbound.listen]
    found += [(f"profile.{p.name}.listen", ListenAddress.parse(d, f"profile.{p.name}.listen"))
              for p in config.profiles for d in p.listen]
    found += [(f"inbound.{i.name}.listen", ListenAddress.parse(i.listen, f"inbound.{i.name}.listen"))
              for i in config.inbound]
    if config.admin is not None:
        found.append(("admin.listen", ListenAddress.parse(config.admin.listen, "admin.listen")))
    return found


def bind_group(address: ListenAddress, key: str, count: int, reactor: Any) -> list[socket.socket]:
    """`count` listening sockets on `address`, grouped by SO_REUSEPORT; a StartupError in words."""
    sockets: list[socket.socket] = []
    port_number = address.port
    try:
        for _ in range(count):
            maker = Port(address, None, reactor, Overload(reactor))
            maker.reuse_port = True
            sock = maker.createInternetSocket()
            sockets.append(sock)
            where = (_resolveIPv6(address.interface, port_number) if maker.addressFamily == socket.AF_INET6
                     else (address.interface, port_number))
            sock.bind(where)
            sock.listen(address.backlog or kernel.somaxconn())
            port_number = sock.getsockname()[1]  # port 0: the others join the one the first was given
            sock.setblocking(True)  # the worker's Port makes its own copy non-blocking
    except OSError as e:
        for s in sockets:
            s.close()
        raise StartupError(key, f"cannot listen on {listen_text(address)}: {_os_text(e)}") from None
    return sockets

