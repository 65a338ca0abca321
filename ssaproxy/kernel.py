"""What only the kernel can tell or do: where a redirected connection was going
(SO_ORIGINAL_DST), who is on the other end of a Unix socket (SO_PEERCRED), how many file
descriptors and how long a listen queue the daemon may have, and the spare descriptor that lets
it turn away connections it has no descriptor for.  Every such platform call lives here, so the
faces stay portable Twisted code."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import resource
import socket
import struct
from typing import Any, Optional

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


# ---- capacity: the listen queue and the file descriptor budget

SOMAXCONN_FALLBACK = 4096  # Linux's default since 5.4
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
FD_EXHAUSTED = (errno.EMFILE, errno.ENFILE)


def somaxconn(path: str = "/proc/sys/net/core/somaxconn") -> int:
    """The kernel's cap on a listen queue (a larger backlog is silently cut to it)."""
    try:
        with open(path) as f:
            value = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return SOMAXCONN_FALLBACK
    return value if value > 0 else SOMAXCONN_FALLBACK


def _nr_open(path: str = "/proc/sys/fs/nr_open") -> int:
    """The ceiling for RLIMIT_NOFILE when the hard limit is "unlimited"."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 1 << 20


def raise_open_files_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: (soft before, soft after, hard).

    The soft limit a service inherits is usually 1024 (select()'s old ceiling); the reactor
    (epoll) has no such ceiling, and every relayed connection needs two descriptors.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            target = soft
        else:
            return soft, target, hard
    return soft, soft, hard


def open_files_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class FdReserve:
    """One spare descriptor (/dev/null), held so that a daemon with none left can still accept a
    waiting connection, and reset it, instead of leaving it in the queue or closing it with a FIN."""

    def __init__(self) -> None:
        self.fd: Optional[int] = None

    def acquire(self) -> bool:
        """Hold the spare descriptor (again); False if there is none to take."""
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def reset_waiting(listener: socket.socket, reserve: FdReserve, limit: int) -> Optional[int]:
    """Out of descriptors: reset up to `limit` connections waiting in `listener`'s queue, using
    the reserve's slot for each in turn; the number reset, or None without a reserve to spend.

    The accept is the plain socket's (a subclass may route its own accept here), and nothing in
    between opens a descriptor, so the slot freed by the reserve is the one each accept takes.
    """
    if reserve.fd is None and not reserve.acquire():
        return None
    reserve.release()
    count = 0
    try:
        for _ in range(limit):
            try:
                conn, _ = socket.socket.accept(listener)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPERM):
                    continue  # gone before we got to it
                break  # another descriptor took the slot: stop, the caller retries later
            with conn, contextlib.suppress(OSError):  # already reset by the peer: closing is all that is left
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            count += 1
    finally:
        reserve.acquire()
    return count


# ---- memory


def trim_free_memory() -> bool:
    """Give the heap memory freed since the last call back to the system (glibc's
    malloc_trim): what thousands of ended connections used otherwise stays in the process,
    reused for the next ones but counted in its RSS.  False where there is no such call."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


# ---- readiness: systemd's notification protocol (sd_notify(3))


class Notifier:
    """The service manager's NOTIFY_SOCKET: one datagram per state change (`READY=1`,
    `STOPPING=1`), the whole protocol, so no library is needed.

    The socket is connected once, as root at start: the permission to send is checked at
    connect, so a daemon that has since dropped to its own user can still tell the manager it
    is stopping.  Without NOTIFY_SOCKET (not under systemd's Type=notify) it does nothing.
    """

    def __init__(self, environ: Optional[dict[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        self.sock: Optional[socket.socket] = None

    def open(self) -> None:
        if not self.address or self.sock is not None:
            return
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        os.environ.pop("NOTIFY_SOCKET", None)  # meant for this process, not for anything it might run

    def send(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` lines as one datagram; False if there is no manager to tell."""
        if self.sock is None:
            return False
        self.sock.send("\n".join(assignments).encode())
        return True

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
