"""A minimal SMTP server with STARTTLS, built on Python's ssl (the peer for a program that
upgrades its own connection through ssaproxy).  After the TLS handshake it answers EHLO,
then one "ECHO <text>" with "250 <text>", and reports what it saw as one JSON line."""

from __future__ import annotations

import argparse
import json
import socket
import ssl


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    args = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv = socket.create_server(("127.0.0.1", args.port))
    print("READY", flush=True)
    srv.settimeout(60)
    conn, _ = srv.accept()
    conn.settimeout(30)
    f = conn.makefile("rwb", buffering=0)
    conn.sendall(b"220 starttls.test ESMTP\r\n")
    f.readline()  # EHLO
    conn.sendall(b"250-starttls.test\r\n250 STARTTLS\r\n")
    assert f.readline().strip().upper() == b"STARTTLS"
    conn.sendall(b"220 go ahead\r\n")
    tls = ctx.wrap_socket(conn, server_side=True)
    tf = tls.makefile("rwb", buffering=0)
    tf.readline()  # EHLO again
    tls.sendall(b"250 starttls.test\r\n")
    line = tf.readline().decode().strip()
    tls.sendall(b"250 " + line.partition(" ")[2].encode() + b"\r\n")
    print(json.dumps({"version": tls.version(), "sni": getattr(tls, "server_hostname", None), "line": line}),
          flush=True)
    tls.close()


if __name__ == "__main__":
    main()
