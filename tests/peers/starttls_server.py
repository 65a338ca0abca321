"""A minimal SMTP server with STARTTLS, built on Python's ssl (the peer for a program that
upgrades its own connection through ssaproxy).  After the TLS handshake it takes EHLO, MAIL,
RCPT, DATA and QUIT (or one "ECHO <text>", answered "250 <text>"), and reports what it saw as
one JSON line."""

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
    p.add_argument("--inject", action="store_true",
                   help="append forged EHLO lines to the STARTTLS reply, in plaintext (a man in the middle)")
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
    conn.sendall(b"220 go ahead\r\n" + (b"250-INJECTED-IN-PLAINTEXT\r\n250 AUTH PLAIN\r\n" if args.inject else b""))
    tls = ctx.wrap_socket(conn, server_side=True)
    tf = tls.makefile("rwb", buffering=0)
    seen: dict[str, object] = {"version": tls.version(), "commands": []}
    while True:
        line = tf.readline().decode().strip()
        if not line:
            break
        verb = line.split(" ", 1)[0].upper()
        seen["commands"].append(verb)  # type: ignore[union-attr]
        if verb == "ECHO":
            seen["line"] = line
            tls.sendall(b"250 " + line.partition(" ")[2].encode() + b"\r\n")
            break
        if verb == "DATA":
            tls.sendall(b"354 go on\r\n")
            body = []
            while (data := tf.readline()) not in (b".\r\n", b""):
                body.append(data.decode())
            seen["data"] = "".join(body)
            tls.sendall(b"250 queued\r\n")
        elif verb == "QUIT":
            tls.sendall(b"221 bye\r\n")
            break
        else:
            tls.sendall(b"250 ok\r\n")
    print(json.dumps(seen), flush=True)
    tls.close()

if __name__ == "__main__":
    main()
