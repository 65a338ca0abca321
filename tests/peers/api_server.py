"""A TLS server program written against the ssaproxy client library (for the API tests).

Listens on 127.0.0.1:--port, prints "READY", then for each accepted connection one JSON line
(peer address, SNI, client identity, version) and serves it: reads one line, answers
"you said: <line>", closes.  With --mtls it asks for client certificates (trusting --ca).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
from typing import Any

import ssaproxy


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chain", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--mtls", action="store_true")
    p.add_argument("--ca")
    p.add_argument("--count", type=int, default=1)
    args = p.parse_args()
    srv = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, args.chain.encode())
    srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, args.key.encode())
    if args.mtls:
        srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_TRUSTED_PEER_CERTIFICATES, args.ca.encode())
        srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_REQUEST_PEER_AUTH, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(16)
    print(json.dumps({"ready": True, "sockname": srv.getsockname()}), flush=True)
    print("READY", flush=True)
    srv.setblocking(False)
    try:
        srv.accept()
        print(json.dumps({"nonblocking_accept": "returned"}), flush=True)
    except BlockingIOError:
        print(json.dumps({"nonblocking_accept": "EAGAIN"}), flush=True)
    srv.setblocking(True)
    for _ in range(args.count):
        readable, _, _ = select.select([srv], [], [], 60)
        if not readable:
            break
        conn, addr = srv.accept()
        def get(opt: int, conn: socket.socket = conn) -> Any:
            return conn.getsockopt(ssaproxy.IPPROTO_TLS, opt)
        info = {"peer": addr, "sni": get(ssaproxy.TLS_SERVER_NAME).decode(),
                "identity": get(ssaproxy.TLS_PEER_IDENTITY).decode(),
                "chain_certs": get(ssaproxy.TLS_PEER_CERTIFICATE_CHAIN).count(b"BEGIN CERTIFICATE"),
                "version": get(ssaproxy.TLS_VERSION_CONN), "proto": conn.proto}
        f = conn.makefile("rwb")
        line = f.readline()
        info["line"] = line.decode("latin-1")
        f.write(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nyou said!\n")
        f.flush()
        f.close()
        conn.close()
        print(json.dumps(info), flush=True)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        print(json.dumps({"errno": e.errno, "error": str(e)}), flush=True)
        sys.exit(1)
