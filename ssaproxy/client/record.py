"""What the library knows about one socket, and the address rules for connect().

A socket's phase is its current session's `Connection.phase`.  A session is one control
connection (plus, after UPGRADE, the result on the carrier); a new attempt after a failed
one, or after the control connection broke, starts a new session.  dup() shares the record,
as the kernel shares one socket between descriptors.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any, Optional

from ssaproxy.client import _io
from ssaproxy.client._io import Control, error
from ssaproxy.proto import connection as c
from ssaproxy.proto import options as o
from ssaproxy.proto.connection import Phase


class SocketRecord:
    """What the library knows about one socket."""

    def __init__(self, family: int, plain: bool, phase: Phase = Phase.FRESH) -> None:
        self.family = family
        self.plain = plain  # an ordinary TCP socket until TCP_UPGRADE_TLS
        self.conn = c.Connection(c.Role.CLIENT, phase=phase)  # this attempt's session
        self.control: Optional[Control] = None
        self.options: list[tuple[int, bytes]] = []  # replayed on a new session
        self.info: dict[int, bytes] = {}
        self.error = ""  # TLS_ERROR
        self.failed_errno = 0
        self.peer: Optional[tuple[str, int]] = None
        self.local: Optional[tuple[str, int]] = None
        self.bound = False
        self.public: Optional[socket.socket] = None  # B: bound to the program's address, until LISTEN
        self.sockopts: list[tuple[int, int, Any]] = []  # SOL_SOCKET / IPPROTO_IPV6 options, for B
        self.token = b""  # LISTEN's: what each accepted connection starts with
        self.reported = False  # connect() has returned 0 for this connection (then: EISCONN)
        self.unreported = {"connect": False, "so_error": False}  # a failure each still owes once
        self.users = 1  # socket objects sharing this record (dup)

    @property
    def phase(self) -> Phase:
        return self.conn.phase

    def close_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None

    def close_public(self) -> None:
        if self.public is not None:
            self.public.close()
            self.public = None

    def drop_session(self) -> None:
        """The control connection broke before anything started: the next call opens a new
        session (FRESH behaves as OPEN for every socket call)."""
        self.close_control()
        if self.conn.phase in (Phase.FRESH, Phase.OPEN, Phase.CLOSED):
            _io.close_all(self.conn.discard_fds())
            self.conn = c.Connection(c.Role.CLIENT)

    def failed(self, code: int, text: str) -> None:
        """The attempt ended without a result from the daemon."""
        _io.close_all(self.conn.discard_fds())
        self.conn = c.Connection(c.Role.CLIENT, phase=Phase.FAILED)
        self.error, self.failed_errno = text, code
        self.unreported = {"connect": True, "so_error": True}


def target(family: int, address: Any) -> tuple[str, int, int, Optional[str]]:
    """CONNECT's HOST, PORT and FAMILY for `address`, and the name the certificate must prove
    when the program gave a name rather than an address (None otherwise)."""
    if not isinstance(address, tuple) or len(address) < 2 or not isinstance(address[1], int):
        raise error(errno.EINVAL, "address must be (host, port)")
    host, port = address[0], address[1]
    if isinstance(host, bytes):
        host = host.decode("ascii")
    if family == o.AF_HOSTNAME:
        return host, port, 0, None
    name = None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # A name with AF_INET/AF_INET6: resolved here, as the kernel's connect() would need;
        # the name is what the certificate must prove (unless the program set one).
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        ip, name = ipaddress.ip_address(infos[0][4][0]), host
    want = 6 if family == socket.AF_INET6 else 4
    if ip.version != want:
        raise error(errno.EAFNOSUPPORT, f"{ip} is not an IPv{want} address")
    return str(ip), port, want, name


def family_of(host: str) -> int:
    """The socket family for connecting to `host`: the IP literal's, else AF_HOSTNAME."""
    try:
        return {4: socket.AF_INET, 6: socket.AF_INET6}[ipaddress.ip_address(host).version]
    except ValueError:
        return o.AF_HOSTNAME
