"""Protocol version 2, connect(): the program's descriptor is the carrier from socket() on.

Programs in subprocesses use the library against real TLS servers (Python's ssl) through a
real daemon: epoll registrations and dup()s made before connect() stay valid and see exactly
one completion, SO_ERROR reports a failure once, connect() answers as TCP's does, no protocol
framing is ever readable on the descriptor, and the daemon stopping or vanishing reaches the
program as an errno or a reset, never as a clean end."""

from __future__ import annotations

import array
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ssaproxy.proto import wire
from tests.api_harness import ApiDaemon, free_port
from tests.lab import poll, stop
from tests.pki import PKI

# Runs in the program: one non-blocking connect, watched by an edge-triggered epoll on the
# socket and a level-triggered one on a dup(), both registered before connect(); every wakeup
# is counted for `window` seconds after the first one (bounded in count, too).
WATCH = """
import select
def watch(port, hostname=b"backend.test", window=1.0, early=True):
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, hostname)
    s.setblocking(False)
    copy = os.dup(s.fileno())  # before connect: must stay the same socket
    edge, level = select.epoll(), select.epoll()
    edge.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
    out = {"fresh": [e for _, e in edge.poll(0)]}  # an unconnected TCP socket's one OUT|HUP, as without us
    level.register(copy, select.EPOLLOUT)
    out["first"] = s.connect_ex(("127.0.0.1", port))
    if early:  # asked while the attempt is pending (the caller's server makes it last)
        out["pending"] = s.connect_ex(("127.0.0.1", port))
        out["pending_so_error"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    edge_events, level_before = [], 0
    start = time.monotonic()
    first = None
    while time.monotonic() - start < 30 and len(edge_events) < 100:
        if first is not None and time.monotonic() - first > window:
            break
        for _, ev in edge.poll(0.05):
            edge_events.append(ev)
            first = first or time.monotonic()
        if first is None:
            level_before += len(level.poll(0))  # level-triggered: nothing before the completion
    out["edge"] = edge_events
    out["level_before"] = level_before
    out["level_after"] = [e for _, e in level.poll(0)]
    out["so_error"] = [s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for _ in range(2)]
    out["calls"] = [s.connect_ex(("127.0.0.1", port))]
    out["error"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()  # the next call clears it (SSA)
    out["calls"].append(s.connect_ex(("127.0.0.1", port)))
    edge.close(); level.close()
    return s, copy, out
"""


def test_epoll_and_dup_made_before_connect_see_exactly_one_completion(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good"), "--delay", "0.5")  # a handshake that takes a while
    r = api.program(WATCH + f"""
s, copy, out = watch({port})
result.update(out)
os.write(copy, b"through the dup\\n")  # the dup is the connected socket
s.setblocking(True)
got = b""
while not got.endswith(b"\\n"):
    got += os.read(s.fileno(), 100)  # raw reads: no frame before the peer's bytes
result["echo"] = got.decode()
result["peer"] = s.getpeername()
os.close(copy)
s.shutdown(socket.SHUT_WR)
result["eof"] = os.read(s.fileno(), 100).decode()
# The same calls on a plain TCP socket, for the kernel's own answers.
p = socket.socket()
p.setblocking(False)
plain = [p.connect_ex(("127.0.0.1", {port}))]
select.select([], [p], [], 10)
plain += [p.connect_ex(("127.0.0.1", {port})) for _ in range(2)]
result["plain_calls"] = plain
p.close()
""")
    assert r["_exit"] == 0, r["_stderr"]
    EPOLLOUT, EPOLLIN = 0x004, 0x001
    assert r["first"] == errno.EINPROGRESS and r["pending"] == errno.EALREADY and r["pending_so_error"] == 0, r
    assert len(r["edge"]) == 1 and r["edge"][0] & EPOLLOUT and not r["edge"][0] & EPOLLIN, r  # one edge, no data
    assert r["level_before"] == 0, r  # no busy loop while the handshake runs (0.5 s)
    assert r["level_after"] == [EPOLLOUT], r  # the dup's level-triggered registration: writable now
    assert r["so_error"] == [0, 0], r
    assert r["calls"] == r["plain_calls"][1:] == [0, errno.EISCONN], r  # as the kernel answers for TCP
    assert r["echo"] == "through the dup\n" and r["peer"] == ["127.0.0.1", port], r
    assert r["eof"] == "", r


@pytest.mark.parametrize(("case", "code"), [("verify", errno.EPROTO), ("refused", errno.ECONNREFUSED)])
def test_so_error_reports_a_failed_nonblocking_connect_once(api: ApiDaemon, pki: PKI, case: str, code: int) -> None:
    port = api.tls_server("echo", pki.server("wrong_host")) if case == "verify" else free_port()
    r = api.program(WATCH + f"""
s, copy, out = watch({port}, early=False)  # a refusal may be over before a second call
result.update(out)
try:
    result["read"] = os.read(s.fileno(), 100).hex()  # never a frame
except OSError as e:
    result["read"] = errno.errorcode[e.errno]
""")
    assert r["_exit"] == 0, r["_stderr"]
    EPOLLOUT, EPOLLHUP = 0x004, 0x010
    assert r["first"] == errno.EINPROGRESS and r["level_before"] == 0, r
    # The daemon completes the socket and resets it at once: one edge with the hangup, or the
    # writable instant and then the hangup as a second (never more; SO_ERROR is right at either).
    assert 1 <= len(r["edge"]) <= 2 and r["edge"][0] & EPOLLOUT and r["edge"][-1] & EPOLLHUP, r
    assert r["so_error"] == [code, 0], r  # once, as the kernel clears it
    assert r["calls"][0] in (code, errno.ECONNABORTED), r  # SO_ERROR took it already: the kernel's answer then
    assert r["read"] in ("ECONNRESET", "ENOTCONN", "EAGAIN", ""), r  # the kernel's answer: never a frame's bytes
    if case == "verify":
        assert "identity mismatch" in r["error"], r


def test_a_failed_attempt_reports_once_and_the_same_socket_connects_again(api: ApiDaemon, pki: PKI) -> None:
    bad = api.tls_server("echo", pki.server("wrong_host"))
    good = api.tls_server("echo", pki.server("good"))
    r = api.program(f"""
import select
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
fd = s.fileno()
s.setblocking(False)
calls = [s.connect_ex(("127.0.0.1", {bad}))]
select.select([], [s], [], 10)
calls.append(s.connect_ex(("127.0.0.1", {bad})))  # the failure, once
calls.append(s.connect_ex(("127.0.0.1", {good})))  # then a new attempt
select.select([], [s], [], 10)
calls += [s.connect_ex(("127.0.0.1", {good})) for _ in range(2)]
result["calls"] = calls
s.setblocking(True)
s.sendall(b"again\\n")
result["echo"] = s.recv(100).decode()
result["same_fd"] = s.fileno() == fd
""")
    assert r["calls"] == [errno.EINPROGRESS, errno.EPROTO, errno.EINPROGRESS, 0, errno.EISCONN], r
    assert r["echo"] == "again\n" and r["same_fd"], r


def test_an_ipv6_socket_is_parked_and_completed_over_ipv6_loopback(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good"), "--host", "::1")
    r = api.program(f"""
s = ssaproxy.socket(socket.AF_INET6, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
fd = s.fileno()
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.connect(("::1", {port}))
s.sendall(b"six\\n")
result["echo"] = s.recv(100).decode()
result["peer"] = s.getpeername()
result["kernel_peer"] = socket.socket.getpeername(s)[0]  # the carrier: ::1, the daemon's end
result["same_fd"] = s.fileno() == fd
""")
    assert r["_exit"] == 0, r["_stderr"]
    assert r["echo"] == "six\n" and r["peer"] == ["::1", port, 0, 0] and r["same_fd"], r
    assert r["kernel_peer"] == "::1", r


def test_early_writes_wait_as_on_a_tcp_socket_still_connecting(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good"), "--delay", "0.5")
    r = api.program(f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.setblocking(False)
result["first"] = s.connect_ex(("127.0.0.1", {port}))
try:
    os.write(s.fileno(), b"too early")  # the raw call: the kernel's answer, not the library's
    result["early"] = "written"
except OSError as e:
    result["early"] = errno.errorcode[e.errno]
""")
    assert r["first"] == errno.EINPROGRESS and r["early"] == "EAGAIN", r


def test_the_daemon_refuses_a_socket_from_another_network_namespace(api: ApiDaemon) -> None:
    """unshare -n: the program's socket lives in a namespace of its own (root only; every
    test here runs as root, as the netns tests do)."""
    code = ("import errno, json, socket, ssaproxy\n"
            "s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)\n"
            "try:\n    s.connect(('192.0.2.1', 443)); print(json.dumps([0, '']))\n"
            "except OSError as e:\n    print(json.dumps([e.errno, str(e)]))\n")
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", code], env=api.env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"[{errno.EXDEV}," in r.stdout and "another network namespace" in r.stdout, r.stdout


def test_daemon_socket_without_a_listener_is_ECONNREFUSED(api: ApiDaemon) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "api.sock")
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(path)  # the file exists, nobody listens
        dead.close()
        r = api.program(f"""
os.environ["SSAPROXY_SOCKET"] = "{path}"
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
try:
    s.connect(("127.0.0.1", 443))
except OSError as e:
    result["errno"], result["text"] = e.errno, str(e)
""")
    assert r["errno"] == errno.ECONNREFUSED and path in r["text"], r


HELD = """
import json, select, socket, ssaproxy, sys
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.setblocking(False)
print("connecting", s.connect_ex(("127.0.0.1", {port})), flush=True)
ready = select.select([], [s], [], 30)[1]
code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
print(json.dumps({{"writable": bool(ready), "so_error": code,
                  "error": s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()}}), flush=True)
"""

RELAYING = """
import json, socket, ssaproxy
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.connect(("127.0.0.1", {port}))
s.sendall(b"ping\\n")
got = s.recv(100)
print("relaying", got, flush=True)
try:
    more = s.recv(100)
    print(json.dumps({{"end": "eof" if not more else "data"}}), flush=True)
except OSError as e:
    print(json.dumps({{"end": e.errno}}), flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_daemon_stopping_reaches_programs_as_errnos_and_resets(pki: PKI, tmp_path: Path, sig: int) -> None:
    daemon = ApiDaemon(tmp_path / "d", pki, extra="[daemon]\ndrain_timeout = 0\n").start()
    hold = daemon.tls_server("hold", None)
    echo = daemon.tls_server("echo", pki.server("good"))
    waiting = daemon.spawn([sys.executable, "-c", HELD.format(port=hold)], tmp_path / "waiting.out")
    relaying = daemon.spawn([sys.executable, "-c", RELAYING.format(port=echo)], tmp_path / "relaying.out")
    try:
        assert poll(lambda: "connecting 115" in (tmp_path / "waiting.out").read_text(), 15)
        assert poll(lambda: "relaying b'ping\\n'" in (tmp_path / "relaying.out").read_text(), 15)
        time.sleep(0.3)  # the connect has reached the daemon
        assert daemon.proc is not None
        daemon.proc.send_signal(sig)
        daemon.proc.wait(15)
        waiting.wait(20)
        relaying.wait(20)
    finally:
        stop(waiting)
        stop(relaying)
        daemon.stop()
    held = (tmp_path / "waiting.out").read_text().strip().splitlines()[-1]
    ended = (tmp_path / "relaying.out").read_text().strip().splitlines()[-1]
    # The waiting program's socket polls writable (completed with a reset, or refused once the
    # daemon's parking place is gone) and SO_ERROR says why: the daemon stopped.
    assert '"writable": true' in held and f'"so_error": {errno.ECONNABORTED}' in held, held
    if sig == signal.SIGTERM:
        assert "daemon stopping" in held, held
    assert ended == f'{{"end": {errno.ECONNRESET}}}', ended  # never a clean end of data


def _ask(api: ApiDaemon, kind: wire.Kind, fields: dict[int, object], fds: list[int],
         before: tuple[bytes, ...] = ()) -> tuple[int, str]:
    """One request with `fds` after HELLO on a raw control connection: the ERROR's errno and
    text ((0, "") for an answer that is not an ERROR)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(api.socket)
        s.sendall(wire.encode(wire.Kind.HELLO, {wire.Tag.VERSION: wire.VERSION}) + b"".join(before))
        frame = wire.encode(kind, fields)
        if fds:
            s.sendmsg([frame[:1]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
            s.sendall(frame[1:])
        else:
            s.sendall(frame)
        decoder = wire.Decoder()
        replies: list[wire.Message] = []
        while len(replies) < 2 + len(before):
            chunk = s.recv(65536)
            if not chunk:
                break
            decoder.receive_data(chunk)
            while (m := decoder.next_message()) is not None:
                replies.append(m)
    assert replies and replies[0].kind == wire.Kind.WELCOME, replies
    last = replies[-1]
    return (last.int(wire.Tag.ERRNO), last.text(wire.Tag.TEXT)) if last.kind == wire.Kind.ERROR else (0, "")


def test_the_daemon_checks_the_sockets_it_is_given(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    connect = {wire.Tag.HOST: "192.0.2.1", wire.Tag.PORT: 443, wire.Tag.FAMILY: 4}
    server = socket.create_server(("127.0.0.1", 0))
    connected = socket.create_connection(server.getsockname())
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    public = socket.create_server(("127.0.0.1", 0))
    wildcard = socket.create_server(("0.0.0.0", 0))
    idle = socket.socket()
    regular = tmp_path / "file"
    regular.write_text("x")
    creds = pki.server("good")
    certificate = (wire.encode(wire.Kind.SETOPT, {wire.Tag.OPTION: 88, wire.Tag.VALUE: Path(creds.chain).read_bytes()}),
                   wire.encode(wire.Kind.SETOPT, {wire.Tag.OPTION: 89, wire.Tag.VALUE: Path(creds.key).read_bytes()}))
    with open(regular) as f:
        codes = {
            "connected": _ask(api, wire.Kind.CONNECT, connect, [connected.fileno()]),
            "listening": _ask(api, wire.Kind.CONNECT, connect, [server.fileno()]),
            "udp": _ask(api, wire.Kind.CONNECT, connect, [udp.fileno()]),
            "file": _ask(api, wire.Kind.CONNECT, connect, [f.fileno()]),
            "not parked": _ask(api, wire.Kind.CONNECT, connect, [idle.fileno()]),  # the library parks first
            "no fd": _ask(api, wire.Kind.CONNECT, connect, []),
            "listen one fd": _ask(api, wire.Kind.LISTEN, {wire.Tag.BACKLOG: 4}, [public.fileno()]),
            "listen idle N": _ask(api, wire.Kind.LISTEN, {wire.Tag.BACKLOG: 4}, [public.fileno(), idle.fileno()]),
            "listen N not on loopback": _ask(api, wire.Kind.LISTEN, {wire.Tag.BACKLOG: 4},
                                             [public.fileno(), wildcard.fileno()], certificate),
        }
    for sock in (server, connected, udp, public, wildcard, idle):
        sock.close()
    assert {k: v[0] for k, v in codes.items()} == {
        "connected": errno.EISCONN, "listening": errno.EINVAL, "udp": errno.EINVAL, "file": errno.ENOTSOCK,
        "not parked": errno.EINVAL, "no fd": errno.EINVAL, "listen one fd": errno.EINVAL, "listen idle N": errno.EINVAL,
        "listen N not on loopback": errno.EINVAL}, codes
    assert "the socket was not parked" in codes["not parked"][1], codes
    assert "needs 2 file descriptors" in codes["listen one fd"][1], codes
    assert "not listening" in codes["listen idle N"][1], codes
    assert "must be on loopback" in codes["listen N not on loopback"][1], codes
