"""Unmodified Debian binaries under `ssaproxy run` (the C library preloaded, redirection on):
curl, nc and redis-cli reach TLS servers through the daemon's own outbound routes, as an
ordinary user with no iptables rule, verified against the Host header or the name the program
resolved (hostname_from = "resolved"); a
truncated response reaches curl as a reset; a certificate for another name never gets a byte
of plaintext; destinations no route covers are untouched."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_harness import ApiDaemon, free_port, wait_port
from tests.clib import preload_env, probe, probe_binary, run
from tests.lab import poll, stop
from tests.pki import PKI

SERVERS = {  # route name: (TLS server mode, certificate case, where the route takes the name from)
    # curl resolves "localhost" itself, without getaddrinfo(): its routes take the Host header.
    "http": ("http", "good_localhost", "http-host"),
    "truncate": ("truncate", "good_localhost", "http-host"),
    "wrong": ("http", "good", "http-host"),  # its certificate names backend.test
    "echo": ("echo", "good_localhost", "resolved"),
}


@pytest.fixture(scope="module")
def routed(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiDaemon, dict[str, int]]]:
    """A daemon whose outbound routes send plain 127.0.0.1:<port> to a TLS server on another
    port of the same address; the plain ports."""
    daemon = ApiDaemon(tmp_path_factory.mktemp("run"), pki)
    plain: dict[str, int] = {}
    routes = f'[outbound]\nlisten = ["tcp:{free_port()}:interface=127.0.0.1"]\n'
    for name, (mode, creds, source) in SERVERS.items():
        tls_port = daemon.tls_server(mode, pki.server(creds))
        plain[name] = free_port()
        routes += (f'[[outbound.route]]\nname = "{name}"\ndestination = "127.0.0.1/32"\nports = [{plain[name]}]\n'
                   f'tls_port = {tls_port}\nhostname_from = "{source}"\n')
    daemon.config.write_text(daemon.config.read_text() + routes)
    daemon.start()
    try:
        yield daemon, plain
    finally:
        daemon.stop()


def _run(daemon: ApiDaemon, *argv: str, user: str = "nobody", **kw: object) -> subprocess.CompletedProcess[str]:
    """`ssaproxy run -- argv` as `user` (no capabilities), with the daemon's socket."""
    ssaproxy = str(Path(sys.executable).parent / "ssaproxy")
    command = [ssaproxy, "run", "--socket", daemon.socket, "--", *argv]
    if user != "root":
        command = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", *command]
    return run(command, cwd="/", **kw)  # type: ignore[arg-type]


def test_curl_http_gets_the_verified_page(routed: tuple[ApiDaemon, dict[str, int]]) -> None:
    daemon, plain = routed
    r = _run(daemon, "curl", "-sS", f"http://localhost:{plain['http']}/through-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from the TLS server\n"
    line = _logged(daemon, "route=http ")
    # The same record as an iptables-redirected connection, plus who asked (as for any API session).
    for fact in ("action=upgrade", "verified=True", "tls=TLSv1.3", "via=api", "uid=65534", "exe=/usr/bin/curl"):
        assert fact in line, (fact, line)


def _logged(daemon: ApiDaemon, text: str) -> str:
    """The daemon's connection record containing `text` (waited for, bounded)."""
    found = poll(lambda: [line for line in daemon.log.read_text().splitlines() if text in line and "orig_dst=" in line],
                 15)
    assert found, f"no connection record with {text!r}"
    return found[-1]


def test_a_name_the_certificate_does_not_prove_gets_no_plaintext(routed: tuple[ApiDaemon, dict[str, int]]) -> None:
    daemon, plain = routed
    r = _run(daemon, "curl", "-sS", f"http://localhost:{plain['wrong']}/secret")
    assert r.returncode != 0 and r.stdout == "", r
    logs = "".join(p.read_text() for p in daemon.directory.glob("tls-http-*.log"))
    assert "/secret" not in logs  # the request never reached the server


def test_a_truncated_response_is_a_reset_for_curl(routed: tuple[ApiDaemon, dict[str, int]]) -> None:
    daemon, plain = routed
    r = _run(daemon, "curl", "-sS", "--http0.9", "-o", "/dev/null", f"http://localhost:{plain['truncate']}/")
    assert r.returncode == 56 and "reset" in r.stderr.lower(), r  # "Recv failure: Connection reset by peer"


def test_nc_and_redis_cli_talk_through_the_upgrade(routed: tuple[ApiDaemon, dict[str, int]]) -> None:
    daemon, plain = routed
    nc = _run(daemon, "nc", "-N", "localhost", str(plain["echo"]), input="through nc\n")
    assert nc.returncode == 0 and nc.stdout == "through nc\n", nc
    line = _logged(daemon, "exe=/usr/bin/nc")
    assert "resolved=localhost" in line and "verified=True" in line, line  # the name nc resolved, verified
    # curl's own resolution of "localhost" leaves the library no name for a "resolved" route:
    # refused, never plaintext.
    nameless = _run(daemon, "curl", "-sS", f"http://localhost:{plain['echo']}/")
    assert nameless.returncode == 7 and nameless.stdout == "", nameless
    # redis-cli sends PING as a RESP array; the TLS echo server sends it back, which redis-cli
    # prints as the array it is.
    redis = _run(daemon, "redis-cli", "-h", "localhost", "-p", str(plain["echo"]), "PING")
    assert redis.returncode == 0 and redis.stdout.strip() == "PING", redis


@pytest.fixture
def unrouted(tmp_path: Path) -> Iterator[int]:
    """A plain HTTP server on 127.0.0.1 (no route covers its port) serving page.txt; its port."""
    (tmp_path / "page.txt").write_text("plain and unrouted\n")
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp_path),
                            str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, web)
        yield port
    finally:
        stop(web)


def test_destinations_no_route_covers_are_left_alone(routed: tuple[ApiDaemon, dict[str, int]], unrouted: int) -> None:
    daemon, _ = routed
    r = _run(daemon, "curl", "-sS", f"http://localhost:{unrouted}/page.txt", user="root")
    assert r.returncode == 0 and r.stdout == "plain and unrouted\n", r.stderr


def test_an_unreadable_route_table_hands_every_connect_to_the_daemon(routed: tuple[ApiDaemon, dict[str, int]],
                                                                     unrouted: int) -> None:
    # A table the library cannot read whole: the daemon decides each connect.  Its route
    # still upgrades; a destination it does not route gets ENOENT and is connected directly.
    daemon, plain = routed
    env = preload_env(SSAPROXY_REDIRECT="1", SSAPROXY_SOCKET=daemon.socket,
                      SSAPROXY_ROUTES="upgrade 198.51.100.0/24\n")  # no port: unreadable
    routed_r = run(["curl", "-sS", f"http://localhost:{plain['http']}/unreadable-table"], env=env, cwd="/")
    assert routed_r.returncode == 0 and routed_r.stdout == "hello from the TLS server\n", routed_r
    free = run(["curl", "-sS", f"http://localhost:{unrouted}/page.txt"], env=env, cwd="/")
    assert free.returncode == 0 and free.stdout == "plain and unrouted\n", free


def test_a_used_up_session_share_refuses_a_non_blocking_redirect(pki: PKI, tmp_path: Path) -> None:
    # The daemon's EAGAIN (this user's sessions used up) would read as "in progress" to a
    # non-blocking connect(): the library makes it ECONNREFUSED.
    daemon = ApiDaemon(tmp_path / "limited", pki, extra="max_sessions_per_uid = 1\n")
    hold = daemon.tls_server("hold", None)
    plain = free_port()
    daemon.config.write_text(daemon.config.read_text()
                             + f'[outbound]\nlisten = ["tcp:{free_port()}:interface=127.0.0.1"]\n'
                             f'[[outbound.route]]\nname = "held"\ndestination = "127.0.0.1/32"\nports = [{plain}]\n'
                             f'tls_port = {hold}\nhostname = "localhost"\n')
    daemon.start()
    try:
        env = preload_env(SSAPROXY_REDIRECT="1", SSAPROXY_SOCKET=daemon.socket)
        out = probe(probe_binary(tmp_path), "plainsocket", "nonblock", "connect", "127.0.0.1", str(plain),
                    "plainsocket", "nonblock", "connect", "127.0.0.1", str(plain), env=env)
    finally:
        daemon.stop()
    assert out[1][:3] == ["connect", "-1", "EINPROGRESS"], out  # the one session this user may hold
    assert out[3][:3] == ["connect", "-1", "ECONNREFUSED"], out


def test_a_redirected_socket_shows_the_destination_the_program_asked_for(routed: tuple[ApiDaemon, dict[str, int]],
                                                                          tmp_path: Path) -> None:
    # As with iptables redirection: getpeername() is the original destination, not the
    # daemon's loopback end; a socket the library did not redirect keeps the kernel's answer.
    daemon, plain = routed
    env = preload_env(SSAPROXY_REDIRECT="1", SSAPROXY_SOCKET=daemon.socket)
    binary = probe_binary(tmp_path)
    out = probe(binary, "plainsocket", "connect", "127.0.0.1", str(plain["http"]), "peer",
                "plainsocket", "nonblock", "connect", "127.0.0.1", str(plain["http"]), "peer", env=env)
    assert [row[:3] for row in out] == [["plainsocket", "0", "0"], ["connect", "0", "0"], ["peer", "0", "0"],
                                        ["plainsocket", "0", "0"], ["connect", "-1", "EINPROGRESS"],
                                        ["peer", "0", "0"]], out
    assert out[2][3] == out[5][3] == f"127.0.0.1:{plain['http']}", out
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        direct = probe(binary, "plainsocket", "connect", "127.0.0.1", str(port), "peer", env=env)
    finally:
        listener.close()
    assert direct[2][:4] == ["peer", "0", "0", f"127.0.0.1:{port}"], direct
