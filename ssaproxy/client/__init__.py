"""The client library: the Secure Socket API's calls on a real file descriptor.

    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
    s.connect(("192.0.2.10", 443))   # after a verified handshake, or OSError(errno)

Theory of operation (docs/api.md has the protocol): until it connects or listens, the object
holds an ordinary TCP socket (so bind() works with the program's own permissions) and a
control connection to the daemon over its Unix socket.  connect() asks the daemon for a
connection and receives the program's end of a loopback TCP "carrier", which dup2() puts in
place of the object's file descriptor: the number never changes, and from then on the fd
carries the result frame, then plaintext; a truncated or reset TLS stream reaches the
program as a TCP reset.  listen() passes the bound, listening socket to the daemon and puts
the control connection in its place; accepted connections arrive on it, each with a carrier.

Only the standard library is used here, so a program does not load the daemon's code.
"""

from __future__ import annotations

import _socket as _csocket
import errno
import ipaddress
import os
import socket as _socket_module
import struct
from typing import Any, Mapping, Optional, Union

from ssaproxy.client import _io
from ssaproxy.proto import options as o
from ssaproxy.proto import wire
from ssaproxy.proto.options import *  # noqa: F401,F403 - the SSA constants, as the library's API
from ssaproxy.proto.state import State, check

_std = _socket_module.socket
DEFAULT_SOCKET = "/run/ssaproxy/api.sock"
CONTROL_TIMEOUT = 30.0  # a daemon that takes longer to answer a local request is broken
TLS_UPGRADE_CLIENT = 1
TLS_UPGRADE_SERVER = 2
Value = Union[bytes, bytearray, str, int, os.PathLike]


def socket_path() -> str:
    """Where the daemon listens: $SSAPROXY_SOCKET, else the default path."""
    return os.environ.get("SSAPROXY_SOCKET") or DEFAULT_SOCKET


def _error(code: int, text: str) -> OSError:
    cls = {errno.ECONNREFUSED: ConnectionRefusedError, errno.ECONNRESET: ConnectionResetError,
           errno.ECONNABORTED: ConnectionAbortedError, errno.ETIMEDOUT: TimeoutError,
           errno.EPERM: PermissionError}.get(code, OSError)
    return cls(code, text)


class _Control:
    """One control connection to the daemon (request / reply)."""

    def __init__(self) -> None:
        path = socket_path()
        self.sock = _std(_socket_module.AF_UNIX, _socket_module.SOCK_STREAM)
        self.sock.settimeout(CONTROL_TIMEOUT)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise _error(e.errno or errno.ECONNREFUSED,
                         f"the ssaproxy daemon is not reachable at {path}: {e.strerror or e}") from None
        try:
            reply, _ = self.request(wire.Kind.HELLO, {wire.Tag.VERSION: wire.VERSION})
            if reply.kind != wire.Kind.WELCOME:
                raise _error(errno.EPROTO, f"unexpected reply to HELLO: {reply.kind.name}")
        except BaseException:
            self.close()
            raise

    def request(self, kind: wire.Kind, fields: Optional[Mapping[int, object]] = None,
                fd: Optional[int] = None) -> tuple[wire.Message, list[int]]:
        fds: list[int] = []
        try:
            _io.send_frame(self.sock, wire.encode(kind, fields), fd)
            reply = _io.read_frame(self.sock, CONTROL_TIMEOUT, fds)
        except BaseException as e:
            for extra in fds:
                os.close(extra)
            if isinstance(e, wire.ProtocolError):
                raise _error(errno.EPROTO, f"malformed reply from the ssaproxy daemon: {e}") from None
            if isinstance(e, (BrokenPipeError, ConnectionResetError)):
                raise _error(errno.ECONNABORTED, "the ssaproxy daemon closed the session") from None
            raise
        return self._checked(reply, fds)

    def _checked(self, reply: wire.Message, fds: list[int]) -> tuple[wire.Message, list[int]]:
        if reply.kind == wire.Kind.ERROR:
            for extra in fds:
                os.close(extra)
            raise _error(reply.int(wire.Tag.ERRNO), reply.text(wire.Tag.TEXT))
        return reply, fds

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def _pem(value: Value, what: str) -> bytes:
    """PEM bytes as given, or read from the path given, here in the program's process."""
    if isinstance(value, (bytes, bytearray)) and b"-----BEGIN" in value:
        return bytes(value)
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode("ascii")
    if isinstance(value, int):
        raise _error(errno.EINVAL, f"{what}: give PEM bytes or a file path")
    path = os.fsdecode(bytes(value).rstrip(b"\x00") if isinstance(value, (bytes, bytearray)) else value)
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise _error(e.errno or errno.EINVAL, f"{what}: cannot read {path}: {e.strerror}") from None


def _split_key(pem: bytes) -> tuple[bytes, Optional[bytes]]:
    """A combined file (chain and key, as haproxy and stunnel take): (chain, key)."""
    marker = b"-----BEGIN "
    chain: list[bytes] = []
    key: list[bytes] = []
    for block in pem.split(marker)[1:]:
        (key if block.split(b"-----", 1)[0].endswith(b"PRIVATE KEY") else chain).append(marker + block)
    return b"".join(chain), (b"".join(key) or None)


def _encode_value(number: int, value: Value) -> bytes:
    option = o.OPTIONS.get(number)
    kind = option.kind if option else o.TEXT
    if kind == o.PEM:
        return _pem(value, option.name if option else str(number))
    if kind == o.INT:
        if isinstance(value, bool) or not isinstance(value, (int, bytes, bytearray)):
            raise _error(errno.EINVAL, f"{option.name if option else number} takes an integer")
        if isinstance(value, (bytes, bytearray)):  # a C int, as setsockopt(2) passes it
            if len(value) != 4:
                raise _error(errno.EINVAL, "an integer option takes 4 bytes")
            value = struct.unpack("=i", value)[0]
        return o.pack_int(int(value))  # type: ignore[arg-type]
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise _error(errno.EINVAL, f"option {number} takes bytes or text")


class _TLS:
    """What the library knows about one socket."""

    def __init__(self, family: int, plain: bool) -> None:
        self.family = family
        self.plain = plain  # an ordinary TCP socket until TCP_UPGRADE_TLS
        self.state = State.FRESH
        self.control: Optional[_Control] = None
        self.options: list[tuple[int, bytes]] = []  # replayed on a new session
        self.info: dict[int, bytes] = {}
        self.error = ""  # TLS_ERROR
        self.failed_errno = 0
        self.peer: Optional[tuple[str, int]] = None
        self.local: Optional[tuple[str, int]] = None
        self.bound = False
        self.fds: list[int] = []  # received on a listening socket, not yet paired with ACCEPTED
        self.partial = bytearray()  # a listening socket's incomplete frame, across accept() calls

    def close_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None

    def close_fds(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


class socket(_std):
    """A socket.socket whose proto IPPROTO_TLS gets TLS from the ssaproxy daemon.  With any
    other proto it is an ordinary socket that also understands TCP_UPGRADE_TLS."""

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: Optional[int] = None) -> None:
        tls = proto == o.IPPROTO_TLS
        if tls and type not in (-1, _socket_module.SOCK_STREAM) and not type & _socket_module.SOCK_STREAM:
            raise _error(errno.EPROTONOSUPPORT, "IPPROTO_TLS needs SOCK_STREAM")
        if family == -1:
            family = _socket_module.AF_INET
        real = _socket_module.AF_INET if family == o.AF_HOSTNAME else family
        if tls:
            _std.__init__(self, real, _socket_module.SOCK_STREAM if type == -1 else type, 0, fileno)
        else:
            _std.__init__(self, family, type, proto, fileno)
        self._tls = _TLS(family, plain=not tls)
        if tls and fileno is not None:
            self._tls.state = State.CONNECTED  # an accepted connection (accept() fills in the rest)

    def _err(self, code: int, text: str) -> OSError:
        """The error for a failed call, remembered as TLS_ERROR."""
        self._tls.error = text
        return _error(code, text)

    # ---- identity
    @property
    def family(self) -> Any:  # type: ignore[override]
        if self._tls.family == o.AF_HOSTNAME:
            return o.AF_HOSTNAME
        return super().family

    @property
    def proto(self) -> int:  # type: ignore[override]
        return o.IPPROTO_TLS if not self._tls.plain else super().proto

    # ---- options
    def setsockopt(self, level: int, optname: int, value: Any, optlen: Optional[int] = None) -> None:  # type: ignore[override]
        if level == o.IPPROTO_TLS:
            self._set_tls(optname, value)
        elif level in (o.SOL_TCP, _socket_module.IPPROTO_TCP) and optname == o.TCP_UPGRADE_TLS:
            self._upgrade(int(value) if not isinstance(value, (bytes, bytearray)) else struct.unpack("=i", value)[0])
        elif optlen is not None:
            super().setsockopt(level, optname, value, optlen)
        else:
            super().setsockopt(level, optname, value)

    def _set_tls(self, number: int, value: Value, remember: bool = True) -> None:
        t = self._tls
        problem = check("setopt", t.state)
        if problem is not None:
            raise self._err(problem, f"options are set before connect/listen ({t.state.value})")
        option = o.OPTIONS.get(number)
        if option is None or option.unsupported or not option.settable:
            why = (option.unsupported or "read only") if option else "unknown option"
            raise self._err(errno.ENOPROTOOPT, f"IPPROTO_TLS option {number}: {why}")
        raw = _encode_value(number, value)
        pairs = [(number, raw)]
        if number == o.TLS_CERTIFICATE_CHAIN:
            chain, key = _split_key(raw)
            pairs = [(number, chain)] + ([(o.TLS_PRIVATE_KEY, key)] if key else [])
        for n, v in pairs:
            self._request(wire.Kind.SETOPT, {wire.Tag.OPTION: n, wire.Tag.VALUE: v})
            if remember:
                t.options.append((n, v))

    def getsockopt(self, level: int, optname: int, buflen: int = 0) -> Any:  # type: ignore[override]
        t = self._tls
        if level == o.IPPROTO_TLS:
            raw = self._get_tls(optname)
            option = o.OPTIONS[optname]
            if option.kind == o.INT:
                number = o.unpack_int(raw)
                return struct.pack("=i", number)[:buflen] if buflen else number
            return raw[:buflen] if buflen else raw
        if level == _socket_module.SOL_SOCKET and optname == _socket_module.SO_ERROR and not buflen:
            if t.state == State.CONNECTING:
                try:
                    self._settle(block=False)
                except OSError as e:
                    return e.errno
            return super().getsockopt(level, optname)
        return super().getsockopt(level, optname, buflen) if buflen else super().getsockopt(level, optname)

    def _get_tls(self, number: int) -> bytes:
        t = self._tls
        option = o.OPTIONS.get(number)
        if option is None or option.unsupported or not option.gettable:
            why = (option.unsupported or "not readable") if option else "unknown option"
            raise self._err(errno.ENOPROTOOPT, f"IPPROTO_TLS option {number}: {why}")
        if number == o.TLS_ERROR:
            return t.error.encode("utf-8")
        if t.state == State.CONNECTING:
            self._settle(block=self.gettimeout() != 0.0)
        if t.state == State.CONNECTED:
            return t.info.get(number, b"")
        if option.connected_only:
            raise self._err(errno.ENOTCONN, f"{option.name} has a value once connected")
        if t.state == State.LISTENING:
            raise self._err(errno.EOPNOTSUPP, "a listening socket answers only TLS_ERROR")
        reply, _ = self._request(wire.Kind.GETOPT, {wire.Tag.OPTION: number})
        return reply.raw(wire.Tag.VALUE)

    # ---- the control connection
    def _session(self) -> _Control:
        t = self._tls
        if t.control is None:
            control = _Control()
            try:
                for number, value in t.options:  # a new attempt after a failed one
                    control.request(wire.Kind.SETOPT, {wire.Tag.OPTION: number, wire.Tag.VALUE: value})
            except BaseException:
                control.close()
                raise
            t.control = control
            if t.state == State.FRESH or t.state == State.FAILED:
                t.state = State.OPEN
        return t.control

    def _request(self, kind: wire.Kind, fields: Mapping[int, object], fd: Optional[int] = None,
                 ) -> tuple[wire.Message, list[int]]:
        try:
            return self._session().request(kind, fields, fd)
        except OSError as e:
            self._tls.error = e.strerror or str(e)
            if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                self._tls.close_control()
            raise

    def _take_carrier(self, fds: list[int]) -> None:
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise self._err(errno.EPROTO, "the daemon's reply lacks its file descriptor")
        timeout = self.gettimeout()
        try:
            os.dup2(fds[0], self.fileno(), inheritable=False)  # the program's fd number stays; its file changes
        finally:
            os.close(fds[0])
        self.settimeout(timeout)  # O_NONBLOCK lives on the new file: set it again
        self._tls.close_control()

    # ---- connecting
    def connect(self, address: Any) -> None:  # type: ignore[override]
        code = self._connect(address)
        if code == errno.EINPROGRESS:
            raise _error(code, os.strerror(code))  # not a failure: TLS_ERROR stays as it was
        if code:
            raise self._err(code, self._tls.error)

    def connect_ex(self, address: Any) -> int:  # type: ignore[override]
        try:
            return self._connect(address)
        except OSError as e:
            if isinstance(e, TimeoutError) and e.errno is None:
                return errno.EAGAIN
            return e.errno or errno.EIO

    def _connect(self, address: Any) -> int:
        t = self._tls
        if t.plain:
            super().connect(address)
            return 0
        if t.state == State.CONNECTING:
            return 0 if self._settle(block=self.gettimeout() != 0.0) else errno.EALREADY
        problem = check("connect", t.state)
        if problem is not None:
            raise self._err(problem, f"connect() while {t.state.value}")
        if t.bound:
            raise self._err(errno.EOPNOTSUPP, "connect() after bind(): the daemon picks the source address")
        host, port, family = self._target(address)
        reply, fds = self._request(wire.Kind.CONNECT, {wire.Tag.HOST: host, wire.Tag.PORT: port,
                                                        wire.Tag.FAMILY: family})
        self._take_carrier(fds)
        t.state = State.CONNECTING
        if self.gettimeout() == 0.0:
            return errno.EINPROGRESS
        self._settle(block=True)
        return 0

    def _target(self, address: Any) -> tuple[str, int, int]:
        t = self._tls
        if not isinstance(address, tuple) or len(address) < 2 or not isinstance(address[1], int):
            raise self._err(errno.EINVAL, "address must be (host, port)")
        host, port = address[0], address[1]
        if isinstance(host, bytes):
            host = host.decode("ascii")
        if t.family == o.AF_HOSTNAME:
            return host, port, 0
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            # A name with AF_INET/AF_INET6: resolved here, as the kernel's connect() would
            # need; the name is what the certificate must prove (unless the program set one).
            infos = _socket_module.getaddrinfo(host, port, t.family, _socket_module.SOCK_STREAM)
            if not any(n == o.TLS_REMOTE_HOSTNAME for n, _ in t.options):
                self._set_tls(o.TLS_REMOTE_HOSTNAME, host, remember=False)  # this attempt's name only
            ip = ipaddress.ip_address(infos[0][4][0])
        want = 6 if t.family == _socket_module.AF_INET6 else 4
        if ip.version != want:
            raise self._err(errno.EAFNOSUPPORT, f"{ip} is not an IPv{want} address")
        return str(ip), port, want

    def _settle(self, *, block: bool) -> bool:
        """Read the connect/upgrade result off the carrier.  True once connected; False when
        not there yet (non-blocking); the failure's errno as an OSError."""
        t = self._tls
        if t.state != State.CONNECTING:
            return t.state == State.CONNECTED
        try:
            if block:
                _io.wait_frame(self, self.gettimeout())  # TimeoutError leaves the frame where it is
            elif _io.frame_ready(self) is False:
                return False
            message = _io.read_frame(self, 1.0)  # whole (or EOF), so this does not wait
        except TimeoutError:
            raise
        except OSError as e:
            t.state = State.FAILED
            t.error = f"the ssaproxy daemon ended the connection: {e.strerror or e}"
            raise _error(e.errno or errno.ECONNABORTED, t.error) from None
        except wire.ProtocolError as e:
            t.state = State.FAILED
            t.error = f"malformed result from the ssaproxy daemon: {e}"
            raise _error(errno.EPROTO, t.error) from None
        if message.kind == wire.Kind.ESTABLISHED:
            self._established(message)
            return True
        t.state = State.FAILED
        if message.kind == wire.Kind.ERROR:
            t.error = message.text(wire.Tag.TEXT)
            t.failed_errno = message.int(wire.Tag.ERRNO)
        else:
            t.error, t.failed_errno = f"unexpected {message.kind.name} on the carrier", errno.EPROTO
        raise self._err(t.failed_errno, t.error)

    def _established(self, message: wire.Message) -> None:
        t = self._tls
        t.state = State.CONNECTED
        t.info = message.info
        t.peer = (message.text(wire.Tag.PEER_HOST), message.int(wire.Tag.PEER_PORT))
        if wire.Tag.LOCAL_HOST in message.attrs:
            t.local = (message.text(wire.Tag.LOCAL_HOST), message.int(wire.Tag.LOCAL_PORT))
        t.error = ""

    # ---- STARTTLS
    def _upgrade(self, role: int) -> None:
        t = self._tls
        if not t.plain:
            raise self._err(errno.EOPNOTSUPP, "TCP_UPGRADE_TLS is for an ordinary TCP socket; this one is IPPROTO_TLS")
        if role not in (TLS_UPGRADE_CLIENT, TLS_UPGRADE_SERVER):
            raise self._err(errno.EINVAL, "TCP_UPGRADE_TLS takes TLS_UPGRADE_CLIENT (1) or TLS_UPGRADE_SERVER (2)")
        if t.state not in (State.FRESH, State.OPEN):
            raise self._err(errno.EISCONN, "already TLS")
        try:
            _std.getpeername(self)
        except OSError:
            raise self._err(errno.ENOTCONN, "TCP_UPGRADE_TLS needs a connected socket") from None
        try:
            reply, fds = self._request(wire.Kind.UPGRADE, {wire.Tag.ROLE: role}, fd=self.fileno())
        except OSError:
            # STARTTLS was agreed with the peer: this connection must not go on in plaintext.
            try:
                _std.shutdown(self, _socket_module.SHUT_RDWR)
            except OSError:
                pass
            raise
        timeout = self.gettimeout()
        try:
            self._take_carrier(fds)
        except OSError:
            try:
                _std.shutdown(self, _socket_module.SHUT_RDWR)  # fail closed, as above
            except OSError:
                pass
            raise
        t.plain = False
        t.state = State.CONNECTING
        try:
            self.settimeout(None)  # setsockopt is synchronous; the daemon's own timeouts bound the wait
            self._settle(block=True)
        finally:
            self.settimeout(timeout)

    # ---- serving
    def bind(self, address: Any) -> None:  # type: ignore[override]
        if not self._tls.plain and self._tls.family == o.AF_HOSTNAME:
            raise self._err(errno.EOPNOTSUPP, "an AF_HOSTNAME socket cannot bind")
        super().bind(address)
        self._tls.bound = True

    def listen(self, backlog: int = 128) -> None:  # type: ignore[override]
        t = self._tls
        if t.plain:
            super().listen(backlog)
            return
        problem = check("listen", t.state)
        if problem is not None:
            raise self._err(problem, f"listen() while {t.state.value}")
        if t.state == State.LISTENING:
            return
        super().listen(backlog)
        t.local = super().getsockname()[:2]
        control = self._session()
        self._request(wire.Kind.LISTEN, {wire.Tag.BACKLOG: backlog}, fd=self.fileno())
        timeout = self.gettimeout()
        os.dup2(control.fileno(), self.fileno(), inheritable=False)  # accepted connections arrive here now
        self.settimeout(timeout)
        t.close_control()
        t.state = State.LISTENING

    def accept(self) -> tuple["socket", Any]:  # type: ignore[override]
        t = self._tls
        if t.plain:
            fd, addr = self._accept()  # type: ignore[attr-defined]
            return type(self)(self.family, self.type, self.proto, fileno=fd), addr
        problem = check("accept", t.state)
        if problem is not None:
            raise self._err(problem, "accept() on a socket that is not listening")
        try:
            message = _io.pump(self, t.partial, t.fds, self.gettimeout())
        except wire.ProtocolError as e:
            raise self._err(errno.EPROTO, f"malformed message from the ssaproxy daemon: {e}") from None
        if message is None:
            raise BlockingIOError(errno.EAGAIN, "no connection ready")
        if message.kind != wire.Kind.ACCEPTED or not t.fds:
            raise self._err(errno.EPROTO, f"unexpected {message.kind.name} on a listening socket")
        fd = t.fds.pop(0)  # descriptors pair with ACCEPTED frames in order (docs/api.md)
        _io.send_frame(self, wire.encode(wire.Kind.ACK))
        conn = type(self)(t.family, _socket_module.SOCK_STREAM, o.IPPROTO_TLS, fileno=fd)
        conn._established(message)
        if _socket_module.getdefaulttimeout() is None:
            conn.settimeout(None)
        peer = conn._tls.peer
        assert peer is not None
        address = (peer[0], peer[1], 0, 0) if t.family == _socket_module.AF_INET6 else peer
        return conn, address

    # ---- addresses
    def getpeername(self) -> Any:  # type: ignore[override]
        t = self._tls
        if t.state == State.CONNECTING:
            self._settle(block=False)
        if t.state == State.CONNECTED and t.peer is not None:
            return t.peer if t.family != _socket_module.AF_INET6 else (*t.peer, 0, 0)
        if not t.plain and t.state != State.FRESH and t.state != State.OPEN:
            raise self._err(errno.ENOTCONN, "not connected")
        return super().getpeername()

    def getsockname(self) -> Any:  # type: ignore[override]
        t = self._tls
        if t.state in (State.CONNECTED, State.LISTENING) and t.local is not None:
            return t.local if t.family != _socket_module.AF_INET6 else (*t.local, 0, 0)
        return super().getsockname()

    # ---- data: the connect result comes first on the carrier
    def _ready_for_data(self, reading: bool) -> None:
        t = self._tls
        if t.state == State.CONNECTING:
            if not self._settle(block=self.gettimeout() != 0.0) and reading:
                raise BlockingIOError(errno.EAGAIN, "TLS handshake still in progress")
        elif t.state == State.FAILED:
            raise self._err(errno.ENOTCONN, t.error or "not connected")

    def recv(self, bufsize: int, flags: int = 0) -> bytes:  # type: ignore[override]
        self._ready_for_data(True)
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:  # type: ignore[override]
        self._ready_for_data(True)
        return super().recv_into(buffer, nbytes, flags)

    def recvfrom(self, bufsize: int, flags: int = 0) -> Any:  # type: ignore[override]
        self._ready_for_data(True)
        return super().recvfrom(bufsize, flags)

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> Any:  # type: ignore[override]
        self._ready_for_data(True)
        return super().recvfrom_into(buffer, nbytes, flags)

    def recvmsg(self, *args: Any) -> Any:  # type: ignore[override]
        self._ready_for_data(True)
        return super().recvmsg(*args)

    def send(self, data: Any, flags: int = 0) -> int:  # type: ignore[override]
        self._ready_for_data(False)
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:  # type: ignore[override]
        self._ready_for_data(False)
        super().sendall(data, flags)

    def sendmsg(self, *args: Any) -> int:  # type: ignore[override]
        self._ready_for_data(False)
        return super().sendmsg(*args)

    def shutdown(self, how: int) -> None:  # type: ignore[override]
        if self._tls.state == State.CONNECTING:
            self._settle(block=True)  # a FIN before the result would read as "the program left"
        super().shutdown(how)

    def dup(self) -> "socket":  # type: ignore[override]
        t = self._tls
        if t.state not in (State.CONNECTED,) and not t.plain:
            raise self._err(errno.EOPNOTSUPP, f"dup() of an IPPROTO_TLS socket while {t.state.value}")
        new = type(self)(t.family, self.type, self.proto, fileno=os.dup(self.fileno()))
        new._tls.info, new._tls.peer, new._tls.local = dict(t.info), t.peer, t.local
        new.settimeout(self.gettimeout())
        return new

    def _real_close(self, _ss: Any = _csocket.socket) -> None:  # type: ignore[override]
        self._tls.close_control()
        self._tls.close_fds()
        self._tls.state = State.CLOSED
        super()._real_close(_ss)  # type: ignore[misc]


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
            try:
                sock.shutdown(_socket_module.SHUT_RDWR)
            except OSError:
                pass
        helper.close()
        raise
    try:
        os.dup2(helper.fileno(), sock.fileno(), inheritable=False)  # sock's own number now holds the carrier
        sock.settimeout(timeout)
        info = dict(helper._tls.info)
    finally:
        helper.close()
    result: dict[int, Any] = {}
    for number, raw in info.items():
        option = o.OPTIONS.get(number)
        result[number] = o.unpack_int(raw) if option is not None and option.kind == o.INT else raw
    return result


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


_original = _std


def install() -> None:
    """Make socket.socket this class, so socket.socket(AF_INET, SOCK_STREAM, IPPROTO_TLS)
    gets TLS from the daemon; every other socket stays an ordinary one."""
    _socket_module.socket = socket  # type: ignore[misc]


def uninstall() -> None:
    _socket_module.socket = _original  # type: ignore[misc]
