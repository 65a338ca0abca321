"""What only the kernel can tell about a socket: where a redirected connection was going
(SO_ORIGINAL_DST) and who is on the other end of a Unix socket (SO_PEERCRED).  Every such
platform call lives here, so the faces stay portable Twisted code."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import Any

from ssaproxy.addresses import IPAddress

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h


def original_destination(sock: socket.socket) -> tuple[IPAddress, int]:
    """Where the client meant to go before iptables REDIRECT sent it to us.

    The call depends on the accepted socket's family; an IPv4 client on a dual-stack IPv6
    socket (an IPv4-mapped peer) was NATed by iptables, not ip6tables, so it takes the IPv4 call.
    """
    if sock.family == socket.AF_INET6:
        peer = ipaddress.IPv6Address(sock.getpeername()[0].split("%")[0])
        if peer.ipv4_mapped is None:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            return ipaddress.IPv6Address(raw[8:24]), port
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return ipaddress.IPv4Address(raw[4:8]), port


class Creds:
    """Who is on the other end of a Unix socket (SO_PEERCRED), for the log."""

    def __init__(self, pid: int, uid: int, gid: int) -> None:
        self.pid, self.uid, self.gid = pid, uid, gid
        try:
            self.exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            self.exe = "?"

    @classmethod
    def of(cls, sock: Any) -> Creds:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", raw)
        except (OSError, AttributeError):
            pid = uid = gid = -1
        return cls(pid, uid, gid)

    def fields(self) -> dict[str, object]:
        return {"pid": self.pid, "uid": self.uid, "gid": self.gid, "exe": self.exe}
