"""A real TLS server for the end-to-end tests (Python's ssl; pyOpenSSL for the half-close mode).

Modes (one per process; each accepted connection is served in its own thread):
  echo        echo everything until the client's close_notify, then close_notify and close
  sink        read until close_notify, then answer "<bytes> <sha256>\\n", close_notify, close
  source      send --bytes of the deterministic pattern, close_notify, close; progress in --status
  banner      send "220 ready\\r\\n" first (server-first protocol), then echo
  http        read one request head, answer 200 with a small body, close_notify, close
  truncate    send 1000 pattern bytes, then close TCP without close_notify
  reset       send 1000 pattern bytes, then reset TCP (SO_LINGER 0)
  halfclose   (pyOpenSSL) send "response", close_notify, then read until the client's
              close_notify and report how many bytes came after ours
  hold        plain TCP: accept and never answer (no TLS at all)
  plainecho   plain TCP echo (no TLS), for passthrough routes
Each connection's outcome is printed as one JSON line; "READY" once listening.  Python's ssl
reports a TCP FIN and a TCP RST without close_notify alike ("eof_without_close_notify").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import ssl
import struct
import sys
import threading
import time

from OpenSSL import SSL
from pattern import CHUNK, pattern, pattern_stream  # the script's own directory


def report(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def read_all(conn: ssl.SSLSocket) -> tuple[int, str, str]:
    h, n, end = hashlib.sha256(), 0, "close_notify"
    while True:
        try:
            data = conn.recv(CHUNK)
        except ssl.SSLEOFError:
            end = "eof_without_close_notify"
            break
        except (ssl.SSLError, OSError) as e:
            end = f"error:{e}"
            break
        if not data:
            break
        h.update(data)
        n += len(data)
    return n, h.hexdigest(), end


def close_clean(conn: ssl.SSLSocket) -> None:
    try:
        conn.unwrap().close()
    except (ssl.SSLError, OSError):
        conn.close()


def serve_tls(conn: ssl.SSLSocket, args: argparse.Namespace) -> None:
    mode = args.mode
    info: dict[str, object] = {"mode": mode, "version": conn.version(), "cipher": (conn.cipher() or ("",))[0],
                               "sni": getattr(conn, "sni", None), "reused": conn.session_reused}
    if mode in ("echo", "banner"):
        if mode == "banner":
            conn.sendall(b"220 ready\r\n")
        n, end = 0, "close_notify"
        while True:
            try:
                data = conn.recv(CHUNK)
            except ssl.SSLEOFError:
                end = "eof_without_close_notify"
                break
            if not data:
                break
            n += len(data)
            conn.sendall(data)
        report(**info, received=n, end=end)
        close_clean(conn)
    elif mode == "sink":
        n, digest, end = read_all(conn)
        conn.sendall(f"{n} {digest}\n".encode())
        report(**info, received=n, sha256=digest, end=end)
        close_clean(conn)
    elif mode == "source":
        sent = written = 0
        for chunk in pattern_stream(args.bytes):
            conn.sendall(chunk)
            sent += len(chunk)
            # By progress, not by time: once the peer stops reading, sendall blocks, and a
            # clock-based update might never have happened yet.
            if args.status and sent - written >= 1 << 20:
                written = sent
                with open(args.status, "w") as f:
                    f.write(str(sent))
        if args.status:
            with open(args.status, "w") as f:
                f.write(str(sent))
        report(**info, sent=sent)
        close_clean(conn)
    elif mode == "http":
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            data = conn.recv(4096)
            if not data:
                break
            head += data
        body = b"hello from the TLS server\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        report(**info, request=head.decode("latin-1"))
        close_clean(conn)
    elif mode in ("truncate", "reset"):
        conn.recv(CHUNK)  # the request: unread data would turn our FIN into a RST
        conn.sendall(pattern(1000))
        time.sleep(0.2)
        if mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        report(**info, sent=1000)
        # Closing the SSLSocket sends no close_notify: the TCP connection just ends.
        conn.close()


def serve_halfclose(raw: socket.socket, args: argparse.Namespace) -> None:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(args.cert)
    ctx.use_privatekey_file(args.key)
    # pyOpenSSL wants a blocking socket; SO_RCVTIMEO still bounds every wait.
    raw.settimeout(None)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(args.timeout), 0))
    conn = SSL.Connection(ctx, raw)
    conn.set_accept_state()
    conn.do_handshake()
    conn.sendall(b"response")
    conn.shutdown()  # our close_notify; the client may keep sending
    n, end = 0, "close_notify"
    while True:
        try:
            data = conn.recv(CHUNK)
        except SSL.ZeroReturnError:
            break
        except SSL.Error as e:
            end = f"error:{e}"
            break
        if not data:
            break
        n += len(data)
    report(mode="halfclose", received_after_close_notify=n, end=end)
    raw.close()


def handle(raw: socket.socket, ctx: ssl.SSLContext | None, args: argparse.Namespace) -> None:
    try:
        raw.settimeout(args.timeout)
        if args.mode == "hold":
            while raw.recv(CHUNK):  # swallow the ClientHello, never answer
                pass
            return
        if args.mode == "plainecho":
            n = 0
            while data := raw.recv(CHUNK):
                n += len(data)
                raw.sendall(data)
            report(mode="plainecho", received=n)
            return
        if args.mode == "halfclose":
            serve_halfclose(raw, args)
            return
        assert ctx is not None
        time.sleep(args.delay)  # a slow server: the handshake starts this late
        try:
            # suppress_ragged_eofs=False: a TCP end without close_notify must show as such.
            conn = ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
        except (ssl.SSLError, OSError) as e:
            report(mode=args.mode, handshake_error=str(e))
            return
        serve_tls(conn, args)
    except Exception as e:  # noqa: BLE001 - a peer's failure is reported, not fatal to the server
        report(mode=args.mode, error=f"{type(e).__name__}: {e}")
    finally:
        raw.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--status")
    p.add_argument("--max-version", choices=["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"])
    p.add_argument("--ciphers")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--max-conns", type=int, default=1000)
    p.add_argument("--delay", type=float, default=0, help="seconds before each TLS handshake starts")
    args = p.parse_args()

    ctx = None
    if args.mode not in ("hold", "halfclose", "plainecho"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if args.ciphers:  # before loading: the security level decides which certificates load
            ctx.set_ciphers(args.ciphers)
        ctx.load_cert_chain(args.cert, args.key)
        if args.max_version:
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
                                   "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}[
                args.max_version]

        def sni(conn: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            conn.sni = name  # type: ignore[attr-defined]

        ctx.sni_callback = sni  # type: ignore[assignment]

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.host, args.port))
    srv.listen(128)
    print("READY", flush=True)
    for _ in range(args.max_conns):
        raw, _addr = srv.accept()
        threading.Thread(target=handle, args=(raw, ctx, args), daemon=True).start()


if __name__ == "__main__":
    main()
