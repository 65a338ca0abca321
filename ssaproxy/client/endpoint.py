"""A Twisted client endpoint through the ssaproxy daemon: `ssa:host=example.com:port=443`.

The control requests are local round trips; the handshake itself is waited for without
blocking the reactor (the socket becomes writable once the daemon has completed or reset it,
as a TCP connect does: docs/api.md), then the reactor adopts the socket and the protocol
speaks plaintext.  A truncated or reset
TLS stream reaches the protocol as connectionLost with ConnectionLost, never ConnectionDone.
"""

from __future__ import annotations

import errno
import socket as _stdsocket
from typing import Any, Optional

from twisted.internet import defer, error
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint, IWriteDescriptor
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from ssaproxy.client import socket as tls_socket
from ssaproxy.client.record import family_of
from ssaproxy.proto import options as o


@implementer(IWriteDescriptor)
class _Waiter:
    """Writable once the daemon has completed (or reset) the socket, its result sent before."""

    def __init__(self, sock: tls_socket, done: Any) -> None:
        self.sock = sock
        self.done = done

    def fileno(self) -> int:
        return self.sock.fileno()

    def doWrite(self) -> None:
        self.done()

    def connectionLost(self, reason: Failure) -> None:
        # A failed connect polls OUT|ERR|HUP, which the reactor reports as a lost descriptor
        # rather than as writable: the result is there all the same.
        self.done()

    def logPrefix(self) -> str:
        return "ssaproxy-connect"


@implementer(IStreamClientEndpoint)
class SSAClientEndpoint:
    def __init__(self, reactor: Any, host: str, port: int, *, hostname: Optional[str] = None,
                 alpn: Optional[str] = None, timeout: float = 30.0) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.hostname = hostname
        self.alpn = alpn
        self.timeout = timeout

    def connect(self, factory: IProtocolFactory) -> "defer.Deferred[Any]":
        sock = tls_socket(family_of(self.host), _stdsocket.SOCK_STREAM, o.IPPROTO_TLS)
        try:
            if self.hostname:
                sock.setsockopt(o.IPPROTO_TLS, o.TLS_REMOTE_HOSTNAME, self.hostname.encode())
            if self.alpn:
                sock.setsockopt(o.IPPROTO_TLS, o.TLS_ALPN, self.alpn.encode())
            sock.setblocking(False)
            code = sock.connect_ex((self.host, self.port))
        except OSError as e:
            sock.close()
            return defer.fail(error.ConnectError(osError=e.errno, string=str(e)))  # type: ignore[no-untyped-call]
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return defer.fail(error.ConnectError(osError=code, string=_reason(sock, code)))  # type: ignore[no-untyped-call]

        waiter: Optional[_Waiter] = None
        timer: Any = None

        def cleanup() -> None:
            if waiter is not None:
                self.reactor.removeWriter(waiter)
            if timer is not None and timer.active():
                timer.cancel()

        def cancel(d: "defer.Deferred[Any]") -> None:
            cleanup()
            sock.close()

        d: "defer.Deferred[Any]" = defer.Deferred(cancel)

        def ready() -> None:
            result = sock.connect_ex((self.host, self.port))
            if result == errno.EALREADY:
                return
            cleanup()
            if result != 0:
                reason = _reason(sock, result)
                sock.close()
                d.errback(error.ConnectError(osError=result, string=reason))  # type: ignore[no-untyped-call]
                return
            protocol = factory.buildProtocol(None)  # type: ignore[arg-type]  # no address to give
            if protocol is None:
                sock.close()
                d.errback(error.ConnectError(string="factory built no protocol"))  # type: ignore[no-untyped-call]
                return
            family = _stdsocket.AF_INET if sock.family == o.AF_HOSTNAME else sock.family
            self.reactor.adoptStreamConnection(sock.fileno(), family, _Once(protocol))
            sock.close()  # the reactor holds its own duplicate of the socket
            d.callback(protocol)

        def timed_out() -> None:
            cleanup()
            sock.close()
            d.errback(error.TimeoutError(string=f"no verified TLS connection to {self.host}:{self.port} in time"))  # type: ignore[no-untyped-call]

        waiter = _Waiter(sock, ready)
        self.reactor.addWriter(waiter)
        timer = self.reactor.callLater(self.timeout, timed_out)
        return d


def _reason(sock: tls_socket, code: int) -> str:
    try:
        text = sock.getsockopt(o.IPPROTO_TLS, o.TLS_ERROR).decode("utf-8", "replace")
    except OSError:
        text = ""
    return text or errno.errorcode.get(code, str(code))


class _Once(Factory):
    noisy = False

    def __init__(self, protocol: Any) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self.protocol_
