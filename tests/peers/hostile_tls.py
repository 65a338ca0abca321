"""A hostile TLS peer (tlslite-ng): a real handshake, one honest exchange, then a record the
other side must refuse; it reports the alert that came back, as one JSON line.

usage: hostile_tls.py client HOST PORT --case CASE [--version 1.2|1.3] [--name NAME]
       hostile_tls.py server HOST PORT --case CASE --cert PEM --key PEM [--version ...] [--count N]

As a client it sends "ping", reads the echo, sends the bad record.  As a server (the upstream
of a redirected program) it reads the request, answers "pong", then sends the bad record; it
prints READY once listening.  Report: {"case", "alert" (the description's name, or null),
"end" ("alert", "eof", "reset", "timeout")}.

Cases (the records a protocol fuzzer sends after the handshake):
  bad-mac       an application-data record whose AEAD tag is wrong (raw bytes)
  oversized     a record header longer than any record may be (raw bytes)
  ccs           ChangeCipherSpec after Finished (TLS 1.3: the plaintext compatibility record)
  empty-alert   an alert record with no body, encrypted with the session's keys
  zero-type     TLS 1.3: an encrypted record whose inner plaintext has no content type
  keyupdate     TLS 1.3: a KeyUpdate whose request_update is neither 0 nor 1
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

from tlslite import HandshakeSettings, TLSConnection, X509CertChain, parsePEMKey
from tlslite.constants import AlertDescription, ContentType
from tlslite.errors import TLSAbruptCloseError, TLSRemoteAlert
from tlslite.messages import Message


def bad_record(conn: TLSConnection, case: str) -> None:
    layer = conn._recordLayer  # noqa: SLF001 - crafting records is the point
    raw = conn.sock

    def sealed(content_type: int, body: bytes) -> None:
        for _ in layer.sendRecord(Message(content_type, bytearray(body))):
            pass

    if case == "bad-mac":
        raw.sendall(b"\x17\x03\x03\x00\x20" + bytes(32))
    elif case == "oversized":
        raw.sendall(b"\x17\x03\x03\x48\x01" + bytes(1024))  # 18433 bytes announced: above 2^14 + 256
    elif case == "ccs":
        if conn.version > (3, 3):
            raw.sendall(b"\x14\x03\x03\x00\x01\x01")
        else:
            sealed(ContentType.change_cipher_spec, b"\x01")
    elif case == "empty-alert":
        sealed(ContentType.alert, b"")
    elif case == "zero-type":
        # Content type 0 with an all-zero body: the inner plaintext is only padding.
        sealed(0, bytes(8))
    elif case == "keyupdate":
        sealed(ContentType.handshake, b"\x18\x00\x00\x01\x02")
    else:
        raise SystemExit(f"unknown case {case}")


def await_alert(conn: TLSConnection) -> dict[str, object]:
    try:
        while True:
            data = conn.read()
            if not data:
                return {"alert": None, "end": "eof"}
    except TLSRemoteAlert as e:
        return {"alert": AlertDescription.toStr(e.description), "end": "alert"}
    except TLSAbruptCloseError:
        return {"alert": None, "end": "eof"}
    except ConnectionResetError:
        return {"alert": None, "end": "reset"}
    except TimeoutError:
        return {"alert": None, "end": "timeout"}


def settings(version: str) -> HandshakeSettings:
    s = HandshakeSettings()
    s.minVersion = s.maxVersion = (3, 4) if version == "1.3" else (3, 3)
    return s


def report(fields: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def client(args: argparse.Namespace) -> None:
    sock = socket.create_connection((args.host, args.port), timeout=10)
    conn = TLSConnection(sock)
    conn.handshakeClientCert(settings=settings(args.version), serverName=args.name)
    conn.write(b"ping")
    got = b""
    while len(got) < 4:
        got += bytes(conn.read(max=4 - len(got)))
    bad_record(conn, args.case)
    report({"case": args.case, "version": args.version, "echo": got.decode(errors="replace"), **await_alert(conn)})


def server(args: argparse.Namespace) -> None:
    with open(args.cert) as f:
        chain = X509CertChain()
        chain.parsePemList(f.read())
    with open(args.key) as f:
        key = parsePEMKey(f.read(), private=True)
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(16)
    report({"ready": True})
    print("READY", flush=True)
    for _ in range(args.count):
        sock, _ = listener.accept()
        sock.settimeout(10)
        conn = TLSConnection(sock)
        try:
            conn.handshakeServer(certChain=chain, privateKey=key, settings=settings(args.version))
            request = bytes(conn.read(max=4096))
            conn.write(b"pong")
            bad_record(conn, args.case)
            sock.settimeout(args.alert_timeout)
            report({"case": args.case, "version": args.version, "request": request.decode(errors="replace"),
                    **await_alert(conn)})
        except Exception as e:  # noqa: BLE001 - one report per connection, whatever happened
            report({"case": args.case, "error": f"{type(e).__name__}: {e}"})
        finally:
            sock.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["client", "server"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--case", required=True)
    p.add_argument("--version", default="1.3", choices=["1.2", "1.3"])
    p.add_argument("--name", default="backend.test")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--alert-timeout", type=float, default=10.0, help="seconds to wait for the alert")
    args = p.parse_args()
    client(args) if args.role == "client" else server(args)


if __name__ == "__main__":
    main()
