"""The C library's per-socket state under threads, against a scripted daemon that answers as
the real one does but lets the test choose when: two threads calling into the daemon for one
socket take turns on one control connection instead of each opening its own, and a socket
closed by one thread while another talks to the daemon for it leaves nothing open behind."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

from ssaproxy.api.parking import Parking
from ssaproxy.proto import wire
from tests.clib import compile_c, preload_env, probe, probe_binary, run
from tests.lab import PEERS


class SlowWelcome:
    """A daemon on a Unix socket that holds its first WELCOME until a second control connection
    arrives or `hold` seconds pass, then answers HELLO with WELCOME and SETOPT with OK."""

    def __init__(self, path: Path, marker: Path, hold: float = 3.0) -> None:
        self.marker = marker
        self.hold = hold
        self.connections = 0
        self.second = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.server.settimeout(30)
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        for _ in range(8):
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections > 1:
                self.second.set()
            worker = threading.Thread(target=self._serve, args=(conn, self.connections == 1), daemon=True)
            self.threads.append(worker)
            worker.start()

    def _serve(self, conn: socket.socket, first: bool) -> None:
        conn.settimeout(30)
        decoder = wire.Decoder()
        with conn:
            for _ in range(16):
                data = conn.recv(65536)
                if not data:
                    return
                decoder.receive_data(data)
                while (message := decoder.next_message()) is not None:
                    if message.kind == wire.Kind.HELLO:
                        if first:
                            self.marker.touch()
                            self.second.wait(self.hold)
                        welcome = {wire.Tag.VERSION: wire.VERSION, wire.Tag.SESSION: 1}
                        conn.sendall(wire.encode(wire.Kind.WELCOME, welcome))
                    else:
                        conn.sendall(wire.encode(wire.Kind.OK))

    def close(self) -> None:
        self.server.close()


def test_two_threads_setting_options_share_one_control_connection(tmp_path: Path) -> None:
    binary = compile_c(PEERS / "two_threads_setopt.c", tmp_path)
    marker = tmp_path / "first-hello"
    daemon = SlowWelcome(tmp_path / "api.sock", marker)
    try:
        r = run([str(binary), str(marker), "setopt"], env={"SSAPROXY_SOCKET": str(tmp_path / "api.sock")})
    finally:
        daemon.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["first 0 0", "second 0 0"], r.stdout
    assert daemon.connections == 1, "the second thread opened a control connection of its own"


def test_a_socket_closed_while_another_thread_sets_an_option_leaves_no_descriptor(tmp_path: Path) -> None:
    binary = compile_c(PEERS / "two_threads_setopt.c", tmp_path)
    marker = tmp_path / "first-hello"
    daemon = SlowWelcome(tmp_path / "api.sock", marker, hold=1.0)
    try:
        r = run([str(binary), str(marker), "close"], env={"SSAPROXY_SOCKET": str(tmp_path / "api.sock")})
    finally:
        daemon.close()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("first "), r.stdout
    assert lines[1] == "sockets 0", f"the control connection outlived the socket: {r.stdout}"


def test_a_signal_handler_may_close_any_descriptor_while_the_library_holds_its_lock(tmp_path: Path) -> None:
    """docs/c-library.md: close() is async-signal-safe, as libc's.  A handler that interrupts
    the library's own close() (which holds the lock) closes a pipe, another IPPROTO_TLS socket
    and a plain socket: none of them waits for the lock the interrupted code holds."""
    binary = compile_c(PEERS / "close_in_handler.c", tmp_path, "-ldl")
    try:
        r = run([str(binary)], env={"SSAPROXY_SOCKET": str(tmp_path / "absent.sock")}, timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError("close() in the signal handler deadlocked") from None
    assert r.returncode == 0 and r.stdout == "closed 0 0 0 0\nafter 1\n", (r.stdout, r.stderr)


def test_a_socket_closed_during_its_connect_lets_its_control_connection_go(tmp_path: Path) -> None:
    # The program closes the socket while the daemon has not yet welcomed the connect, and a
    # new socket takes its number: the connect hands the new one over (the daemon says OK),
    # but the closed socket's record, and its control connection, must go.
    binary = compile_c(PEERS / "two_threads_setopt.c", tmp_path)
    marker = tmp_path / "first-hello"
    daemon = SlowWelcome(tmp_path / "api.sock", marker, hold=1.0)
    try:
        r = run([str(binary), str(marker), "connect"], env={"SSAPROXY_SOCKET": str(tmp_path / "api.sock")})
    finally:
        daemon.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["first -1 EBADF", "reused 1", "sockets 1"], r.stdout


class ResultBeforeCompletion:
    """A daemon on a Unix socket that parks as the real one does (ssaproxy.api.parking) and
    answers CONNECT with OK and ESTABLISHED in one write, but never completes the program's
    socket: the result waits while the kernel's connect is still in progress."""

    def __init__(self, path: Path) -> None:
        self.parking = Parking()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.server.settimeout(30)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        conn.settimeout(30)
        decoder = wire.Decoder()
        with conn:
            for _ in range(16):
                try:
                    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 2)
                except OSError:  # the program ended (a reset: it left a reply unread)
                    return
                self.held += [socket.socket(fileno=fd) for fd in fds]
                if not data:
                    return
                decoder.receive_data(data)
                while (message := decoder.next_message()) is not None:
                    if message.kind == wire.Kind.HELLO:
                        park4, park6 = self.parking.ports()
                        conn.sendall(wire.encode(wire.Kind.WELCOME, {
                            wire.Tag.VERSION: wire.VERSION, wire.Tag.SESSION: 1,
                            wire.Tag.PARK_PORT4: park4, wire.Tag.PARK_PORT6: park6}))
                    elif message.kind == wire.Kind.CONNECT:
                        conn.sendall(wire.encode(wire.Kind.OK) + wire.encode(wire.Kind.ESTABLISHED, {
                            wire.Tag.PEER_HOST: "192.0.2.7", wire.Tag.PEER_PORT: 443,
                            wire.Tag.LOCAL_HOST: "127.0.0.1", wire.Tag.LOCAL_PORT: 40000}))
                    else:
                        conn.sendall(wire.encode(wire.Kind.OK))

    def close(self) -> None:
        self.server.close()
        for sock in self.held:
            sock.close()
        self.parking.close()


def test_non_blocking_calls_on_a_pending_connect_never_wait(tmp_path: Path) -> None:
    # The result frame is there but the socket is still connecting (the daemon completes it
    # right after, normally): a non-blocking socket hears "in progress", as from the kernel,
    # instead of the library waiting (once up to 5 s) for the socket to become writable.
    daemon = ResultBeforeCompletion(tmp_path / "api.sock")
    try:
        out = probe(probe_binary(tmp_path), "socket", "inet", "nonblock", "connect", "127.0.0.1", "443",
                    "peer", "soerror", "connect", "127.0.0.1", "443", "peer",
                    env={"SSAPROXY_SOCKET": str(tmp_path / "api.sock")})
    finally:
        daemon.close()
    assert [row[:3] for row in out] == [["socket", "0", "0"], ["connect", "-1", "EINPROGRESS"],
                                        ["peer", "-1", "ENOTCONN"], ["soerror", "0", "0"],
                                        ["connect", "-1", "EALREADY"], ["peer", "-1", "ENOTCONN"]], out


class HeldRoutes:
    """A daemon on a Unix socket that welcomes every control connection and answers ROUTES
    with an empty table, but holds the first ROUTES answer until a second ROUTES request has
    been answered (or 30 s pass); `marker` appears once it holds the first."""

    def __init__(self, path: Path, marker: Path) -> None:
        self.marker = marker
        self.second = threading.Event()
        self.routes = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.server.settimeout(30)
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        for _ in range(4):
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        decoder = wire.Decoder()
        with conn:
            for _ in range(8):
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                decoder.receive_data(data)
                while (message := decoder.next_message()) is not None:
                    if message.kind == wire.Kind.HELLO:
                        conn.sendall(wire.encode(wire.Kind.WELCOME, {wire.Tag.VERSION: wire.VERSION,
                                                                     wire.Tag.SESSION: 1}))
                        continue
                    self.routes += 1
                    if self.routes == 1:
                        self.marker.touch()
                        self.second.wait(30)
                    conn.sendall(wire.encode(wire.Kind.VALUE, {wire.Tag.VALUE: b""}))
                    self.second.set()

    def close(self) -> None:
        self.second.set()
        self.server.close()


def test_a_fork_while_a_thread_waits_for_the_routes_leaves_the_child_free(tmp_path: Path) -> None:
    binary = compile_c(PEERS / "fork_during_routes.c", tmp_path, link=False)
    marker = tmp_path / "first-routes"
    daemon = HeldRoutes(tmp_path / "api.sock", marker)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connects to it are refused
    port = closed.getsockname()[1]
    try:
        r = run([str(binary), str(marker), str(port)],
                env=preload_env(SSAPROXY_REDIRECT="1", SSAPROXY_SOCKET=str(tmp_path / "api.sock")))
    finally:
        daemon.close()
        closed.close()
    assert r.returncode == 0, r.stderr
    # No route covers the port (the table is empty): both connects are libc's, refused.
    assert r.stdout.splitlines() == ["child exit 0", "thread -1 ECONNREFUSED"], r.stdout
    assert daemon.routes == 2
