"""The API under hostile or careless programs: malformed frames, wrong order, stray or wrong
file descriptors, attempts to make the daemon read files; the daemon answers ERROR, closes
that connection, and keeps serving everyone else.  Credentials land in the log."""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Optional

import pytest

from ssaproxy.proto import wire
from tests.api_harness import ApiDaemon, free_port
from tests.lab import PEERS, wait_for_text
from tests.pki import PKI


def _raw(api: ApiDaemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(api.socket)
    return s


def _reply(s: socket.socket) -> tuple[Optional[wire.Message], bytes]:
    """The first frame the daemon sends back, and whether it then closed (b"" = EOF)."""
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    decoder = wire.Decoder()
    decoder.receive_data(data)
    return decoder.next_message(), data


def _hello() -> bytes:
    return wire.encode(wire.Kind.HELLO, {wire.Tag.VERSION: wire.VERSION})


@pytest.mark.parametrize(("name", "payload", "code"), [
    ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", errno.EPROTO),
    ("huge length", struct.pack("!IH", 50_000_000, 1), errno.EPROTO),
    ("unknown kind", struct.pack("!IH", 2, 999), errno.EPROTO),
    ("bad attribute length", struct.pack("!IHHI", 8, 1, 1, 100), errno.EPROTO),
    ("repeated attribute", struct.pack("!IHHIiHIi", 22, 1, 1, 4, 1, 1, 4, 1), errno.EPROTO),
    ("connect before hello", wire.encode(wire.Kind.CONNECT, {wire.Tag.HOST: "127.0.0.1", wire.Tag.PORT: 1,
                                                            wire.Tag.FAMILY: 4}), errno.EPROTO),
    ("wrong version", wire.encode(wire.Kind.HELLO, {wire.Tag.VERSION: 99}), errno.EPROTONOSUPPORT),
    ("daemon-side kind", _hello() + wire.encode(wire.Kind.OK), errno.EPROTO),
    ("listen without fd", _hello() + wire.encode(wire.Kind.LISTEN, {wire.Tag.BACKLOG: 5}), errno.EINVAL),
])
def test_malformed_or_out_of_order_messages(api: ApiDaemon, name: str, payload: bytes, code: int) -> None:
    with _raw(api) as s:
        s.sendall(payload)
        _, data = _reply(s)  # all the daemon sent before it closed (a WELCOME first, if the payload began with HELLO)
    decoder = wire.Decoder()
    decoder.receive_data(data)
    messages = []
    while (m := decoder.next_message()) is not None:
        messages.append(m)
    assert messages and messages[-1].kind == wire.Kind.ERROR, (name, messages)
    assert messages[-1].int(wire.Tag.ERRNO) == code, (name, messages[-1].text(wire.Tag.TEXT))
    assert _still_serving(api)


@pytest.mark.parametrize("host", ["bäd.example", "a\x00b", "-x-.example", "a" * 300, ""])
def test_bad_host_names_in_connect_are_EINVAL(api: ApiDaemon, host: str) -> None:
    with _raw(api) as s:
        s.sendall(_hello())
        s.sendall(wire.encode(wire.Kind.CONNECT, {wire.Tag.HOST: host, wire.Tag.PORT: 443, wire.Tag.FAMILY: 0}))
        assert _reply_after_welcome(s, close=False) == errno.EINVAL
    assert _still_serving(api)
    assert "Unhandled Error" not in api.log.read_text()


def _still_serving(api: ApiDaemon) -> bool:
    with _raw(api) as s:
        s.sendall(_hello())
        decoder = wire.Decoder()
        while (m := decoder.next_message()) is None:
            chunk = s.recv(4096)
            if not chunk:
                return False
            decoder.receive_data(chunk)
        return m.kind == wire.Kind.WELCOME


def _wait_until_unread_replies_stop_growing(s: socket.socket, quiet: float = 0.2, limit: float = 5) -> None:
    queued, since, deadline = -1, time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        now = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        if now != queued:
            queued, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.02)


def _send_with_fd(s: socket.socket, frame: bytes, fd: int) -> None:
    s.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])


def test_wrong_file_descriptors_are_refused(api: ApiDaemon, tmp_path: Path) -> None:
    regular = tmp_path / "not-a-socket"
    regular.write_text("x")
    cases = []
    with open(regular) as f:
        with _raw(api) as s:  # a regular file passed as the socket to upgrade
            s.sendall(_hello())
            _send_with_fd(s, wire.encode(wire.Kind.UPGRADE, {wire.Tag.ROLE: 1}), f.fileno())
            cases.append(_reply_after_welcome(s))
        with _raw(api) as s:  # a descriptor attached to a message that takes none
            _send_with_fd(s, _hello(), f.fileno())
            cases.append(_reply_after_welcome(s))
    unconnected = socket.socket()
    with _raw(api) as s:  # an unconnected TCP socket to upgrade
        s.sendall(_hello())
        _send_with_fd(s, wire.encode(wire.Kind.UPGRADE, {wire.Tag.ROLE: 1}), unconnected.fileno())
        cases.append(_reply_after_welcome(s, close=False))
    unconnected.close()
    with _raw(api) as s:  # a TCP socket that is not listening, passed to LISTEN
        s.sendall(_hello())
        s.sendall(wire.encode(wire.Kind.SETOPT, {wire.Tag.OPTION: 88, wire.Tag.VALUE: b"x"}))
        listener = socket.socket()
        _send_with_fd(s, wire.encode(wire.Kind.LISTEN, {wire.Tag.BACKLOG: 1}), listener.fileno())
        cases.append(_reply_after_welcome(s, close=False, skip=2))
        listener.close()
    assert cases[0] == errno.ENOTSOCK, cases
    assert cases[1] == errno.EPROTO, cases
    assert cases[2] == errno.ENOTCONN, cases
    assert cases[3] == errno.EINVAL, cases
    assert _still_serving(api)


def _reply_after_welcome(s: socket.socket, close: bool = True, skip: int = 1) -> int:
    decoder = wire.Decoder()
    seen = []
    while len(seen) < skip + 1:
        chunk = s.recv(65536)
        if not chunk:
            break
        decoder.receive_data(chunk)
        while (m := decoder.next_message()) is not None:
            seen.append(m)
    errors = [m for m in seen if m.kind == wire.Kind.ERROR]
    assert errors, seen
    return errors[-1].int(wire.Tag.ERRNO)


def test_the_daemon_never_opens_a_path_for_a_program(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    key = secret / "key.pem"
    key.write_bytes(Path(pki.server("good").key).read_bytes())
    key.chmod(0o600)
    os.chmod(tmp_path, 0o755)
    # Through the library, as nobody: the library reads the file in the program's own process.
    r = api.program(f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
try:
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, b"{key}")
except OSError as e:
    result["errno"], result["text"] = e.errno, str(e)
""", user="nobody")
    assert r["errno"] == errno.EACCES and str(key) in r["text"], r
    # Around the library: a path in a raw SETOPT is just bytes that are not a PEM key.
    with _raw(api) as s:
        s.sendall(_hello())
        s.sendall(wire.encode(wire.Kind.SETOPT, {wire.Tag.OPTION: 89, wire.Tag.VALUE: str(key).encode()}))
        assert _reply_after_welcome(s, close=False) == errno.EINVAL
    events = api.log.read_text()
    assert "BEGIN" not in events and "PRIVATE KEY" not in events  # no key material in the log


def test_credentials_of_the_program_are_logged(api: ApiDaemon) -> None:
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    closed = port.getsockname()[1]
    port.close()
    r = api.program(f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
result["pid"] = os.getpid()
try:
    s.connect(("127.0.0.1", {closed}))
except OSError as e:
    result["errno"] = e.errno
""", user="nobody")
    assert r.get("errno") == errno.ECONNREFUSED, r
    event = api.wait_event(f"pid={r['pid']} ")
    assert "uid=65534 gid=65534" in event and "exe=/" in event and " refused: " in event


def test_session_cap_answers_EAGAIN(pki: PKI, tmp_path: Path) -> None:
    daemon = ApiDaemon(tmp_path / "capped", pki, extra="max_sessions = 1\n").start()
    try:
        hold = daemon.tls_server("hold", None)
        r = daemon.program(f"""
def attempt():
    s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
    s.setblocking(False)
    return s, s.connect_ex(("127.0.0.1", {hold}))
first, result["first"] = attempt()
second, result["second"] = attempt()
result["text"] = second.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_ERROR).decode()
""")
        assert r["first"] == errno.EINPROGRESS and r["second"] == errno.EAGAIN, r
        assert "TLS sessions open" in r["text"], r
    finally:
        daemon.stop()


def test_failed_handshakes_on_a_program_listener_are_forgotten(api: ApiDaemon, pki: PKI, tmp_path: Path) -> None:
    """A refused client is freed once it leaves: it used to stay in the listener's table, and its
    stream (about 50 KB with OpenSSL's buffers) until the alert's linger timer fired."""
    creds = pki.server("good")
    port = free_port()
    log = tmp_path / "server.log"
    server = api.spawn([sys.executable, str(PEERS / "api_server.py"), "--port", str(port), "--chain",
                        str(creds.chain), "--key", str(creds.key), "--count", "1"], log)
    wait_for_text(log, "READY", server, 15)
    assert api.proc is not None

    def rss_kib() -> int:
        status = Path(f"/proc/{api.proc.pid}/status").read_text()  # type: ignore[union-attr]
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])

    def knock(n: int) -> None:
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"not a TLS client hello\r\n\r\n")
                with contextlib.suppress(OSError):
                    c.recv(100)

    knock(200)  # warm up allocator pools
    before = rss_kib()
    knock(1500)
    grown = rss_kib() - before
    assert grown < 20_000, f"daemon RSS grew by {grown} KiB over 1500 refused handshakes"
    assert api.proc.poll() is None
    subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(pki.root_pem), "--resolve",
                    f"backend.test:{port}:127.0.0.1", f"https://backend.test:{port}/"], capture_output=True, timeout=20)
    server.wait(15)


FROZEN_PROBE = """
import ssaproxy.client
ssaproxy.client.CONTROL_TIMEOUT = 5  # a frozen daemon shows as a timeout here
def daemon_answers():
    p = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
    try:
        return p.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_VERSION_MIN) == ssaproxy.TLS1_2_VERSION
    finally:
        p.close()
"""


def test_a_program_keeping_its_listening_socket_blocking_cannot_freeze_the_daemon(api: ApiDaemon, pki: PKI) -> None:
    """With O_NONBLOCK off on the shared listening file, an accept loop in the reactor (what
    adopting the socket as a Twisted port does) blocks as soon as the first connections are
    taken and the queue is empty; and a program accepting on its copy can empty it between
    the daemon's poll and its accept.

    The program's own accept runs in a thread: in the main thread it could wait for ever when
    the daemon wins every connection, which once made this test time out as if frozen."""
    creds = pki.server("good")
    r = api.program(FROZEN_PROBE + f"""
import threading
srv = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, b"{creds.chain}")
srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, b"{creds.key}")
srv.bind(("127.0.0.1", 0))
copy = socket.socket(fileno=os.dup(srv.fileno()))  # the same open file the daemon gets
srv.listen(8)
copy.setblocking(True)  # O_NONBLOCK is shared: this turns it off for the daemon as well
port = copy.getsockname()[1]
clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # all for the daemon
stolen = []
def steal():
    while True:
        stolen.append(copy.accept()[0])  # races the daemon for every later connection
threading.Thread(target=steal, daemon=True).start()
clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
time.sleep(0.5)  # not needed for the verdict: gives the daemon time to take connections
result["answers"] = [daemon_answers() for _ in range(3)]
""")
    assert r.get("answers") == [True, True, True], r


def test_a_program_keeping_its_upgraded_socket_cannot_freeze_the_daemon(api: ApiDaemon, pki: PKI) -> None:
    port = api.tls_server("echo", pki.server("good"))
    r = api.program(FROZEN_PROBE + f"""
import threading
s = socket.create_connection(("127.0.0.1", {port}))
copy = socket.socket(fileno=os.dup(s.fileno()))
copy.setblocking(True)
stolen = []
threading.Thread(target=lambda: stolen.append(copy.recv(10)), daemon=True).start()  # races the daemon
try:
    ssaproxy.upgrade(s, hostname="backend.test")
    result["upgrade"] = "ok"
except OSError as e:
    result["upgrade"] = e.errno
result["answers"] = [daemon_answers() for _ in range(3)]
""")
    assert r.get("answers") == [True, True, True], r


def test_unread_replies_do_not_grow_the_daemon(api: ApiDaemon) -> None:
    assert api.proc is not None
    status = Path(f"/proc/{api.proc.pid}/status")
    rss = lambda: int(next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:")).split()[1])  # noqa: E731
    before = rss()
    request = wire.encode(wire.Kind.GETOPT, {wire.Tag.OPTION: 97})  # each reply is ~100 bytes
    with _raw(api) as s:
        s.sendall(_hello())
        s.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 10
        refused_since: Optional[float] = None
        while sent < 400_000 and time.monotonic() < deadline:  # requests; the replies go unread
            try:
                sent += 1 if s.send(request) == len(request) else 0
                refused_since = None
            except BlockingIOError:
                now = time.monotonic()
                refused_since = refused_since or now
                if now - refused_since > 1:
                    break  # the daemon stopped reading us: the backpressure this test wants
                time.sleep(0.01)
        time.sleep(0.5)
        grown = rss() - before
        assert _still_serving(api)
    assert grown < 30_000, f"{grown} KiB more after {sent} unread requests"


def test_the_api_socket_path_is_taken_over_only_from_a_dead_daemon(pki: PKI, tmp_path: Path) -> None:
    first = ApiDaemon(tmp_path / "first", pki).start()
    second = ApiDaemon(tmp_path / "second", pki)
    second.config.write_text(first.config.read_text())  # the same socket path
    try:
        code = second.start_failing()
        assert code != 0 and "another daemon already serves" in second.log.read_text()
        assert _still_serving(first)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)  # no cleanup: the socket file stays behind
        first.proc.wait(10)
        assert Path(first.socket).exists()
        os.rmdir(second.rundir)  # its own, unused: it takes the first one's path over
        second.rundir, second.socket = first.rundir, first.socket
        second.start()  # a stale socket (nobody answers) is replaced
        assert _still_serving(second)
    finally:
        second.stop()
        first.stop()


@pytest.mark.parametrize("backlog_of_requests", [757, 1010, 1263])  # ERROR written as the buffer fills
def test_a_refused_connection_ends_even_while_its_replies_are_unread(api: ApiDaemon,
                                                                   backlog_of_requests: int) -> None:
    """Refusing a paused control connection used to leave it open forever (Twisted resumes a
    paused producer instead of disconnecting), leaking it and its descriptors."""
    request = wire.encode(wire.Kind.GETOPT, {wire.Tag.OPTION: 97})
    with _raw(api) as s:
        s.sendall(_hello() + request * backlog_of_requests + _hello())  # the second HELLO is refused
        _wait_until_unread_replies_stop_growing(s)  # the daemon has paused reading
        s.settimeout(10)
        data = b""
        while True:
            chunk = s.recv(1 << 20)  # socket.timeout here would mean the connection never ends
            if not chunk:
                break
            data += chunk
    decoder = wire.Decoder()
    decoder.receive_data(data)
    messages = []
    while (m := decoder.next_message()) is not None:
        messages.append(m)
    assert messages[-1].kind == wire.Kind.ERROR and messages[-1].int(wire.Tag.ERRNO) == errno.EPROTO
    assert len(messages) == backlog_of_requests + 2  # WELCOME, every VALUE, then the ERROR
    assert _still_serving(api)
