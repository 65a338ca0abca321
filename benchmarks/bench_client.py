"""The load generator's side: ways to reach the backend (a Target) and the operations timed
through them.  Blocking sockets; every socket has a timeout and every loop a count and a time
limit."""

from __future__ import annotations

import collections
import socket
import ssl
import threading
import time
import zlib
from typing import Callable

from bench_backend import CHUNK, pattern_crc, pattern_stream
from bench_procs import HOSTNAME

IO_TIMEOUT = 30.0
KEEPALIVE_REPLY = 128  # bytes of the keep-alive answer


class Target:
    """One way of reaching the backend: through a proxy or directly; the client speaks TLS
    when `tls_ctx` is set (server mode, and the direct baseline), plaintext otherwise."""

    def __init__(self, name: str, mode: str, addr: tuple[str, int], tls_ctx: ssl.SSLContext | None = None,
                 pid_fn: Callable[[], int | None] = lambda: None) -> None:
        self.name = name
        self.mode = mode
        self.addr = addr
        self.tls_ctx = tls_ctx
        self.pid_fn = pid_fn  # the proxy process (tree), if any

    @property
    def pid(self) -> int | None:
        return self.pid_fn()

    def connect(self) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=IO_TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls_ctx is not None:
            s = self.tls_ctx.wrap_socket(s, server_hostname=HOSTNAME)
        return s

    def finish(self, s: socket.socket) -> None:
        """Orderly end: half-close (close_notify), expect the backend's clean end, close."""
        try:
            if isinstance(s, ssl.SSLSocket):
                s.unwrap()
            else:
                s.shutdown(socket.SHUT_WR)
                extra = 0
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    extra += len(data)
                if extra:
                    raise RuntimeError(f"{extra} unexpected bytes before EOF")
        finally:
            s.close()


class ApiTarget(Target):
    """The local socket API: the program asks the daemon for a TLS socket (ssaproxy.socket,
    IPPROTO_TLS, TLS_HOSTNAME) and connects to the backend's own address."""

    def connect(self) -> socket.socket:
        import ssaproxy  # noqa: PLC0415 - only the API target needs the client library

        s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
        s.settimeout(IO_TIMEOUT)
        s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, HOSTNAME.encode())
        s.connect(self.addr)
        return s  # type: ignore[no-any-return]


def read_line(s: socket.socket, limit: int = 512) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        data = s.recv(1)
        if not data:
            raise EOFError(f"EOF after {buf!r}")
        buf += data
        if len(buf) > limit:
            raise ValueError("line too long")
    return buf[:-1]


def read_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = s.recv(n - len(buf))
        if not data:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def ping(t: Target, keep: bool = False) -> socket.socket | None:
    s = t.connect()
    try:
        s.sendall(b"PING\n")
        got = read_exact(s, 5)
        if got != b"PONG\n":
            raise RuntimeError(f"expected PONG, got {got!r}")
    except BaseException:
        s.close()
        raise
    if keep:
        return s
    t.finish(s)
    return None


def command(t: Target, line: bytes) -> str:
    s = t.connect()
    try:
        s.sendall(line + b"\n")
        reply = read_line(s).decode()
    except BaseException:
        s.close()
        raise
    t.finish(s)
    return reply


def upload(t: Target, n: int, crc: bool = False) -> tuple[float, int]:
    """Client -> backend: n bytes.  (seconds from the first byte to the backend's OK, bytes the
    backend counted)."""
    s = t.connect()
    try:
        s.sendall(f"SINK {n}{' crc' if crc else ''}\n".encode())
        t0 = time.perf_counter()
        for chunk in pattern_stream(n):
            s.sendall(chunk)
        reply = read_line(s).decode().split()
        elapsed = time.perf_counter() - t0
        if reply[0] != "OK":
            raise RuntimeError(f"backend reply {reply}")
        if crc and int(reply[2]) != pattern_crc(n):
            raise RuntimeError("the backend received different bytes (crc mismatch)")
    except BaseException:
        s.close()
        raise
    t.finish(s)
    return elapsed, int(reply[1])


def download(t: Target, n: int, crc: bool = False) -> tuple[float, int]:
    """Backend -> client: n bytes.  (seconds from the request to the last byte, bytes read)."""
    s = t.connect()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        t0 = time.perf_counter()
        s.sendall(f"SOURCE {n}\n".encode())
        got, c = 0, 0
        while got < n:
            k = s.recv_into(view, min(CHUNK, n - got))
            if k == 0:
                raise EOFError(f"EOF after {got} of {n} bytes")
            if crc:
                c = zlib.crc32(view[:k], c)
            got += k
        elapsed = time.perf_counter() - t0
        if crc and c != pattern_crc(n):
            raise RuntimeError("the client received different bytes (crc mismatch)")
    except BaseException:
        s.close()
        raise
    t.finish(s)
    return elapsed, got


def keepalive(t: Target, requests: int, time_limit: float) -> list[float]:
    """One connection, `requests` request/response exchanges one after another (`SOURCE 128`
    and its 128-byte answer); the seconds each took.  The connection is open (and warmed with
    one exchange) before the clock starts."""
    s = t.connect()
    req = f"SOURCE {KEEPALIVE_REPLY}\n".encode()
    lat: list[float] = []
    try:
        s.sendall(req)
        read_exact(s, KEEPALIVE_REPLY)
        stop_at = time.monotonic() + time_limit
        pc = time.perf_counter
        for _ in range(requests):
            t0 = pc()
            s.sendall(req)
            got = 0
            while got < KEEPALIVE_REPLY:
                data = s.recv(KEEPALIVE_REPLY - got)
                if not data:
                    raise EOFError(f"EOF after {got} of {KEEPALIVE_REPLY} bytes")
                got += len(data)
            lat.append(pc() - t0)
            if len(lat) % 256 == 0 and time.monotonic() > stop_at:
                break
    except BaseException:
        s.close()
        raise
    t.finish(s)
    return lat


def conn_storm(t: Target, total: int, concurrency: int, time_limit: float):
    """`total` connections (each: connect, PING/PONG, orderly close), `concurrency` at a time,
    for at most `time_limit` seconds.  Returns (completed, elapsed, latencies, errors)."""
    lock = threading.Lock()
    issued = [0]
    lat: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    stop_at = time.monotonic() + time_limit

    def worker() -> None:
        while True:
            with lock:
                if issued[0] >= total or time.monotonic() > stop_at:
                    return
                issued[0] += 1
            t0 = time.perf_counter()
            try:
                ping(t)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors[f"{type(e).__name__}: {str(e)[:80]}"] += 1
                continue
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(time_limit + IO_TIMEOUT * 3)
    elapsed = time.perf_counter() - t0
    return len(lat), elapsed, lat, errors


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]
