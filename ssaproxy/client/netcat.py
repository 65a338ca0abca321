"""`ssaproxy connect HOST PORT`: stdin/stdout over a verified TLS connection made by the
daemon under its policy, like `openssl s_client -quiet` or `nc`, with what was negotiated on
stderr.  Exit status: 0 after a clean close, 1 when the connection is refused, truncated or
reset (a truncated stream is never reported as a clean end)."""

from __future__ import annotations

import os
import selectors
import socket as _stdsocket
import sys
from typing import Any, Optional

from ssaproxy.client import socket as tls_socket
from ssaproxy.client.record import family_of
from ssaproxy.proto import options as o


def run(host: str, port: int, *, hostname: Optional[str] = None, alpn: Optional[str] = None,
        ca: Optional[str] = None, cert: Optional[str] = None, key: Optional[str] = None,
        stdin: int = 0, stdout: int = 1) -> int:
    s = tls_socket(family_of(host), _stdsocket.SOCK_STREAM, o.IPPROTO_TLS)
    try:
        for number, value in ((o.TLS_REMOTE_HOSTNAME, hostname), (o.TLS_ALPN, alpn),
                              (o.TLS_TRUSTED_PEER_CERTIFICATES_ONLY, ca), (o.TLS_CERTIFICATE_CHAIN, cert),
                              (o.TLS_PRIVATE_KEY, key)):
            if value is not None:
                s.setsockopt(o.IPPROTO_TLS, number, value.encode())
        s.connect((host, port))
    except OSError as e:
        print(f"ssaproxy: {host}:{port}: {os.strerror(e.errno) if e.errno else ''}: {e.strerror or e}",
              file=sys.stderr)
        s.close()
        return 1
    _describe(s, host, port)
    return _pump(s, stdin, stdout)


def _describe(s: tls_socket, host: str, port: int) -> None:
    def get(n: int) -> Any:
        return s.getsockopt(o.IPPROTO_TLS, n)

    peer = s.getpeername()
    chain = get(o.TLS_PEER_CERTIFICATE_CHAIN).count(b"-----BEGIN CERTIFICATE-----")
    version = o.VERSION_NAMES.get(get(o.TLS_VERSION_CONN), "?")
    alpn = get(o.TLS_ALPN).decode() or "-"
    print(f"ssaproxy: connected to {host}:{port} (peer {peer[0]}:{peer[1]}); verified "
          f"{get(o.TLS_PEER_IDENTITY).decode()!r}; {version} {get(o.TLS_CHOSEN_CIPHER).decode()}; "
          f"ALPN {alpn}; chain of {chain} certificates", file=sys.stderr, flush=True)


def _pump(s: tls_socket, stdin: int, stdout: int) -> int:
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ, "net")
    sel.register(stdin, selectors.EVENT_READ, "in")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "in":
                    data = os.read(stdin, 65536)
                    if data:
                        s.sendall(data)
                    else:
                        sel.unregister(stdin)
                        s.shutdown(_stdsocket.SHUT_WR)  # becomes close_notify
                else:
                    try:
                        data = s.recv(65536)
                    except ConnectionResetError:
                        print("ssaproxy: the TLS connection was reset or truncated", file=sys.stderr)
                        return 1
                    if not data:
                        return 0
                    view = memoryview(data)
                    while view:
                        view = view[os.write(stdout, view):]
    finally:
        sel.close()
        s.close()


