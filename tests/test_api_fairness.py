"""One local user cannot deny the API to the others: deadlines (HELLO, each frame, idle control
connections), shares per uid (control connections, descriptors in flight), and the caps kept
inside the daemon's descriptor budget.  The hostile user is `nobody` (uid 65534); the other
user is root (uid 0).  Real daemon, real processes; short deadlines keep each test quick."""

from __future__ import annotations

import errno
import json
import os
import pwd
import select
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from ssaproxy.proto import wire
from tests.api_harness import ApiDaemon
from tests.lab import REPO, poll
from tests.pki import PKI

HELLO_TIMEOUT, FRAME_TIMEOUT, IDLE_TIMEOUT = 1.0, 1.0, 3.0
CONTROLS_PER_UID, FDS_PER_UID = 4, 6

EXTRA = (f"hello_timeout = {HELLO_TIMEOUT}\nframe_timeout = {FRAME_TIMEOUT}\nidle_timeout = {IDLE_TIMEOUT}\n"
         f"max_controls_per_uid = {CONTROLS_PER_UID}\nmax_fds_in_flight_per_uid = {FDS_PER_UID}\n")

# Raw protocol helpers for the hostile program (it speaks bytes, not the library).
PRELUDE = """\
import array, json, os, socket, struct, sys, time
from ssaproxy.proto import wire
PATH = os.environ["SSAPROXY_SOCKET"]
HELLO = wire.encode(wire.Kind.HELLO, {wire.Tag.VERSION: wire.VERSION})
def control(hello=True):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(PATH)
    if hello:
        try:
            s.sendall(HELLO)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once (a share is full): its ERROR frame waits to be read
    return s
def reply(s, timeout=5.0):
    '''The next frame's kind and errno (None for no ERROR), or "eof"; "none" if nothing came in time.'''
    s.settimeout(timeout)
    d = wire.Decoder()
    try:
        while True:
            m = d.next_message()
            if m is not None:
                return [int(m.kind), m.int(wire.Tag.ERRNO) if m.kind == wire.Kind.ERROR else None]
            chunk = s.recv(1 << 16)
            if not chunk:
                return "eof"
            d.receive_data(chunk)
    except socket.timeout:
        return "none"
def out(value):
    print(json.dumps(value), flush=True)
"""


class Hostile:
    """A program run as nobody that sets something up, reports it (one JSON line), and holds
    it until the test closes its stdin."""

    def __init__(self, api: ApiDaemon, code: str) -> None:
        self.api = api
        self.fds_before = _fds(api)
        entry = pwd.getpwnam("nobody")
        body = PRELUDE + textwrap.dedent(code) + "\nsys.stdin.read()\n"
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
             sys.executable, "-c", body],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**api.env, "PYTHONPATH": str(REPO)}, cwd="/")
        api.procs.append(self.proc)

    def report(self, timeout: float = 10) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.release()
            raise AssertionError(f"no report from the program: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return json.loads(line)

    def release(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(10)
        # The daemon hears of the program's exit a moment later: until it has, the program's
        # share is still counted, and the next test (same daemon) would start short of it.
        poll(lambda: _fds(self.api) <= self.fds_before, 10)


@pytest.fixture(scope="module")
def fair(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiDaemon]:
    daemon = ApiDaemon(tmp_path_factory.mktemp("fair"), pki, extra=EXTRA).start()
    try:
        yield daemon
    finally:
        daemon.stop()


def _fds(api: ApiDaemon) -> int:
    assert api.proc is not None
    return len(os.listdir(f"/proc/{api.proc.pid}/fd"))


def _refusal(api: ApiDaemon, outcome: str, timeout: float = 5) -> str:
    found = poll(lambda: [line for line in api.log.read_text(errors="replace").splitlines()
                          if f"refused ({outcome})" in line and "uid=65534 " in line], timeout)
    assert found, f"no refusal {outcome!r} of uid 65534 in the log:\n" + api.log.read_text()[-3000:]
    return found[-1]


def _root_is_served(api: ApiDaemon, pki: PKI) -> dict[str, Any]:
    """root (another uid) gets verified TLS to a local server through the API."""
    port = api.tls_server("echo", pki.server("good"))
    r = api.program(f"""
s = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
s.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_HOSTNAME, b"backend.test")
s.settimeout(10)
s.connect(("127.0.0.1", {port}))
s.sendall(b"still served\\n")
result["echo"] = s.makefile("rb").readline().decode()
result["identity"] = s.getsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PEER_IDENTITY).decode()
""", timeout=20)
    assert r["_exit"] == 0 and r.get("echo") == "still served\n" and r.get("identity") == "backend.test", r
    return r


def test_one_user_cannot_take_every_control_connection(fair: ApiDaemon, pki: PKI) -> None:
    hostile = Hostile(fair, f"""
held, answers = [], []
for _ in range({CONTROLS_PER_UID + 3}):
    s = control()
    answers.append(reply(s))
    held.append(s)
out(answers)
""")
    try:
        answers = hostile.report()
        welcome, eagain = [int(wire.Kind.WELCOME), None], [int(wire.Kind.ERROR), errno.EAGAIN]
        assert answers == [welcome] * CONTROLS_PER_UID + [eagain] * 3, answers
        line = _refusal(fair, "limit-controls")
        assert "per-user limit" in line and "gid=65534 " in line and "exe=/" in line and "pid=None" not in line
        _root_is_served(fair, pki)  # while nobody holds its whole share
    finally:
        hostile.release()


def test_no_hello_is_closed_after_hello_timeout(fair: ApiDaemon) -> None:
    r = fair.program("""
from ssaproxy.proto import wire
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["SSAPROXY_SOCKET"])
s.settimeout(10)
start = time.monotonic()
data = b""
while chunk := s.recv(4096):
    data += chunk
result["after"] = time.monotonic() - start
d = wire.Decoder(); d.receive_data(data); m = d.next_message()
result["errno"] = m.int(wire.Tag.ERRNO) if m is not None else None
""", user="nobody")
    assert r.get("errno") == errno.ETIMEDOUT, r
    assert HELLO_TIMEOUT * 0.8 <= r["after"] < HELLO_TIMEOUT + 1.5, r
    assert "no HELLO" in _refusal(fair, "hello-timeout")


def test_a_stalled_partial_frame_is_refused_after_frame_timeout(fair: ApiDaemon) -> None:
    hostile = Hostile(fair, """
s = control()
first = reply(s)
frame = wire.encode(wire.Kind.GETOPT, {wire.Tag.OPTION: 97})
s.sendall(frame[:5])  # and nothing more
start = time.monotonic()
out([first, reply(s, 10), reply(s, 5), time.monotonic() - start])
""")
    try:
        first, refusal, after, waited = hostile.report(20)
        assert first == [int(wire.Kind.WELCOME), None]
        assert refusal == [int(wire.Kind.ERROR), errno.ETIMEDOUT] and after == "eof", (refusal, after)
        assert FRAME_TIMEOUT * 0.8 <= waited < FRAME_TIMEOUT + 1.5, waited  # the frame's deadline, not idle's
        line = _refusal(fair, "frame-timeout")
        assert "uid=65534 gid=65534 " in line
    finally:
        hostile.release()


def test_descriptors_in_flight_are_capped_per_user(fair: ApiDaemon, pki: PKI) -> None:
    before = _fds(fair)
    hostile = Hostile(fair, """
def park(s, n):
    '''The first byte of a frame with n descriptors: held by the daemon until the frame completes.'''
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]
    s.sendmsg([b"\\x00"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    for fd in fds:
        os.close(fd)
a, b = control(), control()
answers = [reply(a), reply(b)]
park(a, 4)  # within the share (6)
park(b, 4)  # 8 > 6: whichever the daemon reads second is refused
answers += sorted([reply(a, 0.5), reply(b, 0.5)], key=str)
out(answers)
""")
    try:
        answers = hostile.report()
        welcome = [int(wire.Kind.WELCOME), None]
        assert answers == [welcome, welcome, [int(wire.Kind.ERROR), errno.EAGAIN], "none"], answers  # one refused
        held = _fds(fair)
        assert held <= before + 2 + FDS_PER_UID + 2, (before, held)  # two controls, the share, slack
        assert "descriptors in flight" in _refusal(fair, "limit-fds")
        _root_is_served(fair, pki)
    finally:
        hostile.release()
    assert poll(lambda: _fds(fair) <= before + 2, 10), (before, _fds(fair))  # everything given back


def test_an_idle_control_connection_is_closed_but_a_listener_is_not(fair: ApiDaemon, pki: PKI) -> None:
    creds = pki.server("good")
    listener = fair.spawn([sys.executable, "-c", textwrap.dedent(f"""
        import socket, ssl, threading, time, ssaproxy
        srv = ssaproxy.socket(socket.AF_INET, socket.SOCK_STREAM, ssaproxy.IPPROTO_TLS)
        srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_CERTIFICATE_CHAIN, "{creds.chain}")
        srv.setsockopt(ssaproxy.IPPROTO_TLS, ssaproxy.TLS_PRIVATE_KEY, "{creds.key}")
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        time.sleep({IDLE_TIMEOUT} + 1)  # longer than idle_timeout: a listener is exempt
        ctx = ssl.create_default_context(cafile="{pki.root_pem}")
        done = threading.Event()
        def client():
            with ctx.wrap_socket(socket.create_connection(srv.getsockname()), server_hostname="backend.test") as c:
                c.sendall(b"ping")
                done.wait(10)  # no truncation (a reset) before the program has read
        threading.Thread(target=client).start()
        srv.settimeout(10)
        conn, _ = srv.accept()
        print("ACCEPTED", conn.recv(4), flush=True)
        done.set()
        """)], fair.directory / "listener.log")
    hostile = Hostile(fair, """
s = control()
first = reply(s)
start = time.monotonic()
out([first, reply(s, 10), reply(s, 5), time.monotonic() - start])
""")
    try:
        first, refusal, after, waited = hostile.report(20)
        assert first == [int(wire.Kind.WELCOME), None]
        assert refusal == [int(wire.Kind.ERROR), errno.ETIMEDOUT] and after == "eof", (refusal, after)
        assert IDLE_TIMEOUT * 0.8 <= waited < IDLE_TIMEOUT + 1.5, waited
        assert "idle for" in _refusal(fair, "idle-timeout")
        assert listener.wait(15) == 0
        assert "ACCEPTED b'ping'" in (fair.directory / "listener.log").read_text()
    finally:
        hostile.release()


def test_caps_fit_a_low_descriptor_limit(pki: PKI, tmp_path: Path) -> None:
    """Under `ulimit -n 256` the default caps (10000 sessions) would let programs exhaust the
    daemon's descriptors: they are lowered at start, and the API refuses well before that."""
    nofile = 256
    daemon = ApiDaemon(tmp_path / "low", pki, extra="max_controls_per_uid = 100000\n")
    daemon.start(prefix=["prlimit", f"--nofile={nofile}:{nofile}", "--"])
    try:
        assert "api limits lowered to fit the descriptor budget" in daemon.log.read_text()
        hostile = Hostile(daemon, f"""
held, refused = [], None
for i in range({nofile}):
    s = control()
    answer = reply(s)
    if answer != [int(wire.Kind.WELCOME), None]:
        refused = [i, answer]
        break
    held.append(s)
out(refused)
""")
        try:
            refused = hostile.report(20)
            assert refused is not None and refused[1] == [int(wire.Kind.ERROR), errno.EAGAIN], refused
            assert refused[0] < nofile // 4, refused
            assert _fds(daemon) < nofile // 2, _fds(daemon)  # far from the limit
            _root_is_served(daemon, pki)
        finally:
            hostile.release()
        line = _refusal(daemon, "limit-controls")
        assert "uid=65534" in line
        _root_is_served(daemon, pki)
    finally:
        daemon.stop()
    assert "Too many open files" not in daemon.log.read_text()
