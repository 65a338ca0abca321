#!/usr/bin/env python3
"""The benchmark's backend: one server process behind every proxy, so only the proxy differs.

    python benchmarks/bench_backend.py --cert CHAIN --key KEY --tls HOST:PORT --plain HOST:PORT

It listens twice with the same line protocol: TLS (the upstream of client mode, and the
"direct" baseline) and plaintext (the backend of server mode).  Pre-forked worker processes,
one thread per connection, blocking sockets: the bulk paths are `recv_into`/`sendall` on large
buffers (C time), a request costs a few microseconds of Python.  Standard library only.

Protocol, one command per line:
  PING          -> PONG
  SOURCE n      -> n bytes (PATTERN repeated); `SOURCE 128` is the keep-alive request
  SINK n [crc]  <- n bytes, then -> "OK n crc|-"   (the byte count the loader checks)
  INFO          -> "TLSv1.3 CIPHER resumed=0|1" (or "plain")
  STATS         -> counters summed over the workers: handshakes, resumed, ...
An end from the client (close_notify or FIN) is answered with the same, then the socket closes.
The TLS side keeps OpenSSL's defaults (tickets issued, session cache on): a client that tried
to resume could, and the counters say whether one did.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import random
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import zlib

CHUNK = 1 << 20
PATTERN = random.Random(20240601).randbytes(CHUNK)  # every byte stream is PATTERN repeated
IO_TIMEOUT = 60.0
_FIELDS = ("handshakes", "resumed", "handshake_errors", "io_errors", "tls13", "plain")
_SLOT = 8 * len(_FIELDS)


def pattern_stream(n: int):
    """memoryviews over PATTERN, n bytes in all."""
    view = memoryview(PATTERN)
    while n > 0:
        k = min(n, CHUNK)
        yield view[:k]
        n -= k


def pattern_crc(n: int) -> int:
    crc = 0
    for chunk in pattern_stream(n):
        crc = zlib.crc32(chunk, crc)
    return crc


class Stats:
    """Counters in an anonymous shared mapping: one row per worker process, summed on read."""

    def __init__(self, workers: int) -> None:
        self.mem = mmap.mmap(-1, _SLOT * workers)
        self.workers = workers
        self.row = 0
        self.lock = threading.Lock()

    def add(self, field: str, n: int = 1) -> None:
        off = self.row * _SLOT + 8 * _FIELDS.index(field)
        with self.lock:
            (v,) = struct.unpack_from("q", self.mem, off)
            struct.pack_into("q", self.mem, off, v + n)

    def totals(self) -> dict[str, int]:
        sums = [0] * len(_FIELDS)
        for w in range(self.workers):
            for i, v in enumerate(struct.unpack_from(f"{len(_FIELDS)}q", self.mem, w * _SLOT)):
                sums[i] += v
        return dict(zip(_FIELDS, sums, strict=True))


def _readline(s: socket.socket, buf: bytearray, limit: int = 256) -> bytes | None:
    while b"\n" not in buf:
        if len(buf) > limit:
            raise ValueError("line too long")
        data = s.recv(65536)
        if not data:
            return None
        buf += data
    i = buf.index(b"\n")
    line = bytes(buf[:i])
    del buf[: i + 1]
    return line


def _sink(s: socket.socket, buf: bytearray, sink: bytearray, args: list[bytes]) -> bytes:
    """SINK n [crc]: read n bytes (first those already in `buf`); the OK line to answer."""
    n, want_crc = int(args[0]), len(args) > 1
    got, crc = 0, 0
    if buf:
        head = bytes(buf[:n])
        del buf[: len(head)]
        got += len(head)
        if want_crc:
            crc = zlib.crc32(head, crc)
    view = memoryview(sink)
    while got < n:
        k = s.recv_into(view, min(len(sink), n - got))
        if k == 0:
            raise EOFError(f"EOF after {got} of {n} bytes")
        if want_crc:
            crc = zlib.crc32(view[:k], crc)
        got += k
    return f"OK {got} {crc if want_crc else '-'}\n".encode()


def _handshake(ctx: ssl.SSLContext | None, raw: socket.socket, stats: Stats) -> socket.socket | None:
    if ctx is None:
        stats.add("plain")
        return raw
    try:
        s = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        s.do_handshake()
    except (OSError, ValueError):
        stats.add("handshake_errors")
        raw.close()
        return None
    stats.add("handshakes")
    if s.session_reused:
        stats.add("resumed")
    if s.version() == "TLSv1.3":
        stats.add("tls13")
    return s


def _info(s: socket.socket) -> bytes:
    if isinstance(s, ssl.SSLSocket):
        cipher = s.cipher()
        return f"{s.version()} {cipher[0] if cipher else '?'} resumed={int(s.session_reused)}\n".encode()
    return b"plain\n"


def _end(s: socket.socket) -> None:
    """The client ended its side: answer with our end (close_notify, or a FIN)."""
    with contextlib.suppress(OSError, ValueError):
        if isinstance(s, ssl.SSLSocket):
            s.unwrap()
        else:
            s.shutdown(socket.SHUT_WR)


def serve_one(ctx: ssl.SSLContext | None, raw: socket.socket, stats: Stats) -> None:
    raw.settimeout(IO_TIMEOUT * 2)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = _handshake(ctx, raw, stats)
    if s is None:
        return
    buf = bytearray()
    sink = bytearray(256 * 1024)
    try:
        while True:
            line = _readline(s, buf)
            if line is None:
                _end(s)
                break
            words = line.split()
            cmd, args = (words[0], words[1:]) if words else (b"", [])
            if cmd == b"PING":
                s.sendall(b"PONG\n")
            elif cmd == b"SOURCE":
                for chunk in pattern_stream(int(args[0])):
                    s.sendall(chunk)
            elif cmd == b"SINK":
                s.sendall(_sink(s, buf, sink, args))
            elif cmd == b"INFO":
                s.sendall(_info(s))
            elif cmd == b"STATS":
                s.sendall((" ".join(f"{k}={v}" for k, v in stats.totals().items()) + "\n").encode())
            else:
                raise ValueError(f"unknown command {line[:40]!r}")
    except (OSError, ValueError, EOFError):
        stats.add("io_errors")
    finally:
        s.close()


def _accept_loop(lsock: socket.socket, ctx: ssl.SSLContext | None, stats: Stats) -> None:
    while True:
        try:
            raw, _ = lsock.accept()
        except OSError:
            continue
        threading.Thread(target=serve_one, args=(ctx, raw, stats), daemon=True).start()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--tls", type=_addr, required=True, help="HOST:PORT of the TLS listener")
    p.add_argument("--plain", type=_addr, required=True, help="HOST:PORT of the plaintext listener")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=900, help="every process ends by itself after this")
    args = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    listeners = [(socket.create_server(args.tls, backlog=4096), ctx),
                 (socket.create_server(args.plain, backlog=4096), None)]
    stats = Stats(args.workers)
    children = []
    for w in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.alarm(int(args.max_seconds))
            stats.row = w
            for lsock, c in listeners:
                threading.Thread(target=_accept_loop, args=(lsock, c, stats), daemon=True).start()
            while True:
                signal.pause()
        children.append(pid)
    for lsock, _ in listeners:
        lsock.close()

    def stop(*_: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:  # reap them by PID, so no zombie outlives the server
            for _ in range(50):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.02)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(args.max_seconds))
    print("READY " + " ".join(map(str, children)), flush=True)
    signal.pause()
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
