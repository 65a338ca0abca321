"""The "legacy app" of the end-to-end tests: a plaintext TCP client (stdlib only).

usage: client.py HOST PORT [--send TEXT] [--send-bytes N] [--shutdown] [--read-delay S]
                           [--then-send N] [--max-read N] [--timeout S]

Connects, sends, optionally shuts down its write side, then reads until EOF, reset or
timeout, and prints one JSON line: how the connection ended ("eof" = FIN, "reset" = RST),
how many bytes arrived, their sha256, and the first bytes.  --then-send sends N more bytes
after the peer's EOF arrived (half-close from the server side), then shuts down.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import socket
import ssl
import struct
import sys
import time

from pattern import pattern_stream  # the script's own directory


class _Done(Exception):
    pass


class _Received:
    """What arrived so far (kept when the read loop ends with an exception)."""

    def __init__(self) -> None:
        self.n = 0
        self.h = hashlib.sha256()
        self.head = b""

    def add(self, data: bytes) -> None:
        self.n += len(data)
        self.h.update(data)
        if len(self.head) < 200:
            self.head += data[: 200 - len(self.head)]


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--send", default="")
    p.add_argument("--send-bytes", type=int, default=0)
    p.add_argument("--shutdown", action="store_true")
    p.add_argument("--read-delay", type=float, default=0.0)
    p.add_argument("--then-send", type=int, default=0)
    p.add_argument("--max-read", type=int, default=1 << 40)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--tls-ca-pem", help="speak TLS itself, trusting this CA (PEM text), as a TLS-aware app would")
    p.add_argument("--sni", help="with --tls-ca-pem: the name to verify")
    p.add_argument("--tls-delay", type=float, default=0.0, help="with --tls-ca-pem: wait before the ClientHello")
    p.add_argument("--tls-cert", help="with --tls-ca-pem: client certificate chain (PEM file)")
    p.add_argument("--tls-key", help="with --tls-cert: its private key")
    p.add_argument("--reset", action="store_true", help="after sending, close with RST instead of reading")
    return p.parse_args()


def _start_tls(s: socket.socket, args: argparse.Namespace, result: dict[str, object]) -> socket.socket:
    time.sleep(args.tls_delay)
    ctx = ssl.create_default_context(cadata=args.tls_ca_pem)
    if args.tls_cert:
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    # suppress_ragged_eofs=False: only close_notify is a clean end ("eof"); a TCP end
    # without it, FIN or RST alike in Python's ssl, is "unclean".
    tls = ctx.wrap_socket(s, server_hostname=args.sni, suppress_ragged_eofs=False)
    result["tls_version"] = tls.version()
    return tls


def _send(s: socket.socket, args: argparse.Namespace) -> None:
    if args.send:
        s.sendall(args.send.encode().decode("unicode_escape").encode("latin-1"))
    if args.send_bytes:
        for piece in pattern_stream(args.send_bytes):
            s.sendall(piece)
    if args.reset:
        time.sleep(0.2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        raise _Done("sent-reset")
    if args.shutdown:
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            # Linux answers ENOTCONN when a reset already ended the connection (a FIN never
            # does that): report it as the reset it is.
            if e.errno == errno.ENOTCONN:
                raise ConnectionResetError(errno.ECONNRESET, "reset before our shutdown") from e
            raise


def _read(s: socket.socket, args: argparse.Namespace, got: _Received) -> str:
    """Read until EOF or --max-read; how it ended."""
    if args.read_delay:
        time.sleep(args.read_delay)
    while got.n < args.max_read:
        data = s.recv(65536)
        if not data:
            return "eof"
        got.add(data)
    return "max-read"


def _then_send(s: socket.socket, args: argparse.Namespace, result: dict[str, object]) -> None:
    for piece in pattern_stream(args.then_send):
        s.sendall(piece)
    s.shutdown(socket.SHUT_WR)
    try:
        rest = s.recv(1)
        result["after_then_send"] = "eof" if not rest else "data"
    except ConnectionResetError:
        result["after_then_send"] = "reset"


def main() -> None:
    args = _parse_args()
    result: dict[str, object] = {"connected": False, "received": 0, "end": None}
    got = _Received()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(args.timeout)
    try:
        s.connect((args.host, args.port))
        result["connected"] = True
        if args.tls_ca_pem:
            s = _start_tls(s, args, result)
        _send(s, args)
        result["end"] = _read(s, args, got)
        if args.then_send and result["end"] == "eof":
            _then_send(s, args, result)
    except _Done as done:
        result["end"] = done.args[0]
    except ConnectionResetError:
        result["end"] = "reset"
    except ssl.SSLEOFError:
        result["end"] = "unclean"
    except ConnectionRefusedError:
        result["end"] = "refused"
    except TimeoutError:
        result["end"] = "timeout"
    except OSError as e:
        result["end"] = "reset" if e.errno == errno.ECONNRESET else f"error:{errno.errorcode.get(e.errno or 0, e)}"
    finally:
        s.close()
    result["received"] = got.n
    result["sha256"] = got.h.hexdigest()
    result["head"] = got.head.decode("latin-1")
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
