"""The C library where no daemon is involved: unmodified programs preloaded with it behave
exactly as without it; the errors a C program meets before (or without) the daemon; and
redirection failing closed (never plaintext to a routed destination) when the daemon is absent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.api_harness import free_port, wait_port
from tests.clib import preload_env, probe, probe_binary, run
from tests.lab import stop


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A plain HTTP server (Python's http.server) on 127.0.0.1; its port and request log."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "page.txt").write_text("plain page\n")
    port, log = free_port(), tmp_path / "web.log"
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root),
                             str(port)], stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        yield port, log
    finally:
        stop(proc)


def test_unmodified_programs_see_no_difference_when_preloaded(web: tuple[int, Path]) -> None:
    port, _ = web
    url = f"http://127.0.0.1:{port}/page.txt"
    for env in (preload_env(), preload_env(SSAPROXY_REDIRECT="1", SSAPROXY_ROUTES="upgrade 192.0.2.0/24 0\n")):
        r = run(["curl", "-sS", url], env=env)
        assert r.returncode == 0 and r.stdout == "plain page\n", r.stderr
        nc = run(["nc", "-N", "127.0.0.1", str(port)], input="GET /page.txt HTTP/1.0\r\n\r\n", env=env)
        assert nc.returncode == 0 and nc.stdout.endswith("\n\nplain page\n"), nc.stderr
        code = (f"import socket; s = socket.create_connection(('127.0.0.1', {port})); "
                "s.sendall(b'GET /page.txt HTTP/1.0\\r\\n\\r\\n'); print(s.recv(4096).split(b'\\r\\n')[0])")
        py = run([sys.executable, "-c", code], env=env)
        assert py.stdout.strip() == "b'HTTP/1.0 200 OK'", py.stderr


def _unix_socket_without_listener(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return s


def test_the_daemon_socket_missing_refused_or_forbidden_is_an_error_at_once(tmp_path: Path) -> None:
    binary = probe_binary(tmp_path)
    connect = ("socket", "inet", "connect", "127.0.0.1", "9", "gettext", "100")
    missing = str(tmp_path / "absent.sock")
    out = probe(binary, *connect, env={"SSAPROXY_SOCKET": missing})
    assert out[1][:3] == ["connect", "-1", "ENOENT"] and missing in out[2][3], out
    dead = tmp_path / "dead.sock"
    holder = _unix_socket_without_listener(dead)
    try:
        out = probe(binary, *connect, env={"SSAPROXY_SOCKET": str(dead)})
        assert out[1][:3] == ["connect", "-1", "ECONNREFUSED"] and str(dead) in out[2][3], out
    finally:
        holder.close()
    private = Path(os.environ.get("TMPDIR", "/tmp")) / f"ssaproxy-private-{os.getpid()}"
    private.mkdir(mode=0o700)
    try:
        holder = _unix_socket_without_listener(private / "api.sock")
        holder.listen()
        out = probe(binary, "socket", "inet", "settext", "85", "a.test",
                    env={"SSAPROXY_SOCKET": str(private / "api.sock")}, user="nobody")
        holder.close()
        assert out[1][:3] == ["settext", "-1", "EACCES"], out
    finally:
        (private / "api.sock").unlink(missing_ok=True)
        private.rmdir()


def test_errors_the_library_gives_before_asking_the_daemon(tmp_path: Path) -> None:
    binary = probe_binary(tmp_path)
    env = {"SSAPROXY_SOCKET": str(tmp_path / "absent.sock")}  # none of these may reach a daemon
    out = probe(binary, "socket", "dgram", "socket", "unix",
                "socket", "inet", "setint", "999", "1", "getint", "999", "setint", "91", "1", "getint", "96",
                "settext", "86", "x", "settext", "111", "x", "getint", "113", "gettext", "93", "upgrade", "1",
                "socket", "hostname", "bind", "0.0.0.0", "0", env=env)
    codes = [(row[0], row[2]) for row in out]
    assert codes == [("socket", "EPROTONOSUPPORT"), ("socket", "EAFNOSUPPORT"), ("socket", "0"),
                     ("setint", "ENOPROTOOPT"), ("getint", "ENOPROTOOPT"), ("setint", "ENOPROTOOPT"),
                     ("getint", "ENOPROTOOPT"), ("settext", "ENOPROTOOPT"), ("settext", "EINVAL"),
                     ("getint", "ENOTCONN"), ("gettext", "ENOTCONN"), ("upgrade", "EOPNOTSUPP"),
                     ("socket", "0"), ("bind", "EOPNOTSUPP")], out


def test_upgrade_needs_a_connected_socket_and_a_known_role(tmp_path: Path, web: tuple[int, Path]) -> None:
    port, _ = web
    out = probe(probe_binary(tmp_path), "plainsocket", "upgrade", "1", "connect", "127.0.0.1", str(port),
                "upgrade", "7", "send", "GET /page.txt HTTP/1.0\r\n\r\n", "recvall",
                env={"SSAPROXY_SOCKET": str(tmp_path / "absent.sock")})
    assert [row[:3] for row in out[:4]] == [["plainsocket", "0", "0"], ["upgrade", "-1", "ENOTCONN"],
                                             ["connect", "0", "0"], ["upgrade", "-1", "EINVAL"]], out
    assert out[5][3].endswith("plain page|"), out  # a refused call leaves the socket as it was


def test_a_routed_destination_without_the_daemon_is_refused_never_plaintext(tmp_path: Path,
                                                                            web: tuple[int, Path]) -> None:
    port, log = web
    other_root = tmp_path / "other"
    other_root.mkdir()
    (other_root / "page.txt").write_text("unrouted\n")
    other = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                             str(other_root), str(other)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(other, proc)
        env = preload_env(SSAPROXY_REDIRECT="1", SSAPROXY_ROUTES=f"upgrade 127.0.0.0/8 {port}\n",
                          SSAPROXY_SOCKET=str(tmp_path / "absent.sock"))
        routed = run(["curl", "-sS", f"http://127.0.0.1:{port}/page.txt"], env=env)
        assert routed.returncode == 7 and routed.stdout == "", routed  # curl: could not connect
        mapped = run(["curl", "-sS", "-g", f"http://[::ffff:127.0.0.1]:{port}/page.txt"], env=env)
        assert mapped.returncode == 7 and mapped.stdout == "", mapped
        free = run(["curl", "-sS", f"http://127.0.0.1:{other}/page.txt"], env=env)
        assert free.returncode == 0 and free.stdout == "unrouted\n", free.stderr
        # Redirection asked for, but no route table and no daemon to ask: every connect is refused.
        blind = preload_env(SSAPROXY_REDIRECT="1", SSAPROXY_SOCKET=str(tmp_path / "absent.sock"))
        assert run(["curl", "-sS", f"http://127.0.0.1:{other}/page.txt"], env=blind).returncode == 7
    finally:
        stop(proc)
    assert "GET /page.txt" not in log.read_text()  # the routed server never saw a plaintext request


def _refused_never_plaintext(routes: str, tmp_path: Path, web: tuple[int, Path]) -> None:
    """With the daemon absent and these routes, curl to the web server is refused (curl: 7)
    and the server never sees the request."""
    port, log = web
    env = preload_env(SSAPROXY_REDIRECT="1", SSAPROXY_ROUTES=routes, SSAPROXY_SOCKET=str(tmp_path / "absent.sock"))
    r = run(["curl", "-sS", f"http://127.0.0.1:{port}/page.txt"], env=env)
    assert r.returncode == 7 and r.stdout == "", r
    assert "GET /page.txt" not in log.read_text()


def test_a_route_after_the_256th_line_is_still_routed(tmp_path: Path, web: tuple[int, Path]) -> None:
    port, _ = web
    # One line per route and port: 300 lines before the one that covers the web server.
    many = "".join(f"upgrade 192.0.2.{i % 256}/32 {1000 + i}\n" for i in range(300))
    _refused_never_plaintext(many + f"upgrade 127.0.0.0/8 {port}\n", tmp_path, web)


@pytest.mark.parametrize("bad", ["upgrade 127.0.0.0/8\n",            # no port: once skipped
                                 "upgrade 127.0.0.0/33 {port}\n",     # once narrowed to 127.0.0.0/32
                                 "upgrade 127.0.0.0/x {port}\n",
                                 "upgrade 127.0.0.0/8 {port} extra\n",
                                 "upgrade 198.51.100.0/24 0\nnot a route\n"])
def test_a_route_table_with_a_line_it_cannot_read_fails_closed(bad: str, tmp_path: Path,
                                                               web: tuple[int, Path]) -> None:
    # Unreadable: every plain TCP connect goes to the daemon, and here there is none.
    _refused_never_plaintext(bad.replace("{port}", str(web[0])), tmp_path, web)


def test_a_set_user_id_program_ignores_its_callers_daemon_socket(tmp_path: Path) -> None:
    # SSAPROXY_SOCKET comes from whoever runs the program: a set-user-ID program must not
    # hand its sockets (and what it sets on them) to a "daemon" its caller names.
    shared = Path(tempfile.mkdtemp(prefix="ssaproxy-suid-"))
    try:
        shared.chmod(0o755)
        binary = shutil.copy(probe_binary(tmp_path), shared / "probe")
        fake = _unix_socket_without_listener(shared / "fake.sock")
        (shared / "fake.sock").chmod(0o777)
        env = {"SSAPROXY_SOCKET": str(shared / "fake.sock")}
        steps = ("socket", "inet", "connect", "127.0.0.1", "9", "gettext", "100")
        plain = probe(Path(binary), *steps, env=env, user="nobody")
        assert str(shared / "fake.sock") in plain[2][3], plain  # an ordinary program: its caller's socket
        os.chmod(binary, 0o4755)  # set-user-ID root
        suid = probe(Path(binary), *steps, env=env, user="nobody")
        assert suid[1][1] == "-1" and "/run/ssaproxy/api.sock" in suid[2][3], suid  # the default, never the caller's
        fake.close()
    finally:
        shutil.rmtree(shared)
