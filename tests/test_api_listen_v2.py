"""Protocol version 2, listen() and accept(): the program's socket is a kernel listener on
loopback, to which the daemon delivers each verified client (token + ACCEPTED frame first).

Programs in subprocesses serve real TLS clients (Python's ssl, curl) through a real daemon:
pre-forked children and several threads accept at once (each client served exactly once,
intact), and a local process that finds the loopback listener without the token is reset
while the real clients get through."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.api_harness import ApiDaemon, free_port
from tests.lab import poll, stop, wait_for_text
from tests.pki import PKI

# A server program: `--workers N` pre-forked children (os.fork after listen) or N threads,
# each accepting and echoing one line per connection, with a JSON line per connection served.
SERVER = """
import hashlib, json, os, socket, sys, threading, time
import ssaproxy
how, workers, port, chain, key, stop_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7]
srv = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, chain.encode())
srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, key.encode())
srv.bind(("127.0.0.1", port))
srv.listen(64)
loopback = socket.socket.getsockname(srv)  # the kernel's own answer: the loopback listener
print(json.dumps({"ready": True, "sockname": srv.getsockname(), "loopback": loopback}), flush=True)
print("READY", flush=True)
lock = threading.Lock()

def serve(who):
    srv.settimeout(0.5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not os.path.exists(stop_file):
        try:
            conn, addr = srv.accept()
        except (TimeoutError, BlockingIOError):
            continue
        conn.settimeout(10)
        try:
            f = conn.makefile("rb")
            data = f.readline()
            conn.sendall(b"%s %s" % (who.encode(), data))
            conn.shutdown(socket.SHUT_WR)
            record = {"who": who, "peer": addr, "sha": hashlib.sha256(data).hexdigest()}
        except OSError as e:
            record = {"who": who, "peer": addr, "error": str(e)}
        conn.close()
        with lock:  # one write(2) per line: the children share the log (O_APPEND)
            os.write(1, (json.dumps(record) + "\\n").encode())

if how == "fork":
    children = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                serve(f"child-{os.getpid()}")
            finally:
                os._exit(0)
        children.append(pid)
    srv.close()  # the children hold the listener now
    for pid in children:
        os.waitpid(pid, 0)
else:
    threads = [threading.Thread(target=serve, args=(f"thread-{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
"""


def _start(api: ApiDaemon, pki: PKI, tmp: Path, how: str, workers: int) -> tuple[int, Path, Any, Path, dict[str, Any]]:
    port = free_port()
    creds = pki.server("good")
    log = tmp / f"server-{how}.log"
    stop_file = tmp / f"stop-{how}"
    p = api.spawn([sys.executable, "-c", SERVER, how, str(workers), str(port), str(creds.chain), str(creds.key),
                   str(stop_file)], log)
    wait_for_text(log, "READY", p, 15)
    ready = json.loads(log.read_text().splitlines()[0])
    return port, log, p, stop_file, ready


def _client(pki: PKI, port: int, payload: bytes, out: dict[int, Any], i: int) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.root_pem))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                ctx.wrap_socket(raw, server_hostname="backend.test") as tls:
            tls.sendall(payload)
            got = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                got += chunk
            out[i] = got
    except (OSError, ssl.SSLError) as e:
        out[i] = e


def _served(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()[1:] if line.startswith("{")]


@pytest.mark.parametrize(("how", "workers"), [("fork", 4), ("threads", 4)])
def test_several_acceptors_each_client_served_exactly_once_and_intact(api: ApiDaemon, pki: PKI, tmp_path: Path,
                                                                     how: str, workers: int) -> None:
    port, log, server, stop_file, _ = _start(api, pki, tmp_path, how, workers)
    payloads = {i: (b"client-%02d:" % i) + bytes(range(48, 58)) * 3000 + b"\n" for i in range(10)}
    out: dict[int, Any] = {}
    clients = [threading.Thread(target=_client, args=(pki, port, payloads[i], out, i)) for i in range(10)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(60)
    stop_file.write_text("")
    server.wait(30)
    for i, payload in payloads.items():
        got = out.get(i)
        assert isinstance(got, bytes), (i, got)
        who, _, echoed = got.partition(b" ")
        assert echoed == payload, (i, len(echoed), len(payload))  # intact, and this client's own bytes
    served = _served(log)
    assert len(served) == 10 and not [s for s in served if "error" in s], served  # each exactly once
    assert sorted(s["sha"] for s in served) == sorted(hashlib.sha256(p).hexdigest() for p in payloads.values())
    if how == "fork":  # served by the children, not by one process that happened to win every time
        assert all(s["who"].startswith("child-") for s in served), served


def test_a_local_process_without_the_token_is_never_delivered_and_real_clients_get_through(api: ApiDaemon, pki: PKI,
                                                                                 tmp_path: Path) -> None:
    port, log, server, stop_file, ready = _start(api, pki, tmp_path, "threads", 1)
    loopback = tuple(ready["loopback"])
    assert ready["sockname"] == ["127.0.0.1", port] and loopback[1] != port, ready  # getsockname: the program's
    intruders = []
    for greeting in (b"", b"x" * 64, b"GET / HTTP/1.1\r\n\r\n"):  # silent, wrong token, plain HTTP
        s = socket.create_connection(loopback, timeout=10)
        if greeting:
            s.sendall(greeting)
        intruders.append(s)
    curls = [subprocess.Popen(["curl", "-sS", "--http0.9", "--max-time", "20", "--cacert", str(pki.root_pem),
                               "--resolve", f"backend.test:{port}:127.0.0.1", "-d", f"curl {i}\n",
                               f"https://backend.test:{port}/"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    results = [c.communicate(timeout=40) for c in curls]
    ends = []
    for s in intruders:
        s.settimeout(3)
        try:
            data = s.recv(100)
            ends.append("eof" if not data else f"data {data!r}")
        except ConnectionResetError:
            ends.append("reset")
        except TimeoutError:
            ends.append("waiting")  # silent: deferred, it never reached accept() at all
        finally:
            s.close()
    stop_file.write_text("")
    server.wait(30)
    for out, err in results:
        assert out.startswith("thread-0 POST / HTTP/1.1"), (out, err)  # the echo of curl's request line
    served = _served(log)
    assert len(served) == 3 and all(s["peer"][0] == "127.0.0.1" for s in served), served  # no intruder accepted
    assert ends == ["waiting", "reset", "reset"], ends


def test_strangers_sending_a_byte_do_not_hold_up_accept(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    """Any local user can connect to the program's loopback listener.  Twenty strangers that
    each send one byte (never a whole token) must not make the one acceptor wait for each of
    them: the first bytes are looked at briefly, not for the whole delivery timeout (2 s each:
    40 s, beyond curl's --max-time below)."""
    port, log, server, stop_file, ready = _start(api, pki, tmp_path, "threads", 1)
    loopback = tuple(ready["loopback"])
    strangers = []
    try:
        for i in range(20):
            s = socket.create_connection(loopback, timeout=10)
            s.sendall(bytes([i]))
            strangers.append(s)
        curl = subprocess.run(["curl", "-sS", "--http0.9", "--max-time", "20", "--cacert", str(pki.root_pem),
                               "--resolve", f"backend.test:{port}:127.0.0.1", "-d", "after strangers\n",
                               f"https://backend.test:{port}/"], capture_output=True, text=True, timeout=40)
    finally:
        for s in strangers:
            s.close()
        stop_file.write_text("")
        server.wait(30)
    assert curl.stdout.startswith("thread-0 POST / HTTP/1.1"), (curl.stdout, curl.stderr)
    assert len(_served(log)) == 1


def test_closing_the_listener_stops_it_in_the_daemon(api: ApiDaemon, pki: PKI) -> None:
    creds = pki.server("good")
    port = free_port()
    r = api.program(f"""
srv = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, b"{creds.chain}")
srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, b"{creds.key}")
srv.bind(("127.0.0.1", {port}))
try:
    again = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    again.bind(("127.0.0.1", {port}))
except OSError as e:
    result["second_bind"] = e.errno  # bind's own error, from the program's own bind
srv.listen(8)
result["sockname"] = srv.getsockname()
srv.setblocking(False)
try:
    srv.accept()
except BlockingIOError:
    result["nonblocking"] = "EAGAIN"
srv.close()
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    probe = socket.socket()
    code = probe.connect_ex(("127.0.0.1", {port}))
    probe.close()
    if code == errno.ECONNREFUSED:
        break
    time.sleep(0.1)
result["after_close"] = errno.errorcode.get(code, code)
""")
    assert r["second_bind"] == 98 and r["sockname"] == ["127.0.0.1", port], r  # EADDRINUSE
    assert r["nonblocking"] == "EAGAIN" and r["after_close"] == "ECONNREFUSED", r


def test_ipv6_listener(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    creds = pki.server("good")
    port = free_port()
    log = tmp_path / "v6.log"
    code = f"""
import json, socket, ssaproxy
srv = ssaproxy.socket(socket.AF_INET6, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, b"{creds.chain}")
srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, b"{creds.key}")
srv.bind(("::1", {port}))
srv.listen(4)
print(json.dumps({{"sockname": srv.getsockname(), "loopback": socket.socket.getsockname(srv)}}), flush=True)
print("READY", flush=True)
conn, addr = srv.accept()
conn.sendall(b"hello " + conn.recv(100))
conn.close()
print(json.dumps({{"addr": addr}}), flush=True)
"""
    p = api.spawn([sys.executable, "-c", code], log)
    wait_for_text(log, "READY", p, 15)
    r = subprocess.run(["curl", "-sS", "--http0.9", "-g", "--max-time", "10", "--cacert", str(pki.root_pem),
                        "--resolve", f"backend.test:{port}:[::1]", "-d", "x", f"https://backend.test:{port}/"],
                       capture_output=True, text=True, timeout=20)
    p.wait(15)
    assert r.stdout.startswith("hello POST / HTTP/1.1"), (r.stdout, r.stderr)
    head = json.loads(log.read_text().splitlines()[0])
    assert head["sockname"][:2] == ["::1", port] and head["loopback"][0] == "::1", head
    addr = json.loads(log.read_text().splitlines()[-1])["addr"]
    assert addr[0] == "::1" and len(addr) == 4, addr
    assert poll(lambda: p.poll() is not None)
    stop(p)
