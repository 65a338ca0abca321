"""A plaintext backend for the inbound tests (stdlib only).

usage: backend.py HOST PORT MODE [--bytes N]
  echo     echo everything back; close after the client's FIN
  source   send --bytes of the test pattern, then close (FIN)
  reset    send --bytes of the test pattern, then reset (RST)
  http     answer one request head with "200 ok <path>", then close
Each connection's outcome is one JSON line (what arrived first, how much); "READY" once listening.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time

from pattern import pattern_stream  # the script's own directory


def report(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def serve(conn: socket.socket, n: int, args: argparse.Namespace) -> None:
    conn.settimeout(30)
    received, head = 0, b""
    try:
        if args.mode in ("source", "reset"):
            for piece in pattern_stream(args.bytes):
                conn.sendall(piece)
            if args.mode == "reset":
                time.sleep(0.2)  # let the bytes reach the client first: the test is about the ending
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif args.mode == "http":
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(4096)
                if not data:
                    break
                head += data
            received = len(head)
            path = head.split(b" ")[1].decode("latin-1") if head.count(b" ") >= 2 else "?"
            body = f"200 ok {path}\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        else:
            while data := conn.recv(65536):
                if len(head) < 512:
                    head += data[: 512 - len(head)]
                received += len(data)
                conn.sendall(data)
        report(conn=n, mode=args.mode, received=received, head=head.decode("latin-1"))
    except OSError as e:
        report(conn=n, mode=args.mode, received=received, head=head.decode("latin-1"), error=str(e))
    finally:
        conn.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("mode", choices=["echo", "source", "reset", "http"])
    p.add_argument("--bytes", type=int, default=0)
    args = p.parse_args()
    srv = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.host, args.port))
    srv.listen(64)
    print("READY", flush=True)
    for n in range(1, 1001):
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, n, args), daemon=True).start()


if __name__ == "__main__":
    main()
