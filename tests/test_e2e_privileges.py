"""Unprivileged operation with real twistd processes: the systemd unit's own command line, run
as root, binds a port below 1024 and the API socket, becomes `nobody` for good, says READY=1 on
a NOTIFY_SOCKET, serves, starts without a single warning, and removes its socket at SIGTERM as
`nobody`.  No systemd is needed: the test plays the service manager (the notification socket,
the open files limit of the unit)."""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import signal
import socket
import socketserver
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import require_lab
from tests.lab import NOBODY, REPO, _twistd, stop, wait_for_text
from tests.pki import PKI

UNIT = REPO / "config" / "ssaproxy.service"
NOBODY_UID = 65534
PLUGIN_CACHE = "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
# What a clean start must not log: Twisted's levels, tracebacks, stderr, the plugin cache.
NOISE = ("#warn", "#error", "#critical", "Traceback", "[stderr", "plugin cache", "Warning")


def unit_setting(key: str) -> str:
    values = [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, f"{key}= in {UNIT}: {values}"
    return values[0]


def nofile() -> int:
    """The unit's LimitNOFILE, or as near as this machine allows (a container may cap it)."""
    return min(int(unit_setting("LimitNOFILE")), resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def exec_start(config: Path) -> list[str]:
    """The unit's ExecStart, with this tree's twistd and the test's config."""
    argv = shlex.split(unit_setting("ExecStart"))
    assert argv[0] == "/opt/ssaproxy/bin/twistd" and argv[-2:] == ["--config", "/etc/ssaproxy/ssaproxy.toml"], argv
    return [_twistd(), *argv[1:-1], str(config)]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def backend() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory outside pytest's private tree, so `nobody` can reach what is in it."""
    require_lab()
    path = Path(tempfile.mkdtemp(prefix="ssaproxy-priv-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _config(d: Path, pki: PKI, port: int, backend: int, daemon: str) -> Path:
    creds = pki.server("good_localhost")
    # Copies outside pytest's private tree: the trust store is read again by the daemon's user
    # (the API's contexts), and a daemon started as nobody reads everything as nobody.
    trust, chain, key = d / "ca.pem", d / "chain.pem", d / "key.pem"
    for src, dst in ((pki.root_pem, trust), (creds.chain, chain), (creds.key, key)):
        shutil.copy(src, dst)
        os.chmod(dst, 0o644)
    config = d / "ssaproxy.toml"
    config.write_text(f'{daemon}\n[policy]\ntrust_store = "{trust}"\n'
                      f'[api]\nsocket = "{d}/run/api.sock"\nmode = "0660"\nmax_sessions = 1000\n'
                      f'[[inbound]]\nname = "low"\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
                      f'backend = "tcp:127.0.0.1:{backend}"\nmax_connections = 1000\n'
                      f'certificates = [{{ chain = "{chain}", key = "{key}" }}]\n')
    return config


def _status(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.split() for k, _, v in (line.partition(":") for line in lines)}


@pytest.mark.parametrize(("how", "port"), [("config", 844), ("twistd-uid", 845)])
def test_unit_command_binds_as_root_then_serves_as_nobody(pki: PKI, shared: Path, backend: int, how: str,
                                                          port: int) -> None:
    daemon = '[daemon]\nuser = "nobody"' if how == "config" else ""
    config = _config(shared, pki, port, backend, daemon)
    argv = exec_start(config)
    if how == "twistd-uid":
        argv[argv.index("ssaproxy"):argv.index("ssaproxy")] = ["--uid", str(NOBODY_UID), "--gid", str(NOBODY_UID)]
    limit = nofile()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(shared / "notify"))
    notify.settimeout(30)
    log = shared / "daemon.log"
    proc = subprocess.Popen(["prlimit", f"--nofile={limit}", "--", *argv], cwd=shared,
                            env={**os.environ, "NOTIFY_SOCKET": str(shared / "notify")},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        try:
            ready = notify.recv(4096).decode()  # prlimit execs twistd: the same pid
        except TimeoutError:
            pytest.fail(f"no READY=1 in 30 s:\n{log.read_text(errors='replace')}")
        assert "READY=1" in ready.splitlines(), ready
        assert f"MAINPID={proc.pid}" in ready.splitlines(), ready
        wait_for_text(log, "ssaproxy started", proc, 10)

        status = _status(proc.pid)
        assert status["Uid"] == [str(NOBODY_UID)] * 4, status["Uid"]
        assert status["Gid"] == [str(NOBODY_UID)] * 4, status["Gid"]
        assert status["Groups"] == [str(g) for g in os.getgrouplist("nobody", NOBODY_UID)], status["Groups"]
        assert int(status["CapEff"][0], 16) == 0 and int(status["CapPrm"][0], 16) == 0, status

        # The low port serves verified TLS.
        tls = ssl.create_default_context(cafile=str(pki.root_pem))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                tls.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"ping")
            assert conn.recv(16) == b"ping"
            conn.unwrap()  # a clean end (close_notify both ways), so the log has nothing to warn about

        # The API socket: the configured mode, the daemon's user, and a program served through it.
        sock = shared / "run" / "api.sock"
        info = sock.lstat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660, oct(info.st_mode)
        assert (info.st_uid, info.st_gid) == (NOBODY_UID, NOBODY_UID)
        assert (sock.parent.stat().st_uid, sock.parent.stat().st_gid) == (NOBODY_UID, NOBODY_UID)
        connect = Path(sys.executable).parent / "ssaproxy"
        out = subprocess.run([str(connect), "connect", "127.0.0.1", str(port), "--hostname", "localhost"],
                             input=b"through the api", capture_output=True, timeout=30,
                             env={**os.environ, "SSAPROXY_SOCKET": str(sock)})
        assert out.stdout == b"through the api", out

        text = log.read_text(errors="replace")
        assert not [line for line in text.splitlines() if any(n in line for n in NOISE)], text

        assert stop(proc, signal.SIGTERM) == -signal.SIGTERM
        assert not sock.exists(), "the daemon (as nobody) did not remove its socket"
        assert "STOPPING=1" in notify.recv(4096).decode().splitlines()
        text = log.read_text(errors="replace")
        assert not [line for line in text.splitlines() if any(n in line for n in NOISE)], text
    finally:
        stop(proc)
        notify.close()


def test_twistd_euid_is_refused_because_root_could_come_back(pki: PKI, shared: Path, backend: int) -> None:
    """--euid changes only the effective uid: the check after the drop finds the way back open."""
    config = _config(shared, pki, 846, backend, "")
    log = shared / "daemon.log"
    argv = exec_start(config)
    argv[argv.index("ssaproxy"):argv.index("ssaproxy")] = ["--euid", "--uid", str(NOBODY_UID)]
    proc = subprocess.Popen(argv, cwd=shared, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        assert proc.wait(30) == 1
    finally:
        stop(proc)
    text = log.read_text(errors="replace")
    assert "not starting" in text and "Traceback" not in text, text
    assert "ssaproxy started" not in text


def test_started_as_its_own_user_after_the_documented_install_step_logs_no_warning(
        pki: PKI, shared: Path, backend: int) -> None:
    """The Docker image's case: no root at any time.  The plugin cache written at install time
    (tests/setup.sh, the README, the Dockerfile: the same command) is what keeps twistd quiet."""
    for doc in (REPO / "tests" / "setup.sh", REPO / "README.md", REPO / "docker" / "Dockerfile"):
        assert PLUGIN_CACHE in doc.read_text(), doc
    subprocess.run([sys.executable, "-c", PLUGIN_CACHE], check=True, timeout=60)  # as the installer would
    run = shared / "run"
    run.mkdir()
    os.chown(run, NOBODY_UID, NOBODY_UID)
    config = _config(shared, pki, 18446, backend, "")
    log = shared / "daemon.log"
    limit = nofile()
    proc = subprocess.Popen(["prlimit", f"--nofile={limit}", "--", *NOBODY, *exec_start(config)],
                            cwd=shared, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_for_text(log, "ssaproxy started", proc, 20)
        assert stop(proc, signal.SIGTERM) == -signal.SIGTERM
    finally:
        stop(proc)
    text = log.read_text(errors="replace")
    assert not [line for line in text.splitlines() if any(n in line for n in NOISE)], text
    assert not (run / "api.sock").exists()

