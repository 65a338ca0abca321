"""`ssaproxy.socket`: the Secure Socket API's calls on a real file descriptor.

From socket() on, the object is a real TCP socket of the program's family, and (protocol
version 2) it stays the same socket to close(): connect() parks it (a TCP connect in progress
to the daemon's parking address, `ssaproxy.client.park`) and passes it to the daemon, which
checks it, sends the result on the control connection and then
completes it (or resets it), so epoll registrations, dup()s and children's copies made before
connect() stay valid, and readiness is the kernel's own.  bind()/listen()/accept() are in
`serving`: the daemon accepts TLS clients on a second socket bound to the program's address
and delivers each verified one to this socket, a loopback listener.  Only TCP_UPGRADE_TLS
still puts a carrier in place of the descriptor (dup2), as in version 1.  The phase of each
socket is its session's `Connection.phase` (one vocabulary with the daemon).
"""

from __future__ import annotations

import _socket as _csocket
import contextlib
import errno
import os
import socket as _socket_module
import struct
from typing import Any, Optional

from ssaproxy.client import _io, result, serving
from ssaproxy.client._io import Control, error
from ssaproxy.client.park import refusal, try_park, unpark
from ssaproxy.client.record import SocketRecord, target
from ssaproxy.client.values import Value, encode, encoded_int, option_errors, split_key
from ssaproxy.proto import connection as c
from ssaproxy.proto import options as o
from ssaproxy.proto.connection import Phase, check

_std = _socket_module.socket
TLS_UPGRADE_CLIENT = 1  # TCP_UPGRADE_TLS values
TLS_UPGRADE_SERVER = 2


class socket(_std):
    """A socket.socket whose proto IPPROTO_TLS gets TLS from the ssaproxy daemon.  With any
    other proto it is an ordinary socket that also understands TCP_UPGRADE_TLS."""

    __module__ = "ssaproxy.client"  # its public name is ssaproxy.client.socket (= ssaproxy.socket)

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: Optional[int] = None) -> None:
        tls = proto == o.IPPROTO_TLS
        if tls and type not in (-1, _socket_module.SOCK_STREAM) and not type & _socket_module.SOCK_STREAM:
            raise error(errno.EPROTONOSUPPORT, "IPPROTO_TLS needs SOCK_STREAM")
        if family == -1:
            family = _socket_module.AF_INET
        real = _socket_module.AF_INET if family == o.AF_HOSTNAME else family
        if tls:
            _std.__init__(self, real, _socket_module.SOCK_STREAM if type == -1 else type, 0, fileno)
        else:
            _std.__init__(self, family, type, proto, fileno)
        # With a descriptor: an accepted connection (accept() fills in the rest).
        accepted = tls and fileno is not None
        self._tls = SocketRecord(family, plain=not tls, phase=Phase.CONNECTED if accepted else Phase.FRESH)

    def _err(self, code: int, text: str) -> OSError:
        """The error for a failed call, remembered as TLS_ERROR."""
        self._tls.error = text
        return error(code, text)

    # ---- identity
    @property
    def family(self) -> Any:
        if self._tls.family == o.AF_HOSTNAME:
            return o.AF_HOSTNAME
        return super().family

    @property
    def proto(self) -> int:
        return o.IPPROTO_TLS if not self._tls.plain else super().proto

    # ---- options
    def setsockopt(self, level: int, optname: int, value: Any, optlen: Optional[int] = None) -> None:
        if level == o.IPPROTO_TLS:
            with option_errors(optname, self._tls):
                self._set_tls(optname, value)
        elif level in (o.SOL_TCP, _socket_module.IPPROTO_TCP) and optname == o.TCP_UPGRADE_TLS:
            with option_errors(optname, self._tls):
                self._upgrade(encoded_int(value))
        else:
            args = (value,) if optlen is None else (value, optlen)
            super().setsockopt(level, optname, *args)
            if not self._tls.plain:
                serving.remember_option(self, level, optname, args)

    def _set_tls(self, number: int, value: Value, remember: bool = True) -> None:
        t = self._tls
        problem = check("setopt", t.phase)
        if problem is not None:
            raise self._err(problem, f"options are set before connect/listen ({t.phase.value})")
        option = o.OPTIONS.get(number)
        if option is None or option.unsupported or not option.settable:
            why = (option.unsupported or "read only") if option else "unknown option"
            raise self._err(errno.ENOPROTOOPT, f"IPPROTO_TLS option {number}: {why}")
        raw = encode(number, value)
        pairs = [(number, raw)]
        if number == o.TLS_CERTIFICATE_CHAIN:
            chain, key = split_key(raw)
            pairs = [(number, chain)] + ([(o.TLS_PRIVATE_KEY, key)] if key else [])
        for n, v in pairs:
            self._request(c.SetOption(n, v))
            if remember:
                t.options.append((n, v))

    def getsockopt(self, level: int, optname: int, buflen: int = 0) -> Any:
        t = self._tls
        if level == o.IPPROTO_TLS:
            with option_errors(optname, t):
                raw = self._get_tls(optname)
                option = o.OPTIONS[optname]
                if option.kind == o.INT:
                    number = o.unpack_int(raw)
                    return struct.pack("=i", number)[:buflen] if buflen else number
                return raw[:buflen] if buflen else raw
        if level == _socket_module.SOL_SOCKET and optname == _socket_module.SO_ERROR and not t.plain:
            if t.phase == Phase.CONNECTING:
                with contextlib.suppress(OSError):
                    self._settle(block=False)
            kernel = super().getsockopt(level, optname)  # read (and so cleared) in any case
            if t.unreported["so_error"]:
                t.unreported["so_error"] = False
                kernel = t.failed_errno
            return struct.pack("=i", kernel)[:buflen] if buflen else kernel
        return super().getsockopt(level, optname, buflen) if buflen else super().getsockopt(level, optname)

    def _get_tls(self, number: int) -> bytes:
        t = self._tls
        option = o.OPTIONS.get(number)
        if option is None or option.unsupported or not option.gettable:
            why = (option.unsupported or "not readable") if option else "unknown option"
            raise self._err(errno.ENOPROTOOPT, f"IPPROTO_TLS option {number}: {why}")
        if number == o.TLS_ERROR:
            return t.error.encode("utf-8")
        if number == o.TLS_ALLOW_RAGGED_EOF and t.phase in (Phase.CONNECTED, Phase.LISTENING):
            return next((v for n, v in reversed(t.options) if n == number), o.pack_int(0))  # the library's own
        if t.phase == Phase.CONNECTING:
            self._settle(block=self.gettimeout() != 0.0)
        if t.phase == Phase.CONNECTED:
            if number not in t.info:  # TLS_CONTEXT, say: a question for before connecting
                raise self._err(errno.EOPNOTSUPP, f"{option.name} is not answered once connected")
            return t.info[number]
        if option.connected_only:
            raise self._err(errno.ENOTCONN, f"{option.name} has a value once connected")
        if t.phase == Phase.LISTENING:
            raise self._err(errno.EOPNOTSUPP, "a listening socket answers only TLS_ERROR")
        reply = self._request(c.GetOption(number))
        assert isinstance(reply, c.Value)
        return reply.value

    # ---- the control connection
    def _session(self) -> Control:
        t = self._tls
        if t.control is None:
            if t.conn.phase != Phase.FRESH:  # a new attempt after a failed one
                t.conn = c.Connection(c.Role.CLIENT)
            control = Control(t.conn)
            try:
                for number, value in t.options:
                    control.request(c.SetOption(number, value))
            except BaseException:
                control.close()
                t.conn = c.Connection(c.Role.CLIENT)
                raise
            t.control = control
        return t.control

    def _request(self, event: c.Event, fds: tuple[int, ...] = ()) -> c.Event:
        try:
            return self._session().request(event, fds)
        except OSError as e:
            self._tls.error = e.strerror or str(e)
            if e.errno in (errno.ECONNABORTED, errno.EPROTO) or self._tls.conn.phase == Phase.CLOSED:
                self._tls.drop_session()
            raise

    def _take_carrier(self, reply: c.Event) -> None:
        if not isinstance(reply, c.Carrier):
            raise self._err(errno.EPROTO, "the daemon's reply lacks its file descriptor")
        timeout = self.gettimeout()
        try:
            os.dup2(reply.fd, self.fileno(), inheritable=False)  # the program's fd number stays; its file changes
        finally:
            os.close(reply.fd)
        self.settimeout(timeout)  # O_NONBLOCK lives on the new file: set it again
        self._tls.close_control()

    # ---- connecting
    def connect(self, address: Any) -> None:
        code = self._connect(address)
        if code == errno.EINPROGRESS:
            raise error(code, os.strerror(code))  # not a failure: TLS_ERROR stays as it was
        if code:
            raise self._err(code, self._tls.error if code == self._tls.failed_errno else os.strerror(code))

    def connect_ex(self, address: Any) -> int:
        try:
            return self._connect(address)
        except OSError as e:
            if isinstance(e, TimeoutError) and e.errno is None:
                return errno.EAGAIN
            return e.errno or errno.EIO

    def _connect(self, address: Any) -> int:
        """connect() as the kernel answers it: EINPROGRESS, then EALREADY while the attempt is
        pending; once it ended, 0 the first time after success and EISCONN after that, or the
        attempt's errno once after a failure (and a new attempt on the next call)."""
        t = self._tls
        if t.plain:
            super().connect(address)
            return 0
        earlier, t.error = t.error, ""  # SSA: cleared by the next call (kept below for a result told now)
        if t.phase == Phase.CONNECTING:
            try:
                if not self._settle(block=self.gettimeout() != 0.0):
                    return errno.EALREADY
            except TimeoutError:
                raise
            except OSError:
                pass  # FAILED now: reported below, once
        if t.phase == Phase.CONNECTED and not t.reported:
            t.reported = True
            return 0
        if t.phase == Phase.FAILED and t.unreported["connect"]:
            t.unreported["connect"] = False
            t.error = t.error or earlier  # the result may have been read earlier (SO_ERROR, recv)
            return t.failed_errno
        problem = check("connect", t.phase)
        if problem is not None:
            raise self._err(problem, f"connect() while {t.phase.value}")
        if t.bound:
            raise self._err(errno.EOPNOTSUPP, "connect() after bind(): the daemon picks the source address")
        try:
            host, port, family, name = target(t.family, address)
        except OSError as e:
            t.error = e.strerror or str(e)
            raise
        if name is not None and not any(n == o.TLS_REMOTE_HOSTNAME for n, _ in t.options):
            self._set_tls(o.TLS_REMOTE_HOSTNAME, name, remember=False)  # this attempt's name only
        t.reported = False
        t.unreported = {"connect": False, "so_error": False}
        self._park_and_connect(host, port, family)  # OK: held parked now
        if self.gettimeout() == 0.0:
            return errno.EINPROGRESS
        try:
            self._settle(block=True)
        except OSError:
            t.unreported["connect"] = False  # this call reports it
            raise
        t.reported = True
        return 0

    def _park_and_connect(self, host: str, port: int, family: int) -> None:
        """Park the socket (SYN_SENT to the daemon's parking address), then CONNECT with it."""
        try:
            ports = self._session().park_ports
        except OSError as e:
            self._tls.error = e.strerror or str(e)
            raise
        unparked = try_park(self.fileno(), ports)
        try:
            self._request(c.Connect(host, port, family, self.fileno()), (self.fileno(),))
        except OSError as e:
            if unparked is None:
                unpark(self.fileno())  # refused: unconnected again, as before the call (only if we parked it)
            if unparked and e.errno == errno.EINVAL:
                raise self._err(e.errno, refusal(e, unparked)) from None
            raise

    def _settle(self, *, block: bool) -> bool:
        """The connect/upgrade result: see `result.settle`."""
        return result.settle(self, block=block)

    def _established(self, event: c.Established | c.Accepted) -> None:
        t = self._tls
        t.info = dict(event.info)
        t.peer = event.peer
        t.local = event.local
        t.error = ""

    # ---- STARTTLS
    def _upgrade(self, role: int) -> None:
        t = self._tls
        if not t.plain:
            raise self._err(errno.EOPNOTSUPP, "TCP_UPGRADE_TLS is for an ordinary TCP socket; this one is IPPROTO_TLS")
        if role not in (TLS_UPGRADE_CLIENT, TLS_UPGRADE_SERVER):
            raise self._err(errno.EINVAL, "TCP_UPGRADE_TLS takes TLS_UPGRADE_CLIENT (1) or TLS_UPGRADE_SERVER (2)")
        if t.phase not in (Phase.FRESH, Phase.OPEN):
            raise self._err(errno.EISCONN, "already TLS")
        try:
            _std.getpeername(self)
        except OSError:
            raise self._err(errno.ENOTCONN, "TCP_UPGRADE_TLS needs a connected socket") from None
        try:
            reply = self._request(c.Upgrade(role, self.fileno()), (self.fileno(),))
            timeout = self.gettimeout()
            self._take_carrier(reply)
        except OSError:
            # STARTTLS was agreed with the peer: this connection must not go on in plaintext.
            with contextlib.suppress(OSError):
                _std.shutdown(self, _socket_module.SHUT_RDWR)
            raise
        t.plain = False
        try:
            self.settimeout(None)  # setsockopt is synchronous; the daemon's own timeouts bound the wait
            self._settle(block=True)
        finally:
            self.settimeout(timeout)

    # ---- serving (see `serving`)
    def bind(self, address: Any) -> None:
        if self._tls.plain:
            super().bind(address)
        else:
            serving.bind(self, address)

    def listen(self, backlog: int = 128) -> None:
        if self._tls.plain:
            super().listen(backlog)
        else:
            self._tls.error = ""  # SSA: TLS_ERROR is cleared by the next call
            serving.listen(self, backlog)

    def accept(self) -> tuple["socket", Any]:
        if self._tls.plain:
            fd, addr = self._accept()  # type: ignore[attr-defined]
            return type(self)(self.family, self.type, self.proto, fileno=fd), addr
        self._tls.error = ""
        return serving.accept(self)

    # ---- addresses
    def getpeername(self) -> Any:
        t = self._tls
        if t.phase == Phase.CONNECTING:
            self._settle(block=False)
        if t.phase == Phase.CONNECTED and t.peer is not None:
            return t.peer if t.family != _socket_module.AF_INET6 else (*t.peer, 0, 0)
        if not t.plain and t.phase not in (Phase.FRESH, Phase.OPEN):
            raise self._err(errno.ENOTCONN, "not connected")
        return super().getpeername()

    def getsockname(self) -> Any:
        t = self._tls
        if t.public is not None:  # bound, not listening yet: B has the program's address
            return t.public.getsockname()
        if t.phase in (Phase.CONNECTED, Phase.LISTENING) and t.local is not None:
            return t.local if t.family != _socket_module.AF_INET6 else (*t.local, 0, 0)
        return super().getsockname()

    # ---- data: only once the connect result is known
    def _ready_for_data(self, reading: bool) -> None:
        t = self._tls
        if t.phase == Phase.CONNECTING:
            if not self._settle(block=self.gettimeout() != 0.0):
                raise BlockingIOError(errno.EAGAIN, "TLS handshake still in progress")
        elif t.phase == Phase.FAILED:
            raise self._err(errno.ENOTCONN, t.error or "not connected")

    def shutdown(self, how: int) -> None:
        if self._tls.phase == Phase.CONNECTING:
            self._settle(block=True)  # a FIN before the result would read as "the program left"
        super().shutdown(how)

    def dup(self) -> "socket":
        """Another descriptor for the same socket, in any phase: the copies share one record,
        as the kernel shares the socket (the control connection closes with the last)."""
        t = self._tls
        new = type(self)(t.family, self.type, self.proto, fileno=os.dup(self.fileno()))
        new._tls = t
        t.users += 1
        new.settimeout(self.gettimeout())
        return new

    def _real_close(self, _ss: Any = _csocket.socket) -> None:
        t = self._tls
        t.users -= 1
        if t.users <= 0:
            t.close_control()
            t.close_public()
            _io.close_all(t.conn.discard_fds())
            t.conn.close()
        super()._real_close(_ss)  # type: ignore[misc]


def _gated(name: str, reading: bool) -> Any:
    """The standard socket's data call `name`, after the connect result is settled."""
    call = getattr(_std, name)

    def gated(self: socket, *args: Any, **kwargs: Any) -> Any:
        self._ready_for_data(reading)
        return call(self, *args, **kwargs)

    gated.__name__ = gated.__qualname__ = name
    return gated


for _name, _reading in (("recv", True), ("recv_into", True), ("recvfrom", True), ("recvfrom_into", True),
                        ("recvmsg", True), ("send", False), ("sendall", False), ("sendmsg", False)):
    setattr(socket, _name, _gated(_name, _reading))
